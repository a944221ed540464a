"""Documents/s of a pipeline submitted with `ray job submit` to a real multi-process Ray cluster on this machine: a head
and worker nodes, each its own `ray start --block` process with its own loopback address (127.0.0.2, .3, ...; Ray
replaces 127.0.0.1 by the machine's outward address), ports of its own and a private RAY_TMPDIR, at 1, 2 and 3
nodes; optionally one worker node is killed mid-job.

    python benchmarks/cluster.py --nodes 1 2 3 --cpus-per-node 1 --rows 40000 --row-group 250 --side 256 [--kill-one]

The job is `vlcorpus import caption` on one generated Parquet file (one input per row group, JPEGs of --side px). Seconds
run from submission to the job's end as `ray job status` reports it, so they include the job's own start-up (the
driver process joining the cluster) but not the cluster's. `LoopbackCluster` is also what tests/test_cluster.py
uses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A Ray head and worker nodes as separate `ray start --block` processes, node i at loopback address 127.0.0.(2+i).

    Every address the nodes use is a loopback one (Ray's gRPC servers themselves listen on all interfaces). Each node
    gets its own ports (Ray's defaults would collide between nodes on one host) and all share a private RAY_TMPDIR,
    so neither another cluster on this machine nor `ray.init()` elsewhere sees this one."""

    def __init__(self, cpus_per_node: int = 1, env: dict[str, str] | None = None):
        self.cpus = cpus_per_node
        self.tmp = Path(tempfile.mkdtemp(prefix="vlr", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
        self.env = {**os.environ, **(env or {}), "RAY_TMPDIR": str(self.tmp), "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH")) if p)
        self.nodes: list[subprocess.Popen] = []
        self.gcs = f"127.0.0.2:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        # workers' port ranges sit below Linux's ephemeral ports (32768-), where free_port() picks the others
        self._worker_ports = random.Random().randrange(10000, 31000, 1000)

    def _start(self, *args: str) -> subprocess.Popen:
        low = self._worker_ports + 200 * len(self.nodes)
        cmd = ["ray", "start", "--block", f"--node-ip-address=127.0.0.{2 + len(self.nodes)}", f"--num-cpus={self.cpus}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--min-worker-port={low}", f"--max-worker-port={low + 199}", "--object-store-memory=200000000",
               "--disable-usage-stats", *args]
        with open(self.tmp / f"node{len(self.nodes)}.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        self.nodes.append(proc)
        return proc

    def start(self, nodes: int, timeout: float = 300, worker_args: tuple[str, ...] = ()) -> LoopbackCluster:
        """Start the head, then the workers one at a time: `ray start` gives a node 30 s to register, which a loaded
        machine starting several at once can miss (a node that gives up is started again, up to three times).
        `worker_args` go to the worker nodes' `ray start` (e.g. `--num-gpus=2`: a GPU node, the head without)."""
        head = ["--head", f"--port={self.gcs.split(':')[1]}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}", f"--ray-client-server-port={free_port()}"]
        for n in range(1, nodes + 1):
            for attempt in range(3):
                self._start(*(head if n == 1 else [f"--address={self.gcs}", *worker_args]))
                if self.wait_for(n, timeout):
                    break
                self.kill_node(len(self.nodes) - 1)
                self.nodes.pop()
            else:
                logs = "".join(f"\n--- {p.name}:\n" + p.read_text()[-1500:] for p in sorted(self.tmp.glob("node*.log")))
                raise RuntimeError(f"node {n} of the cluster did not start{logs}")
        return self

    def alive_nodes(self) -> int:
        code = ("import ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False); "
                "print('alive', sum(n['Alive'] for n in ray.nodes()))")
        try:
            out = subprocess.run([sys.executable, "-c", code], env={**self.env, "RAY_ADDRESS": self.gcs},
                                 capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:  # no GCS to answer (the head is not up)
            return 0
        alive = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("alive ")]
        return int(alive[-1]) if out.returncode == 0 and alive else 0

    def wait_for(self, nodes: int, timeout: float) -> bool:
        """Wait until `nodes` nodes are alive; False if a node process exits or the time runs out first."""
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < nodes:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.nodes):
                return False
            time.sleep(1)
        return True

    def submit(self, entrypoint: list[str], job_id: str) -> None:
        """`ray job submit --no-wait`: the job's driver runs on the head node, RAY_ADDRESS set by Ray."""
        subprocess.run(["ray", "job", "submit", f"--address={self.dashboard}", f"--submission-id={job_id}", "--no-wait",
                        "--", *entrypoint], env=self.env, check=True, capture_output=True)

    def job_status(self, job_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return str(JobSubmissionClient(self.dashboard).get_job_status(job_id)).rsplit(".", 1)[-1]

    def wait_job(self, job_id: str, timeout: float = 1800) -> tuple[str, float]:
        start, deadline = time.monotonic(), time.monotonic() + timeout
        while (status := self.job_status(job_id)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status} after {timeout:g} s")
            time.sleep(0.5)
        return status, time.monotonic() - start

    def job_logs(self, job_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard).get_job_logs(job_id)

    def kill_node(self, index: int) -> list[str]:
        """SIGKILL a node: its `ray start` process and everything under it (raylet, agents, workers); return the
        names of the processes killed."""
        root = psutil.Process(self.nodes[index].pid)
        procs = [root, *root.children(recursive=True)]
        names = []
        for p in procs:
            try:
                names.append(p.name())
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        self.nodes[index].wait()
        return names

    def stop(self) -> None:
        for i, proc in enumerate(self.nodes):
            if proc.poll() is None:
                self.kill_node(i)
        for _ in range(50):  # files the killed processes were still writing
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.tmp.exists():
                break
            time.sleep(0.1)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def caption_parquet(path: Path, rows: int, row_group: int, side: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from importers import make_parquet

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
