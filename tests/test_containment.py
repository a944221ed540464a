"""Issue 30's second round of hostile inputs: links a paper's own code plants for host code to follow, scratch left
by killed documents, one bad record losing its neighbours, amplification, and the smaller holes (popups, terminal
escapes, duplicate ids, paths leaving their root, YAML tags, Ray's listeners). Each test failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from renderers.paper.arxiv import PaperConfig, render_arxiv
from renderers.paper.sandbox import UnsafeTree, bwrap_available, run_tool
from vlcorpus.document import DocInput

PAPER_TEX = ("\\documentclass{article}\\title{A paper that ships no PDF}\\begin{document}\\maketitle\n"
             + "Ordinary prose that the alignment can find on the printed page, sentence after sentence. " * 25
             + "\n\n%s\\end{document}\n")
SANDBOX_MODES = [pytest.param(True, marks=pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")), False]


def host_pdf(folder: Path) -> Path:
    """A PDF outside every paper, holding a secret: it must never reach a sample."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret.tex").write_text("\\documentclass{article}\\begin{document}\n"
                                       + "The host secret sentence is here and nowhere else at all. " * 30
                                       + "\n\\end{document}\n")
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "secret.tex"], cwd=folder, capture_output=True, timeout=120)
    return folder / "secret.pdf"


def paper_without_pdf(folder: Path, files: dict[str, str], body: str = "") -> DocInput:
    folder.mkdir(parents=True)
    (folder / "paper.tex").write_text(PAPER_TEX % body)
    for name, text in files.items():
        (folder / name).write_text(text)
    return DocInput(folder.name, folder.name, str(folder), {"source": str(folder)})


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", SANDBOX_MODES)
def test_a_papers_latexmkrc_never_runs(tmp_path, sandbox):
    """Issue 30, High: a latexmkrc that links main.aux to a host file (written through by the bibliography step) and
    main.pdf to a host PDF (read as the compiled paper). latexmk runs with -norc and HOME outside the paper."""
    victim = tmp_path / "host" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("host file, untouched\n")
    secret = host_pdf(tmp_path / "host")
    ran = tmp_path / "host" / "rc-ran"
    rc = (f"open(my $f, '>', '{ran}'); close($f); symlink('{victim}', 'paper.aux'); unlink 'paper.pdf'; "
          f"symlink('{secret}', 'paper.pdf'); exit 0;\n")
    doc = paper_without_pdf(tmp_path / "evil", {"latexmkrc": rc, ".latexmkrc": rc, "refs.bib": "@misc{k1, title={T}}\n"},
                            "\\cite{k1}\\bibliographystyle{plain}\\bibliography{refs}")
    stats: Counter = Counter()
    samples = list(render_arxiv(doc, PaperConfig(sandbox=sandbox), stats))
    assert not ran.exists(), "the paper's latexmkrc ran"
    assert victim.read_text() == "host file, untouched\n"
    assert stats["pdf_compiled"] == 1 and samples
    assert not any("host secret" in s.segments[1]["text"] for s in samples)


def test_a_link_left_by_a_tool_refuses_the_paper(tmp_path):
    """Whatever a tool runs (TeX, a LaTeXML binding), a link, FIFO or outside hard link it leaves behind stops the
    paper before host code reads the tree; the tree check runs even when the tool timed out."""
    tree = tmp_path / "w" / "src"
    tree.mkdir(parents=True)
    (tree / "ok.tex").write_text("x")
    outside = tmp_path / "outside.txt"
    outside.write_text("host")
    for plant, what in ((f"ln -s {outside} main.aux", "symlink"), ("mkfifo pipe", "FIFO"),
                        (f"ln {outside} hard.txt", "hard-linked")):
        with pytest.raises(UnsafeTree, match=what):
            run_tool(["sh", "-c", plant], tree=tree, cwd=tree, timeout_s=30, log=tmp_path / "log", sandbox=False)
        for p in tree.iterdir():
            if p.name != "ok.tex":
                p.unlink()
    assert run_tool(["sh", "-c", "echo fine > made.txt"], tree=tree, cwd=tree, timeout_s=30, log=tmp_path / "log",
                    sandbox=False) == 0


