"""Atomic WebDataset shards with sidecars, and the reader that turns them back into `Sample`s.

A shard appears only when complete: it is written to a hidden temporary name, fsynced and renamed; then its
sidecar `<stem>.json` (samples, bytes, sha256, text tokens, images, docs) is written the same way. So a sidecar
never points at missing data and a crash leaves at most a `.tmp` file that `clean_partial` removes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlcorpus.sample import Sample

DEFAULT_MAX_BYTES = 256 * 1024**2
DEFAULT_MAX_SAMPLES = 10_000
TMP_SUFFIX = ".tmp"


class ChecksumError(IOError):
    """A shard whose bytes no longer match the sha256 its sidecar recorded."""


@dataclass
class ShardInfo:
    """The sidecar of one shard; `index.json` lists these."""

    shard: str
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    text_tokens: int = 0
    images: int = 0
    docs: list[str] = field(default_factory=list)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8"))


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it on a helper thread, a few MB at a time, while the tar
    stream goes on encoding (hashlib releases the GIL): the checksum costs no second pass over the shard."""

    BLOCK = 4 * 1024**2

    def __init__(self, f: io.BufferedWriter):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self._chunks: list[bytes] = []
        self._chunk_bytes = 0
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._pending: Future | None = None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        n = self.f.write(b)
        self._chunks.append(b)
        self._chunk_bytes += n
        self.size += n
        if self._chunk_bytes >= self.BLOCK:
            self._hash_chunks()
        return n

    def _hash_chunks(self) -> None:
        if self._pending is not None:
            self._pending.result()
        chunks, self._chunks, self._chunk_bytes = self._chunks, [], 0
        self._pending = self._hasher.submit(lambda: [self.sha.update(c) for c in chunks])

    def finish(self) -> str:
        """The sha256 of everything written."""
        self._hash_chunks()
        self._pending.result()
        self._hasher.shutdown()
        return self.sha.hexdigest()

    def discard(self) -> None:
        self._hasher.shutdown(cancel_futures=True)


class ShardWriter:
    """Write samples into `<folder>/<prefix>-<NNNNNN>.tar`, rolling to a new shard at `max_bytes` or `max_samples`.

    Like `webdataset.ShardWriter`, plus: contract validation, a fixed mtime (same samples -> same bytes),
    temporary name + fsync + rename, and a sidecar per shard. `close()` returns the finished shards' infos.
    """

    def __init__(
        self,
        folder: str | Path,
        prefix: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        start_index: int = 0,
    ):
        if "." in prefix or "/" in prefix:
            raise ValueError(f"shard prefix {prefix!r} must not contain '.' or '/'")
        if max_bytes <= 0 or max_samples <= 0:
            raise ValueError("max_bytes and max_samples must be positive")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_bytes, self.max_samples = prefix, max_bytes, max_samples
        self.index = start_index
        self.finished: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None

    def write(self, sample: Sample) -> str:
        """Append one sample; return the name of the shard it went into."""
        members = sample.to_wds()
        if self._tar is None:
            self._open()
        assert self._info is not None
        self._written += self._add(members)
        info = self._info
        info.samples += 1
        info.text_tokens += sample.text_tokens
        info.images += len(sample.images)
        if sample.doc not in self._docs:
            self._docs.add(sample.doc)
            info.docs.append(sample.doc)
        name = info.shard
        if self._written >= self.max_bytes or info.samples >= self.max_samples:
            self._finish()
        return name

    def _open(self) -> None:
        name = f"{self.prefix}-{self.index:06d}.tar"
        self.index += 1
        self._final = self.folder / name
        self._tmp = self.folder / f".{name}{TMP_SUFFIX}"
        self._file = open(self._tmp, "wb")
        self._hasher = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w|")
        self._info = ShardInfo(shard=name)
        self._docs: set[str] = set()
        self._written = 0

    def _add(self, members: dict) -> int:
        """Append one sample's members exactly as `webdataset.TarWriter` lays them out (sorted `<key>.<suffix>`
        names, mode 0444, owner "bigdata"), with mtime 0 so that the same samples give the same bytes. Written here
        rather than through TarWriter, whose import pulls in torch: every pipeline worker would pay seconds for it.
        Returns the payload bytes added (the tar stream itself flushes in 10 KB records)."""
        key, total = members["__key__"], 0
        for suffix in sorted(k for k in members if k != "__key__"):
            data = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "bigdata", "bigdata"
            self._tar.addfile(info, io.BytesIO(data))
            total += info.size
        return total

    def _finish(self) -> None:
        assert self._tar is not None and self._info is not None
        self._tar.close()  # writes the end-of-archive blocks; our underlying file stays open
        self._info.sha256 = self._hasher.finish()
        self._info.bytes = self._hasher.size
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        fsync_dir(self.folder)
        atomic_write_json(sidecar_path(self._final), asdict(self._info))
        self.finished.append(self._info)
        self._tar, self._info = None, None

    def close(self) -> list[ShardInfo]:
        if self._tar is not None:
            self._finish()
        return self.finished

    def abort(self) -> None:
        """Drop the shard being written (finished shards stay); safe to call after a failed write."""
        if self._tar is not None:
            self._tar, self._info = None, None
            self._hasher.discard()
            try:
                self._file.close()
            except OSError:
                pass  # flushing bytes we are about to delete failed (e.g. disk full): nothing is lost
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sidecar_path(shard: Path) -> Path:
    return shard.with_suffix(".json")


