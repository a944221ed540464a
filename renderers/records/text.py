"""Plain text -> `text` samples, split at paragraph boundaries into documents of bounded size.

Inputs: text files (.txt, .md), one document each; and record files (JSONL with a `text` field, Parquet with a
`text` column), read piece by piece through `renderers.records.reader`, one document per record (`records` read,
`imported` when it gave a sample; a record over `--max-record-mb` is dropped unparsed, `record_too_large`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from renderers.records.reader import read_records
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample, estimate_tokens

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")  # a blank line; no backtracking over long runs


@dataclass
class TextConfig:
    max_chars: int = 20_000  # one sample at most; longer files are split at blank lines
    min_chars: int = 200  # shorter pieces are dropped (counted as text_too_short)
    max_file_mb: float = 512.0
    text_field: str = "text"  # the field of JSONL records / column of Parquet files holding the text

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars <= self.min_chars:
            raise ValueError("need 0 <= min_chars < max_chars")


def split_paragraphs(text: str, max_chars: int) -> Iterator[str]:
    """Greedy packing of blank-line-separated paragraphs; a paragraph longer than max_chars is cut at line ends.

    Linear in the text's length: a long paragraph is walked by offsets, never re-sliced from its rest."""
    chunk: list[str] = []
    size = 0
    for para in _PARAGRAPH_BREAK.split(text):
        para = para.strip()
        start, end = 0, len(para)
        while end - start > max_chars:
            cut = para.rfind("\n", start, start + max_chars)
            cut = cut if cut > start else start + max_chars
            yield para[start:cut].strip()
            start = cut
            while start < end and para[start].isspace():
                start += 1
        para = para[start:] if start else para
        if chunk and size + len(para) + 2 > max_chars:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
        if para:
            chunk.append(para)
            size += len(para) + 2
    if chunk:
        yield "\n\n".join(chunk)


def _texts(doc: DocInput, cfg: TextConfig, stats: Counter) -> Iterator[tuple[int | None, str]]:
    """(record position or None for a whole file, text) of each document in this input."""
    if "format" in doc.related:
        for pos, rec in read_records(doc, stats, columns=[cfg.text_field]):
            value = rec.get(cfg.text_field)
            if isinstance(value, str):
                yield pos, value
            else:
                stats["no_text_field"] += 1
        return
    path = Path(doc.path)
    if path.stat().st_size > cfg.max_file_mb * 1024**2:
        raise Filtered(f"file is larger than {cfg.max_file_mb:g} MB")
    try:
        yield None, path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text: {e}") from None


def render(doc: DocInput, cfg: TextConfig, stats: Counter) -> Iterator[Sample]:
    if "format" in doc.related:
        stats.setdefault("imported", 0)  # counted in the unit even when nothing comes in
    part = 0
    for pos, text in _texts(doc, cfg, stats):
        before = part
        for piece in split_paragraphs(text.replace("\r\n", "\n"), cfg.max_chars):
            if len(piece) < cfg.min_chars:
                stats["text_too_short"] += 1
                continue
            meta = {"chars": len(piece), "tokens": estimate_tokens(piece)}
            if pos is not None:
                meta["record"] = pos
            yield Sample(category="text", source="text", doc=doc.doc, part=part, origin=doc.origin,
                         segments=[{"text": piece}], meta=meta)
            part += 1
        if pos is not None and part > before:
            stats["imported"] += 1
