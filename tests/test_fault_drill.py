"""The fault drill over a folder of hostile inputs, through the real commands: every input gets a ledger line,
nothing is written outside the output, the browser touches no network, and the job finishes. It also covers reads
outside the input through symlinks, FIFOs and loops, and records too large to parse."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from renderers.browser.runner import FILES_PREFIX, owner_alive
from tests.browser_fixtures import LoopbackListeners, chapter, make_epub
from tests.helpers import image_bytes
from tests.notebook_fixtures import bomb_png, code_cell, notebook, png_output, write
from vlcorpus.cli import main
from vlcorpus.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
PAPER = Path(__file__).parent / "data" / "paper"


def tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def hostile_inputs(root: Path, url: str) -> dict[str, Path]:
    arxiv = root / "arxiv"
    arxiv.mkdir(parents=True)
    tex = (PAPER / "paper.tex").read_text()
    tar_with(arxiv / "traversal.tar.gz", {"paper.tex": tex.encode(), "../../escaped.txt": b"pwned"})
    passwd = arxiv / "passwd"
    shutil.copytree(PAPER, passwd)
    (passwd / "paper.tex").write_text(tex.replace("\\begin{document}", "\\begin{document}\\input{/etc/passwd}"))
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as tar:  # 600 MB of zeros in under a MB of gzip
        info = tarfile.TarInfo("paper.tex")
        info.size = 600 * 1024**2
        tar.addfile(info, _Zeros(info.size))
    (arxiv / "bomb.tar.gz").write_bytes(bomb.getvalue())

    pdf = root / "pdf"
    pdf.mkdir()
    (pdf / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage" * 50)

    epub = root / "epub"
    epub.mkdir()
    make_epub(epub / "traversal.epub", {"c1.xhtml": chapter("One", "<p>hello</p>")},
              extra={"../../escaped.txt": b"pwned"})
    make_epub(epub / "zipbomb.epub", {"c1.xhtml": chapter("One", "<p>" + "a" * 150_000_000 + "</p>")})
    make_epub(epub / "missing-spine.epub", {"c1.xhtml": chapter("One", "<p>x</p>")}, spine=["c1.xhtml", "gone.xhtml"])

    html = root / "html"
    html.mkdir()
    (html / "phone-home.html").write_text(
        f'<html><head><link rel="stylesheet" href="{url}/style.css"><script src="{url}/t.js"></script></head>'
        f'<body><h1>Tracker</h1><p>{"Some text to render. " * 40}</p><img src="{url}/pixel.gif">'
        f'<iframe src="{url}/frame"></iframe><script>fetch("{url}/beacon")</script></body></html>')
    (html / "spin.html").write_text("<html><body><p>loop</p><script>while(true){}</script></body></html>")

    nbs = root / "notebooks"
    nbs.mkdir()
    write(nbs / "bomb.ipynb", notebook([code_cell("import matplotlib\n" * 6, [png_output(bomb_png(30000, 30000))])]))
    cells = ",".join(['{"cell_type":"code","source":"","metadata":{},"outputs":[],"execution_count":null}'] * 10**6)
    (nbs / "million-cells.ipynb").write_text('{"nbformat":4,"nbformat_minor":5,"metadata":{},"cells":[' + cells + "]}")
    (nbs / "truncated.ipynb").write_text('{"nbformat": 4, "cells": [')
    return {"arxiv": arxiv, "pdf": pdf, "epub": epub, "html": html, "notebooks": nbs}


def loopback_inputs(inputs: dict[str, Path], listeners: LoopbackListeners) -> None:
    """A page and a book whose frames, objects, embeds and meta refresh aim at loopback services."""
    a, b, c, d = listeners.ports
    body = (f'<p>{"Text beside the frames. " * 20}</p><iframe src="http://127.0.0.1:{a}/"></iframe>'
            f'<iframe src="https://127.0.0.1:{b}/"></iframe><object data="http://127.0.0.1:{c}/"></object>'
            f'<embed src="https://127.0.0.1:{d}/"><iframe src="http://localhost:{a}/"></iframe>')
    (inputs["html"] / "loopback.html").write_text(
        f'<html><head><meta http-equiv="refresh" content="0; url=http://127.0.0.1:{c}/"></head><body>{body}</body></html>')
    make_epub(inputs["epub"] / "loopback.epub", {"c1.xhtml": chapter("One", body)})


def dead_runner_folders() -> set[Path]:
    """Browser files folders whose runner is gone, waiting (at most a minute) for the watchers to remove them."""
    for _ in range(120):
        left = {f for f in Path(tempfile.gettempdir()).glob(f"{FILES_PREFIX}*") if not owner_alive(f)}
        if not left:
            break
        time.sleep(0.5)
    return left


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


COMMANDS = {"arxiv": ["render", "arxiv"], "pdf": ["render", "pdf"], "epub": ["render", "epub"],
            "html": ["render", "html"], "notebooks": ["extract", "notebooks"]}


def test_hostile_inputs_are_all_recorded_and_contained(tmp_path, server):
    url, hits = server
    inputs = hostile_inputs(tmp_path / "in", url)
    listeners = LoopbackListeners()
    loopback_inputs(inputs, listeners)
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*") if out not in p.parents}
    for kind, folder in inputs.items():
        assert main([*COMMANDS[kind], str(folder), "--out", str(out), "--doc-timeout", "60"]) == 0, kind
    assert listeners.connections() == [], "a renderer opened a connection to a loopback service"
    listeners.close()
    assert dead_runner_folders() == set(), "browser files left behind by runners that are gone"
    after = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert after == before, f"written outside the output: {sorted(after - before)}"
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/tmp/escaped.txt").exists()
    assert hits == [], f"the renderers reached the network: {hits}"
    ledgers = {f.stem: Ledger(out, f.stem).latest() for f in (out / "_ledger").glob("*.jsonl")}
    recorded = {e.origin: e for entries in ledgers.values() for e in entries.values()}
    for name in ["traversal.tar.gz", "bomb.tar.gz", "corrupt.pdf", "traversal.epub", "zipbomb.epub",
                 "bomb.ipynb", "million-cells.ipynb", "truncated.ipynb"]:
        match = [e for origin, e in recorded.items() if Path(origin).name == name]
        assert match, f"{name} has no ledger line"
        assert match[0].status in ("failed", "filtered") and match[0].error, (name, match[0])
    spin = [e for o, e in recorded.items() if o.endswith("spin.html")]
    assert spin and spin[0].status == "ok" and spin[0].seconds < 60  # JavaScript is off: the loop never runs
    missing = [e for o, e in recorded.items() if o.endswith("missing-spine.epub")]
    assert missing and missing[0].counts.get("missing_spine_items") == 1  # rendered without it, and counted
    passwd = [e for o, e in recorded.items() if o.startswith("passwd")]
    assert passwd and (passwd[0].status != "ok" or "root:" not in json.dumps(passwd[0].__dict__))
    phone = [e for o, e in recorded.items() if o.endswith("phone-home.html")]
    assert phone and phone[0].status == "ok" and sum(v for k, v in phone[0].counts.items() if "block" in k) >= 1
    for name in ("loopback.html", "loopback.epub"):
        (e,) = [e for o, e in recorded.items() if o.endswith(name)]
        assert e.status == "ok" and e.counts["blocked_requests"] >= 4, (name, e)


def hostile_records(root: Path) -> dict[str, Path]:
    """Reads outside the input and unbounded records, each beside a good document."""
    good = "A good paragraph of plain text that is long enough to keep as a sample of its own. " * 4
    text = root / "text"
    (text / "sub").mkdir(parents=True)
    (text / "good.txt").write_text(good)
    (text / "passwd.txt").symlink_to("/etc/passwd")
    (text / "etc").symlink_to("/etc", target_is_directory=True)  # a symlinked folder leading outside
    os.mkfifo(text / "fifo.txt")  # opening it would block the reader forever
    (text / "loop.txt").symlink_to("loop.txt")
    with open(text / "huge-line.jsonl", "w") as f:  # one 200 MB line between two good records, in one piece
        f.write(json.dumps({"text": good}) + "\n")
        f.write('{"text": "' + "y" * (200 * 1024**2) + '"}\n')
        f.write(json.dumps({"text": good + "again"}) + "\n")
    (text / "paragraph.txt").write_text("z" * (100 * 1024**2))  # one 100 MB paragraph: the splitter must be linear

    nbs = root / "notebooks"
    nbs.mkdir()
    outside = root / "outside.ipynb"
    write(outside, notebook([code_cell("import matplotlib\n" * 6, [])]))
    (nbs / "linked.ipynb").symlink_to(outside)

    captions = root / "captions"
    (captions / "img").mkdir(parents=True)
    (captions / "img/a.jpg").write_bytes(image_bytes())
    os.mkfifo(captions / "img/fifo.jpg")
    (captions / "img/loop.jpg").symlink_to("loop.jpg")
    (captions / "img/passwd.jpg").symlink_to("/etc/passwd")
    (captions / "captions.jsonl").write_text("".join(json.dumps({"image": f"img/{n}", "caption": f"caption of {n}"}) + "\n"
                                                     for n in ("a.jpg", "fifo.jpg", "loop.jpg", "passwd.jpg")))
    return {"text": text, "notebooks": nbs, "captions": captions}


def test_reads_outside_the_input_are_refused_and_unbounded_records_counted(tmp_path):
    inputs = hostile_records(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["import", "text", str(inputs["text"]), "--out", str(out), "--num-cpus", "1"]) == 0
    assert main(["extract", "notebooks", str(inputs["notebooks"]), "--out", str(out), "--num-cpus", "1"]) == 0
    assert main(["import", "caption", str(inputs["captions"]), "--out", str(out), "--num-cpus", "1",
                 "--doc-timeout", "60"]) == 0
    texts = Ledger(out, "text").latest()
    for name, why in [("passwd.txt", "outside the input root"), ("etc", "outside the input root"),
                      ("fifo.txt", "not a regular file"), ("loop.txt", "symlink loop")]:
        assert texts[name].status == "failed" and texts[name].error_class == "UnsafeInput" and why in texts[name].error, texts[name]
    assert texts["good.txt"].status == "ok"
    assert texts["paragraph.txt"].status == "ok" and texts["paragraph.txt"].samples == 100 * 1024**2 // 20_000 + 1
    (huge,) = [e for d, e in texts.items() if d.startswith("huge-line.jsonl")]
    assert (huge.status, huge.samples, huge.counts) == ("ok", 2, {"records": 3, "imported": 2, "record_too_large": 1})
    shards = b"".join(p.read_bytes() for p in out.rglob("*.tar"))
    assert b"root:x:0:0" not in shards
    notebooks = Ledger(out, "notebook").latest()
    assert notebooks["linked.ipynb"].error_class == "UnsafeInput" and "outside the input root" in notebooks["linked.ipynb"].error
    (piece,) = Ledger(out, "caption").latest().values()
    assert (piece.status, piece.samples) == ("ok", 1)
    assert piece.counts == {"records": 4, "imported": 1, "image_unreadable": 2, "image_outside_root": 1}


# Papers: a canary in the environment the workers inherit (set before the session's Ray starts), which a
# paper reads through a macro-built name no source check sees; the test asserts it appears in no output.
CANARY = "vlcorpus-drill-canary-91d2"
os.environ["VLCORPUS_DRILL_CANARY"] = CANARY
TINY = ("\\documentclass{article}\\usepackage{natbib}\\title{A small hostile paper}\\begin{document}\\maketitle\n"
        + "Ordinary prose that the alignment can find on the printed page, sentence after sentence. " * 25
        + "\n\n%s \\citep{k1}\n\n\\bibliographystyle{%s}\\bibliography{refs}\\end{document}\n")
BIB = "@misc{k1, author={A. Author}, title={A title}, year={2020}}\n"


def paper_folder(root: Path, name: str, body: str = "", style: str = "plainnat", bib: str = BIB) -> Path:
    """A paper folder with its PDF (compiled from the harmless text, as a real PDF would be)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "paper.tex").write_text(TINY % ("", "plainnat"))
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "paper.tex"], cwd=folder, capture_output=True, timeout=120)
    (folder / "paper.pdf").rename(folder / f"{name}.pdf")
    for f in folder.glob("paper.*"):
        f.unlink()
    (folder / "paper.tex").write_text(TINY % (body, style))
    (folder / "refs.bib").write_text(bib)
    return folder


