"""Object storage through one layer, against a real S3 server on loopback (moto's standalone server): caption
imports to `s3://`, resumed exactly once with no stray objects, a lock that refuses a second job, and bad store
input refused before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
import webdataset as wds

from tests.helpers import sample_view, start_test_ray
from tests.s3server import s3_server
from vlcorpus import storage
from vlcorpus.cli import main as cli
from vlcorpus.ledger import Ledger
from vlcorpus.shards import ChecksumError, verify_shard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from importers import make_parquet  # noqa: E402


@pytest.fixture(scope="module")
def s3_env():
    """The server, and no Ray left running from earlier tests: an embedded Ray's workers keep the environment it was
    started with, so the jobs here start theirs after the AWS_* variables are set; the suite's Ray is back after."""
    import ray

    running = ray.is_initialized()
    ray.shutdown()
    with s3_server() as env:
        yield env
    ray.shutdown()
    if running:
        start_test_ray()


@pytest.fixture
def bucket(s3_env, request):
    s3fs.S3FileSystem.clear_instance_cache()
    name = "t-" + request.node.name.replace("_", "-").lower()[:40]
    s3fs.S3FileSystem().mkdir(name)
    return name


def captions(tmp_path: Path, rows: int, row_group: int) -> Path:
    path = tmp_path / "in" / "captions.parquet"
    path.parent.mkdir()
    make_parquet(path, rows, row_group, 32)
    return path


def objects(prefix: str) -> list[str]:
    return storage.find(prefix)


def read_corpus(prefix: str, tmp: Path) -> list[dict]:
    """Every sample of the corpus's caption shards, checksums verified, read back with webdataset."""
    samples = []
    for i, url in enumerate(storage.glob(f"{prefix}/caption/*.tar")):
        verify_shard(url)
        local = tmp / f"{i}.tar"
        local.write_bytes(storage.read_bytes(url))
        samples += list(wds.WebDataset(str(local), shardshuffle=False))
    return samples


def committed(prefix: str) -> set[str]:
    """Every object the corpus may hold: ledger segments, indexes, and the shards (with sidecars) the ledger names."""
    names = {f"{prefix}/index.json"}
    for e in Ledger(prefix, "caption").latest().values():
        for s in e.shards:
            names |= {f"{prefix}/{s}", f"{prefix}/{s[:-4]}.json"}
    names |= {f"{prefix}/{c}/index.json" for c in ("caption",)}
    names |= set(storage.glob(f"{prefix}/_ledger/caption/*.jsonl"))
    return names


def import_caption(data: Path, out: str, *extra: str) -> int:
    return cli(["import", "caption", str(data), "--out", out, "--num-cpus", "1", *extra])


@pytest.mark.slow
def test_caption_import_to_s3_is_exactly_once_and_cleans_what_no_ledger_names(bucket, tmp_path):
    data = captions(tmp_path, 24, 4)
    out = f"s3://{bucket}/corpus"
    assert import_caption(data, out) == 0
    samples = read_corpus(out, tmp_path)
    assert len(samples) == 24 and len({s["__key__"] for s in samples}) == 24
    assert {sample_view(s)["json"]["segments"][1]["text"] for s in samples} == {
        f"synthetic image number {i} with blocks of colour" for i in range(24)}
    assert json.loads(storage.read_bytes(f"{out}/caption/index.json"))["samples"] == 24
    before = set(objects(out))
    assert before <= committed(out) | {f"{out}/caption/index.json"}

    # what a job killed mid-upload leaves: a shard and sidecar no ledger line names, and an unfinished multipart upload
    fs = s3fs.S3FileSystem()
    shard = storage.glob(f"{out}/caption/*.tar")[0]
    fs.copy(shard.removeprefix("s3://"), f"{bucket}/corpus/caption/caption-19990101000000beef-00000-000000.tar")
    fs.copy(shard.removeprefix("s3://")[:-4] + ".json", f"{bucket}/corpus/caption/caption-19990101000000beef-00000-000000.json")
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key="corpus/caption/caption-19990101000000beef-00001-000000.tar")

    assert import_caption(data, out) == 0  # nothing left to render: only the cleaning
    assert set(objects(out)) == before
    assert not fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
    assert len(read_corpus(out, tmp_path)) == 24

    # checksums are verified on read: a shard whose bytes changed on the store is refused
    data_bytes = bytearray(storage.read_bytes(shard))
    data_bytes[700] ^= 0xFF
    storage.write_bytes(shard, bytes(data_bytes))
    with pytest.raises(ChecksumError, match="does not match"):
        verify_shard(shard)


