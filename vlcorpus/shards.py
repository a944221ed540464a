"""Atomic WebDataset shards with sidecars, and the reader that turns them back into `Sample`s.

A shard appears only when complete: it is written to a hidden temporary name, fsynced and renamed; then its
sidecar `<stem>.json` (samples, bytes, checksum, text tokens, images, docs) is written the same way. So a sidecar
never points at missing data and a crash leaves at most a `.tmp` file that `clean_partial` removes.

The sidecar's `checksum` is `"xxh3_128:<32 hex>"` over the whole tar. Sidecars written before it carried
`"sha256": "<64 hex>"`; readers accept both (`ShardInfo.from_json` reads the old field as `"sha256:<hex>"`, and
`verify_shard` checks whichever algorithm the sidecar names). Why xxh3-128: the checksum guards against torn or
corrupted files, not an adversary (whoever can change a shard can change its sidecar), and sha256 capped shard
writing below plain `webdataset.TarWriter` (figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import xxhash

from vlcorpus import storage
from vlcorpus.sample import Sample

DEFAULT_MAX_BYTES = 256 * 1024**2
DEFAULT_MAX_SAMPLES = 10_000
TMP_SUFFIX = ".tmp"
CHECKSUM = "xxh3_128"  # what writers use; readers also verify the "sha256" of older sidecars
HASHES: dict[str, Callable[[], object]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


class ChecksumError(IOError):
    """A shard whose bytes no longer match the checksum its sidecar recorded."""


@dataclass
class ShardInfo:
    """The sidecar of one shard; `index.json` lists these."""

    shard: str
    samples: int = 0
    bytes: int = 0
    checksum: str = ""  # "<algorithm>:<hex digest>" of the whole tar file
    text_tokens: int = 0
    images: int = 0
    docs: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> ShardInfo:
        """A sidecar or `index.json` entry; one written before the checksum change (`sha256`) reads as `sha256:<hex>`."""
        data = dict(data)
        if "sha256" in data:
            data.setdefault("checksum", f"sha256:{data.pop('sha256')}")
        return cls(**data)


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


_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_WRITE_BUFFER = 1024**2
# The constant parts of the ustar block tarfile writes for our members (mode 0444, uid/gid 0, mtime 0, regular file,
# POSIX magic, owner "bigdata"), around the name, size and checksum fields.
_MODE_IDS = b"0000444\x000000000\x000000000\x00"
_MTIME = b"00000000000\x00"
_TAIL = b"0" + bytes(100) + b"ustar\x0000" + b"bigdata".ljust(32, b"\x00") * 2 + bytes(16 + 155 + 12)
_CHECKSUM_BASE = sum(_MODE_IDS) + sum(_MTIME) + sum(_TAIL) + 8 * ord(" ")


def member_header(name: str, size: int) -> bytes:
    """The header `tarfile` (PAX format, as webdataset's TarWriter uses it) writes for one of our members. A name of
    at most 100 ASCII bytes and a size under 8 GiB (every key of the contract) need a plain ustar block, built here
    directly because `TarInfo.tobuf` costs more than writing a small member; anything else goes through tarfile."""
    if name.isascii() and len(name) <= 100 and size < 8**11:
        raw, size_field = name.encode("ascii"), b"%011o\x00" % size
        checksum = _CHECKSUM_BASE + sum(raw) + sum(size_field)
        return raw.ljust(100, b"\x00") + _MODE_IDS + size_field + _MTIME + b"%06o\x00 " % checksum + _TAIL
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "bigdata", "bigdata"
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


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
        self._file = None

    def write(self, sample: Sample, members: dict | None = None) -> str:
        """Append one sample (its `to_wds()` members, if the caller already made them); return the shard's name."""
        members = members or sample.to_wds()
        if self._file is None:
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
        self._file = open(self._tmp, "wb", buffering=_WRITE_BUFFER)
        self._hash = HASHES[CHECKSUM]()
        self._offset = 0
        self._info = ShardInfo(shard=name)
        self._docs: set[str] = set()
        self._written = 0

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def _add(self, members: dict) -> int:
        """Append one sample's members exactly as `webdataset.TarWriter` lays them out through `tarfile` (sorted
        `<key>.<suffix>` names, mode 0444, owner "bigdata", tarfile's default PAX format), with mtime 0 so that the
        same samples give the same bytes. Each member is a header, the data and zero padding to 512 bytes, written
        and hashed once each: no `tarfile` stream in between, whose 10 KB records and copies cost more than the
        data itself, and no webdataset import (it pulls in torch, seconds per pipeline worker).
        Returns the payload bytes added."""
        key, total = members["__key__"], 0
        for suffix in sorted(k for k in members if k != "__key__"):
            data = members[suffix]
            self._put(member_header(f"{key}.{suffix}", len(data)))
            self._put(data)
            if len(data) % _BLOCK:
                self._put(bytes(_BLOCK - len(data) % _BLOCK))
            total += len(data)
        return total

    def _finish(self) -> None:
        assert self._file is not None and self._info is not None
        end = self._offset + 2 * _BLOCK  # two zero blocks close the archive; tarfile then pads to whole records
        self._put(bytes(2 * _BLOCK + (-end) % _RECORD))
        self._info.checksum = f"{CHECKSUM}:{self._hash.hexdigest()}"
        self._info.bytes = self._offset
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        fsync_dir(self.folder)
        atomic_write_json(sidecar_path(self._final), asdict(self._info))
        self.finished.append(self._info)
        self._file, self._info = None, None

    def close(self) -> list[ShardInfo]:
        if self._file is not None:
            self._finish()
        return self.finished

    def checkpoint(self) -> dict:
        """Where this writer stands between two samples, as plain data: enough for `resume` in another process."""
        current = None
        if self._file is not None:
            self._file.flush()  # the bytes are the kernel's now: a killed process does not lose them
            current = {"info": asdict(self._info), "offset": self._offset, "written": self._written}
        return {"index": self.index, "current": current}

    @classmethod
    def resume(cls, folder: str | Path, prefix: str, max_bytes: int, max_samples: int, state: dict) -> ShardWriter:
        """Continue the writer whose `checkpoint()` is `state`, after the process holding it died: shards it started
        later are removed, the open one is cut back to the checkpoint's length (and reopened if it had been finished
        since) and its checksum recomputed over what stays."""
        w = cls(folder, prefix, max_bytes, max_samples, start_index=state["index"])
        current = state["current"]
        remove_shards(w.folder, prefix, from_index=state["index"])
        if current is None:
            return w
        name = current["info"]["shard"]
        w._final, w._tmp = w.folder / name, w.folder / f".{name}{TMP_SUFFIX}"
        if not w._tmp.exists():
            os.replace(w._final, w._tmp)
        sidecar_path(w._final).unlink(missing_ok=True)
        w._file = open(w._tmp, "r+b", buffering=_WRITE_BUFFER)
        w._file.truncate(current["offset"])
        w._hash = HASHES[CHECKSUM]()
        while chunk := w._file.read(1 << 22):
            w._hash.update(chunk)
        w._offset, w._written = current["offset"], current["written"]
        w._info = ShardInfo(**current["info"])
        w._docs = set(w._info.docs)
        return w

    def abort(self) -> None:
        """Drop the shard being written (finished shards stay); safe to call after a failed write."""
        if self._file is not None:
            f, self._file, self._info = self._file, None, None
            try:
                f.close()
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


def remove_shards(folder: Path, prefix: str, from_index: int = 0) -> None:
    """Remove the shards `<prefix>-NNNNNN` numbered `from_index` or more, with their sidecars and temporary files."""
    for p in [*folder.glob(f"{prefix}-*"), *folder.glob(f".{prefix}-*")]:
        number = p.name.lstrip(".")[len(prefix) + 1 : len(prefix) + 7]
        if number.isdigit() and int(number) >= from_index:
            p.unlink(missing_ok=True)


def sidecar_path(shard: storage.Location) -> storage.Location:
    if storage.is_remote(shard):
        return str(shard).removesuffix(".tar") + ".json"
    return Path(shard).with_suffix(".json")


def read_sidecar(shard: storage.Location) -> ShardInfo:
    return ShardInfo.from_json(json.loads(storage.read_bytes(sidecar_path(shard))))


def file_checksum(path: storage.Location, algorithm: str = CHECKSUM) -> str:
    """`"<algorithm>:<hex digest>"` of a file or object, read in 4 MB blocks."""
    h = HASHES[algorithm]()
    with storage.open_read(path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def verify_shard(shard: storage.Location) -> ShardInfo:
    """Raise ChecksumError unless the shard exists and matches its sidecar's size and checksum (either algorithm)."""
    shard = storage.location(shard)
    if not storage.exists(shard):
        raise ChecksumError(f"{shard}: shard is missing")
    if not storage.exists(sidecar_path(shard)):
        raise ChecksumError(f"{shard}: sidecar {storage.name(sidecar_path(shard))} is missing")
    info = read_sidecar(shard)
    size = storage.size(shard)
    if size != info.bytes:
        raise ChecksumError(f"{shard}: {size} bytes on disk, sidecar says {info.bytes}")
    algorithm = info.checksum.partition(":")[0]
    if algorithm not in HASHES:
        raise ChecksumError(f"{shard}: sidecar checksum {info.checksum[:24]!r} names no known algorithm ({', '.join(HASHES)})")
    digest = file_checksum(shard, algorithm)
    if digest != info.checksum:
        raise ChecksumError(f"{shard}: checksum {digest[:24]}… does not match the sidecar's {info.checksum[:24]}…")
    return info


def iter_members(shard: str | Path) -> Iterator[dict]:
    """The raw member dicts of one tar (`__key__`, then suffix -> bytes), grouped as `webdataset` groups them:
    consecutive members whose names share the part before the first dot of the basename."""
    current: dict = {}
    with storage.open_read(shard) as f, tarfile.open(fileobj=f, mode="r|") as tf:
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


def read_shard(shard: str | Path, verify: bool = False) -> Iterator[Sample]:
    if verify:
        verify_shard(shard)
    for members in iter_members(shard):
        yield Sample.from_wds(members)


def shard_paths(path: str | Path) -> list[storage.Location]:
    """A shard, a category folder, or a corpus folder (every category under it), as a sorted list of tars."""
    path = storage.location(path)
    if storage.is_remote(path):
        if path.endswith(".tar"):
            return [path]
        tars = [u for u in storage.find(path) if u.endswith(".tar") and not storage.name(u).startswith(".")]
        if not tars and not storage.exists(path):
            raise FileNotFoundError(f"{path}: no such shard or prefix")
        return tars
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such shard or folder")
    return sorted(p for p in path.rglob("*.tar") if not p.name.startswith("."))


def read_samples(paths: Iterable[str | Path], verify: bool = False) -> Iterator[Sample]:
    for p in paths:
        yield from read_shard(p, verify=verify)


def write_index(category_dir: storage.Location) -> list[ShardInfo]:
    """Rebuild `<category>/index.json` from the sidecars on disk (the sidecars are the truth)."""
    if storage.is_remote(category_dir):
        listed = set(storage.glob(f"{category_dir}/*"))
        infos = read_sidecars([u for u in sorted(listed) if u.endswith(".tar") and sidecar_path(u) in listed])
    else:
        infos = [read_sidecar(p) for p in sorted(category_dir.glob("*.tar")) if sidecar_path(p).exists()]
    summary = {
        "category": storage.name(category_dir),
        "shards": [asdict(i) for i in infos],
        "samples": sum(i.samples for i in infos),
        "bytes": sum(i.bytes for i in infos),
        "text_tokens": sum(i.text_tokens for i in infos),
        "images": sum(i.images for i in infos),
    }
    if storage.is_remote(category_dir):
        storage.write_json(f"{category_dir}/index.json", summary)
    else:
        atomic_write_json(category_dir / "index.json", summary)
    return infos


def shard_under(root: storage.Location, name: str) -> storage.Location:
    """`root / name` for a shard that an `index.json` or `mixture.json` names, refused (ValueError) when its real
    path leaves `root` (`../../outside/stolen.tar`, an absolute path, a symlink out): those files are data, and a
    corpus or mixture is read only where it lies. On a store, where there are no links, a name must be one plain
    object name below `root`."""
    if storage.is_remote(root):
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{root}: the shard {name!r} it lists leaves {root}; refused")
        return storage.join(root, name)
    path = Path(root) / name
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
        raise ValueError(f"{root}: the shard {name!r} it lists leaves {root}; refused")
    return path


def read_sidecars(tars: list[str]) -> list[ShardInfo]:
    """The sidecars of shards on a store, fetched concurrently (one GET each)."""
    if not tars:
        return []
    fs, _ = storage.filesystem(tars[0])
    paths = [storage.filesystem(sidecar_path(t))[1] for t in tars]
    blobs = fs.cat(paths)
    return [ShardInfo.from_json(json.loads(blobs[p])) for p in paths]


def read_index(category_dir: str | Path) -> dict:
    path = storage.join(storage.location(category_dir), "index.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{category_dir}: no index.json (not a corpus category folder, or never finished)")
    return json.loads(storage.read_bytes(path))


def clean_partial(folder: Path) -> list[Path]:
    """Remove temporary files a crashed writer left behind; return what was removed."""
    removed = [p for p in folder.glob(f".*{TMP_SUFFIX}")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
