"""Interleaved extraction on real documents: image placement, images kept, words kept, and throughput against a bare
parse of the same files.

    python benchmarks/interleaved.py --docs DIR [--readability TEST_PAGES] [--json out.json]

`--docs`: a folder of real documents (EPUB, HTML pages with their images, PDFs, notebooks), extracted in this
process by the same renderer the Ray job runs. `--readability`: mozilla/readability's `test/test-pages` (saved
Wikipedia, eHow, news and blog pages with Readability's own article extraction in `expected.html`); each page is
packed into a WARC with warcio at Readability's test URL, every image URL it names answered by a stand-in image of
the size its `<img>` declares (640x480 where none is declared: the real image bytes are not in that repository).

References, read independently of the extractor's DOM rules:
- words: Readability's `expected.html` (web pages); a page's `role="main"` element (Sphinx pages); every spine
  chapter's body less its `<nav>` (EPUB); every page's text layer (PDF); cell sources and text outputs (notebooks).
  Words kept = the reference's words (multiset) found in the extractor's output, all parts (`part_no_images` parts
  included: they are extracted, then left out as text), and separately in the samples written.
- content images: the reference's images (as above; PDFs: none, see placement) that pass the size rules (both sides
  >= 150 px, aspect <= 3), i.e. not icons: what the extractor should keep.
- placement: an image is placed right when the 6 words before it in the output are words before the same
  image (its k-th occurrence) in the source's document order, give or take what was left out between (the words
  stand in order among the source's 30 words before it), and likewise the 6 words after it. PDFs have no markup
  order to compare with: there, a figure is placed right when an image stands right before or after its caption
  (`Figure N.`; captions go under or above figures), counted over the captions.
- throughput: the extractor vs a bare parse (lxml over each page or chapter, PyMuPDF's text of each page, json of a
  notebook, warcio + lxml over a WARC), documents and MB per second, one process.
- beside ours on the web pages: trafilatura 2 (`extract(..., include_images=True, output_format="xml")`), words and
  images against the same references.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import posixpath
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urljoin

import lxml.etree as etree
import lxml.html
import pymupdf
from PIL import Image

from renderers.browser.epub import Book, EpubConfig
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.render import READERS, input_kind, render
from renderers.interleaved.rules import content
from renderers.interleaved.split import parts
from vlcorpus.document import DocInput, Filtered

PAGE_URL = "http://fakehost/test/page.html"  # the URL Readability's tests give every page
WORDS_BEFORE = 6
WINDOW = 30
RULES = ExtractConfig().rules


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def overlap(ref: list[str], got: list[str]) -> int:
    return sum((Counter(ref) & Counter(got)).values())


def sequence(root: etree._Element, resolve=lambda s: s, skip=("script", "style", "noscript")) -> list[tuple[str, str]]:
    """An element's words and `<img>`/SVG `<image>` references in document order, read naively."""
    seq: list[tuple[str, str]] = []
    skipping = 0
    for event, el in etree.iterwalk(root, events=("start", "end")):
        tag = el.tag.rsplit("}", 1)[-1].lower() if isinstance(el.tag, str) else ""
        if tag in skip:
            skipping += 1 if event == "start" else -1
            if event == "end" and el.tail and skipping == 0:
                seq.append(("text", el.tail))
            continue
        if skipping:
            continue
        if event == "start":
            src = el.get("src") if tag == "img" else el.get("{http://www.w3.org/1999/xlink}href") or el.get("href") if tag == "image" else None
            if tag == "img" and (not src or src.startswith("data:image/gif")) and el.get("data-src"):
                src = el.get("data-src")
            if src:
                seq.append(("image", resolve(src)))
            if el.text:
                seq.append(("text", el.text))
        elif el is not root and el.tail:
            seq.append(("text", el.tail))
    return seq


def around(seq: list[tuple[str, str]], i: int, n: int, after: bool = False) -> list[str]:
    """The `n` words before (or after) item `i` of a sequence, images skipped."""
    found: list[str] = []
    items = seq[i + 1:] if after else reversed(seq[:i])
    for kind, value in items:
        if kind == "text":
            found = found + words(value) if after else words(value) + found
            if len(found) >= n:
                break
    return found[:n] if after else found[-n:]


