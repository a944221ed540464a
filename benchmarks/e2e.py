"""Documents/s of the corpus chain (every pipeline over the demo sources) on Ray with 1 CPU, 2 CPUs, and a local
multi-node cluster (`ray.cluster_utils.Cluster`), each in a fresh process so that each gets a fresh Ray.

    python benchmarks/e2e.py [--nodes 2] [--cpus-per-node 1]

The arXiv route is left out (two papers cannot show scaling; LaTeXML's seconds per paper are in
benchmarks/pdf_render.py); so is the SFT build, which reads the corpus the others write.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"epub": "demo/epub", "html": "demo/html", "notebooks": "demo/notebooks", "caption": "demo/caption",
           "interleaved": "demo/interleaved", "table_chart": "demo/table_chart", "scene_ocr": "demo/scene_ocr",
           "text": "demo/text/records"}

CHILD = """
import json, sys, time
import ray
from pathlib import Path
from chain.run import E2EConfig, build_corpus
from vlcorpus.ledger import Ledger
mode, out, nodes, per_node = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "cluster":
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=per_node)
    ray.init(address=cluster.address)
else:
    ray.init(address="local", num_cpus=int(mode))
cfg = E2EConfig(out=out, sources=json.loads(sys.argv[5]))
start = time.perf_counter()
build_corpus(cfg, Path(out) / "corpus", [])
seconds = time.perf_counter() - start
docs = sum(len(Ledger(Path(out, "corpus"), f.stem).latest()) for f in Path(out, "corpus", "_ledger").glob("*.jsonl"))
print(json.dumps({"mode": mode, "cpus": ray.cluster_resources().get("CPU"), "nodes": len(ray.nodes()),
                  "docs": docs, "seconds": seconds}))
ray.shutdown()
if mode == "cluster":
    cluster.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    rows = []
    for mode in ("1", "2", "cluster"):
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run([sys.executable, "-c", CHILD, mode, tmp, str(args.nodes), str(args.cpus_per_node),
                                  json.dumps(SOURCES)], cwd=ROOT, env=env,
                                 capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{mode}: failed\n{res.stderr[-3000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            label = f"{args.nodes} nodes x {args.cpus_per_node} CPU" if mode == "cluster" else f"{mode} CPU"
            print(f"{label:20s} {row['docs']:4d} docs in {row['seconds']:7.1f} s = {row['docs'] / row['seconds']:.3f} docs/s",
                  flush=True)
    base = rows[0]["docs"] / rows[0]["seconds"]
    for row in rows[1:]:
        print(f"speed-up of {row['mode']} over 1 CPU: {row['docs'] / row['seconds'] / base:.2f}x")


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.0f} s")
