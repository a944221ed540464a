"""Images that img2dataset downloaded, found by their URL: OBELICS publishes image URLs only, and its card says to
download them with img2dataset; MMC4 records carry each image's `raw_url` too.

img2dataset writes, per shard, `NNNNN.parquet` (`url`, `key`, `status` of every URL it tried) beside `NNNNN.tar`
(members `<key>.jpg` ...) or, with `--output_format files`, a folder `NNNNN/` of `<key>.jpg` files. `build` joins
the two into a SQLite table `url -> (file, offset, size)` once per job (tar members are located by their header,
never extracted); `Downloads.read` returns the bytes of one URL's image through the image gate's safe reader.
"""

from __future__ import annotations

import sqlite3
import tarfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from renderers.images import read_regular

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
METADATA_COLUMNS = {"url", "key", "status"}


def is_metadata(columns: set[str]) -> bool:
    """An img2dataset shard's metadata Parquet (every URL it tried, with its status), not records."""
    return METADATA_COLUMNS | {"error_message"} <= columns


def _tar_members(tar: Path) -> dict[str, tuple[int, int]]:
    """key -> (offset, size) of the image members of a plain tar, from the headers alone."""
    out = {}
    with tarfile.open(tar, "r:") as tf:
        for m in tf:
            name = m.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if m.isfile() and ext.lower() in IMAGE_EXTS:
                out.setdefault(key, (m.offset_data, m.size))
    return out


def _rows(metadata: Path, folder: Path | None, tar: Path | None) -> Iterator[tuple[str, str, int, int]]:
    import pyarrow.parquet as pq

    members = _tar_members(tar) if tar else {}
    files = {p.name.partition(".")[0]: p for p in folder.iterdir() if p.name.partition(".")[2].lower() in IMAGE_EXTS} if folder else {}
    with pq.ParquetFile(metadata) as pf:
        for batch in pf.iter_batches(columns=["url", "key", "status"], use_threads=False):
            for r in batch.to_pylist():
                if r["status"] != "success" or not r["url"]:
                    continue
                if r["key"] in members:
                    yield r["url"], str(tar), *members[r["key"]]
                elif r["key"] in files:
                    p = files[r["key"]]
                    yield r["url"], str(p), 0, p.stat().st_size


def build(shards: list[tuple[Path, Path | None, Path | None]], db_path: Path) -> int:
    """Index the downloads of img2dataset shards (metadata parquet, its `files` folder or None, its tar or None)
    into `db_path`; returns how many URLs have an image."""
    db_path.unlink(missing_ok=True)
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("CREATE TABLE urls (url TEXT PRIMARY KEY, path TEXT, offset INTEGER, size INTEGER)")
        for metadata, folder, tar in shards:
            db.executemany("INSERT OR IGNORE INTO urls VALUES (?, ?, ?, ?)", _rows(metadata, folder, tar))
        db.commit()
        return db.execute("SELECT count(*) FROM urls").fetchone()[0]


class Downloads:
    """URL -> image bytes from an index `build` wrote; reads stay inside `allowed` (the job's input root)."""

    def __init__(self, db_path: str, allowed: tuple[str, ...]):
        self.db = sqlite3.connect(f"file:{db_path}?mode=ro&immutable=1", uri=True)
        self.allowed = allowed

    def read(self, url: str, max_bytes: int) -> bytes | None:
        row = self.db.execute("SELECT path, offset, size FROM urls WHERE url = ?", (url,)).fetchone()
        if row is None:
            return None
        path, offset, size = row
        return read_regular(path, self.allowed, max_bytes, offset=offset, size=size)

    def close(self) -> None:
        self.db.close()