def test_second_job_on_the_same_out_is_refused(bucket, tmp_path):
    data = captions(tmp_path, 4, 4)
    out = f"s3://{bucket}/corpus"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live job on this host
    try:
        lock = f"{out}/_ledger/.caption.lock"
        storage.write_bytes(lock, json.dumps({"host": os.uname().nodename, "pid": holder.pid, "since": 0}).encode())
        with pytest.raises(RuntimeError, match=r"another run is writing .* pid %d" % holder.pid):
            import_caption(data, out)
        assert objects(out) == [lock]
    finally:
        holder.kill()
        holder.wait()
    assert import_caption(data, out) == 0  # its holder is dead: the stale lock is taken over
    assert len(read_corpus(out, tmp_path)) == 4 and f"{out}/_ledger/.caption.lock" not in objects(out)


def test_bad_store_input_stops_before_any_work(bucket, tmp_path, capsys, monkeypatch):
    data = captions(tmp_path, 4, 4)
    assert import_caption(data, "s3://no-such-bucket-here/corpus") == 2
    assert "bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err

    assert cli(["render", "pdf", f"s3://{bucket}/empty/", "--out", f"s3://{bucket}/corpus", "--num-cpus", "1"]) == 2
    assert f"input s3://{bucket}/empty: no objects under this prefix" in capsys.readouterr().err

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    assert import_caption(data, f"s3://{bucket}/corpus") == 2
    assert "no credentials" in capsys.readouterr().err
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    assert objects(f"s3://{bucket}") == []


@pytest.mark.slow
def test_kill_drill_sigkill_mid_import_then_rerun_is_exactly_once(bucket, s3_env, tmp_path):
    rows = 120
    data = captions(tmp_path, rows, 2)  # 60 documents, one Ray task and one ledger segment each
    out = f"s3://{bucket}/corpus"
    scratch = tmp_path / "scratch"
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT), "VLCORPUS_SCRATCH": str(scratch)}
    command = [sys.executable, "-m", "vlcorpus", "import", "caption", str(data), "--out", out, "--num-cpus", "1",
               "--batch-size", "1"]
    job = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(storage.glob(f"{out}/_ledger/caption/*.jsonl")) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done_at_kill = len(Ledger(out, "caption").latest())
    assert 0 < done_at_kill < rows // 2, "the job was not killed mid-import"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    samples = read_corpus(out, tmp_path)
    texts = sorted(sample_view(s)["json"]["segments"][1]["text"] for s in samples)
    assert texts == sorted(f"synthetic image number {i} with blocks of colour" for i in range(rows))  # each once
    assert set(objects(out)) <= committed(out)  # no stray object: only what the ledger names
    assert not s3fs.S3FileSystem().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
    assert not list(scratch.glob("vlcorpus-scratch-*"))


