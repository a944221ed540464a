"""The page split's parts (`renderers.paper.page_text`, `normalize`, `align`, the patches in `nougat_tools`) on
small inputs where the right answer is known."""

from __future__ import annotations

import random

import pymupdf
import pytest

from renderers.paper import nougat_tools
from renderers.paper.align import words_on_page
from renderers.paper.normalize import (
    count_special_chars,
    normalize,
    remove_special_chars,
)
from renderers.paper.page_text import page_lines


def test_normalisation_maps_every_kept_character_back():
    rng = random.Random(0)
    pieces = ["word", " ", "\\(", "\\)", "\\mathbf{x}", "\\hat{\\theta}", "\\rightarrow", "**", "## ", "\\sum",
              "\\varphi", "[FIGURE:S1.F2][ENDFIGURE]", "\\'e", "-", "\n", "{", "}", "\\left(", "\\right)", "7"]
    for _ in range(200):
        s = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        norm, index = normalize(s)
        assert len(norm) == len(index) and index == sorted(index)
        for ch, i in zip(norm, index):  # each kept character is the original's, or Nougat's replacement of it
            assert ch == s[i].lower() or s.startswith(("\\sum", "\\varphi"), i)


def test_maths_decoration_costs_no_edits():
    assert remove_special_chars("\\(p(\\mathbf{x}|\\boldsymbol{\\theta})\\)") == remove_special_chars("p(x|\\theta)")
    assert remove_special_chars("\\(\\operatorname*{arg\\,min}_{\\psi}\\)") == "argmin\\psi"
    assert remove_special_chars("Ball\\textasciiacute e et al.") == remove_special_chars("Balle et al.")
    assert remove_special_chars("\\rightarrow") == "\\rightarrow"  # a command that only starts like one we strip


def test_a_page_never_starts_inside_a_formula_a_heading_or_bold():
    text = "before \\(a+\\mathbf{b}\\) after"
    norm, _ = normalize(text)
    inside = norm.index("a+b") + 2  # a cut at "b", inside the formula, moves to the formula's start
    assert inside + count_special_chars(text, inside) == text.index("\\(")
    heading = "end of a paragraph.\n\n## 3 Method\n\nThe method"
    at = normalize(heading)[0].index("method")
    assert heading[at + count_special_chars(heading, at):].startswith("## 3 Method")
    bold = "text. **Theorem 1.** Every"
    at = normalize(bold)[0].index("theorem")
    assert bold[at + count_special_chars(bold, at):].startswith("**Theorem")


def test_nougat_is_patched_where_we_expect_it():
    source = __import__("inspect").getsource(nougat_tools.split_md_to_pages.split_markdown)
    assert "pages.append(pages[-1])\n            first_words" not in source  # the empty-page shift is gone
    with pytest.raises(ImportError, match="not nougat-ocr 0.1.17"):
        nougat_tools._patch(nougat_tools.split_md_to_pages, "split_markdown", ("no such line", ""))


def _page(doc: pymupdf.Document, body: list[str], number: int, footnote: str = "", hyphen_end: str = "",
          figure: bool = False) -> None:
    page = doc.new_page(width=612, height=792)
    page.insert_text((72, 40), "A RUNNING HEAD OF THE JOURNAL", fontsize=10)
    y = 90
    for k, line in enumerate(body):
        page.insert_text((30, y), str(10 * number + k), fontsize=8)  # line numbers in the margin
        page.insert_text((72, y), line, fontsize=10)
        y += 14
    if figure:
        page.draw_rect(pymupdf.Rect(100, y + 10, 400, y + 200), color=(0, 0, 0))
        page.insert_text((150, y + 100), "0.2 0.4 axis label inside the plot", fontsize=10)
        page.insert_text((72, y + 220), "Figure 1: A caption that runs over", fontsize=10)
        page.insert_text((72, y + 232), "two lines of the page.", fontsize=10)
    if hyphen_end:
        page.insert_text((72, 600), hyphen_end, fontsize=10)
    if footnote:
        page.insert_text((72, 700), footnote, fontsize=7)
    page.insert_text((300, 760), str(number), fontsize=10)


def test_page_text_keeps_the_running_prose_only():
    doc = pymupdf.open()
    prose = ["The method reads every page of the paper and keeps the text", "that the markdown holds in the same order."]
    _page(doc, prose, 1, footnote="1 A footnote in small print at the bottom.", hyphen_end="and ends with a gener-",
          figure=True)
    _page(doc, ["ative word that continues on the next page here.", *prose], 2)
    _page(doc, prose, 3)
    pages = page_lines(doc)
    text = [" ".join(p) for p in pages]
    for t in text:
        assert "RUNNING HEAD" not in t and "footnote" not in t.lower() and not any(w.isdigit() for w in t.split())
    assert "axis label" not in text[0] and "caption" not in text[0] and "two lines of the page" not in text[0]
    assert text[0].endswith("and ends with a generative") and text[1].startswith("word that continues")
    assert text[2] == " ".join(prose)


def test_words_on_page():
    page = "Greedy selection builds sparse factors of kernel matrices."
    assert words_on_page("Greedy selection builds \\(\\mathbf{x}\\) sparse factors.", page) == 1.0
    assert words_on_page("Reviewers discussed the rebuttal at length.", page) == 0.0
    assert words_on_page("\\[x^2\\]", page) == 1.0  # nothing to check: all maths
