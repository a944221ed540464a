"""A real multi-process Ray cluster on this machine, for tests/test_cluster.py and benchmarks/cluster.py."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]  # the checkout the nodes import the project from


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
            for _ in range(3):
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
        try:
            root = psutil.Process(self.nodes[index].pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:  # the node already exited (e.g. it gave up joining)
            procs = []
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
