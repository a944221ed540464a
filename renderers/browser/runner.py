"""One locked-down Chromium per worker: the runner the driver keeps in each Ray actor for browser renderers.

- `BrowserRunner(stage)` (the driver's Runner protocol) launches Debian's Chromium through Playwright once and reuses
  it across documents; `stage.render(doc, config, stats, session)` gets a `renderers.browser.session.Session` that
  opens one fresh browser context per document.
- Files: everything the browser writes (Playwright's profile and artifacts folders, Chromium's shared memory files)
  goes under one folder the runner owns (`BrowserFiles`, `<tmp>/vlcorpus-browser-<pid>-<start>-*`). `close` removes
  it; when the worker dies without closing (a crash, SIGKILL, Ray ending the actor), a watcher process that waits on
  a pipe only the worker holds removes it; a folder that outlives even the watcher (the machine's processes all
  killed) is removed by the next runner that starts on the machine, once its owner is gone.
- Per-document bounds: a watchdog thread kills the browser's processes when a document runs past the time bound or
  the browser's memory (RSS of all its processes) passes the memory bound; the document fails with `Timeout` or
  `MemoryError`, the browser is relaunched for the next one. A browser that dies on its own (a crash) is relaunched
  and the document retried once. A Playwright call in flight when the browser is killed can stay pending for good
  (seen with `new_page`): if the render has not returned `DRIVER_GRACE_S` after the kill, the watchdog ends the
  Playwright driver too, which fails every call in flight, and the runner starts a new driver with the next browser.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from renderers.browser.session import Session, SiteServer
from vlcorpus.document import Bounds, DocInput, Filtered
from vlcorpus.sample import Sample
from vlcorpus.stage import Stage

log = logging.getLogger("vlcorpus.browser")

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",  # needed as root; the page has no network and no JavaScript by default
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    # No connection leaves the browser but to the runner's own server (renderers.browser.session.SiteServer), which
    # is its only proxy, loopback included (`<-loopback>` undoes Chromium's implicit bypass); host names resolve to
    # nothing (127.0.0.1 stays, for the proxy itself); WebRTC may not send UDP around the proxy.
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--renderer-process-limit=2",
]
WATCH_INTERVAL_S = 0.25
DRIVER_GRACE_S = 15
FILES_PREFIX = "vlcorpus-browser-"
WATCHER = """exec 3<&0
(read _ <&3
 i=0
 while [ $i -lt 60 ]; do rm -rf -- "$0"; sleep 1; [ -e "$0" ] || exit 0; i=$((i + 1)); done) >/dev/null 2>&1 &"""
BROWSER_ENV = ("LANG", "LC_ALL")  # the worker's variables the browser keeps (its locale)


class RenderTimeout(TimeoutError):
    """The document ran past its time bound; the browser was killed."""


class RenderMemoryExceeded(MemoryError):
    """The browser passed the memory bound while rendering the document; it was killed."""


class BrowserCrashed(RuntimeError):
    """The browser died on its own twice while rendering the same document."""


class _Watchdog:
    """Kills the runner's browser when the document passes its time or memory bound."""

    def __init__(self, runner: BrowserRunner, bounds: Bounds):
        self.runner, self.bounds = runner, bounds
        self.tripped: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Watchdog:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        limit = self.bounds.memory_gb * 1024**3
        while not self._stop.wait(WATCH_INTERVAL_S):
            if time.monotonic() - self._start > self.bounds.timeout_s:
                self.tripped = RenderTimeout(
                    f"rendering took longer than the {self.bounds.timeout_s:g} s per-document bound; the browser was killed")
            elif self.runner.memory() > limit:
                self.tripped = RenderMemoryExceeded(
                    f"the browser passed the {self.bounds.memory_gb:g} GB per-document memory bound; it was killed")
            if self.tripped is not None:
                self.runner.kill_processes()
                if not self._stop.wait(DRIVER_GRACE_S):
                    self.runner.kill_driver()
                return


class BrowserFiles:
    """The folder that holds everything this runner's browser writes, removed on every way out of the runner."""

    def __init__(self) -> None:
        remove_leftovers()
        me = psutil.Process()
        self.path = Path(tempfile.mkdtemp(prefix=f"{FILES_PREFIX}{me.pid}-{int(me.create_time())}-"))
        # The watcher's `read` ends when the pipe's last write end closes: ours, which no child inherits (os.pipe is
        # close-on-exec), so only this process's exit, whatever its cause, or `remove` ends it. It runs in the
        # background of a shell that exits at once, so it is nobody's child: Ray kills a dead worker's children.
        # Chromium has process groups of its own and outlives a killed runner by a moment, writing its profile as it
        # goes: the watcher removes the folder until it stays gone (a minute at most).
        read_end, lifeline = os.pipe()
        try:
            subprocess.run(["sh", "-c", WATCHER, str(self.path)], stdin=read_end, start_new_session=True, check=True)
        finally:
            os.close(read_end)
        self._lifeline = lifeline

    @contextmanager
    def as_tmpdir(self) -> Iterator[None]:
        """Point TMPDIR here while the Playwright driver starts: it makes its folders in its TMPDIR, and Chromium
        inherits the driver's environment."""
        old = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(self.path)
        try:
            yield
        finally:
            if old is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = old

    def environment(self) -> dict[str, str]:
        """The browser's environment: none of the worker's variables (tokens, credentials, proxy settings) but the
        few it needs, with its home and temporary folder here."""
        kept = {k: os.environ[k] for k in BROWSER_ENV if k in os.environ}
        return {"PATH": "/usr/bin:/bin", **kept, "HOME": str(self.path), "TMPDIR": str(self.path)}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lifeline)


