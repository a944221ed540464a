"""Mathematics on the browser route: formulas as LaTeX in the arXiv route's delimiters, and no text line that its page
does not show whole. Real documents under tests/data/maths (README there): a Project Gutenberg history of mathematics
set as EPUB 3 with MathML by tex4ebook, and a page of KaTeX's own output."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from browser_fixtures import (
    chapter,
    doc_for,
    epub_stage,
    html_stage,
    image,
    make_epub,
    new_runner,
    page_text,
    render_with,
)

from renderers.browser.epub import Book, BookSite, EpubConfig
from renderers.browser.pages import PageConfig, apply_template, paginate
from renderers.browser.session import Session

DATA = Path(__file__).parent / "data" / "maths"
BOOK = DATA / "hsmmt10t.epub"
FORMULAS = 127  # <math> elements in the book's chapters


@pytest.fixture(scope="module")
def runner():
    r = new_runner(epub_stage())
    yield r
    r.close()


def test_book_formulas_are_latex_in_the_text(runner):
    runner.stage = epub_stage(templates=["serif-light"])
    samples, counts = runner.render(doc_for(BOOK))
    assert counts["math_converted"] == FORMULAS and "math_unconverted" not in counts
    text = "\n".join(page_text(s) for s in samples)
    for formula in (r"\(x^{n} + y^{n} = z^{n}\)", r"\(x^{5} + y^{5} \neq a z^{5}\)", r"\(r = \sqrt{a^{2} + b^{2}}\)",
                    r"\(\sum_{0}^{n - 1} x^{m} = 0\)"):
        assert formula in text
    assert len(re.findall(r"\\\(", text)) == len(re.findall(r"\\\)", text)) == FORMULAS  # each formula once, whole
    # the formula sits in its sentence, not in fragments on lines of their own (the MathML's glyphs read as text)
    assert "Fermat’s theorem on \\(x^{n} + y^{n} = z^{n}\\)," in " ".join(text.split())
    assert not re.search(r"^\s*[−=+]\s*$", text, re.MULTILINE)


def _pages(runner, book: Path, template: str, cfg: PageConfig) -> tuple[list, Counter]:
    """Every chapter of `book` paginated on the runner's browser, as the EPUB renderer sets it."""
    stats: Counter = Counter()
    b = Book(book, EpubConfig(page=cfg), stats)
    site = BookSite(b, stats)
    pages = []
    try:
        with Session(runner.browser, runner.server, 120).page(site, cfg.width, cfg.height, 1, False, stats) as page:
            for name in b.spine:
                site.check_chapter(name)
                page.goto("/" + name)
                apply_template(page, template, cfg)
                pages += paginate(page, cfg, "template", stats)
    finally:
        b.close()
    return pages, stats


WIDE = "<mi>x</mi><mo>+</mo>" * 40 + "<mi>y</mi>"
TALL = "<mfrac><mn>1</mn><mrow>" * 8 + "<mn>2</mn>" + "</mrow></mfrac>" * 8
CROWDED = chapter("Crowded", (
    "<h1>Crowded</h1>"
    + "".join(f"<p>Prose line {i} before the wide things, long enough to wrap on the page.</p>" for i in range(12))
    + f'<p>An inline formula wider than a column <math xmlns="http://www.w3.org/1998/Math/MathML">{WIDE}</math> ends here.</p>'
    + f'<p>A tall one <math xmlns="http://www.w3.org/1998/Math/MathML">{TALL}</math> in a line.</p>'
    # LaTeXML's shape: presentation, content MathML and the source TeX, wrapped with a comment at the line's end
    + '<p>Annotated <math xmlns="http://www.w3.org/1998/Math/MathML" display="block"><semantics><mrow><mi>a</mi>'
      '<mo>+</mo><mi>b</mi></mrow><annotation-xml encoding="MathML-Content"><apply><plus/><ci>a</ci><ci>b</ci></apply>'
      '</annotation-xml><annotation encoding="application/x-tex">a+%\n\\beta</annotation></semantics></math> and'
      ' <math xmlns="http://www.w3.org/1998/Math/MathML"><semantics><msup><mi>c</mi><mn>2</mn></msup><annotation-xml'
      ' encoding="MathML-Content"><apply><power/><ci>c</ci><cn>2</cn></apply></annotation-xml></semantics></math>.</p>'
    + '<table style="width: 1800px"><tr>' + "".join(f"<td>cell{i} words</td>" for i in range(14)) + "</tr></table>"
    + '<p style="white-space: nowrap">' + " ".join(f"nowrap{i}" for i in range(120)) + "</p>"
    + '<div style="width: 1500px; height: 1500px; background: #ccc">a box taller and wider than a page</div>'
    + "".join(f"<p>Prose line {i} after them.</p>" for i in range(40))))


