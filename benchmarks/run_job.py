"""Run one `vlcorpus` command as a user does (a fresh process: CLI, embedded Ray, the job) and print one JSON line:
its wall seconds and the CPU seconds of every process it started, directly or not (Ray's daemons and workers, the
bounded children), whether they ended during the job or at its end.

    PYTHONPATH=TREE python3 benchmarks/run_job.py import caption DATA --out OUT --num-cpus 2

How every process is counted: this process becomes a child subreaper (PR_SET_CHILD_SUBREAPER), so a process whose
parent dies first (a worker's child killed with its worker) is re-parented here instead of to init; after the
command and Ray's shutdown it reaps everything left, and getrusage(RUSAGE_CHILDREN) then holds every descendant
that was waited for, which Ray, its workers and the bounded workers all do for their own children.

Benchmarks run it with the PYTHONPATH of the code under test (the worktree, or an earlier commit's tree), so before
and after are measured the same way. CPU seconds make per-core figures that a machine shared with other jobs does
not distort as much as wall time does.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def reap(timeout: float = 60.0) -> None:
    """Wait for every remaining descendant (re-parented here) to exit, so that its CPU time is counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)
    raise TimeoutError("descendants still running after the job")


def main() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    start = time.perf_counter()
    from vlcorpus.cli import main as cli

    code = cli(sys.argv[1:])
    import ray

    ray.shutdown()
    reap()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(json.dumps({"rc": code, "seconds": time.perf_counter() - start, "cpu_seconds": cpu}), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
