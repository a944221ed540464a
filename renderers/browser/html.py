"""HTML pages -> `doc_ocr` samples (page images with exactly the text shown on each) and a `web_code` sample
(the first viewport's screenshot with the cleaned HTML+CSS that draws it).

Runs on a `renderers.browser.session.Session` (one Chromium per worker, one context per document, no network, JavaScript
off). A page with its own stylesheets keeps its design (`native` layout, cut into page-high slices); a page
without any is set in one of the templates (`template` layout), as e-books are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from renderers.browser.pages import (
    PageConfig,
    apply_template,
    asset,
    image_name,
    paginate,
    pick_template,
)
from renderers.browser.session import DirSite, Session
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample

LAYOUTS = ("auto", "native", "template")
CODE_SOURCE = "html_code"  # web_code samples get their own source so their keys never equal a page's key


@dataclass
class HtmlConfig:
    page: PageConfig = field(default_factory=PageConfig)
    layout: str = "auto"  # auto: native when the page has stylesheets, else a template
    web_code: bool = True
    max_code_chars: int = 60_000  # a longer cleaned page gives no web_code sample (counted)
    max_inline_bytes: int = 2048  # data: URIs longer than this are emptied in the code
    max_file_mb: float = 128.0  # the page and each file it loads

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        if self.max_code_chars <= 0 or self.max_file_mb <= 0:
            raise ValueError("max_code_chars and max_file_mb must be positive")


def _has_own_style(page) -> bool:
    return page.evaluate("() => document.styleSheets.length > 0 || !!document.querySelector('[style]')")


def render(doc: DocInput, cfg: HtmlConfig, stats: Counter, session: Session) -> Iterator[Sample]:
    path = Path(doc.path)
    if path.stat().st_size > cfg.max_file_mb * 1024**2:
        raise Filtered(f"the page is larger than {cfg.max_file_mb:g} MB")
    site = DirSite(doc.related.get("root", path.parent), int(cfg.max_file_mb * 1024**2))
    pc = cfg.page
    with session.page(site, pc.width, pc.height, pc.scale, pc.javascript, stats) as page:
        page.goto(site.path_of(path))
        code = None
        if cfg.web_code:
            shot = page.screenshot(type=pc.image_format, **({"quality": pc.jpeg_quality} if pc.image_format == "jpeg" else {}))
            code = page.evaluate(asset("js/webcode.js"),
                                 {"height": pc.height, "maxInline": cfg.max_inline_bytes, "origin": page.base + "/"})
        layout = cfg.layout
        if layout == "auto":
            layout = "native" if _has_own_style(page) else "template"
        template = None
        if layout == "template":
            template = pick_template(doc.doc, pc.templates)
            apply_template(page, template, pc)
        pages = paginate(page, pc, layout, stats)
    meta = {"page_size": [pc.width, pc.height], "scale": pc.scale, "layout": layout, "template": template,
            "javascript": pc.javascript}
    for p in pages:
        yield Sample(category="doc_ocr", source="html", doc=doc.doc, part=p.index, origin=doc.origin,
                     segments=[{"image": image_name(pc)}, {"text": p.text}], images={image_name(pc): p.image},
                     meta={**meta, "lines": p.lines, "pages": len(pages)})
    if code is not None:
        stats["code_elements_dropped"] += code["dropped"]
        stats["code_css_rules_dropped"] += code["rulesDropped"]
        stats["code_inline_data_dropped"] += code["inlineDropped"]
        if len(code["html"]) > cfg.max_code_chars:
            stats["web_code_too_long"] += 1
        else:
            yield Sample(category="web_code", source=CODE_SOURCE, doc=doc.doc, part=0, origin=doc.origin,
                         segments=[{"image": image_name(pc)}, {"text": code["html"]}], images={image_name(pc): shot},
                         meta={"viewport": [pc.width, pc.height], "scale": pc.scale, "css_rules": code["rulesKept"],
                               "javascript": pc.javascript})
