"""renderers.paper.sandbox: archives refused before extraction, bounded subprocesses, bubblewrap isolation."""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from renderers.paper.sandbox import (
    ArchiveLimits,
    ToolTimeout,
    UnsafeArchive,
    bwrap_available,
    isolated,
    run_bounded,
    run_tool,
    safe_extract,
    tool_env,
)


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_extracts_a_clean_archive(tmp_path):
    arc = make_tar(tmp_path / "paper.tar.gz", [("main.tex", b"\\documentclass{article}"), ("sec/a.tex", b"A"),
                                               link("sec/b.tex", "a.tex")])
    files = safe_extract(arc, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["main.tex", "sec/a.tex"]
    assert (tmp_path / "out/sec/b.tex").read_bytes() == b"A"


@pytest.mark.parametrize("stdlib_filter", [True, False])
def test_extracted_files_lose_special_bits_and_foreign_owners(tmp_path, monkeypatch, stdlib_filter):
    """Python before 3.11.4 (Debian 12's python3 is 3.11.2) has no extraction filters; the result is the same."""
    if not stdlib_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    info = tarfile.TarInfo("main.tex")
    info.size, info.mode, info.uid, info.gid = 1, 0o6777, 12345, 12345
    bare = tarfile.TarInfo("unreadable.tex")
    bare.size, bare.mode = 1, 0o000
    with tarfile.open(tmp_path / "paper.tar", "w") as tar:
        tar.addfile(info, io.BytesIO(b"x"))
        tar.addfile(bare, io.BytesIO(b"y"))
    safe_extract(tmp_path / "paper.tar", tmp_path / "out")
    st = (tmp_path / "out" / "main.tex").stat()
    assert st.st_mode & 0o7777 == 0o755 and (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert (tmp_path / "out" / "unreadable.tex").stat().st_mode & 0o777 == 0o600


def test_single_gzipped_file(tmp_path):
    (tmp_path / "2101.00001.gz").write_bytes(gzip.compress(b"\\documentclass{article}"))
    [out] = safe_extract(tmp_path / "2101.00001.gz", tmp_path / "out")
    assert out.name == "2101.00001" and out.read_bytes().startswith(b"\\documentclass")


@pytest.mark.parametrize(
    "member, reason",
    [
        (("../evil.tex", b"x"), "'..'"),
        (("/etc/evil.tex", b"x"), "absolute path"),
        (link("up.tex", "../../etc/passwd"), "outside the tree"),
        (link("abs.tex", "/etc/passwd"), "absolute path"),
        (link("hard.tex", "/etc/passwd", tarfile.LNKTYPE), "hard link"),
        (link("dev", "", tarfile.CHRTYPE), "device"),
    ],
)
def test_refuses_unsafe_members_before_extracting(tmp_path, member, reason):
    arc = make_tar(tmp_path / "bad.tar", [("first.tex", b"ok"), member])
    with pytest.raises(UnsafeArchive, match=reason):
        safe_extract(arc, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir()), "nothing may be written before the check"


def test_refuses_a_chain_of_links_that_leaves_one_step_at_a_time(tmp_path):
    """`d -> .`, `d/e -> ..`, `d/e/x`: each link alone stays inside, the chain does not. Refused by our check, with
    the reason, before the stdlib's filter sees it (whose error does not cross a process boundary)."""
    arc = make_tar(tmp_path / "chain.tar", [link("d", "."), link("d/e", ".."), ("d/e/x", b"x")])
    with pytest.raises(UnsafeArchive, match="'d/e' refused: its path goes through the link 'd'"):
        safe_extract(arc, tmp_path / "out")
    through = make_tar(tmp_path / "through.tar", [link("d", "."), link("up", "d/..")])
    with pytest.raises(UnsafeArchive, match="goes through the link 'd'"):
        safe_extract(through, tmp_path / "out2")
    assert not (tmp_path / "x").exists()


def test_refuses_a_gzip_bomb_while_decompressing(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(8):
            f.write(bytes(1024**2))  # 8 MB of zeros -> a few kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match="gzip bomb"):
        safe_extract(bomb, tmp_path / "out", ArchiveLimits(max_bytes=2 * 1024**2))


def test_refuses_too_many_members_and_too_many_bytes(tmp_path):
    many = make_tar(tmp_path / "many.tar", [(f"f{i}.tex", b"x") for i in range(20)])
    with pytest.raises(UnsafeArchive, match="more than 10 members"):
        safe_extract(many, tmp_path / "out", ArchiveLimits(max_members=10))
    big = make_tar(tmp_path / "big.tar", [("a.tex", bytes(3000)), ("b.tex", bytes(3000))])
    with pytest.raises(UnsafeArchive, match="tar bomb"):
        safe_extract(big, tmp_path / "out2", ArchiveLimits(max_bytes=5000))


def test_run_bounded_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(ToolTimeout):
        run_bounded(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], cwd=tmp_path, timeout_s=2,
                    log=tmp_path / "log")
    grandchild = int(pidfile.read_text())
    time.sleep(0.2)
    assert not _alive(grandchild), "the command's own child must die with it"


def test_nothing_a_command_left_behind_outlives_it(tmp_path):
    """A tool that exits leaving a background child: the child is killed before run_bounded returns."""
    pidfile = tmp_path / "pid"
    assert run_bounded(["sh", "-c", f"sleep 300 & echo $! > {pidfile}"], cwd=tmp_path, timeout_s=60,
                       log=tmp_path / "log") == 0
    assert not _alive(int(pidfile.read_text()))


def test_command_dies_with_its_parent(tmp_path):
    """PR_SET_PDEATHSIG: if the renderer process is killed, its LaTeXML does not live on."""
    pidfile = tmp_path / "pid"
    script = (
        "import sys; from pathlib import Path; from renderers.paper.sandbox import run_bounded; "
        f"run_bounded(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 300'], cwd=Path('{tmp_path}'), timeout_s=300, "
        f"log=Path('{tmp_path}/log'))"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    child = int(pidfile.read_text())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot create namespaces here")


@needs_bwrap
def test_isolated_sees_only_its_folder_the_tools_and_no_network(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("visible")
    monkeypatch.setenv("VLCORPUS_CANARY", "canary-7f3a")
    listener = socket.create_server(("127.0.0.1", 0))  # a service on the host's loopback

    def run(script: str) -> tuple[int, str]:
        log = tmp_path.parent / f"{tmp_path.name}.log"
        code = run_bounded(isolated(["sh", "-c", script], tmp_path), cwd=tmp_path, timeout_s=60, log=log)
        return code, log.read_text()

    assert run("cat mine.txt") == (0, "visible")
    for path in ("/etc/passwd", "/usr/lib/os-release", "/proc/self/environ", str(Path.home())):
        code, out = run(f"ls {path}")
        assert code != 0 and "No such file" in out, path
    code, out = run("env")
    assert code == 0 and "canary-7f3a" not in out and "PATH=/usr/bin" in out
    assert run("kpsewhich article.cls")[0] == 0  # the TeX tree is there
    port = listener.getsockname()[1]
    code, out = run(f"perl -MIO::Socket::INET -e 'IO::Socket::INET->new(\"127.0.0.1:{port}\") or exit 7'")
    assert code == 7  # a network namespace of its own: the host's loopback is not reachable
    listener.close()
    code, _ = run("touch /usr/bin/written /var/lib/texmf/written")
    assert code != 0 and not Path("/usr/bin/written").exists()
    assert run("echo out > made.txt")[0] == 0 and (tmp_path / "made.txt").read_text() == "out\n"


def test_tools_get_a_cleared_environment_without_the_sandbox_too(tmp_path, monkeypatch):
    monkeypatch.setenv("VLCORPUS_CANARY", "canary-7f3a")
    code = run_tool(["sh", "-c", "env; cat /proc/self/environ"], tree=tmp_path, cwd=tmp_path, timeout_s=60,
                    log=tmp_path / "log", sandbox=False)
    assert code == 0 and "canary-7f3a" not in (tmp_path / "log").read_text()
    assert tool_env(tmp_path)["openin_any"] == "p"  # TeX itself refuses absolute and `..` names


def test_unreadable_archives_are_refused(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip at all")
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 100 + b"x" * 600)
    (tmp_path / "paper.zip").write_bytes(b"PK")
    for name, reason in (("junk.tar.gz", "not a readable gzip"), ("junk.tar", "not a readable tar"),
                         ("paper.zip", "not a .tar")):
        with pytest.raises(UnsafeArchive, match=reason):
            safe_extract(tmp_path / name, tmp_path / "out")
