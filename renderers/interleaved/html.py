"""HTML and XHTML -> blocks in reading order, main content only (pages, EPUB chapters, WARC responses).

Main content by DOM rules, without a learned model: the page's `<main>` / `role="main"` / `<article>` (the one with
the most text); without one, the deepest element that holds 80% of the page's prose (an EPUB chapter: its `<body>`,
all of it); inside it, what a reader does not read as the document is removed: scripts, styles,
forms, `<nav>`, `<aside>`, `<footer>`, page `<header>`s without a heading, ARIA landmarks for navigation, banners,
search and page footers, hidden elements, and elements whose class or id names navigation, menus, sidebars,
breadcrumbs, cookie banners, sharing widgets, ads or comments (unless it holds three paragraphs of prose). A book's
XHTML chapter is read whole: only the tags, landmarks and hidden elements count there, and its `<aside>`s (sidebars,
notes) are its text. benchmarks/interleaved.py compares this with
trafilatura on the same pages (words and images kept, image placement).

Walking the content in document order, block elements end a paragraph; `<img>` (also lazy `data-src`/`srcset`),
inline `<svg>`, and `<object>`/`<embed>` of an SVG become pictures where they stand; `<figcaption>`, table
`<caption>` and elements of class `caption`/`thumbcaption`/`gallerytext` are captions; `<pre>` keeps its lines;
table cells are joined with ` | ` one row per line; MathML gives its `alttext`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import lxml.etree as etree
import lxml.html

from renderers.images import BadImage, read_regular
from renderers.interleaved.blocks import Block, Picture, Text, Unit
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.rules import repeated_refs
from vlcorpus.document import DocInput, Filtered

DROP_TAGS = {"script", "style", "noscript", "template", "nav", "footer", "aside", "form", "button", "input", "select",
             "textarea", "iframe", "canvas", "video", "audio", "map", "dialog", "head", "link", "meta", "source",
             "track"}
DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "toolbar", "dialog"}
BOILERPLATE = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navbox|navigation|menu|menubar|sidebar|sphinxsidebar|breadcrumbs?|footer|masthead|"
    r"cookies?|consent|share|sharing|social|advert\w*|ads?|sponsored|comments?|pagination|skip|editsection|"
    r"catlinks|printfooter|noprint|jump|related-posts|newsletter|subscribe)(?:$|[\s_-])", re.I)
BLOCK_TAGS = {"p", "div", "section", "article", "main", "header", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
              "li", "dl", "dt", "dd", "blockquote", "pre", "table", "thead", "tbody", "tfoot", "tr", "figure",
              "figcaption", "caption", "hr", "address", "details", "summary", "body", "center", "fieldset", "legend"}
CAPTION_TAGS = {"figcaption", "caption"}
CAPTION_CLASS = re.compile(r"(?:^|\s)(?:caption|caption-text|thumbcaption|gallerytext|wp-caption-text)(?:$|\s)", re.I)
HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
IMG_SRC = re.compile(rb"<img\b[^>]*?\s(?:data-src|src)\s*=\s*[\"']([^\"']+)", re.I)
# HTML parsers lower-case SVG's camelCase names; cairosvg needs them back
SVG_CASE = {n.lower(): n for n in (
    "viewBox", "preserveAspectRatio", "gradientUnits", "gradientTransform", "patternUnits", "patternTransform",
    "patternContentUnits", "clipPathUnits", "maskUnits", "maskContentUnits", "markerWidth", "markerHeight",
    "markerUnits", "refX", "refY", "stdDeviation", "textLength", "lengthAdjust", "startOffset", "spreadMethod",
    "linearGradient", "radialGradient", "clipPath", "textPath", "foreignObject", "feGaussianBlur", "feOffset",
    "feBlend", "feColorMatrix", "feFlood", "feComposite", "feMerge", "feMergeNode", "attributeName", "baseFrequency",
    "numOctaves", "kernelMatrix", "pathLength", "primitiveUnits", "filterUnits")}

Resolve = Callable[[str], Picture]  # an image reference as written (src) -> the picture it names


def encoding(markup: bytes, declared: str = "") -> str | None:
    """UTF-8 when the bytes are UTF-8 (saved pages often keep a stale `<meta charset>`), else the charset the
    server declared, else None: the parser reads the page's own `<meta charset>`."""
    try:
        markup.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return declared or None


