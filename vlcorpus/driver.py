"""The generic pipeline driver: documents -> renderer -> atomic shards + ledger, fanned out over Ray.

A `Stage` pairs a renderer (`render(doc, config, stats) -> Iterable[Sample]`, a pure function that never sees Ray
or files it did not get) with the resources it declares. `run_pipeline` does the rest:

1. `reconcile` the output against the ledger: shards not fully committed by `ok` ledger lines are removed, so a
   crash at any moment leaves no half shard and no duplicate sample;
2. skip documents whose latest ledger line is `ok`/`filtered` (and `failed` unless `retry_failed`);
3. group the rest into batches; each batch runs as one Ray task (or on an actor, for renderers with expensive
   setup such as a browser), which renders every document in a child process bounded in time and memory and
   writes the samples into shards named `<source>-<run>-<batch>-<NNNNNN>.tar`;
4. the driver commits each finished batch with one ledger append. A Ray retry of a batch rewrites the same shard
   names, and a batch that never commits is removed by the next `reconcile`.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import resource
import secrets
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from vlcorpus.document import Bounds, DocInput, Filtered, Render
from vlcorpus.ledger import DONE, Entry, Ledger, summarize
from vlcorpus.sample import Sample
from vlcorpus.shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SAMPLES,
    ShardWriter,
    clean_partial,
    read_sidecar,
    sidecar_path,
    write_index,
)

log = logging.getLogger("vlcorpus.driver")


class OutputFull(RuntimeError):
    """The output volume is full: an environment failure that stops the job, never a document's fault."""


@dataclass(frozen=True)
class Stage:
    """A renderer and what it needs to run, declared as plain data (NeMo Curator style)."""

    source: str
    render: Render
    config: Any = None
    cpus: float = 1.0
    batch_size: int = 8
    bounds: Bounds = Bounds()
    make_runner: Callable[[Stage], Runner] | None = None  # None: render in a bounded child process
    actors: bool = False  # keep one runner per Ray actor across batches (browser renderers)


@dataclass
class Options:
    out: Path
    retry_failed: bool = False
    max_shard_bytes: int = DEFAULT_MAX_BYTES
    max_shard_samples: int = DEFAULT_MAX_SAMPLES
    max_in_flight: int | None = None  # batches submitted at once; default twice the cluster's CPUs
    limit: int | None = None  # first N pending documents only
    run_id: str = ""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.max_shard_bytes <= 0 or self.max_shard_samples <= 0:
            raise ValueError("--max-shard-bytes and --max-shard-samples must be positive")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")
        self.run_id = self.run_id or time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2)


class Runner(Protocol):
    def render(self, doc: DocInput) -> tuple[list[Sample], dict[str, int]]: ...

    def close(self) -> None: ...


def render_all(render: Render, doc: DocInput, config: Any) -> tuple[list[Sample], dict[str, int]]:
    """Run a renderer to completion, validating every sample (an off-contract sample fails the document)."""
    stats: Counter = Counter()
    try:
        samples = [s.validate() for s in render(doc, config, stats)]
    except Filtered as e:
        e.counts = dict(stats)  # travels back with the exception, so a filtered document keeps its drop counts
        raise
    return samples, dict(stats)


