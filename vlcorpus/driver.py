"""The generic pipeline driver: documents -> renderer -> atomic shards + ledger, fanned out over Ray.

A `Stage` pairs a renderer (`render(doc, config, stats) -> Iterable[Sample]`, a pure function that never sees Ray
or files it did not get) with the resources it declares. `run_pipeline` does the rest:

1. `reconcile` the output against the ledger: shards not fully committed by `ok` ledger lines are removed, so a
   crash at any moment leaves no half shard and no duplicate sample;
2. skip documents whose latest ledger line is `ok`/`filtered` (and `failed` unless `retry_failed`);
3. group the rest into batches; each batch runs as one Ray task (or on an actor, for renderers with expensive
   setup such as a browser). A task hands its documents to the long-lived bounded child process of its Ray worker
   (`vlcorpus.worker`), which renders each one within the time and memory bounds and writes the samples into shards
   named `<source>-<run>-<batch>-<NNNNNN>.tar` itself; only the ledger entries come back;
4. the driver commits each finished batch with one ledger append. A Ray retry of a batch rewrites the same shard
   names, and a batch that never commits is removed by the next `reconcile`.

On an object store (`--out s3://...`) the child writes the batch's shards into a local scratch folder as on disk;
the task uploads them when the batch is whole (each shard before its sidecar), and the ledger append stays the
commit: what no ledger line names is removed by `reconcile`, with the multipart uploads a killed task left.

A stage whose documents give a few samples each (a browser's pages, where a batch is one book part) asks for
`merge_shards`: once its batches are committed, the run's shards smaller than half the shard size are merged into
shards of up to the shard size across documents (`merge_small_shards`), as an importer's are (on local disk; on a
store the batches' shards stay as written).

A stage may ask for job-wide exact deduplication (`Stage.unique`): each sample claims a value (an image's hash) in
one registry actor; the first sample key to claim a value owns it, the others are dropped and counted. A retried
batch claims with the same deterministic keys and keeps what it owned; a resumed job first registers what its
committed shards hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import pickle
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlcorpus import storage
from vlcorpus.document import DocInput
from vlcorpus.ledger import DONE, Entry, Ledger, summarize
from vlcorpus.progress import progress
from vlcorpus.sample import Sample
from vlcorpus.shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SAMPLES,
    ShardWriter,
    clean_partial,
    iter_members,
    read_sidecar,
    read_sidecars,
    remove_shards,
    sidecar_path,
    write_index,
)
from vlcorpus.stage import Runner, Stage, Unique
from vlcorpus.worker import BoundedWorker, InProcess, outcome

log = logging.getLogger("vlcorpus.driver")


class OutputFull(RuntimeError):
    """The output volume is full: an environment failure that stops the job, never a document's fault."""


class BatchError(RuntimeError):
    """A batch failed outside any one document; carries the original class name and message, so that it always
    pickles across the Ray task boundary whatever library raised it."""


@dataclass
class Options:
    out: storage.Location
    retry_failed: bool = False
    max_shard_bytes: int = DEFAULT_MAX_BYTES
    max_shard_samples: int = DEFAULT_MAX_SAMPLES
    max_in_flight: int | None = None  # batches submitted at once; default twice the cluster's CPUs
    limit: int | None = None  # first N pending documents only
    run_id: str = ""

    def __post_init__(self) -> None:
        self.out = storage.location(self.out)
        if self.max_shard_bytes <= 0 or self.max_shard_samples <= 0:
            raise ValueError("--max-shard-bytes and --max-shard-samples must be positive")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")
        self.run_id = self.run_id or time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2)


_worker: tuple[bytes, BoundedWorker] | None = None  # this Ray worker process's bounded child, kept across tasks


def bounded_worker(stage: Stage) -> BoundedWorker:
    """The bounded child of this process for `stage`: the same child serves every batch of the same stage."""
    global _worker
    key = pickle.dumps(stage)
    if _worker is None or _worker[0] != key:
        if _worker is not None:
            _worker[1].shutdown()
        _worker = (key, BoundedWorker(stage))
    return _worker[1]


def batch_prefix(source: str, run_id: str, batch: int) -> str:
    return f"{source}-{run_id}-{batch:05d}"


