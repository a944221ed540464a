"""The real cluster path: a head and two worker nodes as separate `ray start` processes on loopback, a pipeline
submitted with `ray job submit`, one worker node killed mid-job; every input is in the output exactly once."""

from __future__ import annotations

import sys
import time

import pytest

from tests.cluster_fixtures import LoopbackCluster
from vlcorpus.ledger import Ledger
from vlcorpus.shards import read_samples, shard_paths, verify_shard

pytestmark = pytest.mark.slow


def test_a_worker_node_killed_mid_job_loses_and_duplicates_nothing(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = [f"doc{i:03d}.txt" for i in range(300)]
    for i, name in enumerate(names):
        (src / name).write_text(f"Document {i}. " + "A sentence of plain prose for the text category. " * 8)
    ledger = out / "_ledger" / "text.jsonl"
    with LoopbackCluster(cpus_per_node=1) as cluster:
        cluster.start(nodes=3)
        cluster.submit([sys.executable, "-m", "vlcorpus.cli", "import", "text", str(src), "--out", str(out),
                        "--batch-size", "1"], "kill-drill")
        deadline = time.monotonic() + 600
        while not (ledger.exists() and ledger.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = cluster.kill_node(2)
        committed_at_kill = len(ledger.read_text().splitlines())
        status, _ = cluster.wait_job("kill-drill")
        assert status == "SUCCEEDED", cluster.job_logs("kill-drill")[-3000:]
    assert "raylet" in killed
    assert 0 < committed_at_kill < len(names), "the node was not killed mid-job"
    latest = Ledger(out, "text").latest()
    assert sorted(latest) == names and {e.status for e in latest.values()} == {"ok"}
    shards = shard_paths(out / "text")
    for shard in shards:
        verify_shard(shard)
    docs = [s.doc for s in read_samples(shards)]
    assert sorted(docs) == names  # every input exactly once (each text is one sample)