def hostile_papers(root: Path) -> dict[str, Path]:
    arxiv = root / "arxiv"
    paper_folder(arxiv, "environ", "\\def\\e{/proc/self/environ}\\input{\\e} \\def\\p{/usr/lib/os-release}\\input{\\p}")
    paper_folder(arxiv, "bib-syntax", bib=BIB + "@article{broken, title = {no closing brace\n")
    loop = paper_folder(arxiv, "bst-loop", style="loop")
    (loop / "loop.bst").write_text("ENTRY { } { } { }\nFUNCTION {f} { { #1 } { } while$ }\nREAD\nEXECUTE {f}\n")
    huge = paper_folder(arxiv, "bib-50mb")
    with open(huge / "refs.bib", "a") as f:
        f.write(("@misc{filler, note={" + "x" * 1000 + "}}\n") * 50_000)
    chain = root / "chain"
    chain.mkdir()
    with tarfile.open(chain / "2401.00009.tar.gz", "w:gz") as tar:
        for name, target in (("d", "."), ("d/e", "..")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        data = TINY.encode()
        info = tarfile.TarInfo("d/e/x.tex")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    shutil.copy(next((arxiv / "environ").glob("*.pdf")), chain / "2401.00009.pdf")
    pdf = root / "pdf"
    pdf.mkdir()
    (pdf / "page.pdf").write_text("<html><body><h1>Not a PDF</h1><p>" + "words " * 300 + "</p></body></html>")
    return {"arxiv": arxiv, "chain": chain, "pdf": pdf}


def test_hostile_papers_are_contained_and_explained(tmp_path):
    inputs = hostile_papers(tmp_path / "in")
    out = tmp_path / "out"
    for kind, folder in inputs.items():
        command = ["render", "pdf"] if kind == "pdf" else ["render", "arxiv"]
        assert main([*command, str(folder), "--out", str(out), "--doc-timeout", "300",
                     "--set", "bibtex_timeout_s=5"]) == 0, kind
    for f in out.rglob("*"):  # shards, sidecars, indexes, ledgers
        assert not f.is_file() or CANARY.encode() not in f.read_bytes(), f"the worker's environment is in {f}"
        assert not f.is_file() or b"VERSION_CODENAME" not in f.read_bytes(), f"/usr/lib/os-release is in {f}"
    latest = {e.origin: e for src in ("arxiv", "pdf") for e in Ledger(out, src).latest().values()}
    assert latest["environ"].status == "ok" and latest["environ"].counts["text_from_latex"] == 1
    assert latest["bib-syntax"].status == "ok" and latest["bib-syntax"].counts["bibtex_errors"] == 1
    assert latest["bst-loop"].status == "ok" and latest["bst-loop"].counts["bibtex_timeout"] == 1
    assert latest["bib-50mb"].status == "ok" and latest["bib-50mb"].counts["bib_too_large"] == 1
    chain = latest["2401.00009.tar.gz"]
    assert chain.status == "failed" and chain.error_class == "UnsafeArchive" and "goes through the link" in chain.error
    assert latest["page.pdf"].status == "failed" and latest["page.pdf"].error_class == "PdfError"