def _assert_inside(pages: list, stats: Counter, cfg: PageConfig) -> None:
    assert pages and not {"lines_outside_page", "words_cut", "math_cut"} & set(stats)
    for p in pages:
        assert all(-0.5 <= x0 and x1 <= cfg.width + 0.5 and -0.5 <= y0 and y1 <= cfg.height + 0.5
                   for x0, y0, x1, y1 in p.boxes), p.text


@pytest.mark.parametrize("template", ["serif-sepia-two-column"])
def test_every_line_lies_wholly_inside_its_page(runner, tmp_path, template):
    """A chapter of things that cannot wrap (a formula and a table wider than a column, a tall inline fraction, a
    nowrap paragraph, a box larger than a page): each is scaled or wrapped into its column, so no text line had to be
    left out for lying partly off its page, every line's box is inside the page, and every word is on some page."""
    cfg = PageConfig(templates=[template])
    pages, stats = _pages(runner, make_epub(tmp_path / "crowded.epub", {"c.xhtml": CROWDED}), template, cfg)
    _assert_inside(pages, stats, cfg)
    text = " ".join(" ".join(p.text for p in pages).split())
    assert stats["scaled_to_fit"] >= 2  # the wide formula and the table
    assert all(f"nowrap{i}" in text.split() for i in range(120)) and all(f"cell{i}" in text for i in range(14))
    assert "\\(x + x + " in text and "a box taller and wider than a page" in text
    assert "Annotated \\[a+\\beta\\] and \\(c^{2}\\)." in text  # the TeX without its comment; the presentation
    assert stats["math_tex"] == 1 and stats["math_converted"] == 3


@pytest.mark.slow
def test_every_line_of_the_real_book_lies_wholly_inside_its_page(runner):
    cfg = PageConfig(templates=["serif-sepia-two-column"])
    _assert_inside(*_pages(runner, BOOK, "serif-sepia-two-column", cfg), cfg)


def test_katex_page_gives_its_tex(runner):
    """KaTeX's own output (HTML glyphs beside hidden MathML carrying the TeX): each formula once, as its TeX."""
    samples, counts = render_with(runner, html_stage(web_code=False), DATA / "katex" / "gaussian.html")
    text = " ".join(" ".join(page_text(s) for s in samples).split())
    assert counts["math_tex"] == 7 and "math_unconverted" not in counts
    assert r"\(\int_{-\infty}^{\infty} e^{-x^2}\,dx = \sqrt{\pi}\) is the area under the bell curve" in text
    assert r"\[\int_{-\infty}^{\infty} e^{-a x^2}\,dx = \sqrt{\frac{\pi}{a}}.\]" in text
    assert "∞" not in text  # none of the glyphs KaTeX draws with


MATHJAX_PAGE = DATA / "mathjax" / "orthogonal-complements.html"
MATHJAX_FORMULAS = 211  # `math inline` and `math display` spans in the page


def _read_back(samples) -> str:
    return " ".join(subprocess.run(["tesseract", "-", "-", "--psm", "3"], input=next(iter(s.images.values())),
                                   capture_output=True, check=True).stdout.decode() for s in samples)


def test_mathjax_page_is_typeset_and_keeps_its_tex(runner, tmp_path):
    """A real page that loads MathJax from a CDN, its TeX in the DOM: the page images show the formulas typeset (the
    bundled MathJax, as the page's own script would have) while the text keeps each one's TeX. The same page without
    its MathJax script is left as it stands: its `\\(` is what a reader sees."""
    samples, counts = render_with(runner, html_stage(web_code=False), MATHJAX_PAGE)
    assert counts["math_typeset"] == counts["math_tex"] == MATHJAX_FORMULAS and "math_tex_errors" not in counts
    text = " ".join(" ".join(page_text(s) for s in samples).split())
    assert r"Let \(V\) be the subspace spanned by a single vector \(\overrightarrow{v}\) in \(\mathbb{R}^{2}\)" in text
    assert len(re.findall(r"\\\(|\\\[", text)) == MATHJAX_FORMULAS
    assert r"\[\overrightarrow{v}= \begin{pmatrix} 1\\ 2 \end{pmatrix}" in text
    assert not re.search(r"pmatrix|overrightarrow|mathbb", _read_back(samples[:3]))  # drawn, not shown as TeX

    plain = tmp_path / "no-mathjax.html"
    plain.write_text(re.sub(r"<script\s[^>]*>\s*</script>", "", MATHJAX_PAGE.read_text("utf-8")), "utf-8")
    raw, counts = render_with(runner, html_stage(web_code=False), plain)
    assert "math_typeset" not in counts and "math_tex" not in counts
    assert re.search(r"pmatrix|overrightarrow|mathbb", _read_back(raw[:3]))


