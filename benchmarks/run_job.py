"""Run one `vlcorpus` command as a user does (a fresh process: CLI, embedded Ray, the job) and print one JSON line:
its wall seconds and the CPU seconds of every process it started, however and whenever they ended.

    PYTHONPATH=TREE python3 benchmarks/run_job.py import caption DATA --out OUT --num-cpus 2

CPU comes from a cpuacct cgroup made for this process (cgroup v1 `cpuacct.usage`, or v2 `cpu.stat`), which every
process started from here joins: Ray's daemons and workers and the bounded children, including those Ray stops
mid-job (the raylet reaps its workers without accounting, so summing per-process times misses them). Where no
cgroup can be made (not root), it falls back to summing the processes still alive at the end (a lower bound).

Benchmarks run it with the PYTHONPATH of the code under test (the worktree, or an earlier commit's tree), so before
and after are measured the same way. CPU seconds make per-core figures that a machine shared with other jobs does
not distort as much as wall time does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

CGROUPS = [("/sys/fs/cgroup/cpuacct", "cpuacct.usage", 1e-9), ("/sys/fs/cgroup", "cpu.stat", 1e-6)]


def source_tree(rev: str, dest: Path) -> Path:
    """The repository's files at git revision `rev`, unpacked into `dest`: the code a `--baseline-rev` job runs."""
    root = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def own_cgroup() -> tuple[Path, str, float] | None:
    """A new cpuacct cgroup holding this process (what it starts joins it), or None."""
    for root, counter, scale in CGROUPS:
        if (Path(root) / counter).exists() or (counter == "cpu.stat" and (Path(root) / "cgroup.controllers").exists()):
            group = Path(root) / f"vlcorpus-bench-{os.getpid()}"
            try:
                group.mkdir()
                (group / "cgroup.procs").write_text(str(os.getpid()))
                return group, counter, scale
            except OSError:
                continue
    return None


def cgroup_seconds(group: Path, counter: str, scale: float) -> float:
    text = (group / counter).read_text()
    if counter == "cpu.stat":
        text = dict(line.split() for line in text.splitlines())["usage_usec"]
    return float(text) * scale


def alive_seconds() -> float:
    total = 0.0
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def main() -> None:
    group = own_cgroup()
    start = time.perf_counter()
    from vlcorpus.cli import main as cli

    code = cli(sys.argv[1:])
    if group is None:
        cpu = alive_seconds()
    else:
        import ray

        ray.shutdown()  # everything Ray started has ended: its time is in the counter
        path, counter, scale = group
        cpu = cgroup_seconds(path, counter, scale)
        (path.parent / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(100):  # Ray's processes finish exiting just after its shutdown returns
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    print(json.dumps({"rc": code, "seconds": time.perf_counter() - start, "cpu_seconds": cpu,
                      "cpu_source": "cgroup" if group else "alive processes"}), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
