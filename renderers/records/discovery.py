"""Discovery for record files: one `DocInput` per piece of a file, so a multi-GB file is rendered in bounded parts.

Files are recognised by their publishers' own names, folders and keys (docs/importers.md):
- JSONL: runs of `lines_per_doc` lines (found by one streaming scan for newlines; the byte range goes in `related`).
- Parquet: one piece per row group (read from the footer only).
- JSON (one big array or object, as COCO, TextOCR, ChartQA, PlotQA and LLaVA publish them), `.gz` files and the
  record members of `.zip` files: read once, streaming (never held whole), and written as JSONL pieces under the
  staging folder, reused by a re-run while the source is unchanged. Table-shaped JSON is joined piece by piece at
  read time: COCO's `images` and TextOCR's `anns` go to a SQLite lookup beside the pieces.
- CSV files and WebDataset tars (img2dataset's `files` output folders too): one piece each.
- Sidecars that are not records (img2dataset's metadata Parquet and stats, COCO's detection annotations, ChartQA's
  `annotations/` and `tables/`, PlotQA's `annotations.json`, this project's shard sidecars) are skipped without a
  ledger line. Inputs that must not be read (`vlcorpus.inputs.input_problem`, zip members whose names leave the
  archive) come back refused and get a `failed` ledger line.

Each piece says where its relative image paths are looked up (`image_roots`: where the dataset's own download tools
put the images, then the file's folder and the input root) and the input root no path may leave.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import sqlite3
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path, PurePosixPath
from typing import IO

from renderers.records import downloads
from renderers.records.json_stream import TOO_LARGE, JsonStream
from renderers.records.reader import DROP, MAX_RECORD_BYTES
from vlcorpus.document import DocInput
from vlcorpus.inputs import input_problem, refused, walk_inputs
from vlcorpus.shards import atomic_write_json

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
RECORD_KEYS = ("data", "annotations", "records", "conversations", "qa_pairs", "imgs")  # an object's list of records
STAGING_VERSION = 3  # bump when what staging writes changes, so older pieces are rewritten
MAX_COMPRESSION = 100  # a .gz/.zip member decompressing to more than this many times its size is refused (a bomb)
_SCAN_BLOCK = 8 * 1024**2
_HF_METADATA = ("dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json")
_COCO_OTHER = re.compile(r"(instances|person_keypoints|stuff|panoptic|image_info)_\w+\.json")


def add_record_arguments(p) -> None:
    p.add_argument("--lines-per-doc", type=int, default=2000,
                   help="JSONL lines per input piece (one ledger line, one bounded task each; default %(default)s)")
    p.add_argument("--max-record-mb", type=float, default=MAX_RECORD_BYTES / 1024**2,
                   help="larger records are dropped unparsed and counted as record_too_large (default %(default)g)")


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


def _kind(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The record format of a file or member name: one of the `suffixes` without its dot, "gz:<format>" for a
    gzipped JSONL/JSON/CSV file, "zip" for a zip of them; None for anything else."""
    name = name.lower()
    for suffix in suffixes:
        if name.endswith(suffix):
            return suffix[1:]
        if suffix in (".jsonl", ".json", ".csv") and name.endswith(suffix + ".gz"):
            return "gz:" + suffix[1:]
    if name.endswith(".zip") and any(s in suffixes for s in (".jsonl", ".json", ".csv")):
        return "zip"
    return None