MATHJAX2_PAGE = r"""<!DOCTYPE html><html><head><title>MathJax 2</title>
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  AuthorInit: function () { if (window.x) { MathJax.Hub.Queue(["Typeset", MathJax.Hub]); } },  // run by no one
  tex2jax: {inlineMath: [['$','$'], ['\\(','\\)']], processEscapes: true},
  TeX: {Macros: {RR: "{\\bf R}", norm: ["\\left\\Vert #1 \\right\\Vert", 1]}, equationNumbers: {autoNumber: "none"}}
});</script>
<script src="https://cdn.example.org/mathjax/2.7.7/MathJax.js?config=TeX-AMS_HTML"></script></head>
<body><p>Euler wrote $e^{i\pi} + 1 = 0$ on a page that cost \$5 to print.</p>
<p>A kramdown formula <span class="MathJax_Preview">PREVIEW</span><script type="math/tex">x^{2}</script> inline,</p>
<script type="math/tex; mode=display">\int_0^1 x\,dx = \frac{1}{2}</script>
<p>the page's macros $\norm{v} \in \RR$, an unknown one $\vecteur{v}$,</p>
<p>and a broken one \(\frac{1}\) shown as its source.</p>
<pre><code>price = $3 and $4</code></pre></body></html>"""


def test_mathjax2_scripts_config_and_dollar_delimiters(runner, tmp_path):
    """MathJax 2's shapes: `<script type="math/tex">` formulas (previews dropped), and the page's configuration read
    as data (a function in it skipped, never run): `$...$` delimiters, `\\$` an escaped dollar, its macros. Code is
    left alone; a TeX error typesets as its source and an undefined macro as its name, each counted."""
    page = tmp_path / "mathjax2.html"
    page.write_text(MATHJAX2_PAGE, "utf-8")
    samples, counts = render_with(runner, html_stage(web_code=False), page)
    text = " ".join(" ".join(page_text(s) for s in samples).split())
    assert counts["math_typeset"] == counts["math_tex"] == 6
    assert counts["math_tex_errors"] == 1 and counts["math_undefined_macros"] == 1  # the page's own macros are defined
    assert r"Euler wrote \(e^{i\pi} + 1 = 0\) on a page that cost $5 to print." in text
    assert r"A kramdown formula \(x^{2}\) inline," in text and "PREVIEW" not in text
    assert r"\[\int_0^1 x\,dx = \frac{1}{2}\]" in text
    assert r"the page's macros \(\norm{v} \in \RR\), an unknown one \(\vecteur{v}\)," in text
    assert r"\(\frac{1}\)" in text and "price = $3 and $4" in text


def test_katex_output_without_its_stylesheet_shows_each_formula_once(runner, tmp_path):
    """The same KaTeX page with its stylesheet on a CDN no render reaches: without katex.css each formula showed twice
    (its MathML, and KaTeX's HTML glyphs laid out wrong, square-root rules across the whole page) while the text held
    it once. Each keeps only its MathML, which Chromium draws: the text is the styled page's, and no rule is drawn
    across the page."""
    styled, styled_counts = render_with(runner, html_stage(web_code=False), DATA / "katex" / "gaussian.html")
    page = tmp_path / "gaussian.html"
    page.write_text((DATA / "katex" / "gaussian.html").read_text("utf-8").replace(
        'href="katex.min.css"', 'href="https://cdn.jsdelivr.net/npm/katex@0.16.47/dist/katex.min.css"'), "utf-8")
    samples, counts = render_with(runner, html_stage(web_code=False), page)
    assert counts["math_unstyled"] == 7 and "math_unstyled" not in styled_counts
    assert [page_text(s) for s in samples] == [page_text(s) for s in styled]
    ink = np.asarray(image(samples[0]).convert("L")) < 128
    assert ink.sum(axis=1).max() < 0.6 * ink.shape[1]


