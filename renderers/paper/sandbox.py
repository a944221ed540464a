"""Running untrusted inputs: archives checked before extraction, external tools bounded and isolated.

- `safe_extract` unpacks a `.tar`, `.tar.gz`/`.tgz` or single-file `.gz` only after checking every member: no
  absolute paths, no `..`, no links leaving the tree, no devices, and caps on members and unpacked bytes that are
  enforced while decompressing (a gzip bomb is stopped at the cap, not after it filled the disk).
- `run_bounded` runs a command in its own session with a wall-clock timeout; on timeout the whole process group
  is killed, and PR_SET_PDEATHSIG kills the command if the Python process that started it dies.
- `isolated` wraps a command in bubblewrap: no network, no /proc, a cleared environment, of the host only the
  TeX tool chain (programs, their libraries, Perl, the TeX tree), and one writable folder.
- `run_tool` runs a TeX tool on a paper's private copy and then checks the copy (`check_tree`): a tool runs the
  paper's own code (TeX macros, LaTeXML bindings), which may leave a symlink for host code to follow, so anything
  but regular files and folders refuses the paper. While the tool runs, the copy's size is capped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import gzip
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_PR_SET_PDEATHSIG = 1
MAX_TREE_BYTES = 1024**3  # a paper's private copy while a tool runs on it (`PaperConfig.max_tree_mb`)
_CHUNK = 1 << 20


class UnsafeArchive(ValueError):
    """An archive refused before anything was extracted; the message says which member and why."""


class SandboxUnavailable(RuntimeError):
    """Isolation was asked for but bubblewrap cannot run on this machine."""


class ToolTimeout(TimeoutError):
    """An external command ran past its own time bound and was killed with its process group."""


class ToolDiskLimit(RuntimeError):
    """An external command grew the paper's private copy past its size cap and was killed with its process group."""


class UnsafeSource(ValueError):
    """A source tree refused before a tool reads what it refuses; the message names the file and why."""


class UnsafeTree(UnsafeSource):
    """A paper's private copy holds something other than regular files and folders after a tool ran on it (a
    symlink, a FIFO, a hard link to a file outside it): the paper's own code planted it, and the paper is refused."""


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


def _check_member(m: tarfile.TarInfo, names: set[str], links: set[str]) -> str | None:
    """Why member `m` is unsafe, or None. `links` are the archive's link members: no path may go through one (a
    chain like `d -> .`, `d/e -> ..`, `d/e/x` leaves the tree one link at a time, each harmless alone)."""
    p = PurePosixPath(m.name)
    if not p.parts:
        return "empty name"
    if p.is_absolute() or m.name.startswith(("/", "\\")) or ":" in p.parts[0]:
        return "absolute path"
    if ".." in p.parts:
        return "'..' in path"
    for i in range(1, len(p.parts)):
        if str(PurePosixPath(*p.parts[:i])) in links:
            return f"its path goes through the link {str(PurePosixPath(*p.parts[:i]))!r}"
    if m.issym():
        target = PurePosixPath(m.linkname)
        if target.is_absolute():
            return f"symlink to absolute path {m.linkname!r}"
        where = list(p.parts[:-1])
        for k, part in enumerate(target.parts):
            if part == "..":
                if not where:
                    return f"symlink pointing outside the tree ({m.linkname!r})"
                where.pop()
            elif part != ".":
                where.append(part)
                if k < len(target.parts) - 1 and str(PurePosixPath(*where)) in links:
                    return f"symlink {m.linkname!r} goes through the link {str(PurePosixPath(*where))!r}"
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
        links = {str(PurePosixPath(m.name)) for m in members if m.issym() or m.islnk()}
        for m in members:
            reason = _check_member(m, names, links)
            if reason:
                raise UnsafeArchive(f"{label}: member {m.name!r} refused: {reason}")
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(dest, members=members, filter="data")  # the stdlib's own guard, on top of ours
            except tarfile.TarError as e:  # the filter's errors do not pickle: say it in ours
                raise UnsafeArchive(f"{label}: refused while extracting: {type(e).__name__}: {e}") from None
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


