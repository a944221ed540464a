"""WARC files (Common Crawl, web archives) -> one unit per HTML page they hold, read with warcio.

Two passes over the file, holding only offsets: the first indexes the `response`/`resource` records by target URL
(images and HTML pages) and counts the images each page shows, the second parses each page (main content, as for a
page on disk) and reads an image from its own record in the same archive when the page's reference (made absolute
against the page's URL) is there. Anything else is remote and never fetched: `image_remote`. A record whose payload is
over `max_text_mb` (a page) or the image byte limit is not read: `record_too_large` / `image_too_large`; one that does
not parse as WARC stops the file with the reason. An image shown on `max_repeats` or more pages is `image_repeated`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urldefrag, urljoin

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from renderers.images import BadImage
from renderers.interleaved.blocks import Picture, Unit
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.html import Resolve, data_url, image_refs, page
from renderers.interleaved.rules import repeated_refs
from vlcorpus.document import DocInput, Filtered

HTML_TYPES = ("text/html", "application/xhtml+xml")


def content_type(record) -> tuple[str, str]:
    """The payload's media type and declared charset."""
    headers = record.http_headers if record.rec_type == "response" else None
    value = (headers.get_header("Content-Type") if headers else record.rec_headers.get_header("Content-Type")) or ""
    charset = re.search(r"charset=[\"']?([\w.:-]+)", value, re.I)
    return value.split(";")[0].strip().lower(), charset.group(1) if charset else ""


def payload(path: str, offset: int, limit: int, reason: str) -> bytes:
    """The payload of the record at `offset`, or BadImage(`reason`) when it is over `limit` bytes."""
    with open(path, "rb") as f:
        f.seek(offset)
        record = next(iter(ArchiveIterator(f)))
        data = record.content_stream().read(limit + 1)
    if len(data) > limit:
        raise BadImage(reason, f"record at {offset} is over {limit:,} bytes")
    return data


def absolute(src: str, base: str) -> str:
    return urldefrag(urljoin(base, src.strip()))[0]


def archive_resolver(path: str, base: str, images: dict[str, int], limit: int) -> Resolve:
    def resolve(src: str) -> Picture:
        if src.startswith("data:"):
            return data_url(src)
        url = absolute(src, base)
        if url not in images:
            return Picture(ref=url, failure="image_remote")
        return Picture(ref=url, load=lambda: payload(path, images[url], limit, "image_too_large"),
                       svg=url.lower().split("?")[0].endswith(".svg"))

    return resolve


def index(path: str, max_text: int, stats: Counter) -> tuple[list[tuple[str, int, str]], dict[str, int], list[list[str]]]:
    """The HTML pages (URL, offset, charset), the images by URL, and each page's image URLs."""
    pages: list[tuple[str, int, str]] = []
    images: dict[str, int] = {}
    shown: list[list[str]] = []
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        try:
            for record in it:
                if record.rec_type not in ("response", "resource"):
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                kind, charset = content_type(record)
                if kind.startswith("image/"):
                    images.setdefault(urldefrag(url)[0], it.get_record_offset())
                elif kind in HTML_TYPES:
                    markup = record.content_stream().read(max_text + 1)
                    if len(markup) > max_text:
                        stats["record_too_large"] += 1
                        continue
                    pages.append((url, it.get_record_offset(), charset))
                    shown.append([absolute(s, url) for s in image_refs(markup) if not s.startswith("data:")])
        except ArchiveLoadFailed as e:
            raise Filtered(f"not a readable WARC file ({e})") from None
    return pages, images, shown


def read(doc: DocInput, cfg: ExtractConfig, stats: Counter) -> Iterator[Unit]:
    max_text = int(cfg.max_text_mb * 1024**2)
    pages, images, shown = index(doc.path, max_text, stats)
    repeated = repeated_refs(shown, cfg.rules.max_repeats)
    stats["pages"] += len(pages)
    for url, offset, charset in pages:
        markup = payload(doc.path, offset, max_text, "record_too_large")
        unit = page(markup, archive_resolver(doc.path, url, images, cfg.rules.limits.max_bytes), charset=charset)
        unit.meta["url"] = url
        unit.repeated = repeated
        yield unit
