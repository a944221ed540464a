"""The ledger: `<out>/_ledger/<source>.jsonl`, one line per input document and attempt.

It is the commit log of a pipeline: a document is done when its `ok`/`filtered` line is on disk, and a shard
counts only when every document in it has an `ok` line naming it (see `driver.reconcile`). The latest line per
document wins; a torn last line (crash mid-append) is ignored.

On an object store (no append) the ledger of a source is a series of immutable segment objects,
`<out>/_ledger/<source>/<NNNNNNNNNN>.jsonl`, one per `append`, each written by one PUT that lands whole or not at all;
they are read in order. The lock is a conditionally created object (`storage.Lock`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlcorpus import storage

STATUSES = ("ok", "filtered", "failed")
DONE = ("ok", "filtered")


@dataclass
class Entry:
    doc: str
    origin: str
    status: str
    samples: int = 0
    shards: list[str] = field(default_factory=list)  # "<category>/<name>.tar"
    error_class: str | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    run: str = ""
    time: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ledger status {self.status!r} is not one of {STATUSES}")


class Ledger:
    """Append-only JSONL per source; `with ledger:` holds an exclusive lock so two runs never write one source at once."""

    def __init__(self, out: storage.Location, source: str):
        self.remote = storage.is_remote(out)
        if self.remote:
            self.dir = storage.join(out, "_ledger")
            self.path = storage.join(self.dir, source)  # the prefix of its segments
            self._lock: storage.Lock | None = None
            self._next: int | None = None  # number of the next segment, found on the first append
            return
        self.dir = Path(out) / "_ledger"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{source}.jsonl"
        self._lock_file = None

    def __enter__(self) -> Ledger:
        """Hold the source's lock: `with Ledger(out, source) as ledger: ...`."""
        if self.remote:
            self._lock = storage.Lock(storage.join(self.dir, f".{storage.name(self.path)}.lock"), str(self.path))
            self._lock.__enter__()
            return self
        self._lock_file = open(self.dir / f".{self.path.stem}.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise RuntimeError(
                f"another run is writing {self.path}; wait for it to finish or use another --out"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.remote:
            self._lock.__exit__(*exc)
            self._lock = None
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_file = None

    def latest(self) -> dict[str, Entry]:
        """The last complete line for each document."""
        entries: dict[str, Entry] = {}
        if self.remote:
            for line in self._segment_lines():
                e = Entry(**json.loads(line))
                entries[e.doc] = e
            return entries
        if not self.path.exists():
            return entries
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn by a crash mid-append: that commit never happened
                e = Entry(**json.loads(line))
                entries[e.doc] = e
        return entries

    def append(self, entries: Iterable[Entry]) -> None:
        """Append entries in one write + fsync: a batch of documents commits together or not at all, even when the
        disk fills mid-write (what was written of it is cut off again before the error goes on)."""
        now = time.time()
        lines = []
        for e in entries:
            e.time = e.time or now
            lines.append(json.dumps(asdict(e), ensure_ascii=False) + "\n")
        if not lines:
            return
        if self.remote:
            self._put_segment("".join(lines).encode("utf-8"))
            return
        self._drop_torn_tail()
        data = memoryview("".join(lines).encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def _segments(self) -> list[str]:
        return [u for u in storage.glob(f"{self.path}/*.jsonl") if storage.name(u)[:-6].isdigit()]

    def _segment_lines(self) -> list[str]:
        urls = self._segments()
        if not urls:
            return []
        fs, _ = storage.filesystem(urls[0])
        blobs = fs.cat([storage.filesystem(u)[1] for u in urls])  # fetched concurrently
        return [line for u in urls for line in blobs[storage.filesystem(u)[1]].decode("utf-8").splitlines()]

    def _put_segment(self, data: bytes) -> None:
        """One immutable object per append, created only if its number is free (a second writer cannot overwrite)."""
        if self._next is None:
            self._next = max((int(storage.name(u)[:-6]) for u in self._segments()), default=-1) + 1
        fs, path = storage.filesystem(f"{self.path}/{self._next:010d}.jsonl")
        fs.pipe_file(path, data, mode="create")
        self._next += 1

    def _drop_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)


def summarize(entries: Iterable[Entry]) -> dict[str, int]:
    """Documents per status and samples written, for the end-of-job line."""
    out = {s: 0 for s in STATUSES} | {"samples": 0}
    for e in entries:
        out[e.status] += 1
        out["samples"] += e.samples
    return out
