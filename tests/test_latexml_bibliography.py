"""Bibliographies for the LaTeX route (`renderers.paper.bibliography`) and what LaTeXML's HTML needs before Nougat's
parser (`renderers.paper.latexml.resolve_for_nougat`), on small sources we write; bad bibliographies included."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from renderers.paper.arxiv import PaperConfig, render_arxiv
from renderers.paper.bibliography import BibSettings, cited_keys, make_bbl
from renderers.paper.latexml import resolve_for_nougat
from renderers.paper.sandbox import bwrap_available
from vlcorpus.document import DocInput

SANDBOX = bwrap_available()
BIB = """@article{smith2016, author = {John Smith and Ann Jones and Bo Li}, title = {Deep things in shallow water},
  journal = {Journal of Things}, year = {2016}}
@book{doe2019, author = {Jane Doe}, title = {Shallow things in deep water}, publisher = {Press}, year = {2019}}
"""
PROSE = ("Pages of real papers carry citations, references and formulas that the converter has to resolve before "
         "the parser accepts them, and each sentence here is long enough to be matched against the printed page. ")


def write_paper(folder: Path, body: str, preamble: str = "\\usepackage{natbib}", bib: str = BIB,
                style: str = "\\bibliographystyle{plainnat}\n\\bibliography{refs}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs.bib").write_text(bib)
    main = folder / "paper.tex"
    main.write_text(f"\\documentclass{{article}}\n{preamble}\n\\title{{Citations in a generated paper}}\n"
                    f"\\begin{{document}}\n\\maketitle\n{body}\n{style}\n\\end{{document}}\n")
    return main


def settings(timeout_s: float = 60, max_bib_mb: float = 32) -> BibSettings:
    return BibSettings(timeout_s=timeout_s, max_bib_mb=max_bib_mb, sandbox=SANDBOX)


def test_cited_keys_in_reading_order():
    text = "\\citet{b} and \\citep[p.~3][]{a, c} \\nocite{d} \\parencite{e}\\textcite{b} \\Citet*{f}"
    assert cited_keys(text) == ["b", "a", "c", "d", "e", "f"]


def test_bibtex_makes_the_bbl_from_the_bib(tmp_path):
    main = write_paper(tmp_path, "As \\citet{smith2016} show, and \\citep{doe2019}. \\input{sec}")
    (tmp_path / "sec.tex").write_text("An input file cites \\cite{smith2016} again.")
    stats: Counter = Counter()
    bib = make_bbl(main, tmp_path, settings(), stats)
    assert bib.source == "bibtex" and bib.error is None and stats["bbl_bibtex"] == 1
    assert bib.keys == ("smith2016", "doe2019")
    bbl = (tmp_path / "paper.bbl").read_text()
    assert "\\bibitem[Doe(2019)]{doe2019}" in bbl and "Smith et~al.(2016)" in bbl


def test_a_shipped_bbl_is_used_as_it_is(tmp_path):
    main = write_paper(tmp_path, "\\cite{smith2016}")
    (tmp_path / "paper.bbl").write_text("\\begin{thebibliography}{1}\\bibitem{smith2016} Shipped.\\end{thebibliography}")
    stats: Counter = Counter()
    assert make_bbl(main, tmp_path, settings(), stats).source == "present" and stats["bbl_present"] == 1
    assert "Shipped." in (tmp_path / "paper.bbl").read_text()


def test_a_bst_that_is_nowhere_falls_back_to_plain(tmp_path):
    main = write_paper(tmp_path, "\\cite{smith2016}", preamble="", style="\\bibliographystyle{IEEEtranXYZ}\\bibliography{refs}")
    stats: Counter = Counter()
    bib = make_bbl(main, tmp_path, settings(), stats)
    assert bib.source == "bibtex" and stats["bst_missing"] == 1 and "IEEEtranXYZ.bst" in bib.error
    assert "\\bibitem{smith2016}" in (tmp_path / "paper.bbl").read_text()


def test_biblatex_gets_bibtex_on_its_bib_resources(tmp_path):
    main = write_paper(tmp_path, "\\textcite{smith2016} and \\autocite{doe2019}.",
                       preamble="\\usepackage[style=numeric]{biblatex}\n\\addbibresource{refs.bib}",
                       style="\\printbibliography")
    stats: Counter = Counter()
    bib = make_bbl(main, tmp_path, settings(), stats)  # no biber needed
    assert bib.source == "bibtex" and stats["biblatex"] == 1
    assert "\\bibitem" in (tmp_path / "paper.bbl").read_text()


def _bibtex_processes(tree: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(tree).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


LOOPING_BST = """ENTRY { } { } { }
FUNCTION {forever} { { #1 } { } while$ }
READ
EXECUTE {forever}
"""


@pytest.mark.parametrize(
    "case, expected",
    [
        ("syntax_error", "bibtex_errors"),
        ("looping_bst", "bibtex_timeout"),
        ("crossref_cycle", None),
        ("huge_bib", "bib_too_large"),
        ("missing_bib", "bib_missing"),
    ],
)
def test_bad_bibliographies_are_bounded_and_explained(tmp_path, case, expected):
    bib, style = BIB, "\\bibliographystyle{plainnat}\\bibliography{refs}"
    if case == "syntax_error":
        bib = BIB + "@article{broken, author = {No Close, title = {x}\n@misc{later, title={Later}, year={2020}}\n"
    elif case == "looping_bst":
        (tmp_path / "loop.bst").write_text(LOOPING_BST)
        style = "\\bibliographystyle{loop}\\bibliography{refs}"
    elif case == "crossref_cycle":
        bib = ("@inproceedings{a1, title={A}, crossref={b1}, year={2001}}\n"
               "@proceedings{b1, title={B}, crossref={a1}, year={2001}}\n")
    main = write_paper(tmp_path, "\\cite{smith2016} \\cite{a1}", bib=bib, style=style)
    if case == "huge_bib":
        with open(tmp_path / "refs.bib", "a") as f:
            f.write(("@misc{filler, note={" + "x" * 1000 + "}}\n") * 50_000)  # 50 MB
    if case == "missing_bib":
        (tmp_path / "refs.bib").unlink()
    stats: Counter = Counter()
    bib_result = make_bbl(main, tmp_path, settings(timeout_s=5), stats)
    assert not _bibtex_processes(tmp_path), "bibtex outlived its bound"
    if expected:
        assert stats[expected] == 1 and (bib_result.error or case == "syntax_error")
    if case == "syntax_error":  # bibtex skips the broken entry and keeps the rest
        assert bib_result.source == "bibtex" and "\\bibitem[Smith" in (tmp_path / "paper.bbl").read_text()
    elif case == "crossref_cycle":  # bibtex copes or complains; either way it ends and says so
        assert bib_result.source in ("bibtex", "none")
    else:
        assert bib_result.source == "none" and not (tmp_path / "paper.bbl").exists()


def test_unresolved_references_become_what_the_pdf_prints():
    html = ('<article><p>See <span class="ltx_ref ltx_missing_label ltx_ref_self">LABEL:lem</span> and '
            '<span class="ltx_ref ltx_missing_citation ltx_ref_self">nokey</span>; '
            '<a class="ltx_ref" href="#bib.bib3">Smith et al.</a>, <a class="ltx_ref" href="#bib.bib3">2016a</a>, '
            '<a class="ltx_ref" href="#bib.bib7">unet</a>, <a class="ltx_ref" href="#bib.bib2">2</a>. '
            '<math class="ltx_Math ltx_math_unparsed" alttext="q(c)=\\prod_i q(c_i)" display="inline"></math>'
            '<span class="ltx_ERROR">\\undefined</span></p></article>')
    soup = BeautifulSoup(html, "html.parser")
    counts = resolve_for_nougat(soup, {"unet"})
    text = soup.get_text()
    assert "See ?? and [?]; Smith et al., 2016a, 7, 2." in text
    assert counts == {"labels_unresolved": 1, "citations_unresolved": 1, "citations_as_text": 3, "math_unparsed": 1,
                      "latexml_errors": 1}
    from renderers.paper.nougat_tools import format_document, parse_latexml

    markdown, _ = format_document(parse_latexml(soup), keep_refs=True)  # Nougat accepts it now
    assert "\\(q(c)=\\prod_i q(c_i)\\)" in markdown and "Smith et al." in markdown


def compile_with_bibtex(main: Path) -> None:
    run = {"cwd": main.parent, "check": True, "capture_output": True, "timeout": 120}
    subprocess.run(["pdflatex", "-interaction=nonstopmode", main.name], **run)
    subprocess.run(["bibtex", main.stem], **run)
    for _ in range(2):
        subprocess.run(["pdflatex", "-interaction=nonstopmode", main.name], **run)
    for f in main.parent.iterdir():
        if f.suffix in (".aux", ".bbl", ".blg", ".log", ".out"):
            f.unlink()


@pytest.mark.parametrize("kind", ["natbib", "biblatex"])
def test_author_year_paper_takes_the_latex_route(tmp_path, kind):
    """A source with only a .bib (no .bbl), natbib author-year citations and one undefined \\ref: Nougat alone
    refuses it ("missing reference detected"); we render it from LaTeX with the PDF's citations."""
    body = "\n\n".join([PROSE * 3, "As \\citet{smith2016} showed, and as a book argues \\citep{doe2019}, "
                        "the undefined Lemma~\\ref{lem:nowhere} is printed with question marks. " + PROSE * 2,
                        PROSE * 4])
    if kind == "natbib":
        main = write_paper(tmp_path / "paper", body)
        compile_with_bibtex(main)
    else:  # biblatex is not installed for pdflatex here: the PDF is the natbib one, the source uses biblatex
        compile_with_bibtex(write_paper(tmp_path / "pdf", body))
        main = write_paper(tmp_path / "paper", body.replace("\\citet", "\\textcite").replace("\\citep", "\\parencite"),
                           preamble="\\usepackage[style=authoryear]{biblatex}\\addbibresource{refs.bib}",
                           style="\\printbibliography")
        (tmp_path / "pdf" / "paper.pdf").rename(tmp_path / "paper" / "paper.pdf")
    stats: Counter = Counter()
    doc = DocInput("paper", "paper", str(main.parent), {"source": str(main.parent)})
    samples = list(render_arxiv(doc, PaperConfig(sandbox=SANDBOX), stats))
    assert stats["text_from_latex"] == 1 and stats["labels_unresolved"] == 1, stats
    text = "\n".join(s.text for s in samples if s.meta["text_from"] == "latex")
    assert "Smith et al." in text and "Lemma ??" in text and "[?]" not in text
    assert "Shallow things in deep water" in text, text[-600:]  # the reference list, as plainnat writes it
    assert samples[0].meta["bibliography"] == "bibtex"
