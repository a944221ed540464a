"""Documents/s of a pipeline submitted with `ray job submit` to a real multi-process Ray cluster on this machine: a head
and worker nodes, each its own `ray start --block` process with its own loopback address (127.0.0.2, .3, ...; Ray
replaces 127.0.0.1 by the machine's outward address), ports of its own and a private RAY_TMPDIR, at 1, 2 and 3
nodes; optionally one worker node is killed mid-job.

    PYTHONPATH=. python benchmarks/cluster.py --nodes 1 2 3 --cpus-per-node 1 --rows 40000 --row-group 250 --side 256 [--kill-one]

The job is `vlcorpus import caption` on one generated Parquet file (one input per row group, JPEGs of --side px). Seconds
run from submission to the job's end as `ray job status` reports it, so they include the job's own start-up (the
driver process joining the cluster) but not the cluster's. The cluster is `tests/cluster_fixtures.LoopbackCluster`,
the one tests/test_cluster.py starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.cluster_fixtures import LoopbackCluster


def caption_parquet(path: Path, rows: int, row_group: int, side: int) -> None:
    from benchmarks.importers import make_parquet

    make_parquet(path, rows, row_group, side)


def run(nodes: int, cpus: int, data: Path, out: Path, kill_one: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    with LoopbackCluster(cpus) as cluster:
        cluster.start(nodes)
        job = f"caption-{nodes}-{int(time.time())}"
        cluster.submit([sys.executable, "-m", "vlcorpus.cli", "import", "caption", str(data), "--out", str(out)], job)
        killed: list[str] = []
        if kill_one:
            ledger = out / "_ledger" / "caption.jsonl"
            while not (ledger.exists() and ledger.stat().st_size) and cluster.job_status(job) == "RUNNING":
                time.sleep(0.2)
            killed = cluster.kill_node(len(cluster.nodes) - 1)
        status, seconds = cluster.wait_job(job)
        if status != "SUCCEEDED":
            raise RuntimeError(f"job {status}:\n{cluster.job_logs(job)[-3000:]}")
    samples = json.loads((out / "caption" / "index.json").read_text())["samples"]
    docs = sum(1 for _ in open(out / "_ledger" / "caption.jsonl"))
    return {"nodes": nodes, "cpus": nodes * cpus, "docs": docs, "samples": samples, "seconds": seconds,
            "killed": bool(killed)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--rows", type=int, default=40000)
    p.add_argument("--row-group", type=int, default=250)
    p.add_argument("--side", type=int, default=256, help="image side in pixels")
    p.add_argument("--kill-one", action="store_true", help="kill the last worker node once the first batch commits")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        data = tmp / "in" / "captions.parquet"
        data.parent.mkdir()
        caption_parquet(data, args.rows, args.row_group, args.side)
        for nodes in args.nodes:
            r = run(nodes, args.cpus_per_node, data, tmp / "out", args.kill_one and nodes > 1)
            print(f"{r['nodes']} node(s), {r['cpus']} CPU(s): {r['docs']} inputs, {r['samples']} samples in "
                  f"{r['seconds']:.1f} s = {r['docs'] / r['seconds']:.2f} inputs/s, {r['samples'] / r['seconds']:.0f} "
                  f"samples/s{' (one worker node killed mid-job)' if r['killed'] else ''} (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
