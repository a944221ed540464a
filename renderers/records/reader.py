"""Records of published datasets, read one input piece at a time so memory stays bounded.

A big file is split into several `DocInput`s by `pipelines/records.py`: a JSONL file into runs of lines (byte
ranges), a Parquet file into row groups. Each piece is read here as a stream of `(position, record)`:
JSONL through the byte range (JSON files arrive as JSONL pieces written at discovery), Parquet with `iter_batches` over its one row group and only the needed columns.
Broken lines are counted (`bad_json_line`), never fatal.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator

from vlcorpus.document import DocInput

PARQUET_BATCH_ROWS = 256


def read_records(doc: DocInput, stats: Counter, columns: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(position in the file, record) for every record of this piece; position is a line or row number."""
    fmt = doc.related.get("format")
    if fmt == "jsonl":
        yield from _jsonl(doc, stats)
    elif fmt == "parquet":
        yield from _parquet(doc, columns)
    elif fmt == "csv":
        with open(doc.path, newline="", encoding="utf-8") as f:
            yield from enumerate(csv.DictReader(f))
    elif fmt == "invalid":
        raise ValueError(doc.related["error"])
    else:
        raise ValueError(f"{doc.origin}: unknown record format {fmt!r}")


def _jsonl(doc: DocInput, stats: Counter) -> Iterator[tuple[int, dict]]:
    start, end, line_no = int(doc.related["start"]), int(doc.related["end"]), int(doc.related["first_line"])
    with open(doc.path, "rb") as f:
        f.seek(start)
        while f.tell() < end:
            raw = f.readline()
            if not raw:
                break
            if raw.strip():
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    stats["bad_json_line"] += 1
                    rec = None
                if isinstance(rec, dict):
                    yield line_no, rec
                elif rec is not None:
                    stats["bad_record"] += 1
            line_no += 1


def _parquet(doc: DocInput, columns: list[str] | None) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    group = int(doc.related["row_group"])
    with pq.ParquetFile(doc.path) as pf:
        names = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in names] if columns else None
        row = sum(pf.metadata.row_group(i).num_rows for i in range(group))
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=cols, use_threads=False):
            for rec in batch.to_pylist():
                yield row, rec
                row += 1


def first_field(rec: dict, names: tuple[str, ...]) -> object:
    """The first of `names` that the record has with a non-empty value (datasets disagree on field names)."""
    for n in names:
        v = rec.get(n)
        if v not in (None, "", [], {}):
            return v
    return None
