"""The kill drill: SIGKILL `vlcorpus run` while it renders, while it mixes and while it trains; the re-run
resumes, and the final corpus and mixture hold every input exactly once, as a clean run does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlcorpus.shards import read_samples, shard_paths

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]

CONFIG = """
out: {out}
sources:
  pdf: {pdf}
  caption: {caption}
heldout_fraction: 0.2
stages: [stage1]
vocab_size: 1000
train: {{model: {{preset: tiny}}, device: cpu, scale: 0.002, max_seq_len: 256, eval_items: 4, num_workers: 0,
        ckpt_interval: 5}}
"""


def write_config(tmp: Path, out: Path) -> Path:
    pdf = tmp / "pdf"
    pdf.mkdir(exist_ok=True)
    for paper in ("rl-mapping", "re-gorder"):
        shutil.copy(ROOT / "demo" / "arxiv" / paper / f"{paper}.pdf", pdf)
    cfg = tmp / f"{out.name}.yaml"
    cfg.write_text(CONFIG.format(out=out, pdf=pdf, caption=ROOT / "demo" / "caption"))
    return cfg


def run(cfg: Path, kill_when=None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "vlcorpus", "run", "--config", str(cfg), "--num-cpus", "2"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_when is None:
        return proc.wait(timeout=1200)
    deadline = time.time() + 900
    while proc.poll() is None and time.time() < deadline:
        if kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9
        time.sleep(0.05)
    raise AssertionError("the kill point was never reached (the run ended first)")


def keys(folder: Path) -> list[str]:
    return sorted(s.key for s in read_samples(shard_paths(folder)))


def test_killed_while_rendering_mixing_training_then_resumed_equals_a_clean_run(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run(write_config(tmp_path, clean)) == 0
    cfg = write_config(tmp_path, killed)
    ledger = killed / "corpus" / "_ledger" / "pdf.jsonl"
    assert run(cfg, lambda: ledger.exists() and ledger.stat().st_size > 0) == -9  # mid-rendering
    assert run(cfg, lambda: (killed / "mix").exists()) == -9  # mid-mixing
    assert run(cfg, lambda: (killed / "train" / "stage1" / "ckpt").exists()) == -9  # mid-training
    assert run(cfg) == 0
    for part in ("corpus", "split/train", "split/heldout", "mix/stage1"):
        got = keys(killed / part)
        assert len(got) == len(set(got)), f"{part}: a sample is there twice"
        if part != "mix/stage1":
            assert got == keys(clean / part), part
    mixed = keys(killed / "mix" / "stage1")
    assert set(mixed) == set(keys(clean / "mix" / "stage1"))
    assert (killed / "train" / "stage1" / "summary.json").exists()
    assert (killed / "report" / "index.html").exists()
