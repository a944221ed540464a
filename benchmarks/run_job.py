"""Run one `vlcorpus` command as a user does (a fresh process: CLI, embedded Ray, the job) and print one JSON line:
its wall seconds and the CPU seconds of its processes (Ray's daemons and workers, the bounded children).

    PYTHONPATH=TREE python3 benchmarks/run_job.py import caption DATA --out OUT --num-cpus 2

CPU is summed just before Ray shuts down, over this process and every process under it: each one's own time plus
the time of the children it has reaped (a worker's finished renderer processes). Not counted: processes that ended
during the job and whose parent did not account for them (the raylet reaps idle workers it stops without
accounting), so the figure is a lower bound, alike for every tree measured.

Benchmarks run it with the PYTHONPATH of the code under test (the worktree, or an earlier commit's tree), so before
and after are measured the same way. CPU seconds make per-core figures that a machine shared with other jobs does
not distort as much as wall time does.
"""

from __future__ import annotations

import json
import sys
import time

import psutil


def tree_cpu_seconds() -> float:
    total = 0.0
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def main() -> None:
    start = time.perf_counter()
    from vlcorpus.cli import main as cli

    code = cli(sys.argv[1:])
    cpu = tree_cpu_seconds()
    print(json.dumps({"rc": code, "seconds": time.perf_counter() - start, "cpu_seconds": cpu}), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