def parse(markup: bytes, xml: bool = False, charset: str = "") -> etree._Element:
    """The document tree; XHTML is read as XML (SVG keeps its case) and as HTML when it is not well-formed."""
    if xml:
        try:
            return etree.fromstring(markup, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                                                            recover=False))
        except etree.XMLSyntaxError:
            pass
    parser = lxml.html.HTMLParser(no_network=True, remove_comments=True, encoding=encoding(markup, charset))
    return lxml.html.document_fromstring(markup, parser=parser)


def local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""  # HTML allows `g:plusone`, QName does not


def _attrs(el: etree._Element) -> str:
    return f"{el.get('class', '')} {el.get('id', '')}"


def _text_len(el: etree._Element) -> int:
    return sum(len(t.strip()) for t in el.itertext())


def main_content(tree: etree._Element, narrow: bool = True) -> etree._Element:
    """The element holding the document: the largest of `<main>`, role=main and `<article>`; without one, and when
    `narrow`, the deepest element holding `PROSE_SHARE` of the body's prose (its paragraphs of 25 characters or
    more: related links, menus and teasers are short), else `<body>`."""
    body = next((e for e in tree.iter() if local(e.tag) == "body"), tree)
    candidates = [e for e in body.iter() if local(e.tag) in ("main", "article") or e.get("role") == "main"]
    best = max(candidates, key=_text_len, default=None)
    if best is not None and _text_len(best) >= 200:
        return best
    return densest(body) if narrow else body


PROSE_SHARE = 0.8


def densest(root: etree._Element) -> etree._Element:
    mass: Counter = Counter()
    for p in root.iter("p", "pre"):
        n = _text_len(p)
        if n >= 25:
            for a in p.iterancestors():
                mass[a] += n
                if a is root:
                    break
    total, node = mass[root], root
    while total:
        child = next((c for c in node if mass[c] >= PROSE_SHARE * total), None)
        if child is None:
            return node
        node = child
    return node


def has_prose(el: etree._Element) -> bool:
    """Three paragraphs of 80 characters or more: an article, whatever its class says (a share widget's wrapper)."""
    return sum(1 for p in el.iter("p") if _text_len(p) >= 80) >= 3


def is_boilerplate(el: etree._Element, book: bool = False) -> bool:
    """What a reader does not read as the document. In a book's XHTML an `<aside>` (a sidebar, a note) is the
    book's own text and classes name its design, so only the tags, roles and hidden elements count there."""
    tag = local(el.tag)
    if book and tag == "aside":
        return False
    if tag in DROP_TAGS or el.get("role") in DROP_ROLES or el.get("hidden") is not None:
        return True
    if el.get("aria-hidden") == "true" or HIDDEN_STYLE.search(el.get("style", "")):
        return True
    if tag == "header" and not any(local(e.tag) in ("h1", "h2") for e in el.iter()):
        return True
    if tag == "object" and "svg" not in el.get("type", "") + el.get("data", ""):
        return True
    return not book and tag not in ("html", "body") and bool(BOILERPLATE.search(_attrs(el))) and not has_prose(el)


