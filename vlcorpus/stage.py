"""What a pipeline job runs, declared as plain data: a `Stage` (a renderer, its settings, its per-document bounds,
its batch size) and, where a renderer needs one, the `Runner` kept by a Ray actor and the job-wide `Unique` check.
The driver (`vlcorpus.driver`) fans a stage out over Ray; the bounded child (`vlcorpus.worker`) runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vlcorpus.document import Bounds, DocInput, Render
from vlcorpus.sample import Sample


@dataclass(frozen=True)
class Unique:
    """Job-wide exact deduplication: `value(sample)` (e.g. an image's sha256) is claimed by the first sample key;
    other samples with that value are dropped and counted as `reason`; `mark(sample)`, if given, notes on each kept
    sample that it passed. Functions must be module-level (they travel to the bounded child)."""

    value: Callable[[Sample], str]
    reason: str
    mark: Callable[[Sample], None] | None = None


@dataclass(frozen=True)
class Stage:
    """A renderer and what it needs to run, declared as plain data (NeMo Curator style)."""

    source: str
    render: Render
    config: Any = None
    cpus: float = 1.0
    batch_size: int = 8
    bounds: Bounds = Bounds()
    make_runner: Callable[[Stage], Runner] | None = None  # kept by one Ray actor per CPU (a browser); None: the
    # documents render in the Ray worker's bounded child process
    unique: Unique | None = None
    input_root: str = ""  # the input folder: provenance paths are relative to it, licence files are looked up to it
    merge_shards: bool = False  # merge the run's small shards once its batches are committed (merge_small_shards)


class Runner(Protocol):
    """Renders in the Ray worker's own process (a browser kept across documents); it enforces the bounds itself."""

    def render(self, doc: DocInput) -> tuple[list[Sample], dict[str, int]]: ...

    def close(self) -> None: ...