def _limit_memory(memory_gb: float) -> None:
    limit = int(memory_gb * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class IsolatedRunner:
    """Renders each document in a spawned child process with an address-space limit and a wall-clock timeout.

    pebble kills a child that runs past the timeout and starts a fresh one for the next document.
    """

    def __init__(self, stage: Stage):
        from pebble import ProcessPool

        self.stage = stage
        self.pool = ProcessPool(
            max_workers=1,
            initializer=_limit_memory,
            initargs=(stage.bounds.memory_gb,),
            context=multiprocessing.get_context("spawn"),
        )

    def render(self, doc: DocInput) -> tuple[list[Sample], dict[str, int]]:
        future = self.pool.submit(render_all, self.stage.bounds.timeout_s, self.stage.render, doc, self.stage.config)
        return future.result()

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()


def make_runner(stage: Stage) -> Runner:
    return (stage.make_runner or IsolatedRunner)(stage)


def _failure(exc: BaseException, bounds: Bounds) -> tuple[str, str]:
    from pebble import ProcessExpired

    if isinstance(exc, FutureTimeout):
        return "Timeout", f"rendering took longer than the {bounds.timeout_s:g} s per-document bound; the process was killed"
    if isinstance(exc, MemoryError):
        return "MemoryError", f"rendering exceeded the {bounds.memory_gb:g} GB per-document memory bound"
    if isinstance(exc, ProcessExpired):
        return "ProcessDied", f"the rendering process died (exit code {exc.exitcode}); memory bound {bounds.memory_gb:g} GB"
    message = str(exc) or repr(exc)
    return type(exc).__name__, message[:2000]


def batch_prefix(source: str, run_id: str, batch: int) -> str:
    return f"{source}-{run_id}-{batch:05d}"


def process_batch(stage: Stage, docs: list[DocInput], opts: Options, batch: int, runner: Runner | None = None) -> list[Entry]:
    """Render a batch and write its shards; return one (uncommitted) ledger entry per document."""
    prefix = batch_prefix(stage.source, opts.run_id, batch)
    for old in opts.out.glob(f"*/{prefix}-*"):  # left by an earlier attempt of this very batch
        old.unlink(missing_ok=True)
    own_runner = runner is None
    runner = runner or make_runner(stage)
    writers: dict[str, ShardWriter] = {}
    entries: list[Entry] = []
    try:
        for doc in docs:
            start = time.monotonic()
            entry = Entry(doc=doc.doc, origin=doc.origin, status="ok", run=opts.run_id)
            try:
                samples, entry.counts = runner.render(doc)
            except Filtered as e:
                entry.status, entry.error_class, entry.error = "filtered", "Filtered", str(e)
                entry.counts = getattr(e, "counts", {})
            except Exception as e:  # noqa: BLE001 - every failure becomes a ledger line; the job goes on
                entry.status = "failed"
                entry.error_class, entry.error = _failure(e, stage.bounds)
                log.debug("%s failed:\n%s", doc.origin, "".join(traceback.format_exception(e)))
            else:
                if not samples:
                    entry.status, entry.error_class, entry.error = "filtered", "Filtered", "the renderer produced no samples"
                shards: set[str] = set()
                for s in samples:
                    if s.category not in writers:
                        writers[s.category] = ShardWriter(
                            opts.out / s.category, prefix, opts.max_shard_bytes, opts.max_shard_samples
                        )
                    shards.add(f"{s.category}/{writers[s.category].write(s)}")
                entry.samples, entry.shards = len(samples), sorted(shards)
            entry.seconds = round(time.monotonic() - start, 3)
            entries.append(entry)
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if own_runner:
            runner.close()
    return entries


class BatchActor:
    """Holds one runner (e.g. a browser) for its lifetime and renders batches with it."""

    def __init__(self, stage: Stage, opts: Options):
        self.stage, self.opts = stage, opts
        self.runner = make_runner(stage)

    def process(self, docs: list[DocInput], batch: int) -> list[Entry]:
        return process_batch(self.stage, docs, self.opts, batch, self.runner)


def reconcile(out: Path, source: str, ledger: Ledger) -> dict[str, Entry]:
    """Make the output agree with the ledger; return the ledger's latest entry per document.

    A shard of this source stays only if every document its sidecar lists has an `ok` line naming it. An `ok`
    document whose shard is gone is no longer done (it will be rendered again).
    """
    latest = ledger.latest()
    removed = 0
    for category_dir in [p for p in out.iterdir() if p.is_dir() and not p.name.startswith("_")] if out.exists() else []:
        clean_partial(category_dir)
        touched = False
        for tar in category_dir.glob(f"{source}-*.tar"):
            ref = f"{category_dir.name}/{tar.name}"
            committed = sidecar_path(tar).exists() and all(
                (e := latest.get(d)) is not None and e.status == "ok" and ref in e.shards
                for d in read_sidecar(tar).docs
            )
            if not committed:
                tar.unlink()
                sidecar_path(tar).unlink(missing_ok=True)
                removed += 1
                touched = True
        for side in category_dir.glob(f"{source}-*.json"):
            if not side.with_suffix(".tar").exists():
                side.unlink()
                touched = True
        if touched or not (category_dir / "index.json").exists():
            write_index(category_dir)
    if removed:
        log.warning("%s: removed %d shard(s) that no ledger line committed (an earlier run was interrupted)", source, removed)
    for doc, e in list(latest.items()):
        if e.status == "ok" and not all((out / s).exists() for s in e.shards):
            del latest[doc]
    return latest


def pending(inputs: Iterable[DocInput], latest: dict[str, Entry], retry_failed: bool) -> list[DocInput]:
    seen: dict[str, str] = {}
    todo = []
    for d in inputs:
        if d.doc in seen:
            raise ValueError(f"document id {d.doc!r} is given twice ({seen[d.doc]} and {d.origin}); ids must be unique")
        seen[d.doc] = d.origin
        e = latest.get(d.doc)
        if e is None or (e.status not in DONE and retry_failed):
            todo.append(d)
    return todo


def run_pipeline(stage: Stage, inputs: Iterable[DocInput], opts: Options) -> dict[str, int]:
    """Run a stage over its inputs on Ray (started by `vlcorpus.runtime.init_ray`); return the job's counts."""
    if stage.batch_size <= 0:
        raise ValueError("batch size must be positive")
    opts.out.mkdir(parents=True, exist_ok=True)
    with Ledger(opts.out, stage.source) as ledger:
        try:
            todo = pending(inputs, reconcile(opts.out, stage.source, ledger), opts.retry_failed)
            if opts.limit is not None:
                todo = todo[: opts.limit]
            committed = _run_batches(stage, todo, opts, ledger)
            reconcile(opts.out, stage.source, ledger)
            _write_indexes(opts.out)
        except OSError as e:
            if _is_full(e):
                raise OutputFull(f"no space left under {opts.out} ({e}): free space and run again") from None
            raise
    counts = summarize(committed)
    log.info("%s: %s (ledger %s)", stage.source, counts, ledger.path)
    return counts


def _run_batches(stage: Stage, todo: list[DocInput], opts: Options, ledger: Ledger) -> list[Entry]:
    """Submit the batches (a bounded number in flight) and commit each one's entries as it finishes."""
    import ray

    batches = [todo[i : i + stage.batch_size] for i in range(0, len(todo), stage.batch_size)]
    log.info("%s: %d document(s) to render in %d batch(es), run %s", stage.source, len(todo), len(batches), opts.run_id)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // stage.cpus))
    in_flight_cap = opts.max_in_flight or 2 * cpus
    submit = _submitter(stage, opts, cpus)
    committed: list[Entry] = []
    futures: dict[Any, int] = {}
    next_batch = 0
    last_index = time.monotonic()
    with tqdm(total=len(todo), desc=f"render {stage.source}", unit="doc", mininterval=5) as bar:
        while next_batch < len(batches) or futures:
            while next_batch < len(batches) and len(futures) < in_flight_cap:
                futures[submit(batches[next_batch], next_batch)] = next_batch
                next_batch += 1
            done, _ = ray.wait(list(futures), num_returns=1)
            batch = futures.pop(done[0])
            try:
                entries = ray.get(done[0])
            except (ray.exceptions.RayError, OSError) as e:
                _drop_batch(opts.out, batch_prefix(stage.source, opts.run_id, batch))
                if _is_full(getattr(e, "cause", e)):
                    raise OutputFull(f"no space left writing shards under {opts.out}: free space and run again "
                                     "(finished batches are committed; this one was removed)") from None
                entries = [
                    Entry(doc=d.doc, origin=d.origin, status="failed", error_class=type(e).__name__,
                          error=f"the batch's Ray worker failed after its retries: {str(e)[:500]}", run=opts.run_id)
                    for d in batches[batch]
                ]
            ledger.append(entries)
            committed.extend(entries)
            bar.update(len(entries))
            bar.set_postfix(summarize(committed), refresh=False)
            if time.monotonic() - last_index > 30:
                _write_indexes(opts.out)
                last_index = time.monotonic()
    return committed


def _submitter(stage: Stage, opts: Options, cpus: int) -> Callable[[list[DocInput], int], Any]:
    import ray

    memory = int(stage.bounds.memory_gb * 1024**3)
    if not stage.actors:
        task = ray.remote(process_batch).options(num_cpus=stage.cpus, memory=memory, max_retries=3, retry_exceptions=False)
        return lambda docs, batch: task.remote(stage, docs, opts, batch)
    actor_cls = ray.remote(BatchActor).options(num_cpus=stage.cpus, memory=memory, max_restarts=-1, max_task_retries=3)
    actors = [actor_cls.remote(stage, opts) for _ in range(cpus)]
    return lambda docs, batch: actors[batch % len(actors)].process.remote(docs, batch)


def _is_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _drop_batch(out: Path, prefix: str) -> None:
    for p in out.glob(f"*/{prefix}-*"):
        p.unlink(missing_ok=True)


def _write_indexes(out: Path) -> None:
    for category_dir in out.iterdir():
        if category_dir.is_dir() and not category_dir.name.startswith("_"):
            write_index(category_dir)