@dataclass(frozen=True)
class DiskCap:
    """At most `max_bytes` in the folder `tree` while a command runs (polled every `DISK_POLL_S`)."""

    tree: Path
    max_bytes: int


DISK_POLL_S = 0.2


def tree_bytes(tree: Path) -> int:
    """Bytes of the files under `tree`, links not followed (a sparse file counts at its full size)."""
    total = 0
    for folder, _dirs, files in os.walk(tree):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def run_bounded(cmd: Sequence[str], *, cwd: Path, timeout_s: float, log: Path, env: dict[str, str] | None = None,
                disk: DiskCap | None = None) -> int:
    """Run `cmd` with stdout+stderr to the file `log`; return its exit code, raise ToolTimeout past `timeout_s` and
    ToolDiskLimit once the folder of `disk` holds more than its cap.

    The command leads a new session (its own process group). When it ends, or runs out of time or disk, the whole
    group is killed and we return only once none of it is alive: nothing it spawned outlives it. It gets SIGKILL if
    our process dies first.
    """
    deadline, poll = time.monotonic() + timeout_s, DISK_POLL_S
    name = Path(cmd[cmd.index("--") + 1] if cmd[0] == "bwrap" else cmd[0]).name  # the tool, not its sandbox
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        try:
            while True:
                try:
                    return proc.wait(timeout=max(0.0, min(poll, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        raise ToolTimeout(f"{name} ran longer than {timeout_s:g} s and was killed") from None
                    if disk is None:
                        continue
                    start = time.monotonic()
                    size = tree_bytes(disk.tree)
                    poll = max(DISK_POLL_S, 4 * (time.monotonic() - start))  # scanning a big tree: at most 1/5 of a core
                    if size > disk.max_bytes:
                        raise ToolDiskLimit(f"{name} wrote the paper's folder past "
                                            f"{disk.max_bytes / 1024**2:g} MB ({size / 1024**2:.0f} MB) and was killed"
                                            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_until_gone(proc.pid)


def _wait_until_gone(pgid: int, limit_s: float = 10.0) -> None:
    """Wait until no live process of group `pgid` is left (SIGKILL takes effect asynchronously)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and _live_members(pgid):
        time.sleep(0.02)


def _live_members(pgid: int) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state, _, group = f.read().rpartition(")")[2].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state not in "ZX":
                return True
    return False


# What the TeX tools (LaTeXML, bibtex, pdflatex, latexmk, biber) need of the host: programs, shared libraries,
# Perl, the TeX tree (ls-R and formats live in /var/lib/texmf) and its configuration. Nothing else of the host
# exists in the sandbox: no /proc (so no environment of ours to read), no /usr/lib/os-release, no /etc/passwd.
TOOLCHAIN = (
    "/usr/bin", *sorted(glob.glob("/usr/lib/*-linux-gnu")), "/usr/lib64", "/usr/lib/libbtparse.so.2", "/usr/lib/locale",
    "/usr/share/perl", "/usr/share/perl5", "/usr/share/texlive", "/usr/share/texmf", "/var/lib/texmf",
    "/etc/texmf", "/etc/alternatives", "/etc/perl", "/etc/ld.so.cache",
)


def tool_env(home: str | Path) -> dict[str, str]:
    """The whole environment a TeX tool gets (none of ours: a worker's may hold credentials). `openin_any=p` and
    `openout_any=p` make TeX itself refuse absolute and `..` file names, and `shell_escape=f` turns `\\write18` off,
    even its restricted list, inside the sandbox or not. `home` lies outside the paper's folder: a tool that reads
    its configuration from HOME (latexmk's `~/.latexmkrc`) finds none of the paper's."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "openin_any": "p", "openout_any": "p",
            "shell_escape": "f"}


@functools.cache
def bwrap_available() -> bool:
    """Whether bubblewrap exists and may create namespaces here (root, or unprivileged user namespaces)."""
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True)
    return probe.returncode == 0


def isolated(cmd: Sequence[str], workdir: Path, cwd: str = ".", read_only: Sequence[str] = TOOLCHAIN) -> list[str]:
    """`cmd` wrapped to run in bubblewrap with `workdir` (writable) at /job, in its subfolder `cwd`.

    It sees no network, no other processes, no /proc, an empty /tmp, the environment of `tool_env` only, and of
    the host only the read-only paths in `read_only` that exist: a file it is told to read elsewhere is not there.
    """
    if not bwrap_available():
        raise SandboxUnavailable("bubblewrap (bwrap) cannot create namespaces here: install it (scripts/setup.sh) and "
                                 "allow user namespaces, or turn isolation off knowingly (sandbox=false)")
    # no --new-session: run_bounded's session has no terminal to inject into, and its process group must hold the
    # tool's processes so that killing the group kills them
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--clearenv"]
    for key, value in tool_env("/tmp").items():
        args += ["--setenv", key, value]
    args += ["--dev", "/dev", "--tmpfs", "/tmp"]  # first: a path bound below may lie under /tmp (a checkout)
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            args += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    for p in read_only:
        if os.path.exists(p):
            args += ["--ro-bind", p, p]
    args += ["--bind", str(workdir), "/job", "--chdir", str(PurePosixPath("/job") / cwd), "--"]
    return args + list(cmd)


def check_tree(tree: Path, after: str) -> None:
    """Refuse (UnsafeTree) a paper's private copy that holds anything but regular files and folders, or a file
    hard-linked to one outside it: host code reads and writes the copy's files by name after `after` ran."""
    links: dict[tuple[int, int], list[int]] = {}
    for folder, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "FIFO, socket or device"
                raise UnsafeTree(f"after {after}, {os.path.relpath(path, tree)} in the paper's folder is a {kind}, "
                                 "not a regular file or folder; the paper is refused")
            links.setdefault((st.st_dev, st.st_ino), [st.st_nlink, 0])[1] += 1
    for (_, ino), (nlink, seen) in links.items():
        if nlink > seen:
            raise UnsafeTree(f"after {after}, a file in the paper's folder (inode {ino}) is hard-linked to a file "
                             "outside it; the paper is refused")


def open_in_tree(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor for a file of a paper's private copy, opened without following a link at its name and checked
    to be a regular file (UnsafeTree otherwise): host code never reads or writes through something a tool planted."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeTree(f"{path.name} in the paper's folder is a symlink; the paper is refused") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeTree(f"{path.name} in the paper's folder is not a regular file; the paper is refused")
    return fd


def read_in_tree(path: Path) -> str:
    """The text of a file of a paper's private copy (`open_in_tree`), undecodable bytes replaced."""
    with os.fdopen(open_in_tree(path), "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def write_in_tree(path: Path, text: str) -> None:
    """Write a file of a paper's private copy (`open_in_tree`), replacing what it held."""
    with os.fdopen(open_in_tree(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as f:
        f.write(text)


def run_tool(cmd: Sequence[str], *, tree: Path, cwd: Path, timeout_s: float, log: Path, sandbox: bool,
             max_bytes: int = MAX_TREE_BYTES, read_only: Sequence[str] = ()) -> int:
    """Run a TeX tool on a paper's private copy `tree`, in its folder `cwd`: bounded (`run_bounded`; the copy at
    most `max_bytes`), with only `tool_env` and a HOME outside the copy, and in bubblewrap (the tool chain and
    `read_only` visible) unless `sandbox` is off. However it ends, the copy is checked afterwards (`check_tree`)."""
    tool, home = Path(cmd[0]).name, tree.parent / "home"
    home.mkdir(exist_ok=True)
    if sandbox:
        cmd = isolated(cmd, tree, cwd=str(cwd.relative_to(tree)), read_only=(*TOOLCHAIN, *read_only))
    try:
        return run_bounded(cmd, cwd=cwd, timeout_s=timeout_s, log=log, env=tool_env(home),
                           disk=DiskCap(tree, max_bytes))
    finally:
        check_tree(tree, tool)