def test_mix_reads_a_corpus_on_s3_and_writes_the_same_mixture_there(bucket, tmp_path):
    from mixer.config import load_mixture
    from mixer.mix import run_mix
    from mixer.resolve import MixError
    from tests.mix_corpus import build_corpus

    corpus = build_corpus(tmp_path / "corpus")
    s3fs.S3FileSystem().put(str(corpus), f"{bucket}/corpus", recursive=True)
    local = run_mix([corpus], load_mixture("stage1"), tmp_path / "mix", local=True)
    remote = run_mix([f"s3://{bucket}/corpus"], load_mixture("stage1"), f"s3://{bucket}/mix", local=True)
    assert json.loads(storage.read_bytes(f"s3://{bucket}/mix/stage1/mixture.json")) == remote
    assert remote["inputs"]["inputs_hash"] == local["inputs"]["inputs_hash"]
    assert {c: [s["checksum"] for s in e["shards"]] for c, e in remote["categories"].items()} == {
        c: [s["checksum"] for s in e["shards"]] for c, e in local["categories"].items()}  # the same bytes
    for _category, entry in remote["categories"].items():
        for s in entry["shards"]:
            verify_shard(f"s3://{bucket}/mix/stage1/{s['shard']}")

    with pytest.raises(MixError, match="exists; pass --overwrite"):
        run_mix([f"s3://{bucket}/corpus"], load_mixture("stage1"), f"s3://{bucket}/mix", local=True)
    # a mix killed before its commit leaves shards without mixture.json: the next mix clears them and finishes
    storage.remove([f"s3://{bucket}/mix/stage1/mixture.json"])
    storage.write_bytes(f"s3://{bucket}/mix/stage1/caption/caption-0099-000000.tar", b"stray")
    again = run_mix([f"s3://{bucket}/corpus"], load_mixture("stage1"), f"s3://{bucket}/mix", local=True)
    assert again["totals"] == remote["totals"]
    assert f"s3://{bucket}/mix/stage1/caption/caption-0099-000000.tar" not in objects(f"s3://{bucket}/mix")


@pytest.mark.slow
def test_train_streams_a_mixture_from_s3_and_resumes_from_checkpoints_there(bucket, tmp_path, monkeypatch):
    import torch
    from transformers import DeepseekVLHybridConfig

    from tests.trainer_fixtures import stage
    from trainer.config import RunConfig
    from trainer.model import image_processor
    from trainer.synthetic import make_mixture
    from trainer.tokenizer import corpus_texts, train_tokenizer
    from trainer.train import run_stages

    mix = make_mixture(tmp_path / "mix", samples_per_category=24, shard_samples=6, max_words=40)
    train_tokenizer(corpus_texts(mix), 400, tmp_path / "tok")
    s3fs.S3FileSystem().put(str(mix), f"{bucket}/mix", recursive=True)
    st = stage("stage2", steps=4, packing=True, language_share=0.5, modality_warmup_steps=1)
    base = dict(tokenizer=str(tmp_path / "tok"), ckpt_interval=1, keep_checkpoints=2, num_workers=1, seed=3)
    monkeypatch.setenv("VLCORPUS_SCRATCH", str(tmp_path / "host-a"))
    torch.manual_seed(0)
    run_stages(RunConfig(mix=str(mix), out=str(tmp_path / "whole"), **base), [st])
    out = f"s3://{bucket}/run"
    torch.manual_seed(0)
    assert run_stages(RunConfig(mix=f"s3://{bucket}/mix", out=out, stop_after=2, **base), [st]) == [{"stopped_at": 2}]
    assert json.loads(storage.read_bytes(f"{out}/stage2/ckpt/latest.json")) == {"checkpoint": "step-00000002"}
    assert {u.rsplit("/", 2)[-2] for u in storage.glob(f"{out}/stage2/ckpt/step-*/*")} == {"step-00000001", "step-00000002"}

    monkeypatch.setenv("VLCORPUS_SCRATCH", str(tmp_path / "host-b"))  # resumed on a fresh host: only the store
    torch.manual_seed(123)
    summary = run_stages(RunConfig(mix=f"s3://{bucket}/mix", out=out, **base), [st])[0]
    assert summary["steps"] == 4 and json.loads(storage.read_bytes(f"{out}/stage2/summary.json"))["steps"] == 4

    def losses(text: str) -> list[tuple]:
        return [(m["step"], m["modality"], m["loss"]) for m in map(json.loads, text.splitlines())]

    assert losses(storage.read_bytes(f"{out}/stage2/metrics.jsonl").decode()) == losses(
        (tmp_path / "whole" / "stage2" / "metrics.jsonl").read_text())
    assert f"{out}/stage2/final/config.json" in storage.find(f"{out}/stage2/final")

    # `vlcorpus eval` of the bundle on the store, on a held-out set there, its results written there
    heldout = make_mixture(tmp_path / "heldout", samples_per_category=8, seed=9,
                           stages={"heldout": {"doc_ocr": 0.5, "web_code": 0.2, "text": 0.3}})
    s3fs.S3FileSystem().put(str(heldout / "heldout"), f"{bucket}/heldout", recursive=True)
    bundle = tmp_path / "host-b" / "processor"  # as tests/test_evaluate.py does: the image processor beside the model
    image_processor(DeepseekVLHybridConfig.from_pretrained(summary["final"])).save_pretrained(str(bundle))
    storage.put_file(bundle / "preprocessor_config.json", f"{out}/stage2/final/preprocessor_config.json")
    assert cli(["eval", f"{out}/stage2/final", f"s3://{bucket}/heldout", "--items", "4", "--bpb-bytes", "500",
                "--device", "cpu", "--out", f"{out}/eval"]) == 0
    scores = json.loads(storage.read_bytes(f"{out}/eval/eval.json"))
    assert scores["heldout"] == f"s3://{bucket}/heldout" and scores["categories"]["text"]["bpb"] > 0

    # the finished bundle on the store starts another run (`--pretrained s3://`)
    again = RunConfig(mix=f"s3://{bucket}/mix", out=str(tmp_path / "next"), **{**base, "tokenizer": ""})
    again.model.pretrained = f"{out}/stage2/final"
    assert run_stages(again, [stage("stage2", steps=1)])[0]["steps"] == 1