class Walker:
    """Document-order walk of the content element, gathering paragraphs and pictures."""

    def __init__(self, resolve: Resolve, book: bool = False):
        self.resolve = resolve
        self.book = book
        self.blocks: list[Block] = []
        self.buf: list[str] = []
        self.caption = 0  # depth of caption elements around the walk
        self.inline = False  # a picture stands inside the paragraph being gathered

    def flush(self, pre: bool = False) -> None:
        text = "".join(self.buf)
        self.buf = []
        text = text.strip("\n") if pre else " ".join(text.split())
        if text.strip():
            self.blocks.append(Text(text, caption=self.caption > 0, cont=self.inline))
        self.inline = False

    def picture(self, pic: Picture) -> None:
        cut = self.inline or bool("".join(self.buf).strip())  # text of this paragraph stands before the picture
        self.flush()
        self.blocks.append(pic)
        self.inline = cut

    def walk(self, el: etree._Element) -> None:
        tag = local(el.tag)
        if not tag:  # comments, processing instructions
            self.text(el.tail)
            return
        if is_boilerplate(el, self.book):
            self.text(el.tail)
            return
        if tag == "img":
            src = el.get("src") or ""
            if not src or src.startswith("data:image/gif") and el.get("data-src"):  # a lazy-load placeholder
                src = el.get("data-src") or (el.get("srcset") or "").split(",")[0].strip().split(" ")[0]
            if src:
                pic = self._with_alt(self.resolve(src.strip()), el.get("alt", ""))
                pic.shown = shown_size(el)
                self.picture(pic)
            self.text(el.tail)
            return
        if tag in ("object", "embed"):
            src = el.get("data") or el.get("src") or ""
            if src:
                self.picture(self.resolve(src.strip()))
            self.text(el.tail)
            return
        if tag == "svg":
            self.picture(self._svg(el))
            self.text(el.tail)
            return
        if tag == "math":
            self.buf.append(" " + (el.get("alttext") or " ".join(el.itertext())) + " ")
            self.text(el.tail)
            return
        if tag == "br":
            self.buf.append("\n")
            self.text(el.tail)
            return
        if tag == "pre":
            self.flush()
            self.buf.append("".join(el.itertext()))
            self.caption += self._is_caption(el)
            self.flush(pre=True)
            self.caption -= self._is_caption(el)
            self.text(el.tail)
            return
        block = tag in BLOCK_TAGS
        caption = self._is_caption(el)
        if block or caption:
            self.flush()
        self.caption += caption
        self.text(el.text)
        for child in el:
            self.walk(child)
            if tag == "tr" and local(child.tag) in ("td", "th"):
                self.buf.append(" | ")
        if tag == "tr" and self.buf and self.buf[-1] == " | ":
            self.buf.pop()
        if block or caption:
            self.flush()
        self.caption -= caption
        self.text(el.tail)

    def content(self, root: etree._Element) -> list[Block]:
        """The blocks of `root`'s content (`root` itself is never judged boilerplate: it was chosen as content)."""
        self.text(root.text)
        for child in root:
            self.walk(child)
        self.flush()
        return self.blocks

    def text(self, s: str | None) -> None:
        if s:
            self.buf.append(s)

    @staticmethod
    def _is_caption(el: etree._Element) -> bool:
        return local(el.tag) in CAPTION_TAGS or bool(CAPTION_CLASS.search(el.get("class", "")))

    @staticmethod
    def _with_alt(pic: Picture, alt: str) -> Picture:
        pic.alt = " ".join(alt.split())
        return pic

    def _svg(self, el: etree._Element) -> Picture:
        """An inline SVG; one that only wraps a raster `<image>` (EPUB cover pages) is that image."""
        drawn = [e for e in el.iter() if local(e.tag) not in ("svg", "title", "desc", "defs", "metadata", "")]
        if len(drawn) == 1 and local(drawn[0].tag) == "image":
            href = drawn[0].get(f"{{{XLINK_NS}}}href") or drawn[0].get("href") or drawn[0].get("xlink:href") or ""
            if href:
                return self.resolve(href.strip())
        data = svg_bytes(el)
        return Picture(ref="svg:" + hashlib.sha1(data).hexdigest(), load=lambda: data, svg=True)


def shown_size(el: etree._Element) -> tuple[int, int] | None:
    """The `width` and `height` an `<img>` declares in pixels, when it declares both."""
    sizes = [re.fullmatch(r"\s*(\d+)\s*(?:px)?\s*", el.get(k) or "") for k in ("width", "height")]
    return (int(sizes[0].group(1)), int(sizes[1].group(1))) if all(sizes) else None


def svg_bytes(el: etree._Element) -> bytes:
    """A standalone SVG document of an inline `<svg>` element (names re-cased when an HTML parser read it)."""
    if el.tag == f"{{{SVG_NS}}}svg":
        return etree.tostring(el, with_tail=False)
    src = etree.tostring(el, with_tail=False, method="xml").decode("utf-8")
    src = re.sub(r"(?<=[<\s/])([a-z][a-z]+)(?=[\s=>/])", lambda m: SVG_CASE.get(m.group(1), m.group(1)), src)
    src = src.replace("xlink:href", "href")
    if "xmlns=" not in src.split(">", 1)[0]:
        src = src.replace("<svg", f'<svg xmlns="{SVG_NS}"', 1)
    return src.encode("utf-8")


def data_url(url: str) -> Picture:
    """A `data:` image: base64 or percent-encoded (SVG written inline)."""
    head, _, payload = url.partition(",")
    svg = "svg" in head

    def load() -> bytes:
        try:
            return base64.b64decode(payload, validate=False) if head.endswith(";base64") else unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as e:
            raise BadImage("image_undecodable", f"data: URL does not decode ({e})") from None

    return Picture(ref="data:" + hashlib.sha1(url.encode("utf-8", "replace")).hexdigest(), load=load, svg=svg)


