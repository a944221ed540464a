"""What every pipeline command shares: its arguments, input discovery and the call into the driver.

A command module declares its `STAGE` once (renderer, batch size, per-document bounds, runner); the argument
defaults are read from it, and `job_stage` applies what the user overrode."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlcorpus.config import load_config
from vlcorpus.document import Bounds, DocInput
from vlcorpus.driver import Options, Stage, run_pipeline
from vlcorpus.runtime import init_ray
from vlcorpus.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES

log = logging.getLogger("vlcorpus.pipelines")


def add_job_arguments(p: argparse.ArgumentParser, stage: Stage) -> None:
    p.add_argument("input", type=Path, help="input folder (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="corpus folder: <out>/<category>/*.tar and <out>/_ledger/")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--retry-failed", action="store_true", help="render again the documents the ledger marks failed")
    p.add_argument("--batch-size", type=int, default=stage.batch_size, help="documents per Ray task, at most: a job of few documents gets two batches per CPU (default %(default)s)")
    p.add_argument("--doc-timeout", type=float, default=stage.bounds.timeout_s, help="seconds per document (default %(default)s)")
    p.add_argument("--doc-memory-gb", type=float, default=stage.bounds.memory_gb, help="memory per document (default %(default)s)")
    p.add_argument("--max-shard-mb", type=float, default=DEFAULT_MAX_BYTES / 1024**2, help="roll shards at this size (default %(default)s)")
    p.add_argument("--max-shard-samples", type=int, default=DEFAULT_MAX_SAMPLES, help="roll shards at this many samples (default %(default)s)")
    p.add_argument("--limit", type=int, help="render only the first N pending documents")
    p.add_argument("--config", type=Path, help="YAML file of renderer settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one renderer setting")


def renderer_config(cls: type, args: argparse.Namespace) -> Any:
    return load_config(cls, args.config, args.set)


def job_stage(stage: Stage, args: argparse.Namespace, **changes: Any) -> Stage:
    """`stage` with the batch size and per-document bounds the arguments give (and any other `changes`)."""
    return dataclasses.replace(stage, batch_size=args.batch_size,
                               bounds=Bounds(timeout_s=args.doc_timeout, memory_gb=args.doc_memory_gb), **changes)


def job_options(args: argparse.Namespace, out: Path) -> Options:
    """The driver's options from the arguments `add_job_arguments` declares, writing under `out`."""
    return Options(
        out=out,
        retry_failed=args.retry_failed,
        max_shard_bytes=int(args.max_shard_mb * 1024**2),
        max_shard_samples=args.max_shard_samples,
        limit=args.limit,
    )


def run_job(stage: Stage, inputs: Iterable[DocInput], args: argparse.Namespace) -> dict[str, int]:
    """Validate the arguments, start or join Ray, run the stage, print the counts."""
    if not args.input.exists():
        raise SystemExit(f"error: input {args.input} does not exist")
    opts = job_options(args, args.out)
    init_ray(args.address, args.num_cpus)
    counts = run_pipeline(job_stage(stage, args), inputs, opts)
    print(f"{stage.source}: {counts['ok']} ok, {counts['filtered']} filtered, {counts['failed']} failed, "
          f"{counts['samples']} samples -> {args.out}")
    return counts


def discover(root: Path, suffixes: tuple[str, ...]) -> list[DocInput]:
    """Every file under `root` with one of `suffixes`, its path relative to `root` as both id and origin."""
    root = root.resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
    return [DocInput(doc=str(p.relative_to(root)), origin=str(p.relative_to(root)), path=str(p)) for p in files]
