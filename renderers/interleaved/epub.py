"""EPUB books -> one unit of blocks: every spine chapter in spine order, read from the zip in memory.

The zip is checked as for page rendering (`renderers.browser.epub.Book`: member names, sizes, compression ratios, a
read cap). Images are members of the book, resolved against their chapter; a reference that leaves the book or names
no member is `image_missing`, a URL `image_remote`. An image shown in `max_repeats` or more chapters (ornaments,
publisher logos) is `image_repeated`. A spine item that is itself an SVG document is a picture.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterator

from renderers.browser.epub import Book, EpubConfig
from renderers.interleaved.blocks import Block, Picture, Unit
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.html import Resolve, local_path, page, remote_or_inline
from renderers.interleaved.rules import repeated_refs
from vlcorpus.document import DocInput


def member_resolver(book: Book, chapter: str) -> Resolve:
    def resolve(src: str) -> Picture:
        pic = remote_or_inline(src)
        if pic is not None:
            return pic
        name = posixpath.normpath(posixpath.join(posixpath.dirname(chapter), local_path(src)))
        if name not in book.members:
            return Picture(ref=name, failure="image_missing")
        return Picture(ref=name, load=lambda: book.read(name) or b"", svg=name.lower().endswith(".svg"))

    return resolve


def read(doc: DocInput, cfg: ExtractConfig, stats: Counter) -> Iterator[Unit]:
    book = Book(doc.path, EpubConfig(max_file_mb=cfg.max_file_mb), stats)
    try:
        blocks: list[Block] = []
        chapters: list[list[str]] = []
        title = ""
        for name in book.spine:
            if book.chapter_types[name] == "image/svg+xml":
                chapter: list[Block] = [Picture(ref=name, load=lambda n=name: book.read(n) or b"", svg=True)]
            else:
                markup = book.read(name) or b""
                unit = page(markup, member_resolver(book, name), xml=True)
                chapter, title = unit.blocks, title or unit.meta["title"]
            chapters.append([b.ref for b in chapter if isinstance(b, Picture)])
            blocks += chapter
        yield Unit(blocks, {"title": title, "language": book.language},
                   repeated_refs(chapters, cfg.rules.max_repeats))
    finally:
        book.close()