def subsequence(small: list[str], big: list[str]) -> bool:
    """`small`'s words stand in `big`'s text in this order, gaps allowed; compared without the spaces, because
    inline elements may join words (`Credit<span>Kevin</span>` is one word to a reader and two text nodes)."""
    text, at = "".join(big), 0
    for w in small:
        at = text.find(w, at)
        if at < 0:
            return False
        at += len(w)
    return True


def placed(ours: list[tuple[str, str]], source: list[tuple[str, str]]) -> tuple[int, int]:
    """(images placed as in the source, images of ours found in the source). Placed right: the 6 words before the
    image in our output stand, in order, among the 30 words before it in the source, and the 6 after it among the 30
    after it (what the extractor left out in between, an edit link or a byline, does not count against it)."""
    good = found = 0
    seen: Counter = Counter()
    for i, (kind, value) in enumerate(ours):
        if kind != "image":
            continue
        seen[value] += 1
        where = [j for j, x in enumerate(source) if x == ("image", value)]
        if len(where) < seen[value]:
            continue
        found += 1
        j = where[seen[value] - 1]
        good += (subsequence(around(ours, i, WORDS_BEFORE), around(source, j, WINDOW))
                 and subsequence(around(ours, i, WORDS_BEFORE, after=True), around(source, j, WINDOW, after=True)))
    return good, found


def content_image(size: tuple[int, int] | None) -> bool:
    if size is None:
        return False
    w, h = size
    return min(w, h) >= RULES.min_side and max(w, h) <= RULES.max_aspect * min(w, h)


def size_of(data: bytes | None) -> tuple[int, int] | None:
    if not data:
        return None
    try:
        if data.lstrip()[:5] in (b"<svg ", b"<?xml"):
            from renderers.images import svg_size
            return tuple(round(x) for x in svg_size(data))
        return Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - an image the reference cannot size is not counted as content
        return None


def extracted(doc: DocInput, cfg: ExtractConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Counter, float]:
    """(every part's stream, the written samples' stream, counts, seconds) for one document."""
    stats: Counter = Counter()
    t = time.perf_counter()
    try:
        samples = list(render(doc, cfg, stats))
    except Filtered:
        samples = []
    seconds = time.perf_counter() - t
    written = [("image", im["ref"]) if "image" in g else ("text", g["text"]) for s in samples
               for g, im in _pairs(s)]
    everything: list[tuple[str, str]] = []
    for unit in READERS[input_kind(doc.path)](doc, cfg, Counter()):
        for part in parts(content(unit.blocks, cfg.rules, unit.repeated, Counter()), cfg.budget):
            everything += [("image", i.ref) if hasattr(i, "ref") else ("text", i.text) for i in part]
    return everything, written, stats, seconds


def _pairs(sample):
    refs = iter(sample.meta["images"])
    return [(g, next(refs) if "image" in g else None) for g in sample.segments]


def bare_parse(path: Path) -> None:
    kind = input_kind(str(path))
    if kind == "html":
        " ".join(lxml.html.parse(str(path)).getroot().itertext())
    elif kind == "epub":
        book = Book(path, EpubConfig(), Counter())
        for name in book.spine:
            " ".join(lxml.html.document_fromstring(book.read(name) or b"<p/>").itertext())
        book.close()
    elif kind == "pdf":
        with pymupdf.open(path) as pdf:
            for page in pdf:
                page.get_text("dict")
    elif kind == "notebook":
        json.loads(path.read_bytes())
    elif kind == "warc":
        from warcio.archiveiterator import ArchiveIterator
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "response" and record.http_headers and "html" in (record.http_headers.get_header("Content-Type") or ""):
                    " ".join(lxml.html.document_fromstring(record.content_stream().read()).itertext())


def beside_caption(items: list[tuple[str, str]], figure: str) -> bool:
    """An image stands right before or right after the caption of `figure` (sub-captions such as `(a) ...`, up to
    two short paragraphs, may stand between), as the page shows it: captions go under figures or above them."""
    for i, (kind, value) in enumerate(items):
        if kind == "text" and re.match(rf"(\(\w\) .*)?(Figure|Fig\.) {figure}[.:]", value, re.S):
            for step in (-1, 1):
                j, short = i + step, 0
                while 0 <= j < len(items) and items[j][0] == "text" and len(items[j][1]) < 120 and short < 2:
                    j, short = j + step, short + 1
                if 0 <= j < len(items) and items[j][0] == "image":
                    return True
    return False


