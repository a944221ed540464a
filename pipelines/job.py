"""What every pipeline command shares: its arguments, input discovery and the call into the driver.

A command module declares its `STAGE` once (renderer, batch size, per-document bounds, runner); the argument
defaults are read from it, and `job_stage` applies what the user overrode.

Containment: a job reads nothing outside its input root. Discovery walks the root without following symlinked
folders and reports every entry it would read with `input_problem`; `run_job` checks every input again (whoever
discovered it) and writes a `failed` ledger line, `UnsafeInput` with the reason, for each one it refuses: a
symlink whose real path leaves the root, a broken or looping link, a FIFO, socket or device. Such an input is
never opened.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlcorpus import storage
from vlcorpus.config import load_config
from vlcorpus.document import Bounds, DocInput
from vlcorpus.driver import Options, Stage, run_pipeline
from vlcorpus.inspect import DropReport, drop_report
from vlcorpus.ledger import Entry, Ledger
from vlcorpus.runtime import init_ray
from vlcorpus.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES

log = logging.getLogger("vlcorpus.pipelines")

REFUSED = "refused"  # DocInput.related key: why discovery refused this input (it is never read)
STRICT_EXIT = 3  # exit status of an import that fails `--strict`
HINTS = {  # what to do about the most common reason, printed with it
    "image_missing": "The images are not where this dataset's layout puts them (README, Importers), nor under "
                     "--set image_root=DIR",
    "image_remote": "The images are URLs, never fetched: download them into the input folder with img2dataset "
                    "(README, OBELICS images)",
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


def renderer_config(cls: type, args: argparse.Namespace) -> Any:
    return load_config(cls, args.config, args.set)


def job_stage(stage: Stage, args: argparse.Namespace, **changes: Any) -> Stage:
    """`stage` with the batch size and per-document bounds the arguments give (and any other `changes`)."""
    return dataclasses.replace(stage, batch_size=args.batch_size,
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
    check_paths(args)
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


def input_root(path: Path) -> Path:
    """The folder a job may read: the input folder, or the folder of an input file (symlinks resolved)."""
    path = path.resolve()
    return path if path.is_dir() else path.parent


def input_problem(path: Path, roots: Sequence[Path]) -> str | None:
    """Why `path` must not be read as an input, or None: its real path (every symlink resolved) leaves the `roots`,
    it is a broken or looping link, or it is neither a regular file nor a folder (a FIFO would block a reader)."""
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(r)) for r in roots):
        return f"its real path {real} is outside the input root {roots[0]}; not read"
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        what = "a symlink loop" if e.errno == errno.ELOOP else "a broken symlink" if e.errno == errno.ENOENT else e.strerror
        return f"it cannot be resolved ({what}); not read"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "it is not a regular file (a FIFO, socket or device); not read"
    return None


def walk_inputs(root: Path, wanted: Callable[[Path], bool]) -> Iterator[tuple[Path, str | None]]:
    """Every file under `root` that `wanted` accepts, with why it must not be read (`input_problem`) or None, in
    sorted order. Symlinked folders are not descended (what they hold inside the root is found where it really
    is); one that leads outside the root is reported, so nothing is left out silently."""
    root = root.resolve()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        for name in list(dirs):
            p = here / name
            if p.is_symlink():
                dirs.remove(name)
                if (problem := input_problem(p, [root])) is not None:
                    yield p, f"symlinked folder: {problem}"
        for name in sorted(files):
            p = here / name
            if wanted(p):
                yield p, input_problem(p, [root])


def refused(doc: str, origin: str, path: Path, reason: str) -> DocInput:
    """An input discovery refuses: `run_job` gives it a `failed` ledger line and never reads it."""
    return DocInput(doc=doc, origin=origin, path=str(path), related={REFUSED: reason})


def discover(root: storage.Location, suffixes: tuple[str, ...]) -> list[DocInput]:
    """Every file under `root` with one of `suffixes`, its path relative to `root` as both id and origin; the ones
    that must not be read come back `refused`. Under a store prefix: every object, its URL as the path (a worker
    stages it, `driver.staged`)."""
    if storage.is_remote(root):
        return [DocInput(doc=u[len(root) + 1:], origin=u[len(root) + 1:], path=u)
                for u in storage.find(root) if storage.name(u).lower().endswith(suffixes)]
    root = root.resolve()
    docs = []
    for p, problem in walk_inputs(root, lambda p: p.name.lower().endswith(suffixes)):
        rel = str(p.relative_to(root))
        docs.append(refused(rel, rel, p, problem) if problem else DocInput(doc=rel, origin=rel, path=str(p)))
    return docs


def gate(inputs: Iterable[DocInput], roots: Sequence[Path], run: str) -> tuple[list[DocInput], list[Entry]]:
    """The inputs that may be read, and a `failed` ledger entry for each one that may not (refused at discovery, or
    whose path leaves `roots`)."""
    safe, entries = [], []
    for d in inputs:
        if storage.is_remote(d.path) and REFUSED not in d.related:
            safe.append(d)  # an object is read by its key: no link to follow out of the prefix
            continue
        reason = d.related.get(REFUSED) or input_problem(Path(d.path), roots)
        if reason is None:
            safe.append(d)
        else:
            entries.append(Entry(doc=d.doc, origin=d.origin, status="failed", error_class="UnsafeInput",
                                 error=f"{d.origin}: {reason}", run=run))
    return safe, entries


def record_refusals(out: storage.Location, source: str, entries: list[Entry]) -> None:
    """Append the refusals the ledger does not already say (a re-run writes nothing twice)."""
    with Ledger(out, source) as ledger:
        latest = ledger.latest()
        ledger.append([e for e in entries if (old := latest.get(e.doc)) is None or (old.status, old.error) != (e.status, e.error)])


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


def run_job(stage: Stage, inputs: Iterable[DocInput], args: argparse.Namespace, unit: str = "document") -> int:
    """Validate the arguments, start or join Ray, run the stage, print the counts and what was dropped.

    Returns the exit status: `STRICT_EXIT` when `args.strict` is set and the job imported nothing or dropped more than
    `args.max_drop_share` of its records (in `unit`s), else 0."""
    check_paths(args)
    opts = job_options(args, args.out)
    init_ray(args.address, args.num_cpus)
    roots = [] if storage.is_remote(args.input) else [input_root(args.input)]
    roots.append(staging_folder(args, "") if storage.is_remote(args.out) else args.out)  # staged pieces are inputs too
    entries = run_stage(job_stage(stage, args), inputs, opts, roots)
    return report_drops(stage.source, entries, args, unit)


def report_drops(source: str, entries: list[Entry], args: argparse.Namespace, unit: str) -> int:
    """Print the job's counts, and its top drop reasons when it imported nothing or dropped more than the allowed
    share; the exit status (`STRICT_EXIT` for such a job under `--strict`)."""
    rep = drop_report(entries)
    print(f"{source}: {rep.status['ok']} ok, {rep.status['filtered']} filtered, {rep.status['failed']} failed, "
          f"{rep.samples} samples -> {args.out}")
    share = getattr(args, "max_drop_share", 1.0)
    if not rep.too_many_dropped(share):
        if rep.records:
            print(f"{source}: {rep.imported} of {rep.records} {unit}s imported")
        return 0
    print(f"WARNING {source}: {warning(rep, unit, share, args.out)}")
    return STRICT_EXIT if getattr(args, "strict", False) else 0


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
