"""A copied e2e.yaml whose sources are documents only (a paper, a book, web pages, a notebook, text files: no
captions, charts, signs or SFT sets) runs through to a trained model and a report in one go: stage 1 mixes document
OCR alone, stage 2 Table 1 over what exists, stage 3 (SFT) is not run, the evaluation uses the categories that give
held-out items; changing heldout_fraction rebuilds the split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlcorpus.shards import read_samples, shard_paths

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
DEMO = ROOT / "demo"


def run(cfg: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "vlcorpus", "run", "--config", str(cfg), "--num-cpus", "2", *extra],
                          env=env, capture_output=True, text=True, timeout=1500)


def test_documents_only_sources_run_through_to_a_model_and_a_report(tmp_path):
    sources = {"arxiv": DEMO / "arxiv" / "rl-mapping", "epub": DEMO / "epub" / "scarlet-letter.epub",
               "html": DEMO / "html", "notebooks": DEMO / "notebooks" / "06_decision_trees.ipynb",
               "text": DEMO / "text" / "records"}
    folders = {}
    for kind, pick in sources.items():
        folders[kind] = tmp_path / "in" / kind
        folders[kind].mkdir(parents=True)
        (shutil.copytree if pick.is_dir() else shutil.copy)(pick, folders[kind] / pick.name)
    config = yaml.safe_load((ROOT / "e2e.yaml").read_text())
    config.update(out=str(tmp_path / "out"), sources={k: str(v) for k, v in folders.items()}, vocab_size=1000)
    config["train"].update(scale=0.002, max_seq_len=256, eval_items=8)
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = run(cfg)
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "out"
    log = res.stderr
    assert "stage1: mixed without caption (" in log and "stage3: NOT RUN" in log
    stage1 = json.loads((out / "mix" / "stage1" / "mixture.json").read_text())
    assert list(stage1["categories"]) == ["doc_ocr"] and set(stage1["left_out"]) == {"caption"}
    stage2 = json.loads((out / "mix" / "stage2" / "mixture.json").read_text())
    assert set(stage2["categories"]) <= {"doc_ocr", "web_code", "text"} and "interleaved" in stage2["left_out"]
    assert (out / "train" / "stage2" / "final" / "config.json").exists() and not (out / "train" / "stage3").exists()
    evals = [json.loads(line) for line in (out / "train" / "eval.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals] == ["stage1", "stage2"] and evals[-1]["items"] > 0
    assert set(evals[-1]["categories"]) | set(evals[-1]["left_out"]) >= {"doc_ocr"}
    assert (out / "report" / "index.html").exists()
    split = json.loads((out / "split" / "split.json").read_text())
    for cat, v in split["categories"].items():
        assert 0 < v["heldout_samples"] < v["samples"], (cat, v)
    held = len(list(read_samples(shard_paths(out / "split" / "heldout"))))
    # the same run with another held-out fraction builds the split (and what follows) again
    res = run(cfg, "--set", "heldout_fraction=0.3")
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((out / "split" / "split.json").read_text())["settings"]["fraction"] == 0.3
    assert len(list(read_samples(shard_paths(out / "split" / "heldout")))) > held
