"""What every pipeline command shares: its arguments and the call into the driver.

A command module declares its `STAGE` once (renderer, batch size, per-document bounds, runner); the argument
defaults are read from it, and `job_stage` applies what the user overrode. `run_stage` refuses, through
`vlcorpus.inputs`, every input that must not be read, before the driver sees it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from renderers.records.discovery import add_record_arguments, record_inputs
from vlcorpus import storage
from vlcorpus.config import load_config
from vlcorpus.document import Bounds, DocInput
from vlcorpus.driver import Options, run_pipeline
from vlcorpus.drops import MAX_DROP_SHARE, DropReport, drop_report
from vlcorpus.inputs import discover, gate, input_root, record_refusals, skipped_files
from vlcorpus.ledger import Entry, Ledger
from vlcorpus.runtime import init_ray
from vlcorpus.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES
from vlcorpus.stage import Stage

log = logging.getLogger("vlcorpus.pipelines")

STRICT_EXIT = 3  # exit status of a job that fails `--strict`
HINTS = {  # what to do about the most common reason, printed with it
    "image_missing": "The images are not where this dataset's layout puts them (docs/importers.md), nor under "
                     "--set image_root=DIR",
    "image_remote": "The images are URLs, never fetched: download them into the input folder with img2dataset "
                    "(docs/importers.md, OBELICS images)",
    "image_outside_root": "The image paths lead outside the input folder: import a folder that holds the images "
                          "too, or grant their folder with --set image_root=DIR",
    "failed: UnsafeInput": "Inputs whose real path leaves the input folder are not read (symlinks)",
}


def add_job_arguments(p: argparse.ArgumentParser, stage: Stage) -> None:
    p.add_argument("input", type=storage.location, help="input folder or s3:// / gs:// prefix (searched recursively)")
    p.add_argument("--out", type=storage.location, required=True,
                   help="corpus folder or s3:// / gs:// prefix: <out>/<category>/*.tar and <out>/_ledger/")
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
    p.add_argument("--max-drop-share", type=float, default=MAX_DROP_SHARE,
                   help="warn (and fail under --strict) when more than this share is dropped (default %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {STRICT_EXIT} when the job takes nothing in or drops more than --max-drop-share")


def renderer_config(cls: type, args: argparse.Namespace) -> Any:
    return load_config(cls, args.config, args.set)


def job_stage(stage: Stage, args: argparse.Namespace, **changes: Any) -> Stage:
    """`stage` with the batch size, per-document bounds and input root the arguments give (and any other `changes`)."""
    root = args.input if storage.is_remote(args.input) else input_root(args.input)
    return replace(stage, batch_size=args.batch_size, input_root=str(root),
                   bounds=Bounds(timeout_s=args.doc_timeout, memory_gb=args.doc_memory_gb), **changes)


def check_paths(args: argparse.Namespace) -> None:
    """Stop before any work on an input or `--out` that cannot be used: a missing local input; on a store, missing
    credentials, a bucket that does not exist, an input prefix that holds nothing (`storage.StorageError`)."""
    if storage.is_remote(args.out):
        storage.check_store(args.out)
    if storage.is_remote(args.input):
        storage.check_store(args.input, inputs=True, what="input")
    elif not args.input.exists():
        raise SystemExit(f"error: input {args.input} does not exist")


def staging_folder(args: argparse.Namespace, name: str) -> Path:
    """Where a record importer stages its pieces: `<out>/_staging/<name>`, or for an `--out` on a store a local
    folder of this host named for that URL (a re-run finds its pieces again; workers on other hosts do not see it, so
    record importers to a store run their Ray workers on this host)."""
    if not storage.is_remote(args.out):
        return args.out / "_staging" / name
    return storage.scratch_root() / f"vlcorpus-staging-{hashlib.sha1(args.out.encode()).hexdigest()[:12]}" / name


def local_input(args: argparse.Namespace) -> Path:
    """The input of a command that reads it on the driver (record files split into pieces): a local path only."""
    if storage.is_remote(args.input):
        raise ValueError(f"input {args.input}: this command reads its input files on the driver and takes a local "
                         "path only; copy the prefix to local disk (e.g. `aws s3 sync`) or use a shared folder")
    return args.input


def job_options(args: argparse.Namespace, out: Path) -> Options:
    """The driver's options from the arguments `add_job_arguments` declares, writing under `out`."""
    return Options(
        out=out,
        retry_failed=args.retry_failed,
        max_shard_bytes=int(args.max_shard_mb * 1024**2),
        max_shard_samples=args.max_shard_samples,
        limit=args.limit,
    )