def read_sidecar(shard: Path) -> ShardInfo:
    return ShardInfo(**json.loads(sidecar_path(shard).read_text("utf-8")))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify_shard(shard: Path) -> ShardInfo:
    """Raise ChecksumError unless the shard exists and matches its sidecar's size and sha256."""
    shard = Path(shard)
    if not shard.exists():
        raise ChecksumError(f"{shard}: shard is missing")
    if not sidecar_path(shard).exists():
        raise ChecksumError(f"{shard}: sidecar {sidecar_path(shard).name} is missing")
    info = read_sidecar(shard)
    size = shard.stat().st_size
    if size != info.bytes:
        raise ChecksumError(f"{shard}: {size} bytes on disk, sidecar says {info.bytes}")
    digest = file_sha256(shard)
    if digest != info.sha256:
        raise ChecksumError(f"{shard}: sha256 {digest[:12]}… does not match the sidecar's {info.sha256[:12]}…")
    return info


def iter_members(shard: str | Path) -> Iterator[dict]:
    """The raw member dicts of one tar (`__key__`, then suffix -> bytes), grouped as `webdataset` groups them:
    consecutive members whose names share the part before the first dot of the basename."""
    current: dict = {}
    with tarfile.open(shard, mode="r|") as tf:
        for ti in tf:
            if not ti.isfile():
                continue
            slash = ti.name.rfind("/") + 1
            dot = ti.name.find(".", slash)
            if dot < 0:
                continue
            key, suffix = ti.name[:dot], ti.name[dot + 1 :]
            if current and key != current["__key__"]:
                yield current
                current = {}
            if not current:
                current = {"__key__": key, "__url__": str(shard)}
            current[suffix] = tf.extractfile(ti).read()
    if current:
        yield current


def ray_data_row(members: dict) -> dict:
    """One sample as a row with the same columns whatever it holds: `ray.data.read_webdataset(tars,
    decoder=ray_data_row)`. Ray's default decoding makes a column per member and casts each image column to one
    tensor type, which fails as soon as samples differ in image count, format, size or mode (any corpus or mixture).
    Columns: `__key__`, `__url__`, `json` (the sample's JSON text) and `images` (encoded bytes, in the order the
    segments name them)."""
    segments = json.loads(members["json"])["segments"]
    return {
        "__key__": members["__key__"],
        "__url__": members.get("__url__", ""),
        "json": members["json"].decode("utf-8"),
        "images": tuple(members[s["image"]] for s in segments if "image" in s),  # a tuple: Ray unwraps 1-item lists
    }


def read_shard(shard: str | Path, verify: bool = False) -> Iterator[Sample]:
    if verify:
        verify_shard(Path(shard))
    for members in iter_members(shard):
        yield Sample.from_wds(members)


def shard_paths(path: str | Path) -> list[Path]:
    """A shard, a category folder, or a corpus folder (every category under it), as a sorted list of tars."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such shard or folder")
    return sorted(p for p in path.rglob("*.tar") if not p.name.startswith("."))


def read_samples(paths: Iterable[str | Path], verify: bool = False) -> Iterator[Sample]:
    for p in paths:
        yield from read_shard(p, verify=verify)


def write_index(category_dir: Path) -> list[ShardInfo]:
    """Rebuild `<category>/index.json` from the sidecars on disk (the sidecars are the truth)."""
    infos = [read_sidecar(p) for p in sorted(category_dir.glob("*.tar")) if sidecar_path(p).exists()]
    summary = {
        "category": category_dir.name,
        "shards": [asdict(i) for i in infos],
        "samples": sum(i.samples for i in infos),
        "bytes": sum(i.bytes for i in infos),
        "text_tokens": sum(i.text_tokens for i in infos),
        "images": sum(i.images for i in infos),
    }
    atomic_write_json(category_dir / "index.json", summary)
    return infos


def read_index(category_dir: str | Path) -> dict:
    path = Path(category_dir) / "index.json"
    if not path.exists():
        raise FileNotFoundError(f"{category_dir}: no index.json (not a corpus category folder, or never finished)")
    return json.loads(path.read_text("utf-8"))


def clean_partial(folder: Path) -> list[Path]:
    """Remove temporary files a crashed writer left behind; return what was removed."""
    removed = [p for p in folder.glob(f".*{TMP_SUFFIX}")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