class Reference:
    """What a document holds, read without the extractor: its words, its content images, its document order."""

    def __init__(self, words: list[str], seq: list[tuple[str, str]], images: int, captions: list[str] | None = None,
                 content: set[str] | None = None, guessed: set[str] | None = None):
        self.words, self.seq, self.images, self.captions = words, seq, images, captions
        self.content, self.guessed = content, guessed  # web pages: the content images; stand-ins of a guessed size


def epub_reference(path: Path) -> Reference:
    book = Book(path, EpubConfig(), Counter())
    seq: list[tuple[str, str]] = []
    images = 0
    for name in book.spine:
        if book.chapter_types[name] == "image/svg+xml":
            seq.append(("image", name))
            continue
        root = lxml.etree.fromstring(book.read(name) or b"<html/>", lxml.etree.XMLParser(recover=True, resolve_entities=False))
        body = next((e for e in root.iter() if isinstance(e.tag, str) and e.tag.endswith("body")), root)
        resolve = lambda s, n=name: posixpath.normpath(posixpath.join(posixpath.dirname(n), s.split("#")[0]))  # noqa: E731
        chapter = sequence(body, resolve, skip=("script", "style", "nav"))
        seq += chapter
    for ref in {v for k, v in seq if k == "image"}:
        if ref in book.members:
            images += content_image(size_of(book.read(ref)))
    book.close()
    return Reference([w for k, v in seq if k == "text" for w in words(v)], seq, images)


def page_reference(path: Path, root: Path) -> Reference:
    main = lxml.html.parse(str(path)).getroot().xpath('//*[@role="main"]')[0]
    seq = sequence(main, lambda s: str((path.parent / s).relative_to(root)))
    images = sum(content_image(size_of((root / v).read_bytes() if (root / v).is_file() else None))
                 for v in {v for k, v in seq if k == "image"})
    return Reference([w for k, v in seq if k == "text" for w in words(v)], seq, images)


def notebook_reference(path: Path) -> Reference:
    import base64

    nb = json.loads(path.read_bytes())
    seq: list[tuple[str, str]] = []
    images = 0
    text = lambda v: "".join(v) if isinstance(v, list) else str(v or "")  # noqa: E731
    for n, cell in enumerate(nb["cells"]):
        seq.append(("text", text(cell.get("source"))))
        for k, out in enumerate(cell.get("outputs") or []):
            data = out.get("data") or {}
            mime = next((m for m in ("image/png", "image/jpeg", "image/svg+xml") if m in data), None)
            if mime:
                seq.append(("image", f"cell{n}:out{k}"))
                raw = text(data[mime]).encode() if mime == "image/svg+xml" else base64.b64decode(text(data[mime]))
                images += content_image(size_of(raw))
            elif out.get("output_type") == "stream":
                seq.append(("text", text(out.get("text"))))
            elif "text/plain" in data:
                seq.append(("text", text(data["text/plain"])))
    return Reference([w for k, v in seq if k == "text" for w in words(v)], seq, images)


def pdf_reference(path: Path) -> Reference:
    with pymupdf.open(path) as pdf:
        text = "\n".join(page.get_text() for page in pdf)
    captions = sorted(set(re.findall(r"^(?:Figure|Fig\.) (S?\d+)[.:]", text, re.M)))
    return Reference(words(text), [], len(captions), captions)


