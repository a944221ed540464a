"""Helpers the browser renderer tests share: a runner on the real Chromium, rendering one file, small EPUBs, and
loopback listeners that record every connection a renderer opens to them."""

from __future__ import annotations

import io
import socket
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines import render_epub as epub_job
from pipelines import render_html as html_job
from renderers.browser import epub, html
from renderers.browser.runner import BrowserRunner
from vlcorpus.document import Bounds, DocInput
from vlcorpus.sample import Sample
from vlcorpus.stage import Stage


class LoopbackListeners:
    """TCP listeners on several 127.0.0.1 ports (the http:// and https:// targets of a hostile page) and one UDP
    socket (a STUN target for WebRTC), standing for the services a Ray node keeps on loopback. They never accept
    while the page renders: the kernel completes a connection into the backlog anyway, so `connections()` afterwards
    finds every one that was opened, with its first bytes (an HTTP request line, a TLS ClientHello)."""

    def __init__(self, count: int = 4):
        self.tcp = []
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            s.setblocking(False)
            self.tcp.append(s)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.ports = [s.getsockname()[1] for s in self.tcp]
        self.udp_port = self.udp.getsockname()[1]

    def connections(self) -> list[tuple[str, int, bytes]]:
        """(protocol, port, first bytes) of every connection or datagram that reached a listener."""
        found = []
        for s in self.tcp:
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.settimeout(1)
                try:
                    first = conn.recv(64)
                except OSError:
                    first = b""
                conn.close()
                found.append(("tcp", s.getsockname()[1], first))
        while True:
            try:
                data = self.udp.recv(2048)
            except BlockingIOError:
                break
            found.append(("udp", self.udp_port, data[:64]))
        return found

    def close(self) -> None:
        for s in [*self.tcp, self.udp]:
            s.close()


def html_stage(**overrides: Any) -> Stage:
    page = {k[5:]: v for k, v in overrides.items() if k.startswith("page_")}
    rest = {k: v for k, v in overrides.items() if not k.startswith("page_")}
    cfg = html.HtmlConfig(page=html.PageConfig(**page), **rest)
    return replace(html_job.STAGE, config=cfg)


def epub_stage(**page: Any) -> Stage:
    cfg = epub.EpubConfig(page=epub.PageConfig(**page))
    return replace(epub_job.STAGE, config=cfg)


def doc_for(path: Path, root: Path | None = None) -> DocInput:
    return DocInput(doc=path.name, origin=path.name, path=str(path), related={"root": str(root or path.parent)})


def render_with(runner: BrowserRunner, stage: Stage, path: Path) -> tuple[list[Sample], dict[str, int]]:
    """Render one file on an existing runner with another stage's renderer and config (no relaunch)."""
    runner.stage = stage
    return runner.render(doc_for(path))


def new_runner(stage: Stage, timeout_s: float = 120, memory_gb: float = 4) -> BrowserRunner:
    return BrowserRunner(replace(stage, bounds=Bounds(timeout_s=timeout_s, memory_gb=memory_gb)))


def image(sample: Sample) -> Image.Image:
    return Image.open(io.BytesIO(next(iter(sample.images.values())))).convert("RGB")


def page_text(sample: Sample) -> str:
    return sample.segments[1]["text"]


def text_lines(sample: Sample) -> list[str]:
    return [ln for ln in page_text(sample).split("\n") if ln]


CONTAINER_XML = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""


def chapter(title: str, body: str, lang: str = "en", css: str = "") -> str:
    link = f'<link rel="stylesheet" type="text/css" href="{css}"/>' if css else ""
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="{lang}" '
            f'lang="{lang}"><head><title>{title}</title>{link}</head><body>{body}</body></html>')


def make_epub(path: Path, chapters: dict[str, str], spine: list[str] | None = None, lang: str = "en",
              version: str = "3.0", extra: dict[str, bytes] | None = None,
              tamper: Callable[[zipfile.ZipFile], None] | None = None) -> Path:
    """A minimal OCF zip: mimetype first and stored, container.xml, an OPF whose spine lists `spine` (default: the
    chapters in order), the chapter files under OEBPS/ and any `extra` members."""
    spine = spine if spine is not None else list(chapters)
    ids = {name: f"c{i}" for i, name in enumerate(dict.fromkeys([*chapters, *spine]))}
    manifest = "".join(f'<item id="{ids[n]}" href="{n}" media-type="application/xhtml+xml"/>' for n in ids)
    manifest += "".join(f'<item id="x{i}" href="{n[6:]}" media-type="text/css"/>'
                        for i, n in enumerate(extra or {}) if n.endswith(".css"))
    itemrefs = "".join(f'<itemref idref="{ids[n]}"/>' for n in spine)
    opf = (f'<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="{version}" '
           f'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">'
           f'test</dc:identifier><dc:title>Test</dc:title><dc:language>{lang}</dc:language></metadata>'
           f'<manifest>{manifest}</manifest><spine>{itemrefs}</spine></package>')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/container.xml", CONTAINER_XML, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("OEBPS/content.opf", opf, compress_type=zipfile.ZIP_DEFLATED)
        for name, text in chapters.items():
            z.writestr(f"OEBPS/{name}", text, compress_type=zipfile.ZIP_DEFLATED)
        for name, data in (extra or {}).items():
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
        if tamper:
            tamper(z)
    return path