def test_inspect_reads_a_corpus_on_s3(bucket, tmp_path, capsys):
    data = captions(tmp_path, 8, 4)
    out = f"s3://{bucket}/corpus"
    assert import_caption(data, out) == 0
    capsys.readouterr()
    assert cli(["inspect", out, "--verify", "--samples", "1"]) == 0
    printed = capsys.readouterr().out
    assert "ledger caption: ok 2, filtered 0, failed 0, samples 8" in printed
    assert "verified 2 shard(s) against their sidecars" in printed
    assert "caption                 8 samples         96 text tokens       8 images" in printed
    assert "synthetic image number 0 with blocks of colour" in printed


@pytest.mark.slow
def test_a_cluster_worker_node_killed_mid_job_on_s3_loses_and_duplicates_nothing(bucket, s3_env, tmp_path):
    from tests.cluster_fixtures import LoopbackCluster
    from vlcorpus.shards import read_samples, shard_paths

    src, out = tmp_path / "in", f"s3://{bucket}/corpus"
    src.mkdir()
    names = [f"doc{i:03d}.txt" for i in range(150)]
    for i, name in enumerate(names):
        (src / name).write_text(f"Document {i}. " + "A sentence of plain prose for the text category. " * 8)
    with LoopbackCluster(cpus_per_node=1, env={**s3_env, "VLCORPUS_SCRATCH": str(tmp_path / "scratch")}) as cluster:
        cluster.start(nodes=3)
        cluster.submit([sys.executable, "-m", "vlcorpus.cli", "import", "text", str(src), "--out", out,
                        "--batch-size", "1"], "kill-drill-s3")
        deadline = time.monotonic() + 600
        while not storage.glob(f"{out}/_ledger/text/*.jsonl") and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = cluster.kill_node(2)
        committed_at_kill = len(Ledger(out, "text").latest())
        status, _ = cluster.wait_job("kill-drill-s3")
        assert status == "SUCCEEDED", cluster.job_logs("kill-drill-s3")[-3000:]
    assert "raylet" in killed
    assert 0 < committed_at_kill < len(names), "the node was not killed mid-job"
    latest = Ledger(out, "text").latest()
    assert sorted(latest) == names and {e.status for e in latest.values()} == {"ok"}
    shards = shard_paths(f"{out}/text")
    for shard in shards:
        verify_shard(shard)
    assert sorted(s.doc for s in read_samples(shards)) == names  # every input exactly once
    assert not s3fs.S3FileSystem().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")


