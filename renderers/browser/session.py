"""What a browser renderer works with: locked-down pages that load only the document's own files.

- `Session` (given to `render(doc, config, stats, session)` by the runner that owns the browser,
  `renderers/browser/runner.py`) opens one fresh browser context per document.
- The document's own files (a `Site`, from disk or from memory) are served to the browser by a small HTTP server
  (`SiteServer`) under the private origin `http://document.invalid`. A route handler aborts and counts every other
  request (`blocked_requests`). Beneath it, the browser's network is closed: that server is also the browser's only
  proxy, for loopback addresses too, and refuses anything but the document's origin, and host names resolve to
  nothing; so what escapes routing (a preconnect to a frame's target, an `https://` tunnel, a WebSocket with
  JavaScript on, Chromium's own update checks) opens no connection to anything but this server. JavaScript is off
  unless the config turns it on.
"""

from __future__ import annotations

import http.server
import mimetypes
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit


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


DOCUMENT_HOST = "document.invalid"  # a name that resolves nowhere (RFC 2606): reachable only through the proxy


class SiteServer:
    """Serves the current document's `Site` as `http://document.invalid` to this runner's browser, whose only proxy
    it is (listening on 127.0.0.1, a random port): a request for any other origin, or a tunnel (`CONNECT`, which
    `https://` and WebSockets need), is refused, never forwarded. The refusals are not counted per document: the
    route handler already counts what the page asked for, and Chromium's own background requests land here too.

    Bodies go straight from this server to Chromium: sending them through Playwright's pipe (`route.fulfill`) makes
    a 100 MB page stall the driver so that even killing the browser does not free the runner.
    """

    base = f"http://{DOCUMENT_HOST}"

    def __init__(self) -> None:
        self.site: Site | None = None
        self.stats: Counter = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site, stats = server.site, server.stats
                url = urlsplit(self.path)  # absolute through a proxy: http://document.invalid/path
                if url.scheme not in ("", "http") or (url.netloc or self.headers.get("Host", "")) != DOCUMENT_HOST:
                    self.send_error(403)
                    return
                path = unquote(url.path)
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

            def do_CONNECT(self) -> None:
                self.send_error(403)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.proxy = f"http://127.0.0.1:{self.httpd.server_address[1]}"
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
    by itself is answered "204 No Content" and counted (`navigations_blocked`), and a popup's navigation (JavaScript's
    `window.open`; its request has no frame yet) is aborted and counted (`popups_blocked`)."""

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
        if request.is_navigation_request():
            try:
                frame = request.frame
            except Exception:  # noqa: BLE001 - Playwright's Error: "Frame for this navigation request is not available"
                self.stats["popups_blocked"] += 1
                route.abort("blockedbyclient")
                return
        if request.is_navigation_request() and frame == self.page.main_frame:
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