def run_stage(stage: Stage, inputs: Iterable[DocInput], opts: Options, roots: Sequence[Path]) -> list[Entry]:
    """Refuse what must not be read, run the stage over the rest, and return the latest ledger entry of every input."""
    inputs = list(inputs)
    safe, refusals = gate(inputs, roots, opts.run_id)
    if refusals:
        record_refusals(opts.out, stage.source, refusals)
        log.warning("%s: refused %d input(s) that must not be read (see the ledger, UnsafeInput)", stage.source, len(refusals))
    run_pipeline(stage, safe, opts)
    latest = Ledger(opts.out, stage.source).latest()
    return [latest[d.doc] for d in inputs if d.doc in latest]


def run_job(stage: Stage, inputs: Iterable[DocInput], args: argparse.Namespace, unit: str = "document",
            reads: str = "") -> int:
    """Validate the arguments, start or join Ray, run the stage, print the counts and what was dropped. A command
    whose inputs are whole files names what it `reads`: every other file of the input folder gets a `filtered`
    ledger line (`skipped_files`).

    Returns the exit status: `STRICT_EXIT` when `args.strict` is set and the job imported nothing or dropped more than
    `args.max_drop_share` of its records (in `unit`s), else 0."""
    check_paths(args)
    opts = job_options(args, args.out)
    inputs = list(inputs)
    local_dir = not storage.is_remote(args.input) and args.input.is_dir()
    skipped = skipped_files(args.input, inputs, reads, opts.run_id) if reads and local_dir else []
    if skipped:
        record_refusals(opts.out, stage.source, skipped)
        log.warning("%s: skipped %d file(s) in no format it reads (%s); see the ledger", stage.source, len(skipped), reads)
    init_ray(args.address, args.num_cpus)
    roots = [] if storage.is_remote(args.input) else [input_root(args.input)]
    roots.append(staging_folder(args, "") if storage.is_remote(args.out) else args.out)  # staged pieces are inputs too
    entries = run_stage(job_stage(stage, args), inputs, opts, roots)
    return report_drops(stage.source, entries + skipped, args, unit)


def report_drops(source: str, entries: list[Entry], args: argparse.Namespace, unit: str) -> int:
    """Print the job's counts, and its top drop reasons when it imported nothing or dropped more than the allowed
    share; the exit status (`STRICT_EXIT` for such a job under `--strict`)."""
    rep = drop_report(entries)
    print(f"{source}: {rep.status['ok']} ok, {rep.status['filtered']} filtered, {rep.status['failed']} failed, "
          f"{rep.samples} samples -> {args.out}")
    share = args.max_drop_share
    if not rep.too_many_dropped(share):
        if rep.records:
            print(f"{source}: {rep.imported} of {rep.records} {unit}s imported")
        return 0
    print(f"WARNING {source}: {warning(rep, unit, share, args.out)}")
    return STRICT_EXIT if args.strict else 0


def warning(rep: DropReport, unit: str, share: float, out: Path) -> str:
    if not rep.inputs:
        return "no inputs were found (nothing in the input folder has a format this command reads)"
    if rep.records:
        head = f"imported {rep.imported} of {rep.records} {unit}s ({rep.dropped_share:.0%} dropped, allowed {share:.0%})"
    else:
        head = f"{rep.inputs - rep.status['ok']} of {rep.inputs} inputs gave nothing"
    top = rep.reasons.most_common(5)
    hint = HINTS.get(top[0][0], "") if top else ""
    listed = ", ".join(f"{reason} {n}" for reason, n in top) or "none recorded"
    return f"{head}; top reasons: {listed} (`vlcorpus inspect {out}` lists them all){hint and '. ' + hint}"


@dataclass(frozen=True)
class Importer:
    """An `import` command: the record files under the input, read in bounded pieces by one record renderer. A
    command module declares one (`IMPORTER`) and hands on its `add_arguments` and `main`."""

    stage: Stage
    config: type  # the renderer's settings dataclass (`--config`, `--set`)
    suffixes: tuple[str, ...]  # record files read
    unit: str  # what one record is, in the counts and the drop warning
    files: tuple[str, ...] = ()  # files read whole, one input each (text: .txt, .md)
    downloads_index: bool = False  # index img2dataset downloads inside the input (OBELICS image URLs)
    reads: str = ""  # what it reads, said in the ledger line of every other file of the input folder ("": no such lines)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_job_arguments(p, self.stage)
        add_record_arguments(p)

    def main(self, args: argparse.Namespace) -> int:
        stage = replace(self.stage, config=renderer_config(self.config, args))
        check_paths(args)  # before anything is staged
        src = local_input(args)
        files = discover(src, self.files) if self.files and src.is_dir() else []
        records = record_inputs(src, staging_folder(args, stage.source), self.suffixes, args.lines_per_doc,
                                int(args.max_record_mb * 1024**2), downloads_index=self.downloads_index)
        return run_job(stage, files + records, args, unit=self.unit, reads=self.reads)