@pytest.mark.slow
@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")
def test_a_latexml_binding_that_plants_a_link_refuses_the_paper(tmp_path):
    """A paper's own LaTeXML binding (Perl, run in the sandbox) links the HTML LaTeXML writes to a host file: the
    paper fails as UnsafeTree, and nothing of the host file is read."""
    secret = tmp_path / "host" / "secret.html"
    secret.parent.mkdir()
    secret.write_text("<html><body><article>host secret</article></body></html>")
    pdf = host_pdf(tmp_path / "pdfsrc")
    binding = (f"package LaTeXML::Package::Pool; use LaTeXML::Package; mkdir '_latexml'; "
               f"symlink('{secret}', '_latexml/paper.html'); 1;\n")
    doc = paper_without_pdf(tmp_path / "evil", {"paper.latexml": binding})
    (tmp_path / "evil" / "evil.pdf").write_bytes(pdf.read_bytes())
    with pytest.raises(UnsafeTree, match="symlink"):
        list(render_arxiv(doc, PaperConfig(), Counter()))


def test_without_the_sandbox_a_papers_latexml_bindings_never_run(tmp_path):
    """sandbox=false: a paper shipping LaTeXML bindings loses the LaTeX route (unsafe_source) before LaTeXML runs."""
    ran = tmp_path / "ran"
    pdf = host_pdf(tmp_path / "pdfsrc")
    doc = paper_without_pdf(tmp_path / "evil", {"paper.latexml": f"open(my $f, '>', '{ran}'); 1;\n"})
    (tmp_path / "evil" / "evil.pdf").write_bytes(pdf.read_bytes())
    stats: Counter = Counter()
    samples = list(render_arxiv(doc, PaperConfig(sandbox=False), stats))
    assert not ran.exists() and stats["unsafe_source"] == 1 and stats["text_from_pdf"] == 1 and samples
    assert "LaTeXML bindings" in samples[0].meta["latex_error"]


@pytest.mark.slow
def test_a_killed_papers_private_copy_is_removed_by_the_parent(tmp_path, monkeypatch):
    """Issue 30, Medium: a paper killed by the per-document time bound while latexmk runs left its private copy in
    the temporary folder. The parent removes the child's scratch when it kills it, and the next worker removes
    the scratch of a parent that died."""
    from vlcorpus.document import Bounds
    from vlcorpus.driver import Stage
    from vlcorpus.storage import SCRATCH_PREFIX
    from vlcorpus.worker import BoundedWorker

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    orphan = tmp / f"{SCRATCH_PREFIX}999999999-1-x"  # a parent that is gone
    (orphan / "vlcorpus-paper-y").mkdir(parents=True)
    doc = paper_without_pdf(tmp_path / "spin", {}, "\\loop\\iftrue\\repeat")
    stage = Stage(source="arxiv", render=render_arxiv, config=PaperConfig(), bounds=Bounds(timeout_s=8, memory_gb=4))
    worker = BoundedWorker(stage)
    worker.open(tmp_path / "out", "b0", 10**9, 1000)
    try:
        result = worker.render(doc)
    finally:
        worker.abort()
    assert result["error_class"] == "Timeout"
    assert list(tmp.iterdir()) == [], "scratch left in the temporary folder"


@pytest.mark.slow
def test_a_tex_write_loop_stops_at_the_private_copys_cap(tmp_path):
    """Issue 30, Medium: a `\\write` loop filled the disk at hundreds of MB per 15 s, bounded only by the compile
    timeout. The private copy has a cap while a tool runs; past it the tool is killed and the paper fails."""
    from renderers.paper.sandbox import ToolDiskLimit

    loop = "\\newwrite\\f\\immediate\\openout\\f=junk.txt\\loop\\immediate\\write\\f{%s}\\iftrue\\repeat" % ("x" * 200)
    doc = paper_without_pdf(tmp_path / "flood", {}, loop)
    with pytest.raises(ToolDiskLimit, match="past 20 MB"):
        list(render_arxiv(doc, PaperConfig(max_tree_mb=20, compile_timeout_s=120), Counter()))


