"""Bounded worker processes: a long-lived child renders documents and writes their samples into the batch's shards.

Why a child: a document can hang, exhaust memory or crash the interpreter inside a C library. The child runs under
an address-space limit (the stage's `memory_gb`) and is killed past the time bound (`timeout_s`); the document gets
a `failed` outcome and the job goes on. Why long-lived: starting an interpreter and importing a renderer costs
seconds, more than a batch of small documents takes, so one child serves batch after batch of its Ray worker and is
replaced only when a bound trips, when it dies, or after `RECYCLE_AFTER` documents. Why it writes the shards
itself: samples never travel back through a pipe (pickling page images would cost more than writing them); only
plain data crosses the process boundary, so no exception of a foreign library can fail to unpickle.

The parent owns the child's scratch: the child's temporary folder (TMPDIR) is a folder the parent made, removed
whenever the child goes (killed past a bound, dead, recycled), so a paper's private copy never outlives a killed
document; a folder whose parent process is gone (a Ray worker killed with its child) is removed by the next worker
that starts a child on the machine.

The commit order is the driver's: the child finishes (fsync, rename, sidecar) a batch's shards when the parent
closes the batch, and the driver appends the ledger lines after that. After each document the child reports where
its shards stand (`BatchShards.checkpoint`); if it dies or is killed mid-batch, its replacement resumes the open
shards from there, so the samples of earlier documents stay and nothing of the failed one remains.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vlcorpus import storage
from vlcorpus.curate.annotate import annotate
from vlcorpus.curate.language import identifier
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, remove_shards
from vlcorpus.stage import Runner, Stage

RECYCLE_AFTER = 2000  # documents per child; bounds what slow leaks in a renderer or its libraries can accumulate
Claim = Callable[[list[tuple[str, str]]], list[str]]  # (value, sample key) pairs -> the key owning each value


class BatchShards:
    """The shards of one batch: a `ShardWriter` per category, all named `<prefix>-NNNNNN.tar`. Opening it removes
    whatever an earlier attempt of the batch left, except what `resume` (a `checkpoint()`) says to continue."""

    def __init__(self, out: str | Path, prefix: str, max_bytes: int, max_samples: int,
                 resume: dict[str, dict] | None = None):
        self.out, self.prefix, self.max_bytes, self.max_samples = Path(out), prefix, max_bytes, max_samples
        resume = resume or {}
        for folder in self.out.iterdir() if self.out.exists() else []:
            if folder.is_dir() and folder.name not in resume:
                remove_shards(folder, prefix)  # left by an earlier attempt, or by a child that died mid-document
        self.writers = {category: ShardWriter.resume(self.out / category, prefix, max_bytes, max_samples, state)
                        for category, state in resume.items()}

    def write(self, samples: list[Sample], members: list[dict]) -> list[str]:
        """Append the samples (with their `to_wds()` members); return the `<category>/<shard>` names they went into."""
        refs: set[str] = set()
        for s, m in zip(samples, members):
            if s.category not in self.writers:
                self.writers[s.category] = ShardWriter(self.out / s.category, self.prefix, self.max_bytes, self.max_samples)
            refs.add(f"{s.category}/{self.writers[s.category].write(s, m)}")
        return sorted(refs)

    def checkpoint(self) -> dict[str, dict]:
        return {category: w.checkpoint() for category, w in self.writers.items()}

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def render_all(render: Callable, doc: DocInput, config: Any) -> tuple[list[Sample], dict[str, int]]:
    """Run a renderer to completion (`render_document` validates what it keeps)."""
    stats: Counter = Counter()
    try:
        samples = list(render(doc, config, stats))
    except Filtered as e:
        e.counts = dict(stats)  # travels with the exception, so a filtered document keeps its drop counts
        raise
    return samples, dict(stats)


def outcome(status: str, counts: dict[str, int] | None = None, error_class: str | None = None,
            error: str | None = None, samples: int = 0, shards: list[str] | None = None) -> dict[str, Any]:
    """What became of one document, as the plain data of its ledger entry."""
    return {"status": status, "counts": counts or {}, "error_class": error_class, "error": error,
            "samples": samples, "shards": shards or []}


def render_document(stage: Stage, doc: DocInput, render: Callable[[DocInput], tuple[list[Sample], dict[str, int]]],
                    shards: BatchShards, claim: Claim | None) -> dict[str, Any]:
    """Render one document, annotate its samples (language, provenance), keep what the stage's job-wide `unique`
    rule admits, write it; return the outcome.

    Every sample is validated and encoded (`to_wds`) before the first is written, so an off-contract sample fails
    the document with nothing of it in the shards. A renderer's failure is the document's (a `failed` outcome
    naming the exception's class and message); a failure to write (a full disk) is the environment's: it propagates
    and fails the batch."""
    try:
        samples, counts = render(doc)
        annotate(samples, doc, stage.input_root)
        if stage.unique is not None and samples:
            samples = admit(stage.unique, samples, counts, claim)
        members = [s.to_wds() for s in samples]
    except Filtered as e:
        return outcome("filtered", getattr(e, "counts", {}), "Filtered", str(e))
    except MemoryError as e:  # the allocator's (under the address-space limit), or a runner's own bound
        return outcome("failed", error_class="MemoryError",
                       error=str(e) or f"rendering exceeded the {stage.bounds.memory_gb:g} GB per-document memory bound")
    except TimeoutError as e:  # a runner that enforces the time bound itself (the browser)
        return outcome("failed", error_class="Timeout", error=str(e)[:2000] or "rendering timed out")
    except Exception as e:  # noqa: BLE001 - every failure becomes a ledger line; the job goes on
        return outcome("failed", error_class=type(e).__name__, error=(str(e) or repr(e))[:2000])
    if not samples:
        return outcome("filtered", counts, "Filtered", "the renderer produced no samples")
    return outcome("ok", counts, samples=len(samples), shards=shards.write(samples, members))


def admit(unique: Any, samples: list[Sample], counts: dict[str, int], claim: Claim) -> list[Sample]:
    """Claim each sample's value job-wide; keep the samples whose key owns its value, count the others."""
    owners = claim([(unique.value(s), s.key) for s in samples])
    kept = [s for s, owner in zip(samples, owners) if owner == s.key]
    dropped = len(samples) - len(kept)
    if dropped:
        counts[unique.reason] = counts.get(unique.reason, 0) + dropped
        if not kept:
            first = next(o for s, o in zip(samples, owners) if o != s.key)
            e = Filtered(f"all {dropped} sample(s) dropped as {unique.reason}: already written in this job (e.g. by {first})")
            e.counts = counts
            raise e
    if unique.mark is not None:
        for s in kept:
            unique.mark(s)
    return kept


class InProcess:
    """Renders with a runner in this process (a browser kept by a Ray actor) and writes the shards here too."""

    def __init__(self, stage: Stage, runner: Runner):
        self.stage, self.runner = stage, runner
        self.shards: BatchShards | None = None
        self.claim: Claim | None = None

    def open(self, out: Path, prefix: str, max_bytes: int, max_samples: int, claim: Claim | None = None) -> None:
        self.shards, self.claim = BatchShards(out, prefix, max_bytes, max_samples), claim

    def render(self, doc: DocInput) -> dict[str, Any]:
        return render_document(self.stage, doc, self.runner.render, self.shards, self.claim)

    def close(self) -> None:
        self.shards.close()

    def abort(self) -> None:
        if self.shards is not None:
            self.shards.abort()


class BoundedWorker:
    """The parent's side of one bounded child process (started on first use, replaced when it dies or is killed).

    `open` a batch, `render` its documents one by one, then `close` (finish the shards) or `abort` it."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.claim: Claim | None = None
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.rendered = 0  # documents the current child has rendered
        self.batch: tuple | None = None  # (out, prefix, max_bytes, max_samples) of the open batch
        self.state: dict[str, dict] = {}  # the open batch's shards after the last finished document
        self.scratch: Path | None = None  # the child's TMPDIR, removed with the child

    def _start(self) -> bool:
        """Start a child and wait until it has imported the renderer (not part of any document's time bound) and
        resumed the open batch; False if it died doing so."""
        self.scratch = storage.new_scratch("child", Path(tempfile.gettempdir()))  # the system's, as the child's TMPDIR
        mine, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from vlcorpus.worker import child_main; child_main()", str(theirs.fileno()),
             str(os.getpid())], pass_fds=(theirs.fileno(),), start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.scratch)})
        theirs.close()
        self.conn = Connection(mine.detach())
        self.rendered = 0
        try:
            self.conn.send_bytes(pickle.dumps(self.stage))
        except OSError:
            return False
        return self._receive(None) is not None and (self.batch is None or self._open_batch())

    def _open_batch(self) -> bool:
        return self._send(("open", *self.batch, self.state)) and self._receive(None) is not None

    def _stop(self) -> int | None:
        """Kill the child and everything it started, and remove its scratch; return its exit status."""
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = self.proc.wait()
        self.conn.close()
        self.proc = self.conn = None
        for _ in range(50):  # the child's tools die with it (PR_SET_PDEATHSIG) a moment later, writing as they go
            shutil.rmtree(self.scratch, ignore_errors=True)
            if not self.scratch.exists():
                break
            time.sleep(0.1)
        return code

    def _send(self, message: object) -> bool:
        """Send to the child; False if it is gone."""
        try:
            self.conn.send(message)
            return True
        except OSError:
            return False

    def _receive(self, deadline: float | None) -> tuple | None:
        """The child's next reply, serving its claims meanwhile; None if it died, ("timeout",) past the deadline."""
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if not self.conn.poll(left):
                    return ("timeout",)
                reply = self.conn.recv()
            except (EOFError, OSError):
                return None
            if reply[0] == "claim":
                if not self._send(self.claim(reply[1])):
                    return None
                continue
            if reply[0] == "oserror":
                raise OSError(reply[1], reply[2])
            return reply

    def open(self, out: Path, prefix: str, max_bytes: int, max_samples: int, claim: Claim | None = None) -> None:
        self.batch, self.state, self.claim = (str(out), prefix, max_bytes, max_samples), {}, claim
        if self.proc is not None and not self._open_batch():
            self._stop()  # died while idle: the next document starts a fresh one

    def render(self, doc: DocInput) -> dict[str, Any]:
        """Render one document in the child within the stage's bounds; the outcome as plain data.

        A child that served other documents before and then dies or runs out of memory on this one gets one more try
        in a fresh child: what tripped may be the leftovers of the others (a fragmented heap), not this document."""
        bounds = self.stage.bounds
        while True:
            if self.proc is None and not self._start():
                return outcome("failed", error_class="ProcessDied", error=(
                    f"the rendering process died while starting (exit code {self._stop()}); memory bound "
                    f"{bounds.memory_gb:g} GB"))
            fresh = self.rendered == 0
            sent = self._send(("render", doc))
            reply = self._receive(time.monotonic() + bounds.timeout_s) if sent else None
            if reply is not None and reply[0] == "timeout":
                self._stop()
                return outcome("failed", error_class="Timeout", error=(
                    f"rendering took longer than the {bounds.timeout_s:g} s per-document bound; the process was killed"))
            if reply is not None:
                _, result, self.state, spent = reply
                self.rendered += 1
                if spent:
                    self._stop()
                if result["error_class"] != "MemoryError" or fresh:
                    return result
                continue
            code = self._stop()
            if not fresh:
                continue
            return outcome("failed", error_class="ProcessDied", error=(
                f"the rendering process died (exit code {code}); memory bound {bounds.memory_gb:g} GB"))

    def close(self) -> None:
        """Finish the open batch's shards (fsync, rename, sidecars); replace the child if it has served enough."""
        # a fresh child resumes the batch's shards where the last finished document left them
        if (self.proc is None and not self._start()) or not self._send(("close",)) or self._receive(None) is None:
            raise ChildDied(f"the rendering process died (exit code {self._stop()}) while finishing the batch's shards")
        self.batch, self.state, self.claim = None, {}, None
        if self.rendered >= RECYCLE_AFTER:
            self.shutdown()

    def abort(self) -> None:
        """Give up the open batch: the child goes (with its unfinished shards); the caller removes the files by name."""
        self.batch, self.state, self.claim = None, {}, None
        self._stop()

    def shutdown(self) -> None:
        if self.proc is not None and self._send(("exit",)):
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._stop()


class ChildDied(RuntimeError):
    """The bounded child died outside a document (while opening or finishing a batch's shards)."""


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent (the Ray worker) dies, so an orphan never renames a shard that a retry
    of its batch is writing. Ray runs tasks on the worker's main thread, which is the thread the death signal
    watches."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def child_main() -> None:
    """The child's loop: `python -c 'from vlcorpus.worker import child_main; child_main()' FD PARENT_PID`."""
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent)
    conn = Connection(fd)
    shards: BatchShards | None = None

    def claim(items: list[tuple[str, str]]) -> list[str]:
        conn.send(("claim", items))
        return conn.recv()

    stage: Stage = pickle.loads(conn.recv_bytes())  # imports the renderer
    identifier()  # the language model `annotate` uses loads here too, outside any document's time bound
    limit = int(stage.bounds.memory_gb * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        op = message[0]
        try:
            if op == "open":
                shards = BatchShards(*message[1:5], resume=message[5])
                conn.send(("opened",))
            elif op == "render":
                result = render_document(stage, message[1], lambda d: render_all(stage.render, d, stage.config),
                                         shards, claim)
                # after a MemoryError the heap may be in any state: finish this batch's reply, then a fresh child
                conn.send(("done", result, shards.checkpoint(), result["error_class"] == "MemoryError"))
            elif op == "close":
                shards.close()
                shards = None
                conn.send(("closed",))
            elif op == "exit":
                return
        except OSError as e:  # writing the shards failed (a full disk): the batch fails, not the document
            conn.send(("oserror", e.errno, f"{e.strerror or e}: {e.filename or ''}"))
