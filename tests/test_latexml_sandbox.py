"""A paper that reads the worker's environment or the host's files through a macro-built name (which no
source check sees) gets nothing of them into the corpus, through every TeX tool we run: bibtex, latexmk (a paper
without its PDF is compiled) and LaTeXML."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from renderers.paper.arxiv import PaperConfig, render_arxiv
from renderers.paper.latexml import LatexmlSettings, html_to_markdown, latexml_to_html
from renderers.paper.sandbox import ArchiveLimits, bwrap_available
from vlcorpus.document import DocInput

CANARY = "vlcorpus-canary-5b1e0c"
ATTACKS = ("Before. \\def\\e{/proc/self/environ}\\input{\\e} Middle. \\def\\p{/usr/lib/os-release}\\input{\\p} "
           "\\def\\h{/etc/hostname}\\input{\\h} After.")
# TeX stops on a file it cannot open (it asks for another name); guarded, the paper still compiles
GUARDED_ATTACKS = ("Before. \\def\\e{/proc/self/environ}\\InputIfFileExists{\\e}{}{} Middle. "
                   "\\def\\p{/usr/lib/os-release}\\IfFileExists{\\p}{\\input{\\p}}{} After.")
needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot create namespaces here")


def leaked(text: str) -> list[str]:
    host = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else CANARY
    return [s for s in (CANARY, "PRETTY_NAME", "VERSION_CODENAME", "PYTHONPATH", f" {host} ") if s in text]


@pytest.mark.parametrize("sandbox", [pytest.param(True, marks=needs_bwrap), False])
def test_latexml_reads_no_environment(tmp_path, monkeypatch, sandbox):
    """Without the sandbox too: the tools get a cleared environment, so /proc/self/environ holds nothing of ours."""
    monkeypatch.setenv("VLCORPUS_CANARY", CANARY)
    main = tmp_path / "main.tex"
    attack = ATTACKS if sandbox else "Before. \\def\\e{/proc/self/environ}\\input{\\e} After."
    main.write_text(f"\\documentclass{{article}}\\begin{{document}}{attack}\\end{{document}}\n")
    html = latexml_to_html(main, tmp_path, LatexmlSettings(timeout_s=120, sandbox=sandbox, archive=ArchiveLimits()))
    markdown, _ = html_to_markdown(html, Counter())
    assert "Before." in markdown and "After." in markdown
    assert not leaked(html.read_text() + markdown)


@needs_bwrap
def test_no_tool_leaks_into_the_samples(tmp_path, monkeypatch):
    """The whole route on a paper with no PDF and a .bib: latexmk compiles it, bibtex makes the .bbl, LaTeXML
    converts it; the canary and the host's files appear in no sample's text or meta."""
    monkeypatch.setenv("VLCORPUS_CANARY", CANARY)
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "refs.bib").write_text("@misc{k1, author={A. Author}, title={A title}, year={2020}, "
                                     "note={\\def\\b{/proc/self/environ}\\IfFileExists{\\b}{\\input{\\b}}{none}}}\n")
    prose = "A sentence of ordinary prose that the alignment can find on the compiled page. " * 30
    (folder / "paper.tex").write_text(
        "\\documentclass{article}\\title{A hostile paper}\\begin{document}\\maketitle\n"
        f"{prose}\n\n{GUARDED_ATTACKS} \\cite{{k1}}\n\n{prose}\n\\bibliographystyle{{plain}}\\bibliography{{refs}}\\end{{document}}\n")
    stats: Counter = Counter()
    doc = DocInput("hostile", "hostile", str(folder), {"source": str(folder)})
    samples = list(render_arxiv(doc, PaperConfig(), stats))
    assert stats["pdf_compiled"] == 1 and stats["bbl_present"] == 1 and stats["text_from_latex"] == 1, stats
    assert not leaked(json.dumps([{"text": s.text, "meta": s.meta} for s in samples]))
    assert any("Middle." in s.text for s in samples)