def process_batch(stage: Stage, docs: list[DocInput], opts: Options, batch: int, claims: Any = None,
                  runner: Runner | None = None) -> list[Entry]:
    """Render a batch and write its shards; return one (uncommitted) ledger entry per document.

    Rendering and writing happen in the bounded child (or, given a `runner`, in this process); `claims` is the job's
    registry actor when the stage deduplicates."""
    import ray

    claim = (lambda items: ray.get(claims.claim.remote(items))) if claims is not None else None
    target = bounded_worker(stage) if runner is None else InProcess(stage, runner)
    prefix = batch_prefix(stage.source, opts.run_id, batch)
    entries: list[Entry] = []
    remote = storage.is_remote(opts.out)
    try:
        with storage.scratch(prefix) if remote else contextlib.nullcontext(opts.out) as out:
            target.open(out, prefix, opts.max_shard_bytes, opts.max_shard_samples, claim)
            for doc in docs:
                start = time.monotonic()
                with contextlib.ExitStack() as stack:
                    try:
                        local_doc = stack.enter_context(staged(doc))
                    except (OSError, ValueError) as e:  # an object that cannot be staged fails its document only
                        result = outcome("failed", error_class=type(e).__name__, error=f"staging the input: {e}"[:2000])
                    else:
                        result = target.render(local_doc)
                entries.append(Entry(doc=doc.doc, origin=doc.origin, run=opts.run_id,
                                     seconds=round(time.monotonic() - start, 3), **result))
            target.close()
            if remote:
                upload_batch(out, opts.out)
    except BaseException as e:
        target.abort()
        _drop_batch(opts.out, prefix)
        if isinstance(e, OSError) or not isinstance(e, Exception):
            raise
        raise BatchError(f"{type(e).__name__}: {e}") from None
    return entries


STAGE_MAX_BYTES = 4 * 1024**3  # the largest input object a worker stages; a bigger one fails its document


@contextlib.contextmanager
def staged(doc: DocInput) -> Iterator[DocInput]:
    """`doc` with its input (and related inputs) on local disk: objects on a store are downloaded into a scratch
    folder of this worker, removed when the document is done whatever happens."""
    urls = {k: v for k, v in [("", doc.path), *doc.related.items()] if storage.is_remote(v)}
    if not urls:
        yield doc
        return
    with storage.scratch("doc") as folder:
        fetched: dict[str, str] = {}  # each object once, however many roles it has (path and source of an archive)
        for url in urls.values():
            if url not in fetched:
                (folder / str(len(fetched))).mkdir()
                fetched[url] = str(storage.stage_input(url, folder / str(len(fetched)), STAGE_MAX_BYTES))
        local = {k: fetched[url] for k, url in urls.items()}
        yield dataclasses.replace(doc, path=local.pop("", doc.path), related={**doc.related, **local})


def upload_batch(local: Path, out: str) -> None:
    """Upload a finished batch's shards from the scratch folder: every shard before any sidecar, so a sidecar never
    names a missing shard (nothing counts before the ledger names it anyway)."""
    tars = sorted(p for p in local.glob("*/*.tar") if not p.name.startswith("."))
    for files in (tars, [sidecar_path(t) for t in tars]):
        storage.put_files(files, [f"{out}/{f.parent.name}/{f.name}" for f in files])


class BatchActor:
    """Holds one runner (e.g. a browser) for its lifetime and renders batches with it."""

    def __init__(self, stage: Stage, opts: Options, claims: Any = None):
        self.stage, self.opts, self.claims = stage, opts, claims
        self.runner = stage.make_runner(stage)

    def process(self, docs: list[DocInput], batch: int) -> list[Entry]:
        return process_batch(self.stage, docs, self.opts, batch, self.claims, self.runner)


class Claims:
    """Ray actor: the job's registry of claimed values (value -> key of the sample that owns it)."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, items: list[tuple[str, str]]) -> list[str]:
        """Claim each (value, key); return each value's owner (the key itself when the claim succeeded)."""
        return [self.owners.setdefault(value, key) for value, key in items]


def committed_claims(out: storage.Location, source: str, unique: Unique) -> Iterator[tuple[str, str]]:
    """(value, key) of every sample in the source's shards; run after `reconcile`, so only committed ones count."""
    tars = storage.glob(f"{out}/*/{source}-*.tar") if storage.is_remote(out) else sorted(out.glob(f"*/{source}-*.tar"))
    for tar in tars:
        if not str(tar).rsplit("/", 2)[-2].startswith("_"):
            for members in iter_members(tar):
                sample = Sample.from_wds(members)
                yield unique.value(sample), sample.key


def reconcile(out: Path, source: str, ledger: Ledger) -> dict[str, Entry]:
    """Make the output agree with the ledger; return the ledger's latest entry per document.

    A shard of this source stays only if every document its sidecar lists has an `ok` line naming it. An `ok`
    document whose shard is gone is no longer done (it will be rendered again).
    """
    latest = ledger.latest()
    if storage.is_remote(out):
        return _reconcile_store(out, source, latest)
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