@pytest.mark.slow
def test_one_bad_record_loses_none_of_its_neighbours(tmp_path, ray_local):
    """Issue 30, Medium and Low: a lone surrogate (valid JSON, no text) or a NUL in an image path failed the whole
    2,000-record piece; two COCO `images` entries with one id let the last win silently. Each is a counted drop."""
    from tests.helpers import image_bytes
    from vlcorpus.cli import main
    from vlcorpus.ledger import Ledger

    good = "A good paragraph of plain text that is long enough to keep as a sample of its own. " * 4
    captions = tmp_path / "in" / "captions"
    (captions / "img").mkdir(parents=True)
    (captions / "img" / "a.jpg").write_bytes(image_bytes())
    lines = ['{"image": "img/a.jpg", "caption": "a good caption"}', '{"image": "img/a.jpg", "caption": "bad \\ud800"}',
             '{"image": "img/a\\u0000.jpg", "caption": "a NUL in the path"}', '{"image": "img/a.jpg", "caption": "good again"}']
    (captions / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (captions / "array.json").write_text("[" + ",".join(lines) + "]")  # staged into JSONL pieces at discovery
    coco = tmp_path / "in" / "coco"
    (coco / "train2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        (coco / "train2017" / name).write_bytes(image_bytes())
    (coco / "annotations" / "captions_train2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}, {"id": 2, "file_name": "3.jpg"}],
        "annotations": [{"image_id": 1, "id": 10, "caption": "the first image"},
                        {"image_id": 2, "id": 11, "caption": "which of the two images?"}]}))
    text = tmp_path / "in" / "text"
    text.mkdir()
    (text / "t.jsonl").write_text(json.dumps({"text": good}) + "\n" + '{"text": "bad \\udc80 ' + good + '"}\n'
                                  + json.dumps({"text": good + "again"}) + "\n")
    out = tmp_path / "out"
    for kind, folder in (("caption", captions), ("caption", coco), ("text", text)):
        assert main(["import", kind, str(folder), "--out", str(out), "--num-cpus", "1"]) == 0
    pieces = {e.doc.split("#")[0]: e for e in Ledger(out, "caption").latest().values()}
    for name in ("captions.jsonl", "array.json"):
        assert pieces[name].status == "ok" and pieces[name].samples == 2, pieces[name]
        assert pieces[name].counts["bad_unicode"] == 1 and pieces[name].counts["image_path_invalid"] == 1
    cocos = pieces["annotations/captions_train2017.json"]
    assert (cocos.status, cocos.samples, cocos.counts["duplicate_image_id"]) == ("ok", 1, 1)
    (piece,) = Ledger(out, "text").latest().values()
    assert (piece.status, piece.samples, piece.counts["bad_unicode"], piece.counts["imported"]) == ("ok", 2, 1, 2)


def test_a_chapter_the_spine_repeats_is_planned_once(tmp_path):
    """Issue 30, Medium: a 330 KB EPUB whose spine lists one chapter 4,000 times planned 4,000 renderings of it."""
    from renderers.browser.epub import Book, EpubConfig, book_parts
    from tests.browser_fixtures import chapter, make_epub

    prose = "<p>" + "A sentence of an ordinary chapter, set as it would be in any book. " * 40 + "</p>"
    path = make_epub(tmp_path / "loop.epub", {"c1.xhtml": chapter("One", prose * 90), "c2.xhtml": chapter("Two", prose)},
                     spine=["c1.xhtml", "c2.xhtml"] * 2000)
    stats: Counter = Counter()
    book = Book(path, EpubConfig(), stats)
    assert book.spine == ["OEBPS/c1.xhtml", "OEBPS/c2.xhtml"] and stats["duplicate_spine_items"] == 3998
    book.close()
    assert book_parts(path, EpubConfig()) == [(0, 2)]


