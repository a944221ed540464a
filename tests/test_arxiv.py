"""The arXiv/PDF renderer on a paper we write and compile ourselves, and on hostile inputs.

LaTeXML is slow, so the real LaTeX route runs once per module (`rendered`) and the few other tests that need
LaTeXML keep its timeout short.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from renderers.paper import floats
from renderers.paper.arxiv import PaperConfig, render_arxiv, render_pdf
from renderers.paper.latexml import LatexmlSettings, html_to_markdown, latexml_to_html
from renderers.paper.pdf_pages import PdfError, rasterise
from renderers.paper.sandbox import ArchiveLimits, UnsafeArchive, bwrap_available
from renderers.paper.sources import (
    MainTexError,
    UnsafeSource,
    check_sources,
    pick_main_tex,
    pick_pdf,
)
from tests.paper_fixtures import DATA, compile_paper, make_pdf
from vlcorpus.document import DocInput, Filtered


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    """A paper folder: our LaTeX source, its figure, and the PDF pdflatex makes of it."""
    folder = tmp_path_factory.mktemp("papers") / "paper"
    shutil.copytree(DATA, folder)
    compile_paper(folder)
    for aux in folder.glob("paper.*"):
        if aux.suffix not in (".tex", ".pdf"):
            aux.unlink()
    return folder


@pytest.fixture(scope="module")
def rendered(paper):
    stats: Counter = Counter()
    doc = DocInput(doc="paper", origin="paper", path=str(paper), related={"source": str(paper)})
    return [s.validate() for s in render_arxiv(doc, PaperConfig(sandbox=bwrap_available()), stats)], stats


def words(text: str) -> list[str]:
    text = re.sub(r"\\\(.*?\\\)|\\\[.*?\\\]", " ", text, flags=re.S)  # math is typeset, not copied, in the PDF
    return [w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)]


def test_latex_route_gives_page_samples(rendered, paper):
    samples, stats = rendered
    pages = pymupdf.open(paper / "paper.pdf").page_count
    assert pages >= 3 and samples
    assert stats["text_from_latex"] == 1
    assert stats["pages"] + stats["page_too_little_text"] == pages
    assert [s.part for s in samples] == sorted({s.part for s in samples})
    assert all(s.meta["text_from"] == "latex" for s in samples)  # every page of our paper aligns
    for s in samples:
        assert s.category == "doc_ocr" and s.source == "arxiv"
        assert s.meta["page_score"] >= 0.75
        assert s.segments[0] == {"image": "0.jpg"} and s.text
        image = Image.open(io.BytesIO(s.images["0.jpg"]))
        assert image.format == "JPEG" and max(image.size) == 1024


def test_each_page_text_is_on_that_page(rendered, paper):
    """Most words of every emitted page are in the PDF's own text of the same page, and fewer on the others."""
    samples, _ = rendered
    pdf = pymupdf.open(paper / "paper.pdf")
    page_words = [set(words(p.get_text())) for p in pdf]
    for s in samples:
        ws = words(s.text)
        assert len(ws) >= 10
        own = sum(w in page_words[s.part] for w in ws) / len(ws)
        assert own >= 0.9, f"page {s.part}: only {own:.0%} of its words are on it"
        for other in range(len(page_words)):
            if other != s.part:
                assert sum(w in page_words[other] for w in ws) / len(ws) < own


def test_markdown_keeps_math_sections_and_floats(rendered, paper):
    text = "\n".join(s.text for s in rendered[0])
    assert re.search(r"^#+ .*Method", text, re.M)
    assert "\\mathcal{L}" in text and "\\sum_{t=1}^{T}" in text  # display math stays LaTeX
    assert "\\alpha^{2}" in text or "\\alpha^2" in text
    assert "[TABLE" not in text and "[FIGURE" not in text  # Nougat's float placeholders never leak
    tables = [s for s in rendered[0] if "Rasterise & 120" in s.text]  # the table, put back on its own page
    assert len(tables) == 1 and "Table 1: Time per stage" in tables[0].text
    assert "Rasterise" in pymupdf.open(paper / "paper.pdf")[tables[0].part].get_text()
    assert "Figure 1: A gradient figure" in text
    assert "Rendering Scientific Papers" in text