def _reconcile_store(out: str, source: str, latest: dict[str, Entry]) -> dict[str, Entry]:
    """`reconcile` on an object store: remove the source's objects no `ok` line commits (shards, sidecars without a
    shard) and the multipart uploads a killed task left; rewrite the indexes of the categories that changed."""
    aborted = storage.abort_uploads(f"{out}/", names=f"{source}-")
    listed = storage.glob(f"{out}/*/{source}-*")
    listed = [u for u in listed if not u.rsplit("/", 2)[-2].startswith("_")]
    names = set(listed)
    tars = [u for u in listed if u.endswith(".tar") and sidecar_path(u) in names]
    stray = [u for u in listed if u.endswith(".tar") and sidecar_path(u) not in names]
    stray += [u for u in listed if u.endswith(".json") and u.removesuffix(".json") + ".tar" not in names]
    present = set()
    for tar, info in zip(tars, read_sidecars(tars)):
        ref = "/".join(tar.rsplit("/", 2)[-2:])
        if all((e := latest.get(d)) is not None and e.status == "ok" and ref in e.shards for d in info.docs):
            present.add(ref)
        else:
            stray += [tar, sidecar_path(tar)]
    storage.remove(stray)
    if stray or aborted:
        log.warning("%s: removed %d object(s) and %d unfinished upload(s) that no ledger line committed (an earlier "
                    "run was interrupted)", source, len(stray), aborted)
    indexed = {u.rsplit("/", 2)[-2] for u in storage.glob(f"{out}/*/index.json")}
    for category in {u.rsplit("/", 2)[-2] for u in stray} | ({u.rsplit("/", 2)[-2] for u in listed} - indexed):
        write_index(f"{out}/{category}")
    for doc, e in list(latest.items()):
        if e.status == "ok" and not all(s in present for s in e.shards):
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
    if not storage.is_remote(opts.out):
        opts.out.mkdir(parents=True, exist_ok=True)
    with Ledger(opts.out, stage.source) as ledger:
        try:
            todo = pending(inputs, reconcile(opts.out, stage.source, ledger), opts.retry_failed)
            if opts.limit is not None:
                todo = todo[: opts.limit]
            claims = _claims(stage, opts.out) if stage.unique is not None and todo else None
            committed = _run_batches(stage, todo, opts, ledger, claims)
            reconcile(opts.out, stage.source, ledger)
            if stage.merge_shards and not storage.is_remote(opts.out):
                merge_small_shards(opts, stage.source, ledger)
            _write_indexes(opts.out)
        except OSError as e:
            if _is_full(e):
                raise OutputFull(f"no space left under {opts.out} ({e}): free space and run again") from None
            raise
    counts = summarize(committed)
    log.info("%s: %s (ledger %s)", stage.source, counts, ledger.path)
    return counts


