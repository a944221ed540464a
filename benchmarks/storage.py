"""Object storage vs local disk, in one run: `vlcorpus import caption` of N images and a `vlcorpus mix` of the corpus it
wrote, once with `--out` on local disk and once on a loopback S3 server (moto's standalone server, its own process),
interleaved round by round. Also counts the S3 requests each job made (from the server's request log), and from them
the requests per TB of shards.

    python3 benchmarks/storage.py --rows 20000 --rounds 1 --num-cpus 1

The caption input is one Parquet file of JPEGs (`benchmarks/importers.make_parquet`, one input per row group); the
mixture draws every caption once (`unit: samples`, caption only). Each job is a fresh `python -m vlcorpus` process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from importers import make_parquet  # noqa: E402

from vlcorpus import storage  # noqa: E402

MIXTURE = "stage: bench\nunit: samples\nbudget: scarcest\nseed: 0\nstreams: 4\ncategories:\n  caption: {ratio: 1.0}\n"
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) ([^ ]*) HTTP')  # werkzeug colours some lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """moto's S3 server in its own process; its request log is parsed for counts."""

    def __init__(self, log: Path):
        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("moto server did not start")

    def requests(self) -> Counter:
        counts: Counter = Counter()
        for m in REQUEST.finditer(self.log.read_text(errors="replace")):
            method, target = m.groups()
            kind = ("multipart" if "uploadId=" in target or "uploads" in target else
                    "list" if method == "GET" and ("list-type" in target or "?prefix" in target) else method)
            counts[kind] += 1
        return counts

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run(command: list[str], env: dict) -> float:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vlcorpus", *command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--row-group", type=int, default=500)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = Server(tmp / "moto.log")
    env = {**os.environ, **server.env, "PYTHONPATH": str(ROOT), "VLCORPUS_SCRATCH": str(tmp / "scratch")}
    os.environ.update(server.env)
    import s3fs

    s3fs.S3FileSystem().mkdir("bench")
    try:
        data = tmp / "in" / "captions.parquet"
        data.parent.mkdir()
        make_parquet(data, args.rows, args.row_group, args.side)
        (tmp / "bench.yaml").write_text(MIXTURE)
        cpus = ["--num-cpus", str(args.num_cpus)]
        rows = []
        for r in range(args.rounds):
            for where in ("local", "s3"):
                out = str(tmp / f"corpus-{r}") if where == "local" else f"s3://bench/corpus-{r}"
                mix = str(tmp / f"mix-{r}") if where == "local" else f"s3://bench/mix-{r}"
                before = server.requests()
                t_import = run(["import", "caption", str(data), "--out", out, *cpus], env)
                mid = server.requests()
                t_mix = run(["mix", out, "--mixture", str(tmp / "bench.yaml"), "--out", mix, *cpus], env)
                after = server.requests()
                index = json.loads(storage.read_bytes(storage.join(storage.location(out), "caption", "index.json")))
                rows.append({"round": r, "where": where, "import_s": round(t_import, 1), "mix_s": round(t_mix, 1),
                             "samples": index["samples"], "shards": len(index["shards"]),
                             "shard_bytes": index["bytes"],
                             "import_requests": dict(mid - before), "mix_requests": dict(after - mid)})
                print(json.dumps(rows[-1]), flush=True)
        for where in ("local", "s3"):
            mine = [x for x in rows if x["where"] == where]
            print(f"{where}: import {min(x['import_s'] for x in mine)} s, mix {min(x['mix_s'] for x in mine)} s (best of "
                  f"{len(mine)})")
        s3 = [x for x in rows if x["where"] == "s3"][-1]
        for job in ("import", "mix"):
            n = sum(s3[f"{job}_requests"].values())
            print(f"{job}: {n} requests for {s3['shard_bytes'] / 1e6:.0f} MB of shards in {s3['shards']} shard(s) = "
                  f"{n / s3['shard_bytes'] * 1e12:,.0f} per TB")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
