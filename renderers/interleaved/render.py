"""Documents -> `interleaved` samples, text and images in the order a reader meets them, as the importers write them.

One reader per input kind (`html`, `warc`, `epub`, `pdf`, `notebook` modules) turns a file into units (a page, a
book, a PDF, a notebook, each page of a WARC) of blocks in reading order; the shared image rules (`rules`) keep the
content images; `split` cuts each unit into parts under the token and image budget. A part with no image is counted
as `part_no_images` and not written (it is text, not an interleaved document); a file that yields nothing is
`Filtered`, naming the reasons.

Sample: `segments` alternate `{"text"}` paragraphs (joined with blank lines within a run of text) and `{"image"}`;
meta holds the input kind, title, language, where the part stands (`unit`, `unit_part`), and per image its alt text,
source reference and size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from renderers.interleaved import epub, html, notebook, pdf, warc
from renderers.interleaved.blocks import Text, Unit
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.rules import Kept, content
from renderers.interleaved.split import parts
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample

SOURCE = "interleaved_docs"
SUFFIXES = {".html": "html", ".htm": "html", ".xhtml": "html", ".warc": "warc", ".warc.gz": "warc",
            ".epub": "epub", ".pdf": "pdf", ".ipynb": "notebook"}


Reader = Callable[[DocInput, ExtractConfig, Counter], Iterator[Unit]]
READERS: dict[str, Reader] = {"html": html.read, "warc": warc.read, "epub": epub.read, "pdf": pdf.read,
                              "notebook": notebook.read}


def input_kind(path: str) -> str | None:
    name = path.lower()
    return next((kind for suffix, kind in SUFFIXES.items() if name.endswith(suffix)), None)


def segments(items: list[Text | Kept]) -> tuple[list[dict[str, str]], dict[str, bytes], list[dict]]:
    """Segments (consecutive paragraphs joined by a blank line), the images by name, and each image's meta."""
    segs: list[dict[str, str]] = []
    images: dict[str, bytes] = {}
    shown: list[dict] = []
    for item in items:
        if isinstance(item, Kept):
            name = f"{len(images)}.{item.ext}"
            images[name] = item.data
            segs.append({"image": name})
            shown.append({"alt": item.alt, "ref": item.ref[:300], "size": [item.width, item.height]})
        elif segs and "text" in segs[-1]:
            segs[-1]["text"] += "\n\n" + item.text
        else:
            segs.append({"text": item.text})
    return segs, images, shown


def render(doc: DocInput, cfg: ExtractConfig, stats: Counter) -> Iterator[Sample]:
    kind = input_kind(doc.path)
    if kind is None:
        raise Filtered(f"{doc.origin}: not a kind this extractor reads ({', '.join(sorted(SUFFIXES))})")
    size = Path(doc.path).stat().st_size
    if size > cfg.max_file_mb * 1024**2:
        raise Filtered(f"the file is {size / 1024**2:.0f} MB, over the {cfg.max_file_mb:g} MB limit (max_file_mb)")
    before = Counter(stats)
    written = 0
    for u, unit in enumerate(READERS[kind](doc, cfg, stats)):
        for k, part in enumerate(parts(content(unit.blocks, cfg.rules, unit.repeated, stats), cfg.budget)):
            segs, images, shown = segments(part)
            if not images:
                stats["part_no_images"] += 1
                continue
            stats["images"] += len(images)
            yield Sample(category="interleaved", source=SOURCE, doc=doc.doc, part=written, origin=doc.origin,
                         segments=segs, images=images,
                         meta={"input": kind, **unit.meta, "unit": u, "unit_part": k, "images": shown})
            written += 1
    if not written:
        dropped = stats - before
        dropped.pop("images", None)
        reasons = ", ".join(f"{r} {n}" for r, n in dropped.most_common(5)) or "no images and no text"
        raise Filtered(f"no part with a content image ({reasons})")
