"""Tables and figures (LaTeX floats) back on the page where the PDF prints them, where it prints them.

Nougat takes float positions from pdffigures2 (a Java tool) and appends each float's markdown to the end of its
page. We find each caption's page in the PDF's own text instead, and put the float after the text that precedes
its caption on that page, so the page text reads in the order the page image does.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"[a-z]{3,}")
_LABEL = re.compile(r"\s*(Figure|Table|Fig\.)\s*([A-Z]?\d+)")


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def caption_of(key: str, tex: str) -> str | None:
    """The caption of a float from Nougat's `format_document` (`TABLE:...`/`FIGURE:...` keys), else None."""
    kind = key.partition(":")[0]
    if kind == "TABLE":
        return tex.partition("\\end{table}")[2].strip()
    return tex.strip() if kind == "FIGURE" else None


def locate(figures: dict[str, str], page_texts: list[str], min_share: float = 0.8) -> list[dict]:
    """pdffigures2-style records (`caption`, `page`, `figType`, plus our `key`) for the floats whose caption
    is on a page: the page holding most of the caption's words, at least `min_share` of them."""
    pages = [set(words(t)) for t in page_texts]
    flat = [" ".join(t.split()) for t in page_texts]
    located = []
    for key, tex in figures.items():
        caption = caption_of(key, tex)
        cap = words(caption or "")
        if len(cap) < 3:
            continue
        shares = [sum(w in page for w in cap) / len(cap) for page in pages]
        label = _LABEL.match(caption)  # "Figure 3: Learned histogram" and "Figure 4: Learned histogram": the number
        printed = [bool(label) and f"{label.group(1)} {label.group(2)}" in t for t in flat]
        best = max(range(len(pages)), key=lambda i: (shares[i], printed[i]) if shares[i] >= min_share else (0, False))
        if shares[best] >= min_share:
            kind = "Table" if key.startswith("TABLE") else "Figure"
            located.append({"caption": caption, "page": best, "figType": kind, "key": key})
    return located


def _find_run(haystack: list[str], needle: list[str]) -> int:
    """Index just past the first occurrence of `needle` in `haystack`, or -1."""
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i : i + n] == needle:
            return i + n
    return -1


def place(page_md: str, float_md: str, caption: str, page_text: str, context: int = 6) -> str:
    """`page_md` with `float_md` inserted after the paragraph holding the words that precede the caption on the
    PDF page (skipping the float's own body printed just above it); at the top if nothing precedes it; at the
    end if that text is not found in the markdown (Nougat's placement)."""
    pdf_words, cap = words(page_text), words(caption)
    start = _find_run(pdf_words, cap[:5])
    if start < 0:
        return f"{page_md}\n\n{float_md}"
    own = set(words(float_md))
    end = start - len(cap[:5])
    while end > 0 and pdf_words[end - 1] in own:  # the float's own body printed above its caption (a table)
        end -= 1
    before = pdf_words[:end]
    if len(before) < 3:
        return f"{float_md}\n\n{page_md}"
    spans = [(m.group(), m.end()) for m in _WORD.finditer(unicodedata.normalize("NFKC", page_md).lower())]
    md_words = [w for w, _ in spans]
    for n in range(min(context, len(before)), 2, -1):
        end = _find_run(md_words, before[-n:])
        if end > 0:
            cut = page_md.find("\n\n", spans[end - 1][1])
            cut = len(page_md) if cut < 0 else cut
            return f"{page_md[:cut]}\n\n{float_md}{page_md[cut:]}"
    return f"{page_md}\n\n{float_md}"