@pytest.mark.slow
def test_extract_notebooks_from_s3_to_s3_stages_each_document_and_cleans_up(bucket, tmp_path, monkeypatch):
    """Real notebooks (the demo's) read from a prefix: each is staged in a worker's scratch folder, rendered, and the
    folder removed; the same samples as from local disk."""
    samples = ROOT / "demo" / "notebooks"
    names = ["01_the_machine_learning_landscape.ipynb", "06_decision_trees.ipynb"]
    local_in = tmp_path / "nb"
    local_in.mkdir()
    for name in names:
        (local_in / name).write_bytes((samples / name).read_bytes())
        storage.write_bytes(f"s3://{bucket}/raw/nb/{name}", (samples / name).read_bytes())
    monkeypatch.setenv("VLCORPUS_SCRATCH", str(tmp_path / "scratch"))
    args = ["--num-cpus", "1"]
    assert cli(["extract", "notebooks", str(local_in), "--out", str(tmp_path / "local"), *args]) == 0
    assert cli(["extract", "notebooks", f"s3://{bucket}/raw/nb", "--out", f"s3://{bucket}/corpus", *args]) == 0
    local = sorted((s.key, s.text) for s in read_samples_of(str(tmp_path / "local")))
    remote = sorted((s.key, s.text) for s in read_samples_of(f"s3://{bucket}/corpus"))
    assert remote == local and len(remote) >= 10
    assert {e.origin for e in Ledger(f"s3://{bucket}/corpus", "notebook").latest().values()} == set(names)
    assert not list((tmp_path / "scratch").glob("vlcorpus-scratch-*"))


def read_samples_of(corpus: str):
    from vlcorpus.shards import read_samples, shard_paths

    return read_samples(p for p in shard_paths(corpus) if "/_" not in str(p))


def test_arxiv_discovery_on_s3_pairs_archives_and_pdfs_by_stem(bucket, tmp_path):
    import tarfile

    from pipelines.render_arxiv import discover_store_papers
    from vlcorpus.driver import staged

    paper = ROOT / "demo" / "arxiv" / "rl-mapping"
    archive = tmp_path / "2401.00001v2.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(paper, arcname=".")
    root = f"s3://{bucket}/raw/arxiv"
    storage.put_file(archive, f"{root}/cs/2401.00001v2.tar.gz")
    storage.put_file(paper / "rl-mapping.pdf", f"{root}/cs/2401.00001.pdf")  # pairs by the id without its version
    storage.put_file(paper / "rl-mapping.pdf", f"{root}/lone.pdf")
    storage.write_bytes(f"{root}/cs/notes.txt", b"not a paper")
    docs = discover_store_papers(root)
    assert [(d.doc, d.origin, sorted(d.related)) for d in docs] == [
        ("cs/2401.00001v2", "cs/2401.00001v2.tar.gz", ["pdf", "source"]), ("lone", "lone.pdf", ["pdf"])]
    with staged(docs[0]) as local:  # what a worker hands the renderer: local files, removed after
        assert Path(local.path) == Path(local.related["source"]) and tarfile.is_tarfile(local.path)
        assert Path(local.related["pdf"]).read_bytes() == (paper / "rl-mapping.pdf").read_bytes()
        folder = Path(local.path).parents[1]
    assert not folder.exists()


def test_report_of_a_corpus_on_s3_is_written_there(bucket, tmp_path):
    from tests.mix_corpus import build_corpus

    corpus = build_corpus(tmp_path / "corpus", per_category=6)
    s3fs.S3FileSystem().put(str(corpus), f"{bucket}/corpus", recursive=True)
    assert cli(["report", f"s3://{bucket}/corpus", "--thumbs", "2"]) == 0
    page = storage.read_bytes(f"s3://{bucket}/corpus/report/index.html").decode()
    assert "<section class='category' data-category='caption'>" in page
    thumbs = [u for u in storage.glob(f"s3://{bucket}/corpus/report/assets/*") if u.endswith(".jpg")]
    assert thumbs and all(storage.name(u) in page for u in thumbs)
