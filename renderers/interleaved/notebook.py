"""Jupyter notebooks -> one unit of blocks: markdown, code and outputs in cell order.

A markdown cell gives its paragraphs (split at blank lines) with its images where they stand (`![alt](src)` and
`<img src>`: cell attachments, files inside the input root, `data:` URLs; URLs are `image_remote`); a code cell
gives its source and its text outputs (streams, `text/plain` results) as one paragraph, so that the picture an
image output (`image/png`, `image/jpeg`, `image/svg+xml`) becomes stays with the code that drew it. Error tracebacks are left out (`cell_errors`).
The file is read by the plot/code extractor's reader (size limit, nbformat 3 upgraded).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from renderers.images import BadImage
from renderers.interleaved.blocks import Block, Picture, Text, Unit
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.html import file_resolver
from renderers.notebook.pairs import field_text, read_notebook
from vlcorpus.document import DocInput

MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img\b[^>]*?\ssrc\s*=\s*[\"']([^\"']+)[^>]*>", re.I)
ALT = re.compile(r"\salt\s*=\s*[\"']([^\"']*)", re.I)
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


def decoded(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage("image_undecodable", f"image output is not valid base64 ({e})") from None


def output_picture(ref: str, mime: str, value: object) -> Picture:
    text = field_text(value)
    if text is None:
        return Picture(ref=ref, failure="image_undecodable")
    if mime == "image/svg+xml":
        return Picture(ref=ref, load=lambda: text.encode("utf-8"), svg=True)
    return Picture(ref=ref, load=lambda: decoded(text))


def paragraphs(text: str) -> list[Block]:
    return [Text(p.strip()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def markdown_blocks(source: str, attachments: dict, resolve, cell: int) -> list[Block]:
    blocks: list[Block] = []
    at = 0
    for m in MD_IMAGE.finditer(source):
        blocks += paragraphs(source[at:m.start()])
        at = m.end()
        src = (m.group(2) or m.group(3) or "").strip()
        alt = m.group(1) if m.group(2) else (ALT.search(m.group(0)) or [None, ""])[1]
        if src.startswith("attachment:"):
            bundle = attachments.get(src.removeprefix("attachment:")) or {}
            mime = next((k for k in IMAGE_MIMES if k in bundle), None)
            pic = output_picture(f"cell{cell}:{src}", mime, bundle[mime]) if mime else Picture(ref=src, failure="image_missing")
        else:
            pic = resolve(src)
        pic.alt = " ".join(alt.split())
        blocks.append(pic)
    return blocks + paragraphs(source[at:])


def read(doc: DocInput, cfg: ExtractConfig, stats: Counter) -> Iterator[Unit]:
    nb = read_notebook(Path(doc.path), cfg.max_file_mb)
    root = doc.related.get("root") or os.path.dirname(doc.path)
    resolve = file_resolver(doc.path, root, cfg.rules.limits.max_bytes)
    blocks: list[Block] = []
    for n, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            continue
        source = field_text(cell.get("source")) or ""
        if cell.get("cell_type") == "markdown":
            blocks += markdown_blocks(source, cell.get("attachments") or {}, resolve, n)
            continue
        if cell.get("cell_type") != "code":
            continue
        lines = [source.rstrip()] if source.strip() else []  # the code and its text outputs: one paragraph
        for k, out in enumerate(cell.get("outputs") or []):
            if not isinstance(out, dict):
                continue
            kind = out.get("output_type")
            data = out.get("data") if isinstance(out.get("data"), dict) else {}
            mime = next((m for m in IMAGE_MIMES if m in data), None)
            if kind == "error":
                stats["cell_errors"] += 1
            elif kind == "stream":
                lines.append((field_text(out.get("text")) or "").rstrip())
            elif kind in ("execute_result", "display_data") and mime:
                blocks.append(Text("\n".join(lines)))
                blocks.append(output_picture(f"cell{n}:out{k}", mime, data[mime]))
                lines = []
            elif kind in ("execute_result", "display_data") and "text/plain" in data:
                lines.append((field_text(data["text/plain"]) or "").rstrip())
        blocks.append(Text("\n".join(lines)))
    language = ((nb.get("metadata") or {}).get("kernelspec") or {}).get("language", "")
    yield Unit(blocks, {"title": "", "kernel_language": language})