@pytest.mark.slow
def test_a_small_book_that_paginates_into_many_pages_stops_at_its_size_budget(tmp_path, ray_local):
    """Issue 30, Medium: pages are capped relative to the book's size (10 + one per `min_page_bytes` unpacked, 100 by
    default), with a reason; a real chapter of the same size is far inside the budget."""
    from tests.browser_fixtures import chapter, make_epub
    from vlcorpus.cli import main
    from vlcorpus.ledger import Ledger

    books = tmp_path / "books"
    books.mkdir()
    make_epub(books / "breaks.epub", {"c1.xhtml": chapter("One", '<p style="break-before: column">x</p>' * 150)})
    out = tmp_path / "out"
    assert main(["render", "epub", str(books), "--out", str(out), "--num-cpus", "1", "--set", "min_page_bytes=1000"]) == 0
    (entry,) = Ledger(out, "epub").latest().values()
    size = sum(i.file_size for i in zipfile.ZipFile(books / "breaks.epub").infolist())
    assert entry.status == "ok" and entry.samples == 10 + size // 1000, entry
    assert entry.counts["pages_over_size_budget"] > 0


def test_popups_are_blocked_and_the_page_kept(tmp_path):
    """Issue 30, Low: with page.javascript=true any `window.open`, even same-origin, failed the document ("Frame for
    this navigation request is not available" in the route handler)."""
    from tests.browser_fixtures import doc_for, html_stage, new_runner, page_text

    (tmp_path / "other.html").write_text("<p>OTHER PAGE</p>")
    page = tmp_path / "popup.html"
    page.write_text("<!DOCTYPE html><html><body><p>a page that opens windows</p><script>window.open('other.html');"
                    "window.open('https://example.com/', '_blank');</script></body></html>")
    runner = new_runner(html_stage(web_code=False, page_javascript=True))
    try:
        samples, counts = runner.render(doc_for(page))
    finally:
        runner.close()
    assert "opens windows" in page_text(samples[0]) and "OTHER PAGE" not in page_text(samples[0])
    assert counts["popups_blocked"] >= 1


def test_inspect_escapes_control_characters_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Issue 30, Low: `vlcorpus inspect` printed a sample's terminal escapes raw (window title, clear screen)."""
    from vlcorpus.cli import main
    from vlcorpus.sample import Sample
    from vlcorpus.shards import ShardWriter

    hostile = "Title\x1b]0;owned\x07 then \x1b[2J\x9b31m cleared\ttabbed\nsecond line"
    sample = Sample(category="text", source="text", doc="d\x1b[1m", part=0, origin="o\x1b[5m",
                    segments=[{"text": hostile}], meta={"note": "\x9b2J"})
    writer = ShardWriter(tmp_path / "text", "s")
    writer.write(sample, sample.to_wds())
    writer.close()
    assert main(["inspect", str(tmp_path / "text"), "--samples", "1"]) == 0
    assert "\x1b]0;owned" in capsys.readouterr().out  # piped: exact
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["inspect", str(tmp_path / "text"), "--samples", "1"]) == 0
    shown = capsys.readouterr().out
    assert not any(c in shown for c in "\x1b\x07\x9b") and "\\x1b]0;owned\\x07" in shown and "\\x9b31m" in shown
    assert "cleared\ttabbed\n  second line" in shown


