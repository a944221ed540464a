"""The renderer contract, free of Ray: what a renderer gets (`DocInput`), how it says a document yields nothing
(`Filtered`), the bounds it runs under (`Bounds`), and its signature (`Render`).

A renderer is `render(doc, config, stats) -> Iterable[Sample]`: a pure function of one document that counts what it
drops in `stats` (every reason name is declared in `vlcorpus.reasons`). The executor (`vlcorpus.driver`) runs it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vlcorpus.sample import Sample

Render = Callable[["DocInput", Any, Counter], Iterable[Sample]]


@dataclass(frozen=True)
class DocInput:
    """One raw input document. `doc` is its stable id (it makes the keys), `origin` where it came from."""

    doc: str
    origin: str
    path: str
    related: dict[str, str] = field(default_factory=dict)  # e.g. {"pdf": ...} next to a LaTeX source


class Filtered(Exception):
    """Raised by a renderer for a document that is fine but yields nothing useful; the message is the reason."""


@dataclass(frozen=True)
class Bounds:
    """Per-document limits: one bad document can neither stall nor kill a job."""

    timeout_s: float = 300.0
    memory_gb: float = 4.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_gb <= 0:
            raise ValueError("per-document timeout and memory bound must be positive")


PART_MARK = "#C"  # `<document>#C<first chapter>`: one bounded part of a long document (a book split by chapters)


def part_id(document: str, first_chapter: int) -> str:
    return f"{document}{PART_MARK}{first_chapter}"


def document_of(doc: str) -> str:
    """The document a `doc` id belongs to: every part of a book rendered in parts is the same book, so that a
    document-level split (train / held-out) never puts parts of one book on both sides."""
    return doc.rsplit(PART_MARK, 1)[0] if PART_MARK in doc else doc