def test_pdf_text_layer_route(paper):
    stats: Counter = Counter()
    pdf = str(paper / "paper.pdf")
    samples = list(render_pdf(DocInput("p", "p.pdf", pdf, {"pdf": pdf}), PaperConfig(image_format="png"), stats))
    assert samples and stats["text_from_pdf"] == 1
    doc = pymupdf.open(pdf)
    for s in samples:
        s.validate()
        assert s.source == "pdf" and s.meta["text_from"] == "pdf" and "0.png" in s.images
        ws = words(s.text)
        assert sum(w in set(words(doc[s.part].get_text())) for w in ws) / len(ws) >= 0.9


def test_source_archive_with_its_pdf(paper, tmp_path):
    """A `.tar.gz` source whose LaTeX loops forever: the loop is cut by the time bound and the pages fall back
    to the PDF's text layer."""
    tex = (paper / "paper.tex").read_text()
    tex = tex.replace("\\begin{document}", "\\begin{document}\n\\loop\\iftrue\\repeat")
    archive = tmp_path / "2401.00001.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = tex.encode()
        info = tarfile.TarInfo("paper.tex")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(paper / "figure.png", "figure.png")
    stats: Counter = Counter()
    doc = DocInput("2401.00001", "2401.00001.tar.gz", str(archive),
                   {"source": str(archive), "pdf": str(paper / "paper.pdf")})
    samples = list(render_arxiv(doc, PaperConfig(latexml_timeout_s=20, sandbox=bwrap_available()), stats))
    assert stats["latexml_timeout"] + stats["latexml_failed"] == 1 and stats["text_from_pdf"] == 1
    assert samples and all(s.meta["text_from"] == "pdf" for s in samples)
    assert re.search(r"time|longer than", samples[0].meta["latex_error"], re.I)


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot create namespaces here")
def test_latexml_sandbox_cannot_read_outside(tmp_path):
    (tmp_path / "main.tex").write_text(
        "\\documentclass{article}\\begin{document}Start. \\def\\p{/etc/pas}\\input{\\p swd} End.\\end{document}\n"
    )
    settings = LatexmlSettings(timeout_s=120, sandbox=True, archive=ArchiveLimits())
    html = latexml_to_html(tmp_path / "main.tex", tmp_path, settings).read_text()
    assert "Start." in html and "root:x:0:0" not in html
    markdown, _ = html_to_markdown(tmp_path / "_latexml" / "main.html", Counter())
    assert "Start." in markdown and "root:" not in markdown


@pytest.mark.parametrize(
    "line",
    [
        "\\input{/etc/passwd}",
        "\\input /etc/passwd",
        "\\include{../../secret}",
        "\\newread\\f \\openin\\f=/etc/shadow",
        "\\openin3 = ../outside.tex",
        "\\verbatiminput{~/.ssh/id_rsa}",
        "\\InputIfFileExists{/etc/hosts}{}{}",
        "\\lstinputlisting{sub/../../x.py}",
        "\\subimport{../}{x}",
    ],
)
def test_reads_outside_the_folder_are_refused(tmp_path, line):
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.tex").write_text(f"\\documentclass{{article}}\\begin{{document}}\n{line}\n\\end{{document}}\n")
    with pytest.raises(UnsafeSource, match="outside the paper's folder"):
        check_sources(tmp_path, tmp_path)


def test_reads_inside_the_folder_pass(tmp_path):
    (tmp_path / "sec").mkdir()
    (tmp_path / "main.tex").write_text(
        "\\documentclass{article}\\begin{document}\\input{sec/a}\\include{sec/../sec/a}\\input{\\macro}"
        "\\includegraphics{sec/fig}% \\input{/etc/passwd} in a comment\n\\end{document}"
    )
    assert check_sources(tmp_path, tmp_path) == []  # nothing refused, no picture outside