def readability_warc(page: Path, work: Path) -> tuple[Path, Reference]:
    """The page packed into a WARC with a stand-in for every image it names. References: Readability's article for
    the words and the content images (each distinct image once, not the `aria-hidden` ones: those repeat text, such
    as Wikipedia's formula renderings beside their MathML), the page itself for the document order."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    source = page.joinpath("source.html").read_bytes()
    tree = lxml.html.document_fromstring(source, parser=lxml.html.HTMLParser(encoding="utf-8"))
    sizes: dict[str, tuple[int, int]] = {}
    guessed: set[str] = set()
    for img in tree.iter("img"):
        w, h = (int(x) if (x or "").isdigit() else 0 for x in (img.get("width"), img.get("height")))
        size = (w, h) if w and h else (w, w * 3 // 4) if w else (640, 480)
        for src in [img.get("src"), img.get("data-src"), *(c.strip().split(" ")[0] for c in (img.get("srcset") or "").split(",") if c.strip())]:
            if src and not src.startswith("data:"):
                url = urljoin(PAGE_URL, src.strip()).split("#")[0]
                sizes.setdefault(url, size)
                if not (w and h):
                    guessed.add(url)
    path = work / f"{page.name}.warc.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)

        def record(url: str, body: bytes, ctype: str) -> None:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))

        record(PAGE_URL, source, "text/html; charset=utf-8")
        for k, (url, (w, h)) in enumerate(sorted(sizes.items())):
            im = Image.linear_gradient("L").resize((max(w, 1), max(h, 1))).convert("RGB")
            im.paste((k * 37 % 255, 90, 160), (0, 0, max(w // 3, 1), max(h // 3, 1)))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70)
            record(url, buf.getvalue(), "image/jpeg")
    expected = lxml.html.document_fromstring(page.joinpath("expected.html").read_bytes(),
                                             parser=lxml.html.HTMLParser(encoding="utf-8"))  # as Readability writes it
    absolute = lambda s: urljoin(PAGE_URL, s.strip()).split("#")[0]  # noqa: E731
    article = sequence(expected, absolute)
    hidden = {absolute(i.get("src") or "") for i in expected.iter("img") if i.get("aria-hidden") == "true"}
    shown = {v for k, v in article if k == "image"} - hidden
    images = sum(content_image(sizes.get(v)) for v in shown if v in sizes)
    order = sequence(tree.xpath("//body")[0] if tree.xpath("//body") else tree, absolute)
    content = {v for v in shown if v in sizes and content_image(sizes[v])}
    return path, Reference([w for k, v in article if k == "text" for w in words(v)], order, images, None, content, guessed)


def trafilatura_scores(page: Path, ref: Reference) -> tuple[int, int]:
    """(reference words trafilatura keeps, content images it keeps) on the page."""
    import trafilatura

    xml = trafilatura.extract(page.joinpath("source.html").read_text("utf-8", "replace"), include_images=True,
                              output_format="xml", url=PAGE_URL) or "<doc/>"
    root = lxml.etree.fromstring(xml.encode("utf-8"), lxml.etree.XMLParser(recover=True))
    srcs = {urljoin(PAGE_URL, g.get("src") or "").split("#")[0] for g in root.iter("graphic")}
    return overlap(ref.words, words(" ".join(root.itertext()))), len(srcs & ref.content)


def measure(docs: Path | None, readability: Path | None, cfg: ExtractConfig) -> dict:
    work = Path(tempfile.mkdtemp(prefix="interleaved-bench-"))
    rows = []
    try:
        items: list[tuple[str, Path, Reference, Path | None]] = []
        if readability:
            for page in sorted(p for p in readability.iterdir() if (p / "expected.html").exists()):
                warc, ref = readability_warc(page, work)
                if ref.images:
                    items.append(("web page (WARC)", warc, ref, page))
        if docs:
            for path in sorted(p for p in docs.rglob("*") if p.is_file() and input_kind(str(p))):
                kind = input_kind(str(path))
                if kind == "html":
                    items.append(("HTML book page", path, page_reference(path, docs), None))
                elif kind == "epub":
                    items.append(("EPUB", path, epub_reference(path), None))
                elif kind == "pdf":
                    ref = pdf_reference(path)
                    if ref.captions:
                        items.append(("PDF", path, ref, None))
                elif kind == "notebook":
                    items.append(("notebook", path, notebook_reference(path), None))
        for kind, path, ref, page in items:
            doc = DocInput(doc=path.name, origin=path.name, path=str(path), related={"root": str(docs or path.parent)})
            everything, written, stats, seconds = extracted(doc, cfg)
            t = time.perf_counter()
            bare_parse(path)
            bare = time.perf_counter() - t
            if ref.captions is not None:  # PDF: the image stands next to its caption
                good = sum(beside_caption(everything, n) for n in ref.captions)
                found = len(ref.captions)
            else:
                good, found = placed(everything, ref.seq)
            row = {"kind": kind, "doc": path.name, "bytes": path.stat().st_size, "seconds": seconds, "bare_seconds": bare,
                   "ref_words": len(ref.words), "words_all_parts": overlap(ref.words, [w for k, v in everything if k == "text" for w in words(v)]),
                   "words_written": overlap(ref.words, [w for k, v in written if k == "text" for w in words(v)]),
                   "content_images": ref.images, "images_kept": stats["images"], "placed": good, "placed_of": found,
                   "drops": {k: v for k, v in stats.items() if k.startswith(("image_", "part_", "page_"))}}
            if page is not None:
                row["trafilatura_words"], row["trafilatura_images"] = trafilatura_scores(page, ref)
                extra = {v for k, v in written if k == "image"} - ref.content
                row["kept_not_content"], row["kept_not_content_guessed_size"] = len(extra), len(extra & ref.guessed)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    kinds: dict[str, dict] = defaultdict(lambda: Counter())
    for r in rows:
        for key in ("bytes", "seconds", "bare_seconds", "ref_words", "words_all_parts", "words_written",
                    "content_images", "images_kept", "placed", "placed_of", "trafilatura_words", "trafilatura_images",
                    "kept_not_content", "kept_not_content_guessed_size"):
            kinds[r["kind"]][key] += r.get(key, 0)
            kinds["all"][key] += r.get(key, 0)
        kinds[r["kind"]]["docs"] += 1
        kinds["all"]["docs"] += 1
    table = {}
    for kind, c in kinds.items():
        table[kind] = {
            "docs": c["docs"], "MB": round(c["bytes"] / 1e6, 2),
            "placement": round(c["placed"] / c["placed_of"], 4) if c["placed_of"] else None, "placed_of": c["placed_of"],
            "images_kept_share": round(c["images_kept"] / c["content_images"], 4) if c["content_images"] else None,
            "images_kept": c["images_kept"], "content_images": c["content_images"],
            "words_kept_all_parts": round(c["words_all_parts"] / c["ref_words"], 4),
            "words_kept_written": round(c["words_written"] / c["ref_words"], 4),
            "docs_per_s": round(c["docs"] / c["seconds"], 2), "MB_per_s": round(c["bytes"] / 1e6 / c["seconds"], 2),
            "bare_docs_per_s": round(c["docs"] / c["bare_seconds"], 2),
            "slowdown_vs_bare": round(c["seconds"] / c["bare_seconds"], 1),
        }
        if c["kept_not_content"]:
            table[kind]["kept_not_content"] = c["kept_not_content"]
            table[kind]["kept_not_content_guessed_size"] = c["kept_not_content_guessed_size"]
        if c["trafilatura_words"] and kind != "all":
            table[kind]["trafilatura_words_kept"] = round(c["trafilatura_words"] / c["ref_words"], 4)
            table[kind]["trafilatura_images_kept_share"] = round(c["trafilatura_images"] / c["content_images"], 4)
    return {"summary": table, "documents": rows, "machine": f"{platform.node()} {platform.processor() or platform.machine()}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, help="folder of EPUB, HTML (+ images), PDF and notebook files")
    ap.add_argument("--readability", type=Path, help="mozilla/readability's test/test-pages folder")
    ap.add_argument("--json", type=Path, help="write every document's figures here")
    args = ap.parse_args()
    if not args.docs and not args.readability:
        raise SystemExit("error: give --docs and/or --readability")
    result = measure(args.docs, args.readability, ExtractConfig())
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    for kind, row in result["summary"].items():
        print(f"{kind:18s} {json.dumps(row)}")
    for r in result["documents"]:
        bad = r["placed_of"] - r["placed"]
        print(f"  {r['kind']:16s} {r['doc'][:40]:40s} images {r['images_kept']:4d}/{r['content_images']:<4d} "
              f"placed {r['placed']}/{r['placed_of']}{' !' if bad else ''} words {r['words_all_parts']}/{r['ref_words']} "
              f"{r['seconds']:.2f}s (bare {r['bare_seconds']:.3f}s) {r['drops']}")


if __name__ == "__main__":
    main()
