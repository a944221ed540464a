"""EPUB 2/3 books -> `doc_ocr` samples: each spine chapter set in a template and paginated in Chromium.

The book is never extracted: the zip is checked (member names, sizes, compression ratios) and its members are served
to the browser from memory by the session's route handler. `container.xml` names the OPF package; its spine gives the
chapter order. A spine item that is missing is skipped and counted; a chapter that is not well-formed XHTML is parsed
as HTML (Chromium's XML parser would stop at the first error) and counted.

Amplification is bounded by the book's size: a chapter the spine lists again is counted (`duplicate_spine_items`)
and rendered once, and the book's pages are at most `page_budget` (a few per KB of the unpacked book), shared by
its parts by chapter bytes; pages past it are counted (`pages_over_size_budget`).

A long book is rendered in parts, each its own document: `book_parts` decides them before anything is rendered, from
the spine and the chapters' sizes in the zip directory (runs of whole chapters of at most `part_bytes`), and
`render` renders the chapters `doc.related["chapters"]` names.
"""

from __future__ import annotations

import mimetypes
import posixpath
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from renderers.browser.pages import (
    PageConfig,
    apply_template,
    image_name,
    paginate,
    pick_template,
)
from renderers.browser.session import Session
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample

CONTAINER = "META-INF/container.xml"
NS = {
    "c": "urn:oasis:names:tc:opendocument:xmlns:container",
    "opf": "http://www.idpf.org/2007/opf",
    "dc": "http://purl.org/dc/elements/1.1/",
}
CHAPTER_TYPES = ("application/xhtml+xml", "text/html", "image/svg+xml")
# Bytes of chapter markup the roomiest template (sans-large-print) sets on a 1024 x 1024 page: about 1 KB in prose
# (The Scarlet Letter: 1017); the denser templates set 1.9 to 3.3 KB.
PAGE_BYTES = 1000


class EpubError(ValueError):
    """A book that cannot be read safely or has nothing to render; the message says which rule it broke."""


@dataclass
class EpubConfig:
    page: PageConfig = field(default_factory=PageConfig)
    max_file_mb: float = 256.0  # the .epub itself
    max_unpacked_mb: float = 1024.0  # all members together, as declared and as read
    max_member_mb: float = 128.0
    max_ratio: float = 200.0  # uncompressed/compressed size of a member above 1 MB
    max_members: int = 20_000
    min_page_bytes: int = 100  # a page takes at least this many bytes of the unpacked book (see `Book.page_budget`)

    def __post_init__(self) -> None:
        if min(self.max_file_mb, self.max_unpacked_mb, self.max_member_mb, self.max_ratio) <= 0 or \
                min(self.max_members, self.min_page_bytes) <= 0:
            raise ValueError("EPUB limits must be positive")

    @property
    def part_bytes(self) -> int:
        """Chapter bytes per part: what half the page bound holds in the roomiest template at this page size, so a
        part stays within `page.max_pages` even where the estimate is off by two."""
        return int(self.page.max_pages / 2 * PAGE_BYTES * self.page.width * self.page.height / 1024**2)


