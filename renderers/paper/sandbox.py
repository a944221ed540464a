"""Running untrusted inputs: archives checked before extraction, external tools bounded and isolated.

- `safe_extract` unpacks a `.tar`, `.tar.gz`/`.tgz` or single-file `.gz` only after checking every member: no
  absolute paths, no `..`, no links leaving the tree, no devices, and caps on members and unpacked bytes that are
  enforced while decompressing (a gzip bomb is stopped at the cap, not after it filled the disk).
- `run_bounded` runs a command in its own session with a wall-clock timeout; on timeout the whole process group
  is killed, and PR_SET_PDEATHSIG kills the command if the Python process that started it dies.
- `isolated` wraps a command in bubblewrap: no network, a read-only system, and only one writable folder.
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_PR_SET_PDEATHSIG = 1
_CHUNK = 1 << 20


class UnsafeArchive(ValueError):
    """An archive refused before anything was extracted; the message says which member and why."""


class SandboxUnavailable(RuntimeError):
    """Isolation was asked for but bubblewrap cannot run on this machine."""


class ToolTimeout(TimeoutError):
    """An external command ran past its own time bound and was killed with its process group."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 5_000
    max_bytes: int = 512 * 1024**2  # unpacked, all members together


def _gunzip_capped(path: Path, limit: int) -> BinaryIO | None:
    """Decompress a gzip file in chunks into an anonymous temporary file; None as soon as it would exceed `limit`
    bytes (a bomb). Memory stays at one chunk whatever the archive holds."""
    out = tempfile.TemporaryFile()
    size = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                out.close()
                return None
            out.write(chunk)
    out.seek(0)
    return out


def _check_member(m: tarfile.TarInfo, names: set[str]) -> str | None:
    """Why member `m` is unsafe, or None."""
    p = PurePosixPath(m.name)
    if not p.parts:
        return "empty name"
    if p.is_absolute() or m.name.startswith(("/", "\\")) or ":" in p.parts[0]:
        return "absolute path"
    if ".." in p.parts:
        return "'..' in path"
    if m.issym():
        target = PurePosixPath(m.linkname)
        if target.is_absolute():
            return f"symlink to absolute path {m.linkname!r}"
        depth = len(p.parts) - 1
        for part in target.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                return f"symlink pointing outside the tree ({m.linkname!r})"
    elif m.islnk():
        if PurePosixPath(m.linkname).is_absolute() or ".." in PurePosixPath(m.linkname).parts or m.linkname not in names:
            return f"hard link to {m.linkname!r}, which is not a member of the archive"
    elif not (m.isfile() or m.isdir()):
        return "not a regular file, folder or link (device, fifo)"
    return None


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract `archive` into `dest` after checking it; return the extracted regular files.

    A `.gz` that is not a tar is one gzipped file, written as `dest/<name without .gz>` (arXiv ships single-file
    sources that way). Raises UnsafeArchive, naming the member, before writing anything.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith((".gz", ".tgz")):
        try:
            fileobj = _gunzip_capped(archive, limits.max_bytes)
        except (OSError, EOFError, zlib.error) as e:
            raise UnsafeArchive(f"{archive.name}: not a readable gzip file ({e})") from None
        if fileobj is None:
            raise UnsafeArchive(f"{archive.name}: unpacks to more than {limits.max_bytes} bytes (a gzip bomb?)")
        with fileobj:
            if not _is_tar(fileobj):
                stem = archive.name[: -len(".gz")] if name.endswith(".gz") else archive.stem
                out = dest / (Path(stem).name or "main")
                with open(out, "wb") as f:
                    shutil.copyfileobj(fileobj, f)
                return [out]
            return _extract_checked(tarfile.open(fileobj=fileobj, mode="r:"), archive.name, dest, limits)
    if name.endswith(".tar"):
        try:
            tar = tarfile.open(archive, mode="r:")
        except tarfile.TarError as e:
            raise UnsafeArchive(f"{archive.name}: not a readable tar file ({e})") from None
        return _extract_checked(tar, archive.name, dest, limits)
    raise UnsafeArchive(f"{archive.name}: not a .tar, .tar.gz, .tgz or .gz file")


def _extract_checked(tar: tarfile.TarFile, label: str, dest: Path, limits: ArchiveLimits) -> list[Path]:
    with tar:
        members: list[tarfile.TarInfo] = []
        total = 0
        try:
            for m in tar:
                members.append(m)
                total += m.size if m.isfile() else 0
                if len(members) > limits.max_members:
                    raise UnsafeArchive(f"{label}: more than {limits.max_members} members (an archive bomb?)")
                if total > limits.max_bytes:
                    raise UnsafeArchive(f"{label}: members add up to more than {limits.max_bytes} bytes (a tar bomb?)")
        except tarfile.TarError as e:
            raise UnsafeArchive(f"{label}: not a readable tar file ({e})") from None
        names = {m.name for m in members}
        for m in members:
            reason = _check_member(m, names)
            if reason:
                raise UnsafeArchive(f"{label}: member {m.name!r} refused: {reason}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")  # the stdlib's own guard, on top of ours
        else:  # Python before 3.11.4 (Debian 12's 3.11.2) has no filters: ours stand alone, and as the data
            for m in members:  # filter does, no special mode bits, owner may read and write, nobody else's owner
                m.mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
                m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
            tar.extractall(dest, members=members)
    return [dest / m.name for m in members if m.isfile()]


def _is_tar(fileobj) -> bool:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as t:
            t.next()
        return True
    except tarfile.TarError:
        return False
    finally:
        fileobj.seek(0)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_bounded(cmd: Sequence[str], *, cwd: Path, timeout_s: float, log: Path, env: dict[str, str] | None = None) -> int:
    """Run `cmd` with stdout+stderr to the file `log`; return its exit code, raise ToolTimeout past `timeout_s`.

    The command leads a new session (its own process group), so a timeout kills everything it spawned, and it
    gets SIGKILL if our process dies first.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ToolTimeout(f"{Path(cmd[0]).name} ran longer than {timeout_s:g} s and was killed") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@functools.cache
def bwrap_available() -> bool:
    """Whether bubblewrap exists and may create namespaces here (root, or unprivileged user namespaces)."""
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True)
    return probe.returncode == 0


def isolated(cmd: Sequence[str], workdir: Path, cwd: str = ".", read_only: Sequence[str] = ()) -> list[str]:
    """`cmd` wrapped to run in bubblewrap with `workdir` (writable) at /job, in its subfolder `cwd`.

    It sees no network, no other processes, an empty /tmp, and of the host only /usr (read-only) plus the
    read-only paths in `read_only` that exist: a file it is told to read elsewhere simply is not there.
    """
    if not bwrap_available():
        raise SandboxUnavailable("bubblewrap (bwrap) cannot create namespaces here: install it (scripts/setup.sh) and "
                                 "allow user namespaces, or turn isolation off knowingly (sandbox=false)")
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            args += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    for p in read_only:
        if os.path.exists(p):
            args += ["--ro-bind", p, p]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", str(workdir), "/job",
             "--chdir", str(PurePosixPath("/job") / cwd), "--setenv", "HOME", "/job", "--"]
    return args + list(cmd)