def test_shard_paths_that_leave_their_root_are_refused(tmp_path):
    """Issue 30, Low: the mixer read an `index.json` entry `../../outside/stolen.tar` outside the corpus, and the
    trainer joined `mixture.json` shard paths without a check. Both now refuse a path that leaves its root."""
    from mixer.config import load_mixture
    from mixer.mix import run_mix
    from mixer.resolve import MixError, category_shards
    from tests.mix_corpus import build_corpus
    from trainer.data import read_mixture_json

    corpus = build_corpus(tmp_path / "corpus", per_category=8, categories=("caption", "doc_ocr"))
    run_mix([corpus], load_mixture("stage1"), tmp_path / "mix", local=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = sorted((corpus / "caption").glob("*.tar"))[0]
    for f in (shard, shard.with_suffix(".json")):
        (outside / f.name.replace(shard.stem, "stolen")).write_bytes(f.read_bytes())
    index = json.loads((corpus / "caption" / "index.json").read_text())
    index["shards"].append({**index["shards"][0], "shard": "../../outside/stolen.tar"})
    (corpus / "caption" / "index.json").write_text(json.dumps(index))
    with pytest.raises(MixError, match="stolen.tar' it lists leaves"):
        category_shards([corpus], "caption")
    stage = tmp_path / "mix" / "stage1"
    assert read_mixture_json(stage)[1]["caption"]["shards"]
    mixture = json.loads((stage / "mixture.json").read_text())
    mixture["categories"]["caption"]["shards"][0]["shard"] = "../../../outside/stolen.tar"
    (stage / "mixture.json").write_text(json.dumps(mixture))
    with pytest.raises(ValueError, match="stolen.tar' it lists leaves"):
        read_mixture_json(stage)


def test_a_yaml_python_tag_is_refused_with_a_message(tmp_path, capsys):
    """Issue 30, Low: a mixture YAML with a Python tag was refused, but with a raw traceback."""
    from vlcorpus.cli import main

    ran = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'stage: s\ncategories: !!python/object/apply:os.system ["touch {ran}"]\n')
    assert main(["mix", str(tmp_path), "--mixture", str(evil), "--out", str(tmp_path / "mix")]) == 2
    err = capsys.readouterr().err
    assert f"{evil} (line 2, column 13): a YAML tag that builds a Python object" in err and "Traceback" not in err
    assert main(["mix", str(tmp_path), "--mixture", "stage1", "--out", str(tmp_path / "mix"),
                 "--set", "seed=!!python/name:os.system"]) == 2
    assert "override 'seed=!!python/name:os.system' (line 1, column 1): a YAML tag" in capsys.readouterr().err and not ran.exists()


LISTENERS = """
import json
import psutil
from vlcorpus.runtime import init_ray
init_ray(num_cpus=1)
import ray
ray.get(ray.remote(lambda: 1).remote())
me = psutil.Process()

def ours(pid):
    try:
        return pid == me.pid or me.pid in [p.pid for p in psutil.Process(pid).parents()]
    except psutil.Error:
        return False

print(json.dumps(sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and ours(c.pid)})))
"""


@pytest.mark.slow
def test_the_embedded_local_ray_listens_on_loopback_only():
    """Issue 30, Low: the embedded local Ray (GCS, raylet, workers, agents, metrics) listened on every interface."""
    out = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=300)
    addresses = json.loads(out.stdout.strip().splitlines()[-1])
    assert addresses and set(addresses) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, out.stdout + out.stderr


def test_the_cluster_dashboard_is_not_started_on_every_interface():
    """Issue 30, Low: ray_cluster.yaml started the head's dashboard (a job API that runs code) on 0.0.0.0."""
    import yaml

    cluster = yaml.safe_load((Path(__file__).parent.parent / "ray_cluster.yaml").read_text())
    (start,) = [c for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start


@pytest.mark.slow
def test_latexmls_own_timeout_is_counted_as_a_timeout(tmp_path):
    """Issue 30, Low: LaTeXML's own `--timeout` (and its loop limits) fired before ours, and was counted
    `latexml_failed`; `latexml_timeout` never was."""
    pdf = host_pdf(tmp_path / "pdfsrc")
    doc = paper_without_pdf(tmp_path / "spin", {}, "\\loop\\iftrue\\repeat")
    (tmp_path / "spin" / "spin.pdf").write_bytes(pdf.read_bytes())
    stats: Counter = Counter()
    samples = list(render_arxiv(doc, PaperConfig(latexml_timeout_s=5), stats))
    assert stats["latexml_timeout"] == 1 and stats["latexml_failed"] == 0 and samples
    assert "latexmlc stopped the conversion" in samples[0].meta["latex_error"]