SAVED_CHTML = """<!DOCTYPE html><html><head><title>Saved MathJax 3 output</title></head><body>
<p>Each test case gives an amount <mjx-container class="MathJax" jax="CHTML" style="font-size: 99.9%; position: relative;">
<mjx-math class="MJX-TEX" aria-hidden="true"><mjx-mi class="mjx-i"><mjx-c class="mjx-c1D45A TEX-I"></mjx-c></mjx-mi>
<mjx-mo class="mjx-n" space="4"><mjx-c class="mjx-c2264"></mjx-c></mjx-mo><mjx-mn class="mjx-n" space="4">
<mjx-c class="mjx-c35"></mjx-c></mjx-mn></mjx-math><mjx-assistive-mml unselectable="on" display="inline">
<math xmlns="http://www.w3.org/1998/Math/MathML"><mi>m</mi><mo>&#x2264;</mo><mn>5</mn></math></mjx-assistive-mml>
<span aria-hidden="true" class="no-mathjax mjx-copytext">COPYTEXT</span></mjx-container> of money in dollars.</p>
</body></html>"""


def test_mathjax_output_saved_without_its_css_shows_its_mathml_once(runner, tmp_path):
    """MathJax 3's CHTML output saved with a page but without MathJax's stylesheet (as pages saved from a browser
    are): its glyphs are CSS content, so they draw nothing, while the assistive MathML and the copy-text span, hidden
    by that stylesheet, show. Only the MathML stays, drawn by Chromium, and the text holds the formula once."""
    page = tmp_path / "saved.html"
    page.write_text(SAVED_CHTML, "utf-8")
    samples, counts = render_with(runner, html_stage(web_code=False), page)
    text = " ".join(page_text(samples[0]).split())
    assert counts["math_unstyled"] == 1 and counts["math_converted"] == 1
    assert text == r"Each test case gives an amount \(m \leq 5\) of money in dollars."
    assert "COPYTEXT" not in _read_back(samples)


PANDOC_KATEX = r"""<!DOCTYPE html><html><head><title>pandoc --katex</title>
<script defer="" src="https://cdn.jsdelivr.net/npm/katex@0.16.47/dist/katex.min.js"></script>
<script>document.addEventListener("DOMContentLoaded", function () {
 var mathElements = document.getElementsByClassName("math");
 for (var i = 0; i < mathElements.length; i++) {
  katex.render(mathElements[i].firstChild.data, mathElements[i], {displayMode: mathElements[i].classList.contains('display')});
}});</script></head>
<body><p>Let <span class="math inline">V</span> be a subspace of <span class="math inline">\mathbb{R}^n</span>; then</p>
<p><span class="math display">V^{\bot} = \{\mathbf{u} : \mathbf{u}\cdot\mathbf{v} = 0\}.</span></p></body></html>"""


def test_pandoc_katex_page_is_typeset(runner, tmp_path):
    """pandoc's `--katex` pages keep each formula's bare TeX, without delimiters, in a `span.math` their script
    renders: each is typeset, inline or display as its class says, and its TeX is the text."""
    page = tmp_path / "katex.html"
    page.write_text(PANDOC_KATEX, "utf-8")
    samples, counts = render_with(runner, html_stage(web_code=False), page)
    text = " ".join(page_text(samples[0]).split())
    assert counts["math_typeset"] == counts["math_tex"] == 3
    assert text == r"Let \(V\) be a subspace of \(\mathbb{R}^n\); then \[V^{\bot} = \{\mathbf{u} : \mathbf{u}\cdot\mathbf{v} = 0\}.\]"


JUPYTER_BOOK = r"""<!DOCTYPE html><html><head><title>Jupyter Book</title>
<script>window.MathJax = {"tex": {"macros": {"bm": ["\\boldsymbol{#1}", 1], "R": "\\mathbb{R}"}},
 "options": {"processHtmlClass": "tex2jax_process|mathjax_process|math|output_area"}}</script>
<script defer="defer" src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></head>
<body><p>A vector <span class="math notranslate nohighlight">\(\bm{x} \in \R^n\)</span> and its norm</p>
<div class="math notranslate nohighlight">\[\|\bm{x}\| = \sqrt{\bm{x}^\top \bm{x}}\]</div></body></html>"""


def test_sphinx_mathjax3_configuration_gives_its_macros(runner, tmp_path):
    """The configuration Sphinx and Jupyter Book write (`window.MathJax = {...}` as JSON, macros with an argument
    count): its macros are defined, so nothing is drawn as an unknown name."""
    page = tmp_path / "jb.html"
    page.write_text(JUPYTER_BOOK, "utf-8")
    samples, counts = render_with(runner, html_stage(web_code=False), page)
    text = " ".join(page_text(samples[0]).split())
    assert counts["math_typeset"] == 2 and "math_undefined_macros" not in counts and "math_tex_errors" not in counts
    assert text == r"A vector \(\bm{x} \in \R^n\) and its norm \[\|\bm{x}\| = \sqrt{\bm{x}^\top \bm{x}}\]"