def test_unsafe_source_falls_back_to_the_pdf_and_archives_are_refused(paper, tmp_path):
    """A source that reads outside its folder loses the LaTeX route (the reason counted and in meta); its PDF is
    still the paper's, so its pages come from the text layer. A traversing archive is refused before extraction."""
    folder = tmp_path / "evil"
    shutil.copytree(paper, folder)
    tex = folder / "paper.tex"
    tex.write_text(tex.read_text().replace("\\maketitle", "\\maketitle\\input{/etc/passwd}"))
    doc = DocInput("evil", "evil", str(folder), {"source": str(folder)})
    stats: Counter = Counter()
    samples = list(render_arxiv(doc, PaperConfig(), stats))
    assert stats["unsafe_source"] == 1 and stats["text_from_pdf"] == 1 and samples
    assert all(s.meta["text_from"] == "pdf" and "/etc/passwd" in s.meta["latex_error"] for s in samples)
    assert not any("root:" in s.text for s in samples)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../escape.tex")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    doc = DocInput("evil2", "evil.tar", str(archive), {"source": str(archive), "pdf": str(paper / "paper.pdf")})
    with pytest.raises(UnsafeArchive, match="'..'"):
        list(render_arxiv(doc, PaperConfig(), Counter()))
    assert not (tmp_path.parent / "escape.tex").exists()


def test_pictures_outside_the_folder_are_counted_not_refused(tmp_path):
    (tmp_path / "main.tex").write_text("\\documentclass{article}\\begin{document}"
                                       "\\includegraphics{../original/fig1.ps}\\end{document}")
    assert check_sources(tmp_path, tmp_path) == ["main.tex: ../original/fig1.ps"]


def test_main_tex_choice(tmp_path):
    body = "\\documentclass{article}\\title{%s}\\begin{document}%s\\end{document}"
    (tmp_path / "a.tex").write_text(body % ("Graph Ordering Speedups", "Caches love locality."))
    assert pick_main_tex(tmp_path, "x", "") == tmp_path / "a.tex"
    (tmp_path / "b.tex").write_text(body % ("Active Robotic Mapping", "\\input{abstract}"))
    (tmp_path / "abstract.tex").write_text("Robots explore unknown buildings and learn where walls stand.")
    assert pick_main_tex(tmp_path, "b", "") == tmp_path / "b.tex"
    # the PDF's first page against each candidate's text, inputs included
    first_page = "Active Robotic Mapping\nRobots explore unknown buildings and learn where walls stand."
    assert pick_main_tex(tmp_path, "paper", first_page) == tmp_path / "b.tex"
    with pytest.raises(MainTexError, match="a.tex, b.tex"):
        pick_main_tex(tmp_path, "paper", "Something else entirely")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pick_main_tex(empty, "paper", "") is None


def test_paper_and_supplement_sharing_a_title(tmp_path):
    """cholesky-siam's case: paper and supplement `\\input` the same title; the abstract tells them apart."""
    (tmp_path / "shared.tex").write_text("\\title{Sparse factorization by greedy selection}")
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\\input{shared}\\begin{document}\\maketitle "
                                        "Dense kernel matrices arise naturally in machine learning and statistics."
                                        "\\end{document}")
    (tmp_path / "paper_supplement.tex").write_text("\\documentclass{article}\\input{shared}\\begin{document}"
                                                   "\\maketitle Proofs of the lemmas and additional experiments."
                                                   "\\end{document}")
    first_page = ("Sparse factorization by greedy selection\nAbstract. Dense kernel matrices arise naturally in "
                  "machine learning and statistics.")
    assert pick_main_tex(tmp_path, "cholesky", first_page) == tmp_path / "paper.tex"


def _text_pdf(path: Path, text: str, pages: int = 1) -> Path:
    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page().insert_textbox(pymupdf.Rect(72, 72, 540, 720), text, fontsize=10)
    doc.save(path)
    return path


