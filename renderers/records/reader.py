"""Records of published datasets, read one input piece at a time so memory stays bounded.

A big file is split into several `DocInput`s by `renderers/records/discovery.py`: a JSONL file into runs of lines (byte
ranges), a Parquet file into row groups; JSON files, compressed files and zip members arrive as JSONL pieces written
at discovery. Each piece is read here as a stream of `(position, record)`: JSONL through the byte range, Parquet
with `iter_batches` over its one row group and only the needed columns.

Every record read is counted (`records`, the importer's unit: a caption, a document, a question), so a ledger line
says how many came in; what cannot be used is counted by reason, never fatal: a line that does not parse
(`bad_json_line`), a record that is not an object (`bad_record`), a line over the size bound, checked before
parsing (`record_too_large`), a record holding a lone UTF-16 surrogate (`"\\ud800"` is valid JSON but no text:
`bad_unicode`; written, it would fail the whole piece). Discovery writes a record it could not stage as
`{"__drop__": reason}`, counted here.

Table-shaped datasets are joined here, piece by piece, against the lookup tables discovery wrote (SQLite, beside
the pieces): COCO captions get the `file_name` of their `image_id` (`unknown_image_id` when no image has it,
`duplicate_image_id` when several `images` entries share it),
TextOCR images get their words.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing

from vlcorpus.document import DocInput

PARQUET_BATCH_ROWS = 256
MAX_RECORD_BYTES = 64 * 1024**2  # the default of `--max-record-mb`
DROP = "__drop__"  # a record discovery could not stage: {"__drop__": reason}
_JOIN_BATCH = 500
_READ_BLOCK = 1024**2
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # in the raw line: only then is a record walked for lone ones


def read_records(doc: DocInput, stats: Counter, columns: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(position in the file, record) for every usable record of this piece; position is a line or row number."""
    fmt = doc.related.get("format")
    if fmt == "jsonl":
        records = _jsonl(doc, stats)
    elif fmt == "parquet":
        records = _parquet(doc, columns, stats)
    elif fmt == "csv":
        records = _csv(doc, stats)
    elif fmt == "invalid":
        raise ValueError(doc.related["error"])
    else:
        raise ValueError(f"{doc.origin}: unknown record format {fmt!r}")
    join = {"coco": _coco_images, "textocr": _textocr_words}.get(doc.related.get("layout", ""))
    if join is None:
        yield from records
        return
    with closing(sqlite3.connect(f"file:{doc.related['lookup']}?mode=ro&immutable=1", uri=True)) as db:
        batch: list[tuple[int, dict]] = []
        for item in records:
            batch.append(item)
            if len(batch) == _JOIN_BATCH:
                yield from join(db, batch, stats)
                batch = []
        yield from join(db, batch, stats)


def max_record_bytes(doc: DocInput) -> int:
    return int(doc.related.get("max_record_bytes", MAX_RECORD_BYTES))


def _jsonl(doc: DocInput, stats: Counter) -> Iterator[tuple[int, dict]]:
    start, end, line_no = int(doc.related["start"]), int(doc.related["end"]), int(doc.related["first_line"])
    limit = max_record_bytes(doc)
    with open(doc.path, "rb") as f:
        f.seek(start)
        while f.tell() < end:
            raw = f.readline(limit + 1)
            if not raw:
                break
            if len(raw) > limit and not raw.endswith(b"\n"):  # over the bound: skip the rest of the line unread
                while (rest := f.readline(_READ_BLOCK)) and not rest.endswith(b"\n"):
                    pass
                stats["records"] += 1
                stats["record_too_large"] += 1
            elif raw.strip():
                stats["records"] += 1
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    stats["bad_json_line"] += 1
                    rec = None
                if isinstance(rec, dict) and DROP in rec:
                    stats[str(rec[DROP])] += 1
                elif isinstance(rec, dict) and _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(rec):
                    stats["bad_unicode"] += 1
                elif isinstance(rec, dict):
                    yield line_no, rec
                elif rec is not None:
                    stats["bad_record"] += 1
            line_no += 1


def _lone_surrogate(value: object) -> bool:
    """Whether a parsed JSON value holds a string (key or value) that is not valid Unicode text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _parquet(doc: DocInput, columns: list[str] | None, stats: Counter) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    group = int(doc.related["row_group"])
    with pq.ParquetFile(doc.path) as pf:
        names = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in names] if columns else None
        row = sum(pf.metadata.row_group(i).num_rows for i in range(group))
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=cols, use_threads=False):
            for rec in batch.to_pylist():
                stats["records"] += 1
                yield row, rec
                row += 1


def _csv(doc: DocInput, stats: Counter) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(max_record_bytes(doc))
    with open(doc.path, newline="", encoding="utf-8") as f:
        for pos, rec in enumerate(csv.DictReader(f)):
            stats["records"] += 1
            yield pos, rec


def _in(db: sqlite3.Connection, sql: str, keys: list) -> list[tuple]:
    """Rows of `sql` (one `{}` for the placeholders) for every key, in chunks under SQLite's variable limit."""
    rows: list[tuple] = []
    for i in range(0, len(keys), 900):
        chunk = keys[i : i + 900]
        rows += db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
    return rows


def _coco_images(db: sqlite3.Connection, batch: list[tuple[int, dict]], stats: Counter) -> Iterator[tuple[int, dict]]:
    """COCO `annotations` -> records with the `file_name` their `image_id` has in the `images` table."""
    ids = list({r.get("image_id") for _, r in batch if isinstance(r.get("image_id"), (int, str))})
    rows = _in(db, "SELECT id, file_name, copies FROM images WHERE id IN ({})", ids)
    found = {i: (name, copies) for i, name, copies in rows}
    for pos, rec in batch:
        image_id = rec.get("image_id")
        name, copies = found.get(image_id, (None, 0)) if isinstance(image_id, (int, str)) else (None, 0)
        if name is None:
            stats["unknown_image_id"] += 1
            continue
        if copies > 1:
            stats["duplicate_image_id"] += 1
            continue
        yield pos, {**rec, "image": name}


def _textocr_words(db: sqlite3.Connection, batch: list[tuple[int, dict]], stats: Counter) -> Iterator[tuple[int, dict]]:
    """TextOCR `imgs` entries -> `{"image", "id", "words"}` records with the words of `anns` that name the image."""
    ids = [str(r.get("id")) for _, r in batch]
    words: dict[str, list[dict]] = {}
    for image_id, text, bbox in _in(db, "SELECT image_id, text, bbox FROM words WHERE image_id IN ({}) ORDER BY rowid", ids):
        words.setdefault(image_id, []).append({"text": text, "bbox": json.loads(bbox) if bbox else None})
    for pos, rec in batch:
        yield pos, {"image": rec.get("file_name"), "id": rec.get("id"), "words": words.get(str(rec.get("id")), [])}


def first_field(rec: dict, names: tuple[str, ...]) -> object:
    """The first of `names` that the record has with a non-empty value (datasets disagree on field names)."""
    for n in names:
        v = rec.get(n)
        if v not in (None, "", [], {}):
            return v
    return None
