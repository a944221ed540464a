"""docs/reading.md's readers over a corpus built by every source command from real documents (the demo's papers,
book, web pages, notebook and published-format datasets), and over its stage-2 mixture: Hugging Face `datasets` and
Ray Data with default arguments give back every sample the project's own reader sees, every field intact."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgpack
import pytest
import ray
import yaml
from datasets import load_dataset

from chain.run import E2EConfig, build_corpus
from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus.cli import source_commands
from vlcorpus.sample import MEMBER
from vlcorpus.shards import read_samples, shard_paths

pytestmark = pytest.mark.slow
DEMO = Path(__file__).parents[1] / "demo"


def sources(tmp: Path) -> dict[str, str]:
    """Every source kind on a small real input: the demo's folders, one paper, one book and one notebook."""
    picks = {"arxiv": DEMO / "arxiv" / "rl-mapping", "epub": DEMO / "epub" / "scarlet-letter.epub",
             "notebooks": DEMO / "notebooks" / "06_decision_trees.ipynb", "pdf": DEMO / "arxiv" / "re-gorder" / "re-gorder.pdf",
             "interleaved_docs": DEMO / "html"}
    out = {}
    for kind in source_commands():
        if kind in picks:
            folder = tmp / kind
            folder.mkdir()
            pick = picks[kind]
            (shutil.copytree if pick.is_dir() else shutil.copy)(pick, folder / pick.name)
            out[kind] = str(folder)
        else:
            out[kind] = str(DEMO / ("text/records" if kind == "text" else kind))
    return out


def records(rows) -> list[bytes]:
    return sorted(msgpack.packb(r) for r in rows)


def test_datasets_and_ray_read_a_corpus_from_every_source_and_its_mixture(tmp_path, ray_local):
    corpus = tmp_path / "corpus"
    build_corpus(E2EConfig(out=str(tmp_path), sources=sources(tmp_path)), corpus, ["--num-cpus", "2"])
    categories = {p.parent.name for p in shard_paths(corpus)}
    assert {"doc_ocr", "web_code", "caption", "interleaved", "table_chart", "scene_ocr", "text"} <= categories
    assert any(c.startswith("sft_") for c in categories)
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"stage": "stage2", "unit": "samples", "budget": "scarcest", "categories": {
        c: {"ratio": 1 / len(categories), "max_upsample": 2.0, "on_short": "warn"} for c in sorted(categories)}}))
    run_mix([corpus], load_mixture(str(mixture)), tmp_path / "mix", local=True)
    for tars in ([str(p) for p in shard_paths(corpus)], [str(p) for p in shard_paths(tmp_path / "mix" / "stage2")]):
        expected = records(s.to_record() for s in read_samples(tars))
        assert len(expected) > 50
        hf = load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "hf"))
        assert records(row[MEMBER] for row in hf) == expected
        assert records(row[MEMBER] for row in ray.data.read_webdataset(tars).take_all()) == expected