def test_picks_the_paper_pdf_never_a_figure_or_a_review(tmp_path):
    abstract = ("Greedy selection of points makes sparse factors of kernel matrices with provable accuracy guarantees. "
                "Dense kernel matrices arise naturally in machine learning and statistics, and their factors are "
                "expensive to compute when the number of points grows beyond what memory holds. ")
    (tmp_path / "main.tex").write_text("\\documentclass{article}\\title{Greedy Sparse Factors}\\begin{document}"
                                       f"\\maketitle {abstract * 2}\\includegraphics{{figs/plot}}\\end{{document}}")
    (tmp_path / "figs").mkdir()
    _text_pdf(tmp_path / "figs" / "plot.pdf", abstract * 2)  # the sources draw it: a figure, whatever it shows
    vocabulary = sorted(set(abstract.lower().replace(",", "").replace(".", "").split()))  # the paper's words...
    _text_pdf(tmp_path / "reviews.pdf", "Greedy Sparse Factors. Reviewer 2: " + " ".join(vocabulary * 2), pages=4)
    assert pick_pdf(tmp_path, "my-paper") is None  # ...not its sentences: compile instead
    _text_pdf(tmp_path / "final.pdf", "Greedy Sparse Factors\n" + abstract * 2, pages=2)
    assert pick_pdf(tmp_path, "my-paper") == tmp_path / "final.pdf"  # its first page is the sources' text
    make_pdf(tmp_path / "my-paper.pdf", pages=2)
    assert pick_pdf(tmp_path, "my-paper") == tmp_path / "my-paper.pdf"  # named like the folder: as given


def test_a_source_without_its_pdf_is_compiled_and_a_blank_page_shifts_nothing(paper, tmp_path):
    """No PDF: latexmk compiles it in the sandbox. The paper gets an empty page in the middle, after which Nougat's
    own split moves every later page's text onto the next page; each page must hold its own words."""
    folder = tmp_path / "nopdf"
    folder.mkdir()
    tex = (paper / "paper.tex").read_text().replace("\\section{Method}", "\\clearpage\\mbox{}\\clearpage\n\\section{Method}")
    (folder / "paper.tex").write_text(tex)
    shutil.copy(paper / "figure.png", folder)
    stats: Counter = Counter()
    doc = DocInput("nopdf", "nopdf", str(folder), {"source": str(folder)})
    samples = list(render_arxiv(doc, PaperConfig(sandbox=bwrap_available()), stats))
    assert stats["pdf_compiled"] == 1 and stats["text_from_latex"] == 1 and samples[0].meta["pdf_compiled"]
    compiled = pymupdf.open(stream=_compiled_pdf(folder), filetype="pdf")
    page_words = [set(words(p.get_text())) for p in compiled]
    blank = [i for i, w in enumerate(page_words) if not w]
    assert blank and blank[0] not in {s.part for s in samples}
    for s in samples:
        ws = words(s.text)
        assert s.meta["text_from"] == "latex" and sum(w in page_words[s.part] for w in ws) / len(ws) >= 0.9, s.part


def _compiled_pdf(folder: Path) -> bytes:
    """The PDF the renderer compiled is in its private copy, gone now: compile ours the same way to compare."""
    subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-silent", "paper.tex"], cwd=folder,
                   capture_output=True, timeout=300)
    return (folder / "paper.pdf").read_bytes()


def test_a_file_named_pdf_that_is_not_one_is_refused(tmp_path):
    for name, data in (("page.pdf", "<html><body><h1>Title</h1><p>" + "Some words here. " * 50 + "</p></body></html>"),
                       ("drawing.pdf", '<svg xmlns="http://www.w3.org/2000/svg"><text x="10" y="20">'
                                       + "Some words here. " * 20 + "</text></svg>")):
        (tmp_path / name).write_text(data)
        with pytest.raises(PdfError, match="not a PDF"):
            render_one(tmp_path / name)


def render_one(pdf: Path, cfg: PaperConfig | None = None) -> tuple[list, Counter]:
    stats: Counter = Counter()
    return list(render_pdf(DocInput(pdf.stem, pdf.name, str(pdf), {"pdf": str(pdf)}), cfg or PaperConfig(), stats)), stats