def _stem(name: str) -> str:
    name = PurePosixPath(name).name
    for suffix in (".zip", ".gz", ".jsonl", ".json", ".csv", ".parquet"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


def _columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    try:
        return set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - a broken Parquet file is a record file that fails in the ledger
        return set()


def is_sidecar(p: Path) -> bool:
    """A file beside the records that holds none, recognised by its publisher's name or folder."""
    name, d = p.name.lower(), p.parent
    if p.suffix == ".json" and (p.with_suffix(".tar").exists() or (p.name == "index.json" and any(d.glob("*.tar")))):
        return True  # this project's shard sidecars and index
    if name.endswith("_stats.json") and (d / f"{p.name[:-11]}.parquet").exists():
        return True  # img2dataset: <shard>_stats.json
    if name.endswith(".parquet") and downloads.is_metadata(_columns(p)):
        return True  # img2dataset: <shard>.parquet lists every URL it tried
    if _COCO_OTHER.fullmatch(name) or name in _HF_METADATA:
        return True  # COCO detection/keypoint annotations (no captions); HF `save_to_disk` metadata
    if d.name in ("annotations", "tables") and (d.parent / "png").is_dir():
        return True  # ChartQA: <split>/annotations/<chart>.json, <split>/tables/<chart>.csv
    return name == "annotations.json" and ((d / "png").is_dir() or (d / "png.tar.gz").exists())  # PlotQA


def image_roots(path: Path, member: str | None, root: Path) -> list[str]:
    """Where the relative image paths of a records file are looked up, in order: where each dataset's own download
    tools put its images, then the file's folder and the input root."""
    d = path.parent
    names = [path.name] + ([member] if member else [])
    found = [d / f"{_stem(n)}_images" for n in names]  # MMC4 download_images.py --input_jsonl: ./<stem>_images/
    for n in names:
        if m := re.search(r"shard_(\d+)", PurePosixPath(n).name):  # --input_shards --output_image_dir mmc4_images/
            found.append(d / "mmc4_images" / str(int(m[1])))
    if m := re.fullmatch(r"captions_(\w+)\.json", path.name):  # COCO: annotations/ beside train2017/
        found += [d.parent / m[1], d.parent / "images" / m[1], d / m[1]]
    if path.name.startswith("TextOCR_"):  # TextOCR: file_name "train/<id>.jpg", images unzipped as train_images/
        found += [d / "train_images", d / "test_images"]
    found += [d / "png", d, root]  # ChartQA and PlotQA split folders: <split>/png/
    out: list[str] = []
    for f in found:
        if f.is_dir() and input_problem(f, [root]) is None and str(f) not in out:
            out.append(str(f))
    return out


class PieceWriter:
    """Writes records as JSONL pieces of `per_piece` lines into `folder`."""

    def __init__(self, folder: Path, per_piece: int):
        self.folder, self.per_piece = folder, per_piece
        self.pieces: list[tuple[str, int, int]] = []  # (file name, first record, bytes)
        self.count = 0
        self._f: IO[bytes] | None = None

    def line(self, raw: bytes) -> None:
        if self._f is None or self.count % self.per_piece == 0:
            self._close_piece()
            name = f"{self.count:09d}.jsonl"
            self._f = open(self.folder / name, "wb")
            self.pieces.append((name, self.count, 0))
        self._f.write(raw)
        self.count += 1

    def record(self, value: object, text: str | None = None) -> None:
        """One record; `text` is its JSON text when the caller has it (copied, with the line breaks that JSON allows
        between tokens turned into spaces, instead of encoding the value again)."""
        if value is TOO_LARGE:
            text = json.dumps({DROP: "record_too_large"})
        elif text is None:
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = text.replace("\n", " ").replace("\r", " ")
        try:
            raw = (text + "\n").encode()
        except UnicodeEncodeError:  # a lone surrogate: written escaped, dropped when read (`bad_unicode`)
            raw = (json.dumps(value) + "\n").encode()
        self.line(raw)

    def _close_piece(self) -> None:
        if self._f is not None:
            name, first, _ = self.pieces[-1]
            self.pieces[-1] = (name, first, self._f.tell())
            self._f.close()
            self._f = None

    def close(self) -> None:
        self._close_piece()


class _Capped(io.RawIOBase):
    """A decompressing stream that refuses to give more than `limit` bytes (a gzip bomb stops here)."""

    def __init__(self, f: IO[bytes], limit: int, what: str):
        self.f, self.left, self.what = f, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        self.left -= n
        if self.left < 0:
            raise ValueError(f"{self.what} decompresses to more than {MAX_COMPRESSION}x its size; refused as a likely bomb")
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def _stage_jsonl(f: IO[bytes], out: PieceWriter, max_bytes: int) -> str:
    while raw := f.readline(max_bytes + 1):
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while (rest := f.readline(_SCAN_BLOCK)) and not rest.endswith(b"\n"):
                pass
            out.record(TOO_LARGE)
        else:
            out.line(raw if raw.endswith(b"\n") else raw + b"\n")
    return ""


def _stage_csv(f: IO[bytes], out: PieceWriter, max_bytes: int) -> str:
    import csv

    csv.field_size_limit(max_bytes)
    for row in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")):
        out.record(row)
    return ""


class _Lookup:
    """The lookup tables of a table-shaped JSON file, in SQLite beside its pieces, filled while the file streams."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.tables: set[str] = set()

    def images(self, items: Iterator[object]) -> None:
        """COCO `images`: id -> file_name, and how many entries have the id (two images under one id make its
        captions ambiguous: they are dropped when read)."""
        self.db.execute("CREATE TABLE IF NOT EXISTS images (id PRIMARY KEY, file_name TEXT, copies INTEGER)")
        self.db.executemany("INSERT INTO images VALUES (?, ?, 1) ON CONFLICT (id) DO UPDATE SET copies = copies + 1", (
            (i["id"], i["file_name"]) for i in items
            if isinstance(i, dict) and isinstance(i.get("id"), (int, str)) and isinstance(i.get("file_name"), str)))
        self.tables.add("images")

    def words(self, anns: Iterator[object]) -> None:
        """TextOCR `anns`: the words of each image, in file order."""
        self.db.execute("CREATE TABLE IF NOT EXISTS words (image_id TEXT, text TEXT, bbox TEXT)")
        self.db.executemany("INSERT INTO words VALUES (?, ?, ?)", (
            (str(a.get("image_id")), a.get("utf8_string"), json.dumps(a.get("bbox")))
            for a in anns if isinstance(a, dict)))
        self.db.execute("CREATE INDEX IF NOT EXISTS words_image ON words (image_id)")
        self.tables.add("words")

    def close(self) -> None:
        self.db.commit()
        self.db.close()


def _stage_json(f: IO[bytes], out: PieceWriter, max_bytes: int, lookup_path: Path) -> str:
    """Stream one JSON document's records into `out`; returns the layout to join at read time ("", "coco",
    "textocr")."""
    s = JsonStream(f, max_chars=max_bytes)
    first = s.peek()
    if first == "[":
        for value in s.array():
            out.record(value, s.text)
    elif first == "{":
        with closing(_Lookup(lookup_path)) as lookup:
            found = None
            for key in s.members():
                nxt = s.peek()
                if key == "images" and nxt == "[":
                    lookup.images(s.array())
                elif key == "anns" and nxt == "{":
                    lookup.words(s.values())
                elif found is None and key in RECORD_KEYS and nxt in "[{":
                    found = key
                    for value, text in _texts(s.array(), s) if nxt == "[" else _keyed(s):
                        out.record(value, text)
                else:
                    s.skip()
            tables = set(lookup.tables)
        if found is None:
            raise ValueError(f"no list of records in the object (looked for the keys {', '.join(RECORD_KEYS)})")
        if found == "imgs" and "words" in tables:
            return "textocr"
        if found == "annotations" and "images" in tables:
            return "coco"
    else:
        raise ValueError("not a JSON list or object of records")
    if not s.at_end():
        raise ValueError(f"more data after the JSON value (character {s.offset})")
    return ""


def _texts(values: Iterator[object], s: JsonStream) -> Iterator[tuple[object, str | None]]:
    for value in values:
        yield value, s.text


def _keyed(s: JsonStream) -> Iterator[tuple[object, str | None]]:
    """The records of an object of records (TextOCR's `imgs`), each with its key as `id` when it has none."""
    for key in s.members():
        value = s.bounded()
        if isinstance(value, dict) and "id" not in value:
            yield {"id": key, **value}, None
        else:
            yield value, s.text


_STAGERS: dict[str, Callable[..., str]] = {
    "jsonl": lambda f, out, max_bytes, lookup: _stage_jsonl(f, out, max_bytes),
    "csv": lambda f, out, max_bytes, lookup: _stage_csv(f, out, max_bytes),
    "json": _stage_json,
}


def _staged(source: Path, member: str | None, fmt: str, open_stream: Callable[[], IO[bytes]], doc_id: str, origin: str,
            staging: Path, per_piece: int, base: dict[str, str]) -> list[DocInput]:
    """JSONL pieces of one record stream (a JSON file, a .gz file, a zip member), written once and reused while the
    source is unchanged. A stream that breaks keeps the pieces before the break and adds one input that fails with
    the reason."""
    st = source.stat()
    key = {"source": str(source), "member": member, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "per_piece": per_piece, "max_record_bytes": base["max_record_bytes"], "version": STAGING_VERSION}
    folder = staging / hashlib.sha1(f"{source}:{member}".encode()).hexdigest()[:16]
    done = folder / "done.json"
    error = None
    if done.exists() and (marker := json.loads(done.read_text()))["key"] == key:
        pieces, layout = marker["pieces"], marker["layout"]
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        out = PieceWriter(folder, per_piece)
        layout = ""
        try:
            with open_stream() as f:
                layout = _STAGERS[fmt](f, out, int(base["max_record_bytes"]), folder / "lookup.sqlite")
        except (ValueError, UnicodeDecodeError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error, sqlite3.Error) as e:
            error = f"{origin}: {e}"
        out.close()
        pieces = out.pieces
        if error is None:
            atomic_write_json(done, {"key": key, "pieces": pieces, "layout": layout})
    unit = "L" if fmt == "jsonl" else "R"
    related = {**base, "format": "jsonl"} | ({"layout": layout, "lookup": str(folder / "lookup.sqlite")} if layout else {})
    inputs = [DocInput(doc=f"{doc_id}#{unit}{first}", origin=origin, path=str(folder / name),
                       related={**related, "start": "0", "end": str(size), "first_line": str(first)})
              for name, first, size in pieces]
    if error is not None:
        done_before = f" (the {out.count} records before it are imported)" if out.count else ""
        inputs.append(DocInput(doc=doc_id, origin=origin, path=str(source),
                               related={"format": "invalid", "error": f"not a usable records file: {error}{done_before}"}))
    return inputs


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        return "the member's name leaves the archive (absolute path or '..'); not read"
    if info.file_size > 16 * 1024**2 and info.file_size > MAX_COMPRESSION * max(1, info.compress_size):
        return f"the member decompresses {info.file_size // max(1, info.compress_size)}x (a likely zip bomb); not read"
    return None


def _file_inputs(p: Path, rel: str, root: Path, staging: Path, suffixes: tuple[str, ...], per_piece: int,
                 max_record_bytes: int) -> list[DocInput]:
    kind = _kind(p.name, suffixes)
    base = {"input_root": str(root), "image_roots": json.dumps(image_roots(p, None, root)),
            "max_record_bytes": str(max_record_bytes)}
    if kind == "zip":
        return _zip_inputs(p, rel, root, staging, suffixes, per_piece, base)
    if kind and kind.startswith("gz:"):
        cap = max(MAX_COMPRESSION * p.stat().st_size, 64 * 1024**2)

        def opener() -> IO[bytes]:
            return io.BufferedReader(_Capped(gzip.open(p), cap, rel), _SCAN_BLOCK)

        return _staged(p, None, kind[3:], opener, rel, rel, staging, per_piece, base)
    if kind == "jsonl":
        return [DocInput(doc=f"{rel}#L{first}", origin=rel, path=str(p), related={
            **base, "format": "jsonl", "start": str(start), "end": str(end), "first_line": str(first)})
            for start, end, first in jsonl_pieces(p, per_piece)]
    if kind == "json":
        return _staged(p, None, "json", lambda: open(p, "rb"), rel, rel, staging, per_piece, base)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(p) as pf:
                groups = pf.metadata.num_row_groups
        except Exception as e:  # noqa: BLE001 - the ledger says so; the job goes on
            return [DocInput(doc=rel, origin=rel, path=str(p), related={"format": "invalid", "error": f"not a readable Parquet file: {e}"})]
        return [DocInput(doc=f"{rel}#rg{g}", origin=rel, path=str(p), related={**base, "format": "parquet", "row_group": str(g)})
                for g in range(groups)]
    return [DocInput(doc=rel, origin=rel, path=str(p), related={**base, "format": kind})]  # csv, tar: one piece


def _zip_inputs(p: Path, rel: str, root: Path, staging: Path, suffixes: tuple[str, ...], per_piece: int,
                base: dict[str, str]) -> list[DocInput]:
    """The record members of a zip (MMC4 ships one JSONL per shard zip), read in place: never extracted."""
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        return [DocInput(doc=rel, origin=rel, path=str(p), related={"format": "invalid", "error": f"not a readable zip file: {e}"})]
    inputs: list[DocInput] = []
    with z:
        for info in z.infolist():
            kind = _kind(info.filename, tuple(s for s in suffixes if s in (".jsonl", ".json", ".csv")))
            if info.is_dir() or kind not in ("jsonl", "json", "csv"):
                continue
            origin = f"{rel}:{info.filename}"
            if (problem := _unsafe_member(info)) is not None:
                inputs.append(refused(origin, origin, p, problem))
                continue
            member_base = {**base, "image_roots": json.dumps(image_roots(p, info.filename, root))}
            inputs += _staged(p, info.filename, kind, lambda info=info: z.open(info), origin, origin, staging, per_piece, member_base)
    return inputs


def _img2dataset_folders(candidates: list[Path]) -> dict[Path, Path]:
    """img2dataset `--output_format files` shard folders (`NNNNN/` beside `NNNNN.parquet` and `NNNNN_stats.json`)
    -> their metadata Parquet."""
    out = {}
    for p in candidates:
        if p.name.endswith("_stats.json"):
            folder, meta = p.parent / p.name[:-11], p.parent / f"{p.name[:-11]}.parquet"
            if folder.is_dir() and meta.exists():
                out[folder] = meta
    return out


def record_inputs(input_path: Path, staging: Path, suffixes: tuple[str, ...] = RECORD_SUFFIXES, lines_per_doc: int = 2000,
                  max_record_bytes: int = MAX_RECORD_BYTES, downloads_index: bool = False) -> list[DocInput]:
    """Every record file under `input_path` (or the file itself), split into pieces; ids are `<relpath>#<piece>`
    (`<relpath>:<member>#<piece>` inside a zip).

    `staging` receives the JSONL pieces and lookups of JSON, compressed and zipped files. With `downloads_index`,
    img2dataset downloads under the input are indexed by URL (`renderers.records.downloads`) and every piece says
    where the index is."""
    if lines_per_doc <= 0:
        raise ValueError("--lines-per-doc must be positive")
    if max_record_bytes <= 0:
        raise ValueError("--max-record-mb must be positive")
    input_path = input_path.resolve()
    root = input_path.parent if input_path.is_file() else input_path
    if input_path.is_file():
        entries = [(input_path, input_problem(input_path, [root]))]
    else:
        entries = list(walk_inputs(root, lambda p: not p.name.startswith(".") and (
            _kind(p.name, suffixes) is not None or p.name.endswith("_stats.json"))))
    i2d_folders = _img2dataset_folders([p for p, problem in entries if problem is None])
    inputs: list[DocInput] = []
    for p, problem in entries:
        rel = str(p.relative_to(root))
        if problem is not None:
            inputs.append(refused(rel, rel, p, problem))
        elif _kind(p.name, suffixes) and (p == input_path or (p.parent not in i2d_folders and not is_sidecar(p))):
            inputs += _file_inputs(p, rel, root, staging, suffixes, lines_per_doc, max_record_bytes)
    if ".tar" in suffixes:  # img2dataset `files` output: one WebDataset-like folder per shard
        for folder in sorted(i2d_folders):
            rel = str(folder.relative_to(root))
            inputs.append(DocInput(doc=rel, origin=rel, path=str(folder), related={"format": "files", "input_root": str(root)}))
    if downloads_index:
        index = _downloads(root, entries, i2d_folders, staging)
        if index:
            inputs = [DocInput(d.doc, d.origin, d.path, {**d.related, "downloads": index}) for d in inputs]
    return inputs


def _downloads(root: Path, entries: list[tuple[Path, str | None]], i2d_folders: dict[Path, Path], staging: Path) -> str:
    """Index the img2dataset downloads under the input by URL; the index's path, or "" when there are none."""
    shards = []
    for p, problem in entries:
        if problem is None and p.name.endswith(".parquet") and downloads.is_metadata(_columns(p)):
            tar, folder = p.with_suffix(".tar"), p.with_suffix("")
            shards.append((p, folder if folder in i2d_folders else None,
                           tar if tar.exists() and input_problem(tar, [root]) is None else None))
    if not shards:
        return ""
    staging.mkdir(parents=True, exist_ok=True)
    db = staging / "downloads.sqlite"
    downloads.build(shards, db)
    return str(db)
