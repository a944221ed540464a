"""docs/reading.md's ways of reading a corpus or a mixture (plain webdataset, Hugging Face `datasets`, Ray Data with
its defaults), run as written on a corpus whose samples differ in every way a real one does: no image, several,
JPEG and PNG, different sizes and modes, conversations with a taxonomy, meta keys that differ by source. Each reader
must give back every sample, image, key and value."""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import msgpack
import pytest
import webdataset as wds
import yaml
from datasets import load_dataset
from PIL import Image

from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus import cli
from vlcorpus.sample import MEMBER, Sample
from vlcorpus.shards import (
    ShardInfo,
    ShardWriter,
    atomic_write_json,
    file_checksum,
    read_samples,
    shard_paths,
    write_index,
)

ROOT = Path(__file__).parents[1]
DOC_TARS = "out/demo/mix/stage2/*/*.tar"
CATEGORIES = ("caption", "doc_ocr", "interleaved", "sft_taxonomy", "text")


def encoded(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    img = Image.new(mode, size, seed % 256 if mode == "L" else ((seed * 37) % 256, 90, 200, 255)[: len(mode)])
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def build_corpus(root: Path) -> list[Sample]:
    """Writes the corpus; returns its samples."""
    samples = [Sample("text", "rd", f"txt{i}", 0, "t.txt", [{"text": f"only words {i}"}], {},
                      meta={"chars": i}) for i in range(4)]
    samples += [Sample("caption", "rd", f"cap{i}", 0, "caption.jsonl", [{"image": "0.jpg"}, {"text": f"a caption {i}"}],
                       {"0.jpg": encoded("RGB", (40 + 37 * i, 30 + 11 * i), "JPEG", i)},
                       meta={"record": i, "licence": None}) for i in range(4)]
    samples += [Sample("doc_ocr", "rd", f"page{i}", 0, "paper.pdf", [{"image": "0.png"}, {"text": f"page text {i}"}],
                       {"0.png": encoded(mode, (300 + i, 400 - i), "PNG", i)},
                       meta={"page": {"width": 300 + i, "fonts": ["a", "b"][: i]}, "score": 0.5 * i})
                for i, mode in enumerate(["L", "RGB", "RGBA", "L"])]
    samples += [Sample("interleaved", "rd", f"doc{i}", 0, "docs.jsonl",
                       [{"text": "before"}, {"image": "0.jpg"}, {"text": "between"}, {"image": "1.png"}][: 2 + 2 * (i % 2)],
                       {"0.jpg": encoded("RGB", (64, 48 + i), "JPEG", i)}
                       | ({"1.png": encoded("L", (20 + i, 90), "PNG", i)} if i % 2 else {}), meta={})
                for i in range(4)]
    samples += [Sample("sft_taxonomy", "rd", f"conv{i}", 0, "convs.json",
                       [{"role": "user", "image": "0.png"}, {"role": "user", "text": "What is it?"},
                        {"role": "assistant", "text": f"Thing {i}."}], {"0.png": encoded("RGB", (50, 50 + i), "PNG", i)},
                       taxonomy=["Recognition", f"Leaf {i}"], meta={"turns": 1}) for i in range(4)]
    for category in CATEGORIES:
        with ShardWriter(root / category, "rd-test", max_samples=2) as w:
            for s in samples:
                if s.category == category:
                    w.write(s)
        write_index(root / category)
    return samples


def records(samples) -> list[bytes]:
    """Samples as their on-disk records, sorted: equal lists mean every sample, image, key and value came back."""
    return sorted(msgpack.packb(s.to_record() if isinstance(s, Sample) else s) for s in samples)


def doc_recipes() -> list[str]:
    """The python blocks of docs/reading.md, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "reading.md").read_text(), re.S)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    samples = build_corpus(root / "corpus")
    mixture = root / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"stage": "stage2", "unit": "samples", "budget": "scarcest", "categories": {
        c: {"ratio": 1 / len(CATEGORIES)} for c in CATEGORIES}}))
    run_mix([root / "corpus"], load_mixture(str(mixture)), root / "mix", local=True)
    return root, samples


def run_doc(tars_glob: str) -> dict:
    blocks = doc_recipes()
    assert len(blocks) == 4 and DOC_TARS in blocks[0]
    ns: dict = {}
    for block in blocks:
        exec(compile(block.replace(DOC_TARS, tars_glob), "docs/reading.md", "exec"), ns)
    return ns


@pytest.mark.parametrize("folder", ["corpus", "mix/stage2"])
def test_every_reader_in_the_docs_gives_back_every_sample(corpus, folder, ray_local):
    root, written = corpus
    ns = run_doc(f"{root}/{folder}/*/*.tar")
    tars = ns["tars"]
    assert len(tars) >= len(CATEGORIES) and "/caption/" in tars[0] and "/text/" in tars[-1]
    expected = records(read_samples(tars))  # the project's reader: the written samples (plus meta.mix in a mixture)
    if folder == "corpus":
        assert expected == records(written)
    else:
        assert {Sample.from_wds({MEMBER: r}).category for r in map(msgpack.unpackb, expected)} == set(CATEGORIES)

    # datasets: one column of records, its type inferred from the first shard's rows (captions, one JPEG each; and
    # in reverse order text only, no image at all)
    assert records(row[MEMBER] for row in ns["hf"]) == expected
    backwards = load_dataset("webdataset", data_files={"train": tars[::-1]}, split="train")
    assert records(row[MEMBER] for row in backwards) == expected
    # Ray Data with its default decoder
    assert records(row[MEMBER] for row in ns["ds"].take_all()) == expected
    # every recipe's pictures decode
    assert all(isinstance(p, Image.Image) and p.size[0] > 0 for p in ns["pictures"])


def write_v1_corpus(root: Path, samples: list[Sample]) -> None:
    """The same samples as a corpus written before vlcorpus/2: `K.json` + one `K.<n>.jpg|png` per image."""
    for category in {s.category for s in samples}:
        folder = root / category
        folder.mkdir(parents=True)
        shard = folder / "old-000000.tar"
        group = [s for s in samples if s.category == category]
        with wds.TarWriter(str(shard), encoder=False, mtime=0) as w:
            for s in group:
                d = {"schema": "vlcorpus/1", "category": s.category, "source": s.source, "doc": s.doc, "part": s.part,
                     "origin": s.origin, "segments": s.segments, "meta": s.meta}
                if s.taxonomy is not None:
                    d["taxonomy"] = s.taxonomy
                w.write({"__key__": s.key, "json": json.dumps(d).encode(), **s.images})
        atomic_write_json(shard.with_suffix(".json"), asdict(ShardInfo(
            shard=shard.name, samples=len(group), bytes=shard.stat().st_size, checksum=file_checksum(shard),
            text_tokens=sum(s.text_tokens for s in group), images=sum(len(s.images) for s in group),
            docs=[s.doc for s in group])))
        write_index(folder)


def test_a_vlcorpus_1_corpus_still_reads_inspects_and_mixes_into_vlcorpus_2(tmp_path, capsys):
    samples = build_corpus(tmp_path / "new")
    write_v1_corpus(tmp_path / "old", samples)
    assert records(read_samples(shard_paths(tmp_path / "old"))) == records(samples)
    assert cli.main(["inspect", str(tmp_path / "old"), "--verify", "--samples", "1"]) == 0
    assert f"{len(shard_paths(tmp_path / 'old'))} shard(s)" in capsys.readouterr().out
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"stage": "stage2", "unit": "samples", "budget": "scarcest", "categories": {
        c: {"ratio": 1 / len(CATEGORIES)} for c in CATEGORIES}}))
    run_mix([tmp_path / "old"], load_mixture(str(mixture)), tmp_path / "mix", local=True)
    tars = [str(p) for p in shard_paths(tmp_path / "mix" / "stage2")]
    hf = load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "hf"))
    assert records(row[MEMBER] for row in hf) == records(read_samples(tars))
    assert {s.key for s in read_samples(tars)} <= {s.key for s in samples}
