"""Object storage: the one filesystem layer every command's paths go through.

A path is a local path or a URL (`s3://bucket/prefix`, `gs://bucket/prefix`); `location` keeps each as it is (a
`Path`, or a URL string). Local paths keep the local code (temporary name, fsync, rename). Object stores have no
rename, so the rules there are:

- an object appears whole or not at all: a single PUT, or a multipart upload completed only after its last part
  (`put_file`); `abort_uploads` removes the parts a killed upload left;
- the ledger is the commit record: a shard the ledger does not name is ignored and removed on resume
  (`driver.reconcile`), and ledger lines are immutable segment objects, one per commit (`vlcorpus.ledger`);
- one job per output: a lock object written with a conditional put (`Lock`);
- tools that need local files get a per-worker scratch folder (`scratch`), removed on every exit path.

Why fsspec (with s3fs and gcsfs) and not pyarrow.fs: it has the conditional put (`mode="create"`, S3's
`If-None-Match: *`) the lock needs, which pyarrow.fs lacks; `webdataset`, Ray Data and torch's loaders take its
URLs; and s3fs reads the standard `AWS_*` variables (`AWS_ENDPOINT_URL` for MinIO, Ceph, R2) through botocore, so
no project setting exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import fsspec
import psutil

SCHEMES = ("s3", "gs", "gcs")
SCRATCH_PREFIX = "vlcorpus-scratch-"

Location = Path | str  # a local Path or an object-store URL


class StorageError(RuntimeError):
    """The store cannot be used as given (bucket missing, no credentials, nothing under a prefix): says what to fix."""


def is_remote(path: Location) -> bool:
    return isinstance(path, str) and path.split("://", 1)[0] in SCHEMES and "://" in path


def location(text: str | Path) -> Location:
    """A command-line path: a URL of a known scheme stays a string (without a trailing slash), anything else a Path.
    An unknown scheme (`s4://`, `http://`) stops here rather than becoming a local folder named `s4:`."""
    text = str(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme not in SCHEMES:
            raise ValueError(f"{text}: unsupported storage scheme {scheme!r}; use a local path or one of "
                             f"{', '.join(s + '://' for s in SCHEMES)}")
        return text.rstrip("/")
    return Path(text)


def join(base: Location, *parts: str) -> Location:
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(base).joinpath(*parts)


def name(path: Location) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `url` and the path inside it (bucket/key)."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def exists(path: Location) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    fs, p = filesystem(path)
    return fs.exists(p)


def glob(pattern: str) -> list[str]:
    """URLs of the objects matching `pattern` (a URL with `*`), sorted; listed fresh (no cached listing)."""
    fs, p = filesystem(pattern)
    fs.invalidate_cache()
    return sorted(_url(fs, m) for m in fs.glob(p))


def find(prefix: str) -> list[str]:
    """URLs of every object under `prefix`, sorted."""
    fs, p = filesystem(prefix)
    fs.invalidate_cache()
    return sorted(_url(fs, m) for m in fs.find(p))


def read_bytes(path: Location) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    fs, p = filesystem(path)
    return fs.cat_file(p)


def write_bytes(url: str, data: bytes) -> None:
    """One PUT: the object appears whole or not at all."""
    fs, p = filesystem(url)
    fs.pipe_file(p, data)


def write_json(url: str, obj: object) -> None:
    write_bytes(url, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8"))


def open_read(path: Location) -> IO[bytes]:
    """A binary stream: ranged reads of an object (no full download), or the local file."""
    if not is_remote(path):
        return open(path, "rb")
    fs, p = filesystem(path)
    return fs.open(p, "rb", block_size=8 * 1024**2, cache_type="readahead")


RANGE_BLOCK = 4 * 1024**2  # bytes per ranged GET of `open_ranges`
RANGE_BLOCKS = 4  # blocks it keeps per open object: 16 MB, 1 GB for the mixer's 64 open inputs


def open_ranges(path: Location) -> IO[bytes]:
    """A binary stream for reads at scattered offsets (samples by byte range). On a store, reads go through a cache
    of 4 MB blocks: object stores charge per request, and one GET per sample (tens of KB) would cost a request per
    sample; neighbouring samples then share one GET, at the price of reading a block for a lone sample."""
    if not is_remote(path):
        return open(path, "rb")
    fs, p = filesystem(path)
    return fs.open(p, "rb", block_size=RANGE_BLOCK, cache_type="blockcache", cache_options={"maxblocks": RANGE_BLOCKS})


def size(path: Location) -> int:
    if not is_remote(path):
        return Path(path).stat().st_size
    fs, p = filesystem(path)
    return int(fs.info(p)["size"])


def put_file(local: Path, url: str) -> None:
    """Upload a local file; a large one goes up as a multipart upload that S3 completes only after the last part,
    so a killed upload leaves no object (only parts, which `abort_uploads` removes)."""
    fs, p = filesystem(url)
    fs.put_file(str(local), p)


def put_files(files: list[Path], urls: list[str]) -> None:
    """Upload local files concurrently, each as `put_file` does (whole or not at all)."""
    if files:
        fs, _ = filesystem(urls[0])
        fs.put([str(f) for f in files], [filesystem(u)[1] for u in urls])


def get_file(url: str, local: Path) -> None:
    """Download one object to a local file (streamed, not held in memory)."""
    fs, p = filesystem(url)
    local.parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(p, str(local))


def remove(urls: list[str]) -> None:
    if urls:
        fs, _ = filesystem(urls[0])
        fs.rm([filesystem(u)[1] for u in urls])


def folders(url: str) -> list[str]:
    """URLs of the folders (common prefixes) directly under `url`."""
    fs, p = filesystem(url)
    fs.invalidate_cache()
    try:
        listed = fs.ls(p, detail=True)
    except FileNotFoundError:
        return []
    return sorted(_url(fs, e["name"]) for e in listed if e["type"] == "directory")


def abort_uploads(prefix: str, names: str = "") -> int:
    """Abort the incomplete multipart uploads under `prefix` whose object name starts with `names` (what a killed
    `put_file` leaves); S3 only. Returns how many were aborted. GCS's resumable uploads expire on their own."""
    fs, p = filesystem(prefix)
    if "s3" not in fs.protocol:
        return 0
    bucket, _, key = p.partition("/")
    aborted = 0
    for upload in fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads", []):
        if not upload["Key"].rsplit("/", 1)[-1].startswith(names):
            continue
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        aborted += 1
    return aborted


