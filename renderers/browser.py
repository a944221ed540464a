"""One locked-down Chromium per worker: the runner the driver keeps in each Ray actor for browser renderers.

- `BrowserRunner(stage, bounds)` (the driver's Runner protocol) launches Debian's Chromium through Playwright once
  and reuses it across documents; `stage.render(doc, config, stats, session)` gets a `Session` that opens one fresh
  browser context per document.
- The document's own files (a `Site`, from disk or from memory) are served to the browser by a small HTTP server on
  127.0.0.1 that only this runner's pages reach; a route handler aborts and counts every other request
  (`blocked_requests`), and the browser's DNS resolves nothing, so a request that escapes routing (a WebSocket with
  JavaScript on) fails too. JavaScript is off unless the config turns it on.
- Per-document bounds: a watchdog thread kills the browser's processes when a document runs past the time bound or
  the browser's memory (RSS of all its processes) passes the memory bound; the document fails with `Timeout` or
  `MemoryError`, the browser is relaunched for the next one. A browser that dies on its own (a crash) is relaunched
  and the document retried once.
"""

from __future__ import annotations

import http.server
import logging
import mimetypes
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import psutil

from vlcorpus.driver import Bounds, DocInput, Filtered, Stage
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


class Site(Protocol):
    """The files of one document, by URL path (`/dir/name.css`)."""

    def read(self, path: str) -> bytes | None: ...

    def content_type(self, path: str) -> str: ...


class DirSite:
    """Files under `root` (a document and the CSS/images next to it); nothing outside it, symlinks included."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes

    def path_of(self, file: str | Path) -> str:
        return "/" + "/".join(Path(file).resolve().relative_to(self.root).parts)

    def read(self, path: str) -> bytes | None:
        target = (self.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root) or not target.is_file() or target.stat().st_size > self.max_bytes:
            return None
        return target.read_bytes()

    def content_type(self, path: str) -> str:
        return mimetypes.guess_type(path)[0] or "application/octet-stream"


class SiteServer:
    """Serves the current document's `Site` on 127.0.0.1 (a random port) to this runner's browser.

    Bodies go straight from this server to Chromium: sending them through Playwright's pipe (`route.fulfill`) makes
    a 100 MB page stall the driver so that even killing the browser does not free the runner.
    """

    def __init__(self) -> None:
        self.site: Site | None = None
        self.stats: Counter = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                site, stats = server.site, server.stats
                path = unquote(urlsplit(self.path).path)
                body = site.read(path) if site is not None else None
                if body is None:
                    stats["missing_files"] += 1
                    self.send_error(404)
                    return
                stats["served_requests"] += 1
                self.send_response(200)
                self.send_header("Content-Type", site.content_type(path))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the browser went away (killed, or the page was closed)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Session:
    """What a browser renderer gets: fresh, locked-down pages on the runner's browser."""

    def __init__(self, browser: Any, server: SiteServer, timeout_s: float):
        self.browser, self.server = browser, server
        self.timeout_ms = timeout_s * 1000

    @contextmanager
    def page(self, site: Site, width: int, height: int, scale: float, javascript: bool, stats: Counter) -> Iterator[Page]:
        context = self.browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=scale,
            java_script_enabled=javascript,
            service_workers="block",
            accept_downloads=False,
        )
        self.server.site, self.server.stats = site, stats
        try:
            context.set_default_timeout(self.timeout_ms)
            context.set_default_navigation_timeout(self.timeout_ms)
            page = Page(context.new_page(), self.server.base, stats)
            context.route("**/*", page.route)
            yield page
        finally:
            self.server.site = None
            context.close()


class Page:
    """A Playwright page that loads only the document's own files and navigates only where the renderer sends it
    (`goto`): any other request is aborted and counted (`blocked_requests`), a meta refresh or a link the page follows
    by itself is answered "204 No Content" and counted (`navigations_blocked`)."""

    def __init__(self, page: Any, base: str, stats: Counter):
        self.page, self.base, self.stats = page, base, stats
        self._target = ""

    def url(self, path: str) -> str:
        return self.base + quote(path)

    def goto(self, path: str) -> None:
        self._target = self.url(path)
        self.page.goto(self._target, wait_until="load")

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def screenshot(self, **kwargs: Any) -> bytes:
        return self.page.screenshot(**kwargs)

    def route(self, route: Any) -> None:
        request = route.request
        url = request.url
        if request.is_navigation_request() and request.frame == self.page.main_frame:
            if url != self._target:
                self.stats["navigations_blocked"] += 1
                route.fulfill(status=204)  # the browser stays on the page (an abort would show an error page)
                return
            self._target = ""  # once: a page that reloads itself is not followed
        if url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.stats["blocked_requests"] += 1
            route.abort("blockedbyclient")


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
    """Runner for `Stage(make_runner=BrowserRunner, actors=True)`: one Chromium, relaunched when it dies or is killed."""

    def __init__(self, stage: Stage, bounds: Bounds):
        from playwright.sync_api import sync_playwright

        self.stage, self.bounds = stage, bounds
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