def test_corrupt_pdf(tmp_path):
    good = make_pdf(tmp_path / "good.pdf", text="Some words " * 20).read_bytes()
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    (tmp_path / "cut.pdf").write_bytes(good[: len(good) // 3])
    for name in ("bad.pdf", "cut.pdf"):
        with pytest.raises((PdfError, Filtered)):
            render_one(tmp_path / name)


def test_encrypted_pdf(tmp_path):
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret " * 50)
    doc.save(tmp_path / "enc.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    with pytest.raises(Filtered, match="encrypted"):
        render_one(tmp_path / "enc.pdf")


def test_ten_thousand_pages_refused_before_reading_them(tmp_path):
    pdf = make_pdf(tmp_path / "long.pdf", pages=10_000, text=None)
    with pytest.raises(Filtered, match="10000 pages"):
        render_one(pdf)


def test_huge_page_is_skipped_and_memory_stays_bounded(tmp_path):
    doc = pymupdf.open()
    doc.new_page(width=20_000, height=20_000).insert_text((72, 72), "huge page words " * 30, fontsize=40)
    doc.new_page().insert_text((72, 72), "A normal page with enough words to keep. " * 3)
    doc.save(tmp_path / "huge.pdf")
    samples, stats = render_one(tmp_path / "huge.pdf")
    assert stats["page_too_large"] == 1 and [s.part for s in samples] == [1]
    with pytest.raises(Filtered, match="larger than max_page_pt"):
        render_one(make_pdf(tmp_path / "only.pdf", size=(20_000, 20_000), text="x " * 100))
    data, size = rasterise(pymupdf.open(tmp_path / "huge.pdf")[0], 1024, "jpg", 90)  # were it allowed
    assert max(size) == 1024 and max(Image.open(io.BytesIO(data)).size) == 1024


def test_scanned_pdf_is_filtered(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    image = Image.new("RGB", (200, 100), "white")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    page.insert_image(page.rect, stream=buf.getvalue())
    doc.save(tmp_path / "scan.pdf")
    with pytest.raises(Filtered, match="no text layer"):
        render_one(tmp_path / "scan.pdf")


def test_float_goes_where_its_caption_is_printed():
    page_md = "First paragraph about graphs.\n\nSecond paragraph ends with cache misses here.\n\nThird paragraph later."
    pdf_text = ("First paragraph about graphs. Second paragraph ends with cache misses here. "
                "Order Time Misses Figure 3: Results of the ordering. Third paragraph later.")
    table = "\\begin{table}\nOrder & Time & Misses\n\\end{table}\nFigure 3: Results of the ordering."
    placed = floats.place(page_md, table, "Figure 3: Results of the ordering.", pdf_text)
    assert placed.index("cache misses here.") < placed.index("\\begin{table}") < placed.index("Third paragraph")
    top = floats.place(page_md, "Figure 1: At the top of the page.", "Figure 1: At the top of the page.",
                       "Figure 1: At the top of the page. First paragraph about graphs.")
    assert top.startswith("Figure 1:")
    unknown = floats.place(page_md, "Figure 9: Nowhere.", "Figure 9: Nowhere to be found.", pdf_text)
    assert unknown.endswith("Figure 9: Nowhere.")  # Nougat's placement when the caption is not on the page


DEMO_PAPER = Path(__file__).resolve().parents[1] / "demo" / "arxiv" / "rl-mapping"  # a real paper (demo/arxiv/SOURCE.md)


@pytest.mark.slow
def test_a_real_paper_without_its_bbl_takes_the_latex_route_on_every_page(tmp_path):
    """A NeurIPS-style paper from GitHub, its .bbl removed: BibTeX makes it from the shipped .bib, LaTeXML's
    unresolved citations are rewritten for Nougat's parser, and every page pairs with its LaTeX markdown, verified."""
    folder = tmp_path / "rl-mapping"
    shutil.copytree(DEMO_PAPER, folder, ignore=shutil.ignore_patterns("*.bbl"))
    stats: Counter = Counter()
    doc = DocInput(folder.name, folder.name, str(folder), {"source": str(folder)})
    samples = list(render_arxiv(doc, PaperConfig(sandbox=bwrap_available()), stats))
    assert stats["text_from_latex"] == 1 and stats["bbl_bibtex"] == 1 and not stats["bbl_present"]
    assert len(samples) == pymupdf.open(folder / "rl-mapping.pdf").page_count
    assert all(s.meta["text_from"] == "latex" for s in samples), [s.meta.get("latex_page") for s in samples]