def merge_small_shards(opts: Options, source: str, ledger: Ledger) -> int:
    """Merge this run's shards of under half `max_shard_bytes` (one per batch) into shards of up to the size limits,
    in batch order; return how many small shards went. A merged shard is new, so the commit is the ledger's: the merged
    shards are finished, then one append gives each document whose samples moved an `ok` line naming them, then the
    small shards are removed. A crash before the append leaves merged shards no line commits (the next `reconcile`
    removes them); after it, small shards no line commits (removed the same way)."""
    latest = ledger.latest()
    moved: dict[str, dict[str, set[str]]] = {}  # doc -> old shard ref -> new shard refs
    gone: list[Path] = []
    for folder in sorted(p for p in opts.out.iterdir() if p.is_dir() and not p.name.startswith("_")):
        small = [t for t in sorted(folder.glob(f"{source}-{opts.run_id}-*.tar"))
                 if sidecar_path(t).exists() and read_sidecar(t).bytes < opts.max_shard_bytes // 2]
        if len(small) < 2:
            continue
        writer = ShardWriter(folder, f"{source}-{opts.run_id}-merged", opts.max_shard_bytes, opts.max_shard_samples)
        try:
            for tar in small:
                old = f"{folder.name}/{tar.name}"
                for members in iter_members(tar):
                    members.pop("__url__", None)
                    sample = Sample.from_wds(members)
                    new = f"{folder.name}/{writer.write(sample, members)}"
                    moved.setdefault(sample.doc, {}).setdefault(old, set()).add(new)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        gone += small
    updates = []
    for doc, refs in moved.items():
        e = latest[doc]
        shards = [s for s in e.shards if s not in refs] + sorted(set().union(*refs.values()))
        updates.append(replace(e, shards=shards, time=0.0))
    ledger.append(updates)
    for tar in gone:
        tar.unlink()
        sidecar_path(tar).unlink(missing_ok=True)
    if gone:
        log.info("%s: merged %d small shard(s) of this run into larger ones", source, len(gone))
    return len(gone)


def _claims(stage: Stage, out: Path) -> Any:
    """The job's registry actor, holding what the committed shards already own."""
    import ray

    claims = ray.remote(Claims).options(num_cpus=0).remote()
    ray.get(claims.claim.remote(list(committed_claims(out, stage.source, stage.unique))))
    return claims


def _run_batches(stage: Stage, todo: list[DocInput], opts: Options, ledger: Ledger, claims: Any = None) -> list[Entry]:
    """Submit the batches (a bounded number in flight) and commit each one's entries as it finishes.

    When the output fills up (a worker's shards or the ledger), no new batch starts; those in flight finish (and
    commit, if the ledger still can) or fail, every uncommitted one is removed, and the job stops with OutputFull:
    nothing half-written stays behind."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // stage.cpus))
    size = min(stage.batch_size, max(1, -(-len(todo) // (2 * cpus))))  # few documents: still two batches per CPU
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    log.info("%s: %d document(s) to render in %d batch(es) of up to %d, run %s", stage.source, len(todo), len(batches),
             size, opts.run_id)
    in_flight_cap = opts.max_in_flight or 2 * cpus
    submit = _submitter(stage, opts, cpus, claims)
    committed: list[Entry] = []
    futures: dict[Any, int] = {}
    next_batch = 0
    last_index = time.monotonic()
    full = False
    with progress(len(todo), f"render {stage.source}", unit="doc") as bar:
        while (next_batch < len(batches) and not full) or futures:
            while next_batch < len(batches) and len(futures) < in_flight_cap and not full:
                futures[submit(batches[next_batch], next_batch)] = next_batch
                next_batch += 1
            done, _ = ray.wait(list(futures), num_returns=1)
            batch = futures.pop(done[0])
            try:
                entries = ray.get(done[0])
            except (ray.exceptions.RayError, OSError) as e:
                _drop_batch(opts.out, batch_prefix(stage.source, opts.run_id, batch))
                if _is_full(getattr(e, "cause", e)):
                    full = True
                    continue
                entries = [
                    Entry(doc=d.doc, origin=d.origin, status="failed", error_class=type(e).__name__,
                          error=f"the batch's Ray worker failed after its retries: {str(e)[:500]}", run=opts.run_id)
                    for d in batches[batch]
                ]
            try:
                ledger.append(entries)
            except OSError as e:  # the ledger itself cannot grow: this batch is not committed, and no other will be
                if not _is_full(e):
                    raise
                _drop_batch(opts.out, batch_prefix(stage.source, opts.run_id, batch))
                full = True
                continue
            committed.extend(entries)
            bar.update(len(entries))
            bar.set_postfix(summarize(committed), refresh=False)
            if time.monotonic() - last_index > 30 and not storage.is_remote(opts.out):  # on a store: at the end only
                try:
                    _write_indexes(opts.out)
                except OSError as e:
                    if not _is_full(e):
                        raise
                    full = True  # the batches in flight end as above; the indexes are rebuilt by the next run
                last_index = time.monotonic()
    if full:
        raise OutputFull(f"no space left writing shards under {opts.out}: free space and run again "
                         "(finished batches are committed; the others were removed)")
    return committed


def _submitter(stage: Stage, opts: Options, cpus: int, claims: Any) -> Callable[[list[DocInput], int], Any]:
    import ray

    memory = int(stage.bounds.memory_gb * 1024**3)
    if stage.make_runner is None:
        task = ray.remote(process_batch).options(num_cpus=stage.cpus, memory=memory, max_retries=3, retry_exceptions=False)
        stage_ref, opts_ref = ray.put(stage), ray.put(opts)
        return lambda docs, batch: task.remote(stage_ref, docs, opts_ref, batch, claims)
    actor_cls = ray.remote(BatchActor).options(num_cpus=stage.cpus, memory=memory, max_restarts=-1, max_task_retries=3)
    actors = [actor_cls.remote(stage, opts, claims) for _ in range(cpus)]
    return lambda docs, batch: actors[batch % len(actors)].process.remote(docs, batch)


def _is_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _drop_batch(out: storage.Location, prefix: str) -> None:
    if storage.is_remote(out):
        storage.remove(storage.glob(f"{out}/*/{prefix}-*"))
        return
    for folder in out.iterdir():
        if folder.is_dir() and not folder.name.startswith("_"):
            remove_shards(folder, prefix)


def _write_indexes(out: storage.Location) -> None:
    if storage.is_remote(out):
        for category in storage.folders(out):
            if not storage.name(category).startswith("_"):
                write_index(category)
        return
    for category_dir in out.iterdir():
        if category_dir.is_dir() and not category_dir.name.startswith("_"):
            write_index(category_dir)
