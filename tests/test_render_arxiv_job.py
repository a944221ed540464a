"""`vlcorpus render arxiv|pdf` end to end on a real local Ray: discovery, ledger reasons, shards read back with
webdataset, resume."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pymupdf
import pytest
import webdataset as wds

from pipelines.render_arxiv import discover_papers
from renderers.paper.sandbox import bwrap_available
from tests.helpers import sample_view
from tests.paper_fixtures import DATA, compile_paper, make_pdf
from vlcorpus.cli import main
from vlcorpus.ledger import Ledger


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arxiv_in")
    paper = root / "good-paper"
    shutil.copytree(DATA, paper)
    compile_paper(paper)
    (paper / "paper.pdf").rename(paper / "good-paper.pdf")
    for aux in paper.glob("paper.*"):
        if aux.suffix != ".tex":
            aux.unlink()
    make_pdf(paper / "fig-results.pdf")  # a figure PDF next to the paper's own
    with tarfile.open(root / "2401.00002v1.tar", "w") as tar:
        info = tarfile.TarInfo("../../escape.tex")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    make_pdf(root / "2401.00002v1.pdf", text="words " * 50)
    (root / "reports").mkdir()
    (root / "reports" / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << >> endobj\n" + bytes(300))
    doc = pymupdf.open()
    doc.new_page()
    doc.save(root / "reports" / "blank-scan.pdf")
    return root


def test_discovery_pairs_sources_and_pdfs(inputs):
    docs = {d.doc: d for d in discover_papers(inputs)}
    assert set(docs) == {"good-paper", "2401.00002v1", "reports/broken", "reports/blank-scan"}
    assert docs["good-paper"].related == {"source": str(inputs / "good-paper")}
    assert docs["2401.00002v1"].related == {"source": str(inputs / "2401.00002v1.tar"),
                                            "pdf": str(inputs / "2401.00002v1.pdf")}
    assert docs["reports/broken"].related == {"pdf": str(inputs / "reports" / "broken.pdf")}


def test_discovery_pairs_a_versioned_source_with_an_unversioned_pdf(tmp_path):
    (tmp_path / "2402.00003v2.tar.gz").write_bytes(b"")
    make_pdf(tmp_path / "2402.00003.pdf")
    [doc] = discover_papers(tmp_path)
    assert doc.doc == "2402.00003v2" and doc.related["pdf"] == str(tmp_path / "2402.00003.pdf")


def test_render_arxiv_job(inputs, tmp_path, ray_local, capsys):
    out = tmp_path / "corpus"
    sandbox = f"sandbox={str(bwrap_available()).lower()}"
    assert main(["render", "arxiv", str(inputs), "--out", str(out), "--batch-size", "2", "--set", sandbox]) == 0
    latest = Ledger(out, "arxiv").latest()
    assert {d: e.status for d, e in latest.items()} == {
        "good-paper": "ok", "2401.00002v1": "failed", "reports/broken": "failed", "reports/blank-scan": "filtered"}
    assert latest["2401.00002v1"].error_class == "UnsafeArchive" and "'..'" in latest["2401.00002v1"].error
    assert latest["reports/broken"].error_class == "PdfError"
    assert "no text layer" in latest["reports/blank-scan"].error
    good = latest["good-paper"]
    assert good.counts["text_from_latex"] == 1 and good.samples == good.counts["pages"] >= 3

    shards = sorted(str(p) for p in (out / "doc_ocr").glob("*.tar"))
    rows = [sample_view(r, pil=True) for r in wds.WebDataset(shards, shardshuffle=False)]
    assert len(rows) == good.samples
    for row in rows:
        meta = row["json"]
        assert meta["doc"] == "good-paper" and meta["meta"]["pdf"] == "good-paper.pdf"  # not the figure PDF
        assert max(row["0.jpg"].size) == 1024 and meta["segments"][1]["text"]
    index = json.loads((out / "doc_ocr" / "index.json").read_text())
    assert index["samples"] == good.samples

    # the route and the reason per paper, in `inspect` and in the corpus report
    assert main(["inspect", str(out), "--samples", "0"]) == 0
    printed = capsys.readouterr().out
    routes = next(line for line in printed.splitlines() if line.startswith("arxiv: 4 papers by route: "))
    assert {"failed 2 (50%)", "latex 1 (25%)", "filtered 1 (25%)"} == set(routes.partition(": ")[2].partition(": ")[2].split(", "))
    assert f"pages paired {good.samples}: from LaTeX {good.samples} (100%)" in printed
    assert "2401.00002v1: failed, UnsafeArchive:" in printed and "reports/blank-scan: filtered" in printed
    assert main(["report", str(out), "--thumbs", "1", "--scan", "10"]) == 0
    page = (out / "report" / "index.html").read_text()
    assert "arxiv: papers by route" in page and "UnsafeArchive" in page

    # a second run skips what is done and leaves the failures alone
    assert main(["render", "arxiv", str(inputs), "--out", str(out), "--set", sandbox]) == 0
    assert len(Ledger(out, "arxiv").latest()) == 4
    assert sorted(str(p) for p in (out / "doc_ocr").glob("*.tar")) == shards


def test_render_pdf_job(inputs, tmp_path, ray_local):
    out = tmp_path / "pdfs"
    assert main(["render", "pdf", str(inputs), "--out", str(out)]) == 0
    latest = Ledger(out, "pdf").latest()
    assert latest["good-paper/good-paper.pdf"].status == "ok"
    assert latest["good-paper/fig-results.pdf"].status == "filtered"  # a figure: too little text to pair
    rows = [sample_view(r) for r in wds.WebDataset(sorted(str(p) for p in (out / "doc_ocr").glob("*.tar")), shardshuffle=False)]
    assert rows and all(r["json"]["meta"]["text_from"] == "pdf" and r["json"]["source"] == "pdf" for r in rows)
