"""Discovery for record files: one `DocInput` per piece of a file, so a multi-GB file is rendered in bounded parts.

JSONL: runs of `lines_per_doc` lines (found by one streaming scan for newlines; the byte range goes in `related`).
Parquet: one piece per row group (read from the footer only). JSON and CSV files: one piece each.
"""

from __future__ import annotations

from pathlib import Path

from vlcorpus.driver import DocInput

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


def record_inputs(input_path: Path, suffixes: tuple[str, ...] = RECORD_SUFFIXES, lines_per_doc: int = 2000) -> list[DocInput]:
    """Every record file under `input_path` (or the file itself), split into pieces; ids are `<relpath>#<piece>`."""
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
        elif name.endswith((".json", ".csv")):
            inputs.append(DocInput(doc=rel, origin=rel, path=str(p), related={**base, "format": name.rsplit(".", 1)[1]}))
        elif name.endswith(".tar"):
            inputs.append(DocInput(doc=rel, origin=rel, path=str(p), related={**base, "format": "tar"}))
    return inputs


def add_record_arguments(p) -> None:
    p.add_argument("--lines-per-doc", type=int, default=2000,
                   help="JSONL lines per input piece (one ledger line, one bounded task each; default %(default)s)")