def owner_alive(folder: Path) -> bool:
    """Is the process that made this files folder still running? Its name holds the pid and the start time, so a
    reused pid does not count; a name we did not give, or a process we may not inspect, counts as alive."""
    try:
        pid, started, _ = folder.name[len(FILES_PREFIX):].split("-")
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except psutil.NoSuchProcess:
        return False
    except (ValueError, psutil.Error):
        return True


def remove_leftovers() -> int:
    """Remove the files folders of runners that are gone."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{FILES_PREFIX}*"):
        if not owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d browser folder(s) left in %s by runners that died", removed, tempfile.gettempdir())
    return removed


class BrowserRunner:
    """Runner for `Stage(make_runner=BrowserRunner)`: one Chromium, relaunched when it dies or is killed."""

    def __init__(self, stage: Stage):
        self.stage, self.bounds = stage, stage.bounds
        self.files = BrowserFiles()
        self.playwright: Any = None
        self.driver: psutil.Process | None = None
        self.browser: Any = None
        self.server = SiteServer()
        self.launches = 0
        self._marker = ""
        try:
            self._start_driver()
            self._launch()
        except BaseException:
            self.close()
            raise

    def _start_driver(self) -> None:
        """Start Playwright's driver (a node process, our child) and remember which process it is."""
        from playwright.sync_api import sync_playwright

        before = {p.pid for p in psutil.Process().children()}
        with self.files.as_tmpdir():
            self.playwright = sync_playwright().start()
        self.driver = next((p for p in psutil.Process().children()
                            if p.pid not in before and "run-driver" in p.cmdline()), None)

    def kill_driver(self) -> None:
        if self.driver is not None:
            try:
                self.driver.kill()
            except psutil.Error:
                pass

    def driver_alive(self) -> bool:
        try:
            return self.driver is None or self.driver.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _launch(self) -> None:
        self._marker = secrets.token_hex(8)
        args = [*LAUNCH_ARGS, f"--proxy-server={self.server.proxy}", f"--vlcorpus-browser={self._marker}"]
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args,
                                                       env=self.files.environment(), timeout=120_000)
        self.launches += 1

    def processes(self) -> list[psutil.Process]:
        """This browser's processes: the one with our marker on its command line (among this process's descendants)
        and all of its children (renderers, GPU and utility processes do not inherit the marker)."""
        flag = f"--vlcorpus-browser={self._marker}"
        found = []
        for p in psutil.Process().children(recursive=True):
            try:
                if flag in p.cmdline():
                    found += [p, *p.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    def memory(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def kill_processes(self) -> None:
        for p in self.processes():
            try:
                p.kill()
            except psutil.Error:
                continue

    def _relaunch(self) -> None:
        self.kill_processes()
        try:
            self.browser.close()
        except Exception:  # noqa: BLE001 - the browser is dead or dying; closing is best effort
            pass
        if not self.driver_alive():
            try:
                self.playwright.stop()
            except Exception:  # noqa: BLE001 - the driver is gone; stopping only releases our side
                pass
            self._start_driver()
        self._launch()

    def alive(self) -> bool:
        return self.browser is not None and self.browser.is_connected() and bool(self.processes())

    def render(self, doc: DocInput) -> tuple[list[Sample], dict[str, int]]:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        crashes = 0
        while True:
            if not self.alive():
                self._relaunch()
            stats: Counter = Counter()
            session = Session(self.browser, self.server, self.bounds.timeout_s)
            try:
                with _Watchdog(self, self.bounds) as dog:
                    samples = [s.validate() for s in self.stage.render(doc, self.stage.config, stats, session)]
            except Filtered:
                raise
            except Exception as e:
                if dog.tripped is not None:
                    self._relaunch()
                    raise dog.tripped from None
                if isinstance(e, PlaywrightTimeout):
                    self._relaunch()
                    raise RenderTimeout(f"a browser step timed out ({str(e).splitlines()[0]}); the browser was recycled") from None
                if self.alive() and "crash" not in str(e).lower():
                    raise
                crashes += 1
                log.warning("%s: the browser crashed (%s); relaunching it", doc.origin, str(e).splitlines()[0] if str(e) else e)
                self._relaunch()
                if crashes > 1:
                    raise BrowserCrashed(f"the browser crashed twice on this document: {str(e).splitlines()[0]}") from None
                continue
            if crashes:
                stats["browser_crashes"] += crashes
            return samples, dict(stats)

    def close(self) -> None:
        try:
            if self.browser is not None:
                self.browser.close()
        except Exception:  # noqa: BLE001 - closing a dead browser
            pass
        self.kill_processes()
        try:
            if self.playwright is not None:
                self.playwright.stop()
        except Exception:  # noqa: BLE001 - a driver the watchdog killed
            pass
        finally:
            self.server.close()
            self.files.remove()