class Book:
    """A checked EPUB: its members by name, the spine in reading order, the language; reads members with a cap."""

    def __init__(self, path: str | Path, cfg: EpubConfig, stats: Counter):
        self.cfg = cfg
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise EpubError(f"not a zip archive: {e}") from None
        infos = self.zip.infolist()
        if len(infos) > cfg.max_members:
            raise EpubError(f"{len(infos)} members, more than the {cfg.max_members} allowed")
        total = 0
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise EpubError(f"member {name!r} points outside the book (path traversal); refusing the file")
            total += info.file_size
            if info.file_size > cfg.max_member_mb * 1024**2:
                raise EpubError(f"member {name!r} unpacks to {info.file_size / 1024**2:.0f} MB, over the "
                                f"{cfg.max_member_mb:g} MB limit (zip bomb?)")
            if info.file_size > 1024**2 and info.file_size > cfg.max_ratio * max(info.compress_size, 1):
                raise EpubError(f"member {name!r} has compression ratio {info.file_size / max(info.compress_size, 1):.0f}, "
                                f"over {cfg.max_ratio:g} (zip bomb?)")
            if not name.endswith("/"):
                self.members[name] = info
        if total > cfg.max_unpacked_mb * 1024**2:
            raise EpubError(f"the book unpacks to {total / 1024**2:.0f} MB, over the {cfg.max_unpacked_mb:g} MB limit (zip bomb?)")
        self.read_total = 0
        self.opf = self._rootfile()
        self.spine, self.language, self.chapter_types = self._package(stats)

    def read(self, name: str) -> bytes | None:
        """A member's bytes, reading no more than its declared size (a lying header cannot unpack a bomb)."""
        info = self.members.get(name)
        if info is None:
            return None
        limit = info.file_size
        with self.zip.open(info) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise EpubError(f"member {name!r} unpacks to more than its declared {limit} bytes (zip bomb?)")
        self.read_total += len(data)
        if self.read_total > self.cfg.max_unpacked_mb * 1024**2:
            raise EpubError(f"reading the book passed {self.cfg.max_unpacked_mb:g} MB (zip bomb?)")
        return data

    def _xml(self, name: str) -> ET.Element:
        data = self.read(name)
        if data is None:
            raise EpubError(f"{name} is missing")
        try:
            return ET.fromstring(data)
        except ET.ParseError as e:
            raise EpubError(f"{name} is not well-formed XML: {e}") from None

    def _rootfile(self) -> str:
        root = self._xml(CONTAINER).find(".//c:rootfile", NS)
        if root is None or not root.get("full-path"):
            raise EpubError(f"{CONTAINER} names no package (rootfile full-path)")
        path = root.get("full-path", "")
        if path not in self.members:
            raise EpubError(f"the package {path!r} named by {CONTAINER} is missing")
        return path

    def _package(self, stats: Counter) -> tuple[list[str], str, dict[str, str]]:
        opf = self._xml(self.opf)
        base = posixpath.dirname(self.opf)
        manifest: dict[str, tuple[str, str]] = {}
        for item in opf.iterfind("opf:manifest/opf:item", NS):
            href = unquote(item.get("href", "").split("#")[0])
            manifest[item.get("id", "")] = (posixpath.normpath(posixpath.join(base, href)), item.get("media-type", ""))
        spine: list[str] = []
        types: dict[str, str] = {}
        missing: list[str] = []
        for ref in opf.iterfind("opf:spine/opf:itemref", NS):
            idref = ref.get("idref", "")
            if idref not in manifest or manifest[idref][0] not in self.members:
                missing.append(manifest[idref][0] if idref in manifest else f"#{idref}")
                continue
            name, media = manifest[idref]
            if name in types:  # 4,000 entries of one chapter would plan 4,000 renderings of it
                stats["duplicate_spine_items"] += 1
                continue
            if media not in CHAPTER_TYPES:
                stats["spine_items_not_documents"] += 1
                continue
            spine.append(name)
            types[name] = media
        stats["missing_spine_items"] += len(missing)
        if not spine:
            detail = f"; missing: {', '.join(missing[:5])}" if missing else ""
            raise EpubError(f"the spine of {self.opf} has no readable chapter{detail}")
        lang = opf.findtext("opf:metadata/dc:language", default="", namespaces=NS).strip()
        return spine, lang, types

    def chapter_bytes(self, name: str) -> int:
        return self.members[name].file_size

    def page_budget(self, start: int, end: int) -> int:
        """Pages the chapters `spine[start:end]` may give: the book's budget (10, plus one per `min_page_bytes` of
        all its members, unpacked: images count) shared by chapter bytes. A real book sets 1-3 KB of markup per
        page; a small file that paginates into thousands of pages (CSS heights, empty blocks) stops here."""
        book = 10 + sum(i.file_size for i in self.members.values()) // self.cfg.min_page_bytes
        chapters = sum(self.chapter_bytes(n) for n in self.spine) or 1
        return -(-book * sum(self.chapter_bytes(n) for n in self.spine[start:end]) // chapters)

    def close(self) -> None:
        self.zip.close()


def book_parts(path: str | Path, cfg: EpubConfig) -> list[tuple[int, int]]:
    """The book's parts as spine ranges [start, end): whole chapters in spine order, a new part where the next
    chapter would take the part past `cfg.part_bytes` (a chapter larger than that is a part of its own). Reads only
    the zip directory, the container and the package document."""
    book = Book(path, cfg, Counter())
    try:
        parts: list[tuple[int, int]] = []
        start, size = 0, 0
        for i, name in enumerate(book.spine):
            n = book.chapter_bytes(name)
            if i > start and size + n > cfg.part_bytes:
                parts.append((start, i))
                start, size = i, 0
            size += n
        parts.append((start, len(book.spine)))
        return parts
    finally:
        book.close()


class BookSite:
    """The book's members served to the browser; a chapter that is not well-formed XML is served as HTML."""

    def __init__(self, book: Book, stats: Counter):
        self.book, self.stats = book, stats
        self._as_html: set[str] = set()

    def check_chapter(self, name: str) -> None:
        if self.book.chapter_types[name] != "application/xhtml+xml":
            return
        try:
            ET.fromstring(self.book.read(name) or b"")
        except ET.ParseError:
            self._as_html.add(name)
            self.stats["chapters_parsed_as_html"] += 1

    def read(self, path: str) -> bytes | None:
        return self.book.read(path.lstrip("/"))

    def content_type(self, path: str) -> str:
        name = path.lstrip("/")
        if name in self._as_html:
            return "text/html"
        if name in self.book.chapter_types:
            return self.book.chapter_types[name]
        return mimetypes.guess_type(name)[0] or "application/octet-stream"


def render(doc: DocInput, cfg: EpubConfig, stats: Counter, session: Session) -> Iterator[Sample]:
    """The book, or the part of it `doc.related` names (`book`, `chapters` "start:end" of the spine, `book_part`,
    `book_parts`, set by the pipeline from `book_parts`); the spine's own counts go to the first part only."""
    if Path(doc.path).stat().st_size > cfg.max_file_mb * 1024**2:
        raise EpubError(f"the file is larger than {cfg.max_file_mb:g} MB")
    book_id = doc.related.get("book", doc.doc)
    part_index, part_count = int(doc.related.get("book_part", 0)), int(doc.related.get("book_parts", 1))
    book = Book(doc.path, cfg, stats if part_index == 0 else Counter())
    start, end = (int(x) for x in doc.related.get("chapters", f"0:{len(book.spine)}").split(":"))
    pc = cfg.page
    template = pick_template(book_id, pc.templates)  # one look for the whole book, whatever its parts
    site = BookSite(book, stats)
    part = 0
    budget = book.page_budget(start, end)
    limit, over = (pc.max_pages, "page_limit") if pc.max_pages <= budget else (budget, "size_budget")
    try:
        with session.page(site, pc.width, pc.height, pc.scale, pc.javascript, stats) as page:
            for number, name in enumerate(book.spine[start:end], start):
                if part >= limit:
                    stats[f"chapters_over_{over}"] += 1
                    continue
                site.check_chapter(name)
                page.goto("/" + name)
                apply_template(page, template, pc)
                counts: Counter = Counter()
                pages = paginate(page, pc, "template", counts, max_pages=limit - part)
                if over == "size_budget" and counts["pages_over_limit"]:
                    counts["pages_over_size_budget"] += counts.pop("pages_over_limit")
                stats.update(counts)
                for p in pages:
                    yield Sample(
                        category="doc_ocr", source="epub", doc=doc.doc, part=part, origin=doc.origin,
                        segments=[{"image": image_name(pc)}, {"text": p.text}], images={image_name(pc): p.image},
                        meta={"page_size": [pc.width, pc.height], "scale": pc.scale, "template": template,
                              "chapter": name, "chapter_index": number, "page_in_chapter": p.index,
                              "book": book_id, "book_part": part_index, "book_parts": part_count,
                              "declared_language": book.language, "lines": p.lines},
                    )
                    part += 1
    finally:
        book.close()
