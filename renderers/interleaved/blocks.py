"""What every input reader of the interleaved extractor yields: a document as blocks in the order a reader meets
them. `Text` is one paragraph (splitting never cuts one); `Picture` is one image with how to get its bytes, or why
it cannot be had (a remote URL is never fetched). A visible caption is a `Text` marked `caption`, standing where the
source puts it; alt text is kept on the `Picture` (it goes to meta: a reader does not see it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(slots=True)
class Text:
    text: str
    caption: bool = False  # a visible figure caption: kept with the image it stands next to
    cont: bool = False  # the rest of a paragraph an inline image cut: joined again when that image is dropped


@dataclass(slots=True)
class Picture:
    ref: str  # the image's identity in its source (resolved path, URL, member name): repeats are counted by it
    load: Callable[[], bytes] | None = None  # the raw bytes (raster or SVG); None when `failure` says why not
    svg: bool = False
    alt: str = ""
    failure: str = ""  # a drop reason decided while reading (image_remote, image_missing, ...)
    shown: tuple[int, int] | None = None  # the size the page displays it at (`<img width height>`), when declared


Block = Text | Picture


@dataclass(slots=True)
class Unit:
    """One document as a reader meets it (a page, a book, a PDF, a notebook, one page of a WARC)."""

    blocks: list[Block]
    meta: dict = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)  # refs of images repeated across the input (`rules.repeated_refs`)