def remote_or_inline(src: str) -> Picture | None:
    """The picture of a reference that needs no file: `data:` decoded, a URL (never fetched) counted as remote."""
    if src.startswith("data:"):
        return data_url(src)
    scheme = urlsplit(src).scheme.lower()
    if src.startswith("//") or scheme in ("http", "https", "ftp"):
        return Picture(ref=src, failure="image_remote")
    if scheme and scheme != "file" and len(scheme) > 1:  # javascript:, blob:, cid:, ...; one letter is a drive
        return Picture(ref=src, failure="image_missing")
    return None


def local_path(src: str) -> str:
    """The path part of a relative image reference, unquoted, without query or fragment."""
    return unquote(urlsplit(src).path)


def page(markup: bytes, resolve: Resolve, xml: bool = False, charset: str = "") -> Unit:
    """A page's main content as blocks, with its title and declared language. `xml`: a book's XHTML chapter (an
    EPUB's, or an `.xhtml` file), read whole: no narrowing to the densest prose, asides and classes kept."""
    tree = parse(markup, xml, charset)
    blocks = Walker(resolve, book=xml).content(main_content(tree, narrow=not xml))
    title = next((" ".join(e.itertext()).strip() for e in tree.iter() if local(e.tag) == "title"), "")
    lang = tree.get("lang") or tree.get("{http://www.w3.org/XML/1998/namespace}lang") or ""
    return Unit(blocks, {"title": title[:300], "language": lang})


def image_refs(markup: bytes) -> list[str]:
    """The `<img>` references a page makes, read without parsing it (for counting repeats across pages)."""
    return [m.decode("utf-8", "replace").strip() for m in IMG_SRC.findall(markup)]


def file_ref(src: str, page_path: str, root: str) -> str:
    """Where a relative reference of a page saved on disk leads: relative to the page, or to the input root (the
    site's root) when it starts with `/`. The result may leave the root: reading it is refused, then."""
    path = local_path(src.removeprefix("file://"))
    full = os.path.join(root, path.lstrip("/")) if path.startswith("/") else os.path.join(os.path.dirname(page_path), path)
    return os.path.normpath(full)


def file_resolver(page_path: str, root: str, max_bytes: int) -> Resolve:
    def resolve(src: str) -> Picture:
        pic = remote_or_inline(src)
        if pic is not None:
            return pic
        full = file_ref(src, page_path, root)
        return Picture(ref=os.path.relpath(full, root), load=lambda: read_regular(full, (root,), max_bytes),
                       svg=full.lower().endswith(".svg"))

    return resolve


def read_markup(path: str, max_bytes: int) -> bytes:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise Filtered(f"the page is {size / 1024**2:.1f} MB of markup, over the {max_bytes / 1024**2:g} MB limit (max_text_mb)")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def site_repeats(pages: list[str], root: str, max_repeats: int, max_bytes: int) -> dict[str, set[str]]:
    """Per page, the refs of its images that the site shows in `max_repeats` or more pages: logos and icons. Reads each page's `<img>` references without parsing it."""
    refs: dict[str, list[str]] = {}
    for p in pages:
        try:
            markup = read_markup(p, max_bytes)
        except (OSError, Filtered):
            continue  # its own render says why
        refs[p] = [os.path.relpath(file_ref(s, p, root), root) if remote_or_inline(s) is None else s
                   for s in image_refs(markup)]
    repeated = repeated_refs(refs.values(), max_repeats)
    return {p: set(r) & repeated for p, r in refs.items() if set(r) & repeated}


def read(doc: DocInput, cfg: ExtractConfig, stats: Counter) -> Iterator[Unit]:
    """An HTML page on disk; its images are read from the input root (`doc.related["root"]`) only."""
    root = doc.related.get("root") or os.path.dirname(doc.path)
    markup = read_markup(doc.path, int(cfg.max_text_mb * 1024**2))
    unit = page(markup, file_resolver(doc.path, root, cfg.rules.limits.max_bytes), xml=doc.path.lower().endswith(".xhtml"))
    unit.repeated = set(filter(None, doc.related.get("repeated", "").split("\n")))
    yield unit
