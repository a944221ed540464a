"""Discovery for record files: one `DocInput` per piece of a file, so a multi-GB file is rendered in bounded parts.

JSONL: runs of `lines_per_doc` lines (found by one streaming scan for newlines; the byte range goes in `related`).
Parquet: one piece per row group (read from the footer only). JSON files (one big array or object, as LLaVA,
ChartQA and TextOCR publish them) are parsed once here and written as JSONL pieces under a staging folder, so no
task parses the whole file. CSV files and WebDataset tars: one piece each.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from vlcorpus.document import DocInput
from vlcorpus.shards import atomic_write_bytes

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SCAN_BLOCK = 8 * 1024**2


def jsonl_pieces(path: Path, lines_per_doc: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, first line number) of each run of `lines_per_doc` lines."""
    cuts = [(0, 0)]
    line, offset = 0, 0
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BLOCK):
            pos = block.find(b"\n")
            while pos != -1:
                line += 1
                if line % lines_per_doc == 0:
                    cuts.append((offset + pos + 1, line))
                pos = block.find(b"\n", pos + 1)
            offset += len(block)
    ends = [c[0] for c in cuts[1:]] + [offset]
    return [(start, end, first) for (start, first), end in zip(cuts, ends) if end > start]


def _is_shard_json(p: Path) -> bool:
    """A sidecar (`<shard>.json`) or `index.json` of a WebDataset shard folder: metadata, not records."""
    return p.suffix == ".json" and (p.with_suffix(".tar").exists() or (p.name == "index.json" and any(p.parent.glob("*.tar"))))


def json_records(data: object) -> Iterable[dict]:
    """The records of a parsed JSON file: a list, or the list under a usual key of an object, or the object itself."""
    if isinstance(data, dict):
        data = next((v for k in ("data", "annotations", "records", "conversations") if isinstance(v := data.get(k), list)), [data])
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of records")
    return data


def json_pieces(path: Path, rel: str, staging: Path, per_piece: int,
                records_of: Callable[[object], Iterable[dict]]) -> list[DocInput]:
    """Parse one JSON file and write its records as JSONL pieces of `per_piece`; ids `<rel>#R<first record>`.

    A record that is not an object is written as it is and counted as `bad_record` by the reader; a file that does not
    parse becomes one input that fails with the parser's message."""
    try:
        records = list(records_of(json.loads(path.read_bytes())))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:  # the ledger says so; the job goes on
        return [DocInput(doc=rel, origin=rel, path=str(path), related={"format": "invalid", "error": f"not a usable JSON records file: {e}"})]
    folder = staging / hashlib.sha1(str(path).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for first in range(0, len(records), per_piece):
        piece = folder / f"{first:09d}.jsonl"
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[first : first + per_piece]).encode()
        atomic_write_bytes(piece, data)
        inputs.append(DocInput(doc=f"{rel}#R{first}", origin=rel, path=str(piece), related={
            "format": "jsonl", "start": "0", "end": str(len(data)), "first_line": str(first), "image_root": str(path.parent)}))
    return inputs


def record_inputs(input_path: Path, staging: Path, suffixes: tuple[str, ...] = RECORD_SUFFIXES, lines_per_doc: int = 2000,
                  records_of: Callable[[object], Iterable[dict]] = json_records) -> list[DocInput]:
    """Every record file under `input_path` (or the file itself), split into pieces; ids are `<relpath>#<piece>`.

    `staging` receives the JSONL pieces of JSON files; `records_of` turns a parsed JSON file into records."""
    import pyarrow.parquet as pq

    if lines_per_doc <= 0:
        raise ValueError("--lines-per-doc must be positive")
    input_path = input_path.resolve()
    root = input_path.parent if input_path.is_file() else input_path
    files = [input_path] if input_path.is_file() else sorted(
        p for p in input_path.rglob("*")
        if p.is_file() and p.name.lower().endswith(suffixes) and not p.name.startswith(".") and not _is_shard_json(p)
    )
    inputs: list[DocInput] = []
    for p in files:
        rel = str(p.relative_to(root))
        base = {"image_root": str(p.parent)}
        name = p.name.lower()
        if name.endswith(".jsonl"):
            for start, end, first in jsonl_pieces(p, lines_per_doc):
                inputs.append(DocInput(doc=f"{rel}#L{first}", origin=rel, path=str(p), related={
                    **base, "format": "jsonl", "start": str(start), "end": str(end), "first_line": str(first)}))
        elif name.endswith(".parquet"):
            with pq.ParquetFile(p) as pf:
                groups = pf.metadata.num_row_groups
            for g in range(groups):
                inputs.append(DocInput(doc=f"{rel}#rg{g}", origin=rel, path=str(p),
                                       related={**base, "format": "parquet", "row_group": str(g)}))
        elif name.endswith(".json"):
            inputs.extend(json_pieces(p, rel, staging, lines_per_doc, records_of))
        elif name.endswith(".csv"):
            inputs.append(DocInput(doc=rel, origin=rel, path=str(p), related={**base, "format": "csv"}))
        elif name.endswith(".tar"):
            inputs.append(DocInput(doc=rel, origin=rel, path=str(p), related={**base, "format": "tar"}))
    return inputs


def add_record_arguments(p) -> None:
    p.add_argument("--lines-per-doc", type=int, default=2000,
                   help="JSONL lines per input piece (one ledger line, one bounded task each; default %(default)s)")
