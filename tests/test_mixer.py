"""The mixture builder: resolution, dedup, repeats, determinism, Ray vs local, and every bad input it refuses."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import asdict
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from mix_corpus import build_corpus, make_sample, write_category

from mixer.config import load_mixture
from mixer.mix import run_mix
from mixer.resolve import MixError
from vlcorpus import cli
from vlcorpus.config import ConfigError
from vlcorpus.ledger import Ledger
from vlcorpus.sample import PRETRAIN_CATEGORIES, SFT_CATEGORIES
from vlcorpus.shards import (
    ShardInfo,
    atomic_write_json,
    file_checksum,
    verify_shard,
    write_index,
)


def mixture_file(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / f"mix-{len(list(tmp_path.glob('mix-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"stage": "s", **cfg}))
    return path


def read_back(stage_dir: Path) -> dict[str, list[dict]]:
    """Every output sample, read with the webdataset library itself, per category folder."""
    out = {}
    for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
        urls = [str(p) for p in sorted(folder.glob("*.tar"))]
        out[folder.name] = [
            {"key": s["__key__"], "json": json.loads(s["json"]), "images": [k for k in s if k.endswith(".jpg")]}
            for s in wds.WebDataset(urls, shardshuffle=False)
        ]
    return out


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "c", per_category=40)


def test_shipped_mixtures_follow_the_paper():
    s1, s2, s3 = (load_mixture(f"stage{i}") for i in (1, 2, 3))
    assert list(s1.categories) == ["caption", "doc_ocr"] and s1.unit == "samples"
    assert set(s2.categories) == set(PRETRAIN_CATEGORIES) and s2.unit == "tokens"
    assert set(s3.categories) == set(SFT_CATEGORIES)
    r2, r3 = s2.ratios(), s3.ratios()
    assert r2["text"] == pytest.approx(0.70) and r2["interleaved"] == pytest.approx(0.131)
    assert r2["doc_ocr"] == pytest.approx(0.021) and r2["web_code"] == pytest.approx(0.004)
    assert r3["sft_text"] == pytest.approx(0.479) and r3["sft_general"] == pytest.approx(0.355)
    assert sum(r2.values()) == pytest.approx(1) and sum(r3.values()) == pytest.approx(1)


def test_stage2_mix_is_tagged_shuffled_and_described(corpus, tmp_path):
    mix = run_mix([corpus], load_mixture("stage2"), tmp_path / "mix", local=True)
    stage = tmp_path / "mix" / "stage2"
    on_disk = json.loads((stage / "mixture.json").read_text())
    assert on_disk == mix
    got = read_back(stage)
    assert set(got) == set(PRETRAIN_CATEGORIES)
    for category, samples in got.items():
        c = mix["categories"][category]
        assert len(samples) == c["written"]["samples"] > 0
        for s in samples:
            assert s["json"]["category"] == category
            assert s["json"]["meta"]["mix"] == {"stage": "stage2", "category": category,
                                                "ratio": c["requested_ratio"], "repeat": 0}
            assert s["json"]["meta"]["n"] is not None  # the producer's meta is kept
        for shard in c["shards"]:
            assert verify_shard(stage / shard["shard"]).checksum == shard["checksum"]
    # text is the scarcest (70% of tokens, max_upsample 1): all of it is taken, the rest scaled to match
    assert mix["categories"]["text"]["written"]["samples"] == 40
    assert mix["categories"]["text"]["sampling_factor"] == pytest.approx(1.0)
    assert sum(c["realised_ratio"] for c in mix["categories"].values()) == pytest.approx(1, abs=1e-4)
    tokens = sum(c["written"]["text_tokens"] for c in mix["categories"].values())
    assert mix["categories"]["text"]["realised_ratio"] == pytest.approx(
        mix["categories"]["text"]["written"]["text_tokens"] / tokens, abs=1e-6)
    assert mix["config_hash"] == load_mixture("stage2").config_hash()
    # shuffled: the written order is not the corpus order
    caption_keys = [s["key"] for s in got["caption"]]
    assert caption_keys != sorted(caption_keys, key=lambda k: (k.split("-")[1], k))
    assert (tmp_path / "mix" / "_ledger" / "mix_stage2.jsonl").exists()


def test_same_inputs_and_seed_give_byte_identical_output(corpus, tmp_path):
    run_mix([corpus], load_mixture("stage3"), tmp_path / "a", local=True)
    run_mix([corpus], load_mixture("stage3"), tmp_path / "b", local=True)
    a, b = all_files(tmp_path / "a" / "stage3"), all_files(tmp_path / "b" / "stage3")
    assert a == b and any(k.endswith(".tar") for k in a)
    run_mix([corpus], load_mixture("stage3", ["seed=7"]), tmp_path / "c", local=True)
    c = all_files(tmp_path / "c" / "stage3")
    assert c["sft_general/sft_general-000000.tar"] != a["sft_general/sft_general-000000.tar"]


def test_ray_tasks_write_what_the_local_run_writes(corpus, tmp_path, ray_local):
    run_mix([corpus], load_mixture("stage1"), tmp_path / "local", local=True)
    run_mix([corpus], load_mixture("stage1"), tmp_path / "ray", local=False)
    assert all_files(tmp_path / "local" / "stage1") == all_files(tmp_path / "ray" / "stage1")


def test_samples_unit_with_a_fixed_budget(corpus, tmp_path):
    cfg = load_mixture(mixture_file(tmp_path, unit="samples", budget=40, categories={
        "caption": {"ratio": 0.25}, "text": {"ratio": 0.75}}))
    mix = run_mix([corpus], cfg, tmp_path / "mix", local=True)
    assert mix["categories"]["caption"]["written"]["samples"] == 10
    assert mix["categories"]["text"]["written"]["samples"] == 30
    assert mix["categories"]["caption"]["realised_ratio"] == 0.25
    assert mix["categories"]["caption"]["sampling_factor"] == 0.25


def test_upsampling_writes_copies_in_their_own_shards(corpus, tmp_path):
    cfg = load_mixture(mixture_file(tmp_path, unit="samples", budget=200, categories={
        "caption": {"ratio": 0.5, "max_upsample": 3.0}, "text": {"ratio": 0.5, "max_upsample": 3.0}}))
    mix = run_mix([corpus], cfg, tmp_path / "mix", local=True)
    c = mix["categories"]["caption"]
    assert c["written"]["samples"] == 100 and c["distinct_samples"] == 40 and c["copies"] == 3
    assert c["repeat_factor"] == pytest.approx(2.5)
    samples = read_back(tmp_path / "mix" / "s")["caption"]
    by_copy: dict[int, list[str]] = {}
    for s in samples:
        by_copy.setdefault(s["json"]["meta"]["mix"]["repeat"], []).append(s["key"])
    assert [len(by_copy[i]) for i in (0, 1, 2)] == [40, 40, 20]
    assert set(by_copy[1]) == set(by_copy[0]) and set(by_copy[2]) < set(by_copy[0])
    assert by_copy[1] != by_copy[0]  # each copy is shuffled again
    for tar in (tmp_path / "mix" / "s" / "caption").glob("*.tar"):
        with tarfile.open(tar) as t:
            keys = [m.name.split(".")[0] for m in t.getmembers() if m.name.endswith(".json")]
        assert len(keys) == len(set(keys)), f"{tar.name} holds a key twice"


def test_too_scarce_category_is_refused_or_capped(corpus, tmp_path):
    cats = {"caption": {"ratio": 0.5, "max_upsample": 1.5}, "text": {"ratio": 0.5}}
    with pytest.raises(MixError, match="caption.*max_upsample"):
        run_mix([corpus], load_mixture(mixture_file(tmp_path, unit="samples", budget=160, categories=cats)),
                tmp_path / "mix", local=True)
    assert not (tmp_path / "mix").exists()
    cats["caption"]["on_short"] = "warn"
    cats["text"]["max_upsample"] = 2.0
    mix = run_mix([corpus], load_mixture(mixture_file(tmp_path, unit="samples", budget=160, categories=cats)),
                  tmp_path / "mix", local=True)
    assert mix["categories"]["caption"]["written"]["samples"] == 60
    assert mix["categories"]["caption"]["warnings"] and mix["warnings"]


def test_empty_category_is_an_error_or_a_warning(corpus, tmp_path):
    small = build_corpus(tmp_path / "small", per_category=8, categories=("caption", "text"))
    cats = {"caption": {"ratio": 0.5}, "web_code": {"ratio": 0.1}, "text": {"ratio": 0.4}}
    with pytest.raises(MixError, match="web_code has no samples"):
        run_mix([small], load_mixture(mixture_file(tmp_path, unit="samples", categories=cats)), tmp_path / "m", local=True)
    cats["web_code"]["on_short"] = "warn"
    mix = run_mix([small], load_mixture(mixture_file(tmp_path, unit="samples", categories=cats)), tmp_path / "m", local=True)
    assert mix["categories"]["web_code"]["written"]["samples"] == 0 and mix["categories"]["web_code"]["short"]
    assert not (tmp_path / "m" / "s" / "web_code").exists()


def long_text(i: int) -> str:
    return f"caption {i}: " + " ".join(f"word{(i * 31 + j * 17) % 997}" for j in range(40))


def dup_corpus(root: Path) -> Path:
    """Captions where source b repeats source a (same text up to case/spacing, same image), plus look-alikes."""
    a = [make_sample("caption", "a", i, text=long_text(i)) for i in range(10)]
    b = [make_sample("caption", "b", i, text="  " + long_text(i).upper().replace(" ", "   ") + " ") for i in range(4)]
    b.append(make_sample("caption", "b", 4, text=long_text(4), image_seed=99))  # other image: kept
    near = long_text(5).rsplit(" ", 1)[0] + " different"
    b.append(make_sample("caption", "b", 5, text=near))  # near duplicate of a/5, same image
    b.append(make_sample("caption", "b", 6, text=near, image_seed=77))  # near duplicate text, other image: kept
    write_category(root, "caption", a)
    other = root.parent / "second"
    write_category(other, "caption", b)
    return other


def test_exact_and_near_duplicates_are_dropped_across_sources(tmp_path):
    second = dup_corpus(tmp_path / "first")
    cats = {"caption": {"ratio": 1.0}}
    mix = run_mix([tmp_path / "first", second], load_mixture(mixture_file(tmp_path, unit="samples", categories=cats)),
                  tmp_path / "exact", local=True)
    c = mix["categories"]["caption"]
    assert c["dropped"] == {"exact_duplicate": 4}
    assert c["written"]["samples"] == 13
    mix = run_mix([tmp_path / "first", second],
                  load_mixture(mixture_file(tmp_path, unit="samples", categories=cats, near_dup=True)),
                  tmp_path / "near", local=True)
    c = mix["categories"]["caption"]
    assert c["dropped"] == {"exact_duplicate": 4, "near_duplicate": 1}
    assert c["written"]["samples"] == 12
    # the same corpus given twice: every sample is a duplicate key the second time
    mix = run_mix([tmp_path / "first", tmp_path / "first"], load_mixture(mixture_file(tmp_path, unit="samples", categories=cats)),
                  tmp_path / "twice", local=True)
    assert mix["categories"]["caption"]["dropped"] == {"duplicate_key": 10}


def test_ratios_not_summing_to_one_are_normalised_with_a_warning(corpus, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_mixture(mixture_file(tmp_path, unit="samples", categories={"caption": {"ratio": 30}, "text": {"ratio": 10}}))
    assert "normalising" in caplog.text
    mix = run_mix([corpus], cfg, tmp_path / "mix", local=True)
    assert mix["categories"]["caption"]["requested_ratio"] == 0.75


@pytest.mark.parametrize("cfg, message", [
    ({"categories": {"captions": {"ratio": 1.0}}}, "unknown category captions"),
    ({"categories": {"caption": {"ratio": 1.0, "weight": 2}}}, "unknown key"),
    ({"categories": {"caption": {"ratio": -1.0}}}, "ratio"),
    ({"categories": {"caption": {"ratio": 0.0}}}, "sum to 0"),
    ({"categories": {"caption": {"ratio": 1.0, "max_upsample": 0.5}}}, "max_upsample"),
    ({"categories": {"caption": {"ratio": 1.0}}, "unit": "bytes"}, "unit"),
    ({"categories": {"caption": {"ratio": 1.0}}, "budget": "most"}, "budget"),
    ({"categories": {"caption": {"ratio": 1.0}}, "seeds": 3}, "unknown key"),
])
def test_bad_mixture_files_stop_with_a_message(tmp_path, cfg, message):
    with pytest.raises(ConfigError, match=message):
        load_mixture(mixture_file(tmp_path, **cfg))


def copy_corpus(src: Path, dst: Path) -> Path:
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    return dst


def test_missing_or_corrupt_shards_stop_before_anything_is_written(corpus, tmp_path):
    bad = copy_corpus(corpus, tmp_path / "bad")
    shard = sorted((bad / "caption").glob("*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes: only the checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(MixError, match=f"{shard.name}.*checksum"):
        run_mix([bad], load_mixture("stage1"), tmp_path / "mix", local=True)
    assert not (tmp_path / "mix").exists()
    shard.unlink()
    with pytest.raises(MixError, match=f"{shard.name}: listed in index.json but missing"):
        run_mix([bad], load_mixture("stage1"), tmp_path / "mix", local=True)
    assert not (tmp_path / "mix").exists()


def test_corpus_without_index_is_refused(corpus, tmp_path):
    bad = copy_corpus(corpus, tmp_path / "bad")
    (bad / "doc_ocr" / "index.json").unlink()
    with pytest.raises(MixError, match="doc_ocr have no index.json"):
        run_mix([bad], load_mixture("stage1"), tmp_path / "mix", local=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MixError, match="no category folder"):
        run_mix([tmp_path / "empty"], load_mixture("stage1"), tmp_path / "mix", local=True)
    assert not (tmp_path / "mix").exists()


def test_an_off_contract_sample_found_mid_run_goes_to_the_ledger(tmp_path):
    corpus = tmp_path / "c"
    write_category(corpus, "caption", [make_sample("caption", "a", i) for i in range(6)])
    good = make_sample("caption", "z", 0)
    broken = json.loads(good.to_wds()["json"])
    broken["segments"] = []  # passes the checksum (written that way), fails the contract
    path = corpus / "caption" / "z-bad-000000.tar"
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0) as tw:
        tw.write({"__key__": good.key, "json": json.dumps(broken).encode()})
    path.write_bytes(buf.getvalue())
    atomic_write_json(path.with_suffix(".json"), asdict(ShardInfo(
        shard=path.name, samples=1, bytes=path.stat().st_size, checksum=file_checksum(path), text_tokens=5, docs=[good.doc])))
    write_index(corpus / "caption")
    mix = run_mix([corpus], load_mixture(mixture_file(tmp_path, unit="samples", categories={"caption": {"ratio": 1.0}})),
                  tmp_path / "mix", local=True)
    assert mix["categories"]["caption"]["written"]["samples"] == 6 and mix["categories"]["caption"]["invalid"] == 1
    failed = [e for e in Ledger(tmp_path / "mix", "mix_s").latest().values() if e.status == "failed"]
    assert len(failed) == 1 and failed[0].error_class == "ContractError" and "segments" in failed[0].error


def test_a_failed_category_leaves_no_finished_looking_mixture(corpus, tmp_path, monkeypatch):
    from mixer import mix as mix_module

    real = mix_module.write_category

    def disk_full(cfg, plan, folder):
        if plan.category == "doc_ocr":
            real(cfg, plan, folder)
            raise OSError(28, "No space left on device")
        return real(cfg, plan, folder)

    monkeypatch.setattr(mix_module, "write_category", disk_full)
    with pytest.raises(MixError, match="doc_ocr.*No space left"):
        run_mix([corpus], load_mixture("stage1"), tmp_path / "mix", local=True)
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == ["_ledger"]
    latest = Ledger(tmp_path / "mix", "mix_stage1").latest()
    assert latest["doc_ocr"].status == "failed" and latest["caption"].status == "ok"


def test_an_existing_mixture_is_replaced_only_on_request(corpus, tmp_path):
    run_mix([corpus], load_mixture("stage1"), tmp_path / "mix", local=True)
    with pytest.raises(MixError, match="--overwrite"):
        run_mix([corpus], load_mixture("stage1", ["seed=1"]), tmp_path / "mix", local=True)
    mix = run_mix([corpus], load_mixture("stage1", ["seed=1"]), tmp_path / "mix", local=True, overwrite=True)
    assert json.loads((tmp_path / "mix" / "stage1" / "mixture.json").read_text())["seed"] == 1 == mix["seed"]
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == ["_ledger", "stage1"]


def test_cli_mix_and_its_errors(corpus, tmp_path, capsys):
    assert cli.main(["mix", str(corpus), "--mixture", "stage1", "--out", str(tmp_path / "m"), "--local"]) == 0
    assert "stage1:" in capsys.readouterr().out
    assert cli.main(["mix", str(corpus), "--mixture", "stage1", "--out", str(tmp_path / "m"), "--local",
                     "--set", "seeds=2"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert cli.main(["mix", str(tmp_path / "nope"), "--mixture", "stage1", "--out", str(tmp_path / "n"), "--local"]) == 2
    assert "no such corpus folder" in capsys.readouterr().err


def test_shuffle_buffer_is_bounded_and_seeded():
    import random

    from mixer.materialize import shuffled

    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i

    out = []
    for item in shuffled(source(), 16, random.Random("s")):
        out.append(item)
        assert len(pulled) - len(out) <= 16  # never more than the buffer held back
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    assert out == list(shuffled(iter(range(1000)), 16, random.Random("s")))
