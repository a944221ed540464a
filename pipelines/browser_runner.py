"""One locked-down Chromium per worker: the runner the driver keeps in each Ray actor for browser renderers.

- `BrowserRunner(stage)` (the driver's Runner protocol) launches Debian's Chromium through Playwright once and reuses
  it across documents; `stage.render(doc, config, stats, session)` gets a `renderers.browser.session.Session` that
  opens one fresh browser context per document.
- Per-document bounds: a watchdog thread kills the browser's processes when a document runs past the time bound or
  the browser's memory (RSS of all its processes) passes the memory bound; the document fails with `Timeout` or
  `MemoryError`, the browser is relaunched for the next one. A browser that dies on its own (a crash) is relaunched
  and the document retried once.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from typing import Any

import psutil

from renderers.browser.session import Session, SiteServer
from vlcorpus.document import Bounds, DocInput, Filtered
from vlcorpus.driver import Stage
from vlcorpus.sample import Sample

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
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # only the runner's own server is reachable
    "--renderer-process-limit=2",
]
WATCH_INTERVAL_S = 0.25


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
                return


class BrowserRunner:
    """Runner for `Stage(make_runner=BrowserRunner)`: one Chromium, relaunched when it dies or is killed."""

    def __init__(self, stage: Stage):
        from playwright.sync_api import sync_playwright

        self.stage, self.bounds = stage, stage.bounds
        self.playwright = sync_playwright().start()
        self.browser: Any = None
        self.server = SiteServer()
        self.launches = 0
        self._marker = ""
        self._launch()

    def _launch(self) -> None:
        self._marker = secrets.token_hex(8)
        self.browser = self.playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*LAUNCH_ARGS, f"--vlcorpus-browser={self._marker}"],
            timeout=120_000,
        )
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
        self.playwright.stop()
        self.server.close()