def check_store(url: str, *, inputs: bool = False, what: str = "--out") -> None:
    """Fail before any work, with what to fix: no credentials, a bucket that does not exist, or (`inputs`) a prefix
    that holds nothing. Reads only; writes nothing."""
    fs, p = filesystem(url)
    bucket = p.split("/", 1)[0]
    try:
        fs.invalidate_cache()
        bucket_exists = _bucket_exists(fs, bucket)
        holds = fs.find(p, maxdepth=None, withdirs=False) if inputs and bucket_exists else []
    except PermissionError as e:
        raise StorageError(f"{what} {url}: access denied ({e}); check the credentials (AWS_ACCESS_KEY_ID, "
                           "AWS_PROFILE or the instance profile) and that they may read and write this bucket") from None
    except Exception as e:
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
            raise StorageError(f"{what} {url}: no credentials for {url.split('://')[0]}://; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run where an instance profile applies); for "
                               "gs://, GOOGLE_APPLICATION_CREDENTIALS") from None
        raise
    if not bucket_exists:
        raise StorageError(f"{what} {url}: bucket {bucket!r} does not exist (or these credentials cannot see it); "
                           "create it or fix the URL")
    if inputs and not holds:
        raise StorageError(f"{what} {url}: no objects under this prefix; check the URL (a typo in the prefix?)")


def _bucket_exists(fs: fsspec.AbstractFileSystem, bucket: str) -> bool:
    """Whether the bucket exists; on S3 a HEAD of the bucket, which (unlike `exists`) lets a missing-credentials
    error through."""
    if "s3" not in fs.protocol:
        return fs.exists(bucket)
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """One writer per output: an object created with a conditional put (S3 `If-None-Match: *`), deleted on exit.

    A lock left by a process that died on this host is taken over; one held elsewhere refuses the job with the
    holder's host, pid and start time (delete the object once sure that job is dead)."""

    def __init__(self, url: str, what: str):
        self.url, self.what = url, what
        self.fs, self.path = filesystem(url)

    def __enter__(self) -> Lock:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                self.fs.pipe_file(self.path, json.dumps(me).encode(), mode="create")
                return self
            except FileExistsError:
                try:
                    holder = json.loads(self.fs.cat_file(self.path))
                except FileNotFoundError:
                    continue  # released meanwhile
                if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", 0))):
                    self.fs.rm_file(self.path)  # its process died (killed) on this host: the lock is stale
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
                raise RuntimeError(
                    f"another run is writing {self.what} (lock {self.url}: host {holder.get('host')}, pid "
                    f"{holder.get('pid')}, since {since}); wait for it to finish or use another --out. If that run is "
                    "dead, delete the lock object and run again") from None
        raise RuntimeError(f"could not take the lock {self.url}: it was re-created while taking over a stale one")

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)


def scratch_root() -> Path:
    """Where per-worker scratch folders go: `VLCORPUS_SCRATCH`, else the system temporary folder."""
    return Path(os.environ.get("VLCORPUS_SCRATCH") or tempfile.gettempdir())


def new_scratch(tag: str, root: Path | None = None) -> Path:
    """A fresh local folder under `root` (default `scratch_root()`) for files a tool needs on disk; its name carries
    this process's pid and start time, so that once the process is gone (killed: no exit path runs on SIGKILL) the
    next scratch made there removes it (`remove_dead_scratch`). The caller removes it on every exit path it has."""
    root = root or scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_dead_scratch(root)
    me = psutil.Process()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{me.pid}-{int(me.create_time())}-{tag}-", dir=root))


def remove_dead_scratch(root: Path) -> None:
    """Remove the scratch folders under `root` whose process is gone (a reused pid has another start time)."""
    for folder in root.glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid, started, _ = folder.name[len(SCRATCH_PREFIX):].split("-", 2)
            alive = int(psutil.Process(int(pid)).create_time()) == int(started)
        except psutil.NoSuchProcess:
            alive = False
        except (ValueError, psutil.Error):
            alive = True  # not a name we gave, or a process we may not inspect
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch(tag: str) -> Iterator[Path]:
    """`new_scratch(tag)`, removed when the block exits."""
    folder = new_scratch(tag)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stage_input(url: str, folder: Path, max_bytes: int) -> Path:
    """Download one input object into `folder` (a scratch folder), refusing one larger than `max_bytes`."""
    n = size(url)
    if n > max_bytes:
        raise ValueError(f"{url}: {n} bytes, more than the {max_bytes} bytes a staged input may hold")
    fs, p = filesystem(url)
    local = folder / name(url)
    fs.get_file(p, str(local))
    return local

