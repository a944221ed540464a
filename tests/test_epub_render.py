"""EPUB rendering: spine order, EPUB 2 and 3, CJK, and untrusted books through the real Ray pipeline and ledger."""

from __future__ import annotations

import argparse
import json
import zipfile

import pytest
import webdataset as wds
from browser_fixtures import (
    chapter,
    doc_for,
    epub_stage,
    make_epub,
    new_runner,
    page_text,
    text_lines,
)

from pipelines import render_epub as epub_pipeline
from tests.helpers import sample_view

PARAS = [f"Paragraph {i:03d} of the test book, long enough to wrap over a couple of lines on the page." for i in range(40)]


@pytest.fixture(scope="module")
def runner():
    r = new_runner(epub_stage())
    yield r
    r.close()


def _render(runner, path, **page):
    runner.stage = epub_stage(**page)
    return runner.render(doc_for(path))


def test_spine_order_and_every_line_once(runner, tmp_path):
    one = chapter("One", "<h1>Chapter One</h1>" + "".join(f"<p>{p}</p>" for p in PARAS[:20]))
    two = chapter("Two", "<h1>Chapter Two</h1>" + "".join(f"<p>{p}</p>" for p in PARAS[20:]))
    book = make_epub(tmp_path / "book.epub", {"one.xhtml": one, "two.xhtml": two}, spine=["two.xhtml", "one.xhtml"])
    samples, counts = _render(runner, book, templates=["serif-light"])
    assert [s.part for s in samples] == list(range(len(samples)))
    assert [s.meta["chapter"] for s in samples][0] == "OEBPS/two.xhtml"
    text = " ".join(" ".join(text_lines(s)) for s in samples)
    expected = " ".join(["# Chapter Two", *PARAS[20:], "# Chapter One", *PARAS[:20]])
    assert text == expected  # lines wrap anywhere, but no word is lost, repeated or reordered
    assert counts["missing_spine_items"] == 0 and "blocked_requests" not in counts


def test_epub2_with_css_and_image(runner, tmp_path):
    png = _png()
    body = '<p class="big">Styled words</p><img src="pic.png" alt="a picture" width="200" height="100"/>'
    book = make_epub(tmp_path / "two.epub", {"c.xhtml": chapter("C", body, css="style.css")}, version="2.0",
                     extra={"OEBPS/style.css": b".big { font-weight: bold }", "OEBPS/pic.png": png})
    samples, counts = _render(runner, book)
    assert text_lines(samples[0]) == ["Styled words", "![a picture]()"]
    assert counts["served_requests"] >= 3  # chapter, stylesheet, picture


def test_cjk_vertical_book_is_set_horizontally_with_real_glyphs(runner, tmp_path):
    import subprocess

    ja = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
    body = f'<div style="writing-mode: vertical-rl"><p>{ja}</p></div>'
    book = make_epub(tmp_path / "ja.epub", {"c.xhtml": chapter("C", body, lang="ja")}, lang="ja")
    samples, _ = _render(runner, book, templates=["sans-large-print"])
    assert page_text(samples[0]).replace("\n", "") == ja
    assert samples[0].meta["declared_language"] == "ja"
    got = subprocess.run(["tesseract", "-", "-", "-l", "jpn", "--psm", "6"], input=samples[0].images["0.png"],
                         capture_output=True, check=True).stdout.decode()
    got = "".join(got.split())
    assert sum(ch in got for ch in ja) >= 0.6 * len(ja), f"OCR read {got!r}: tofu instead of glyphs?"


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


# --- untrusted books, each a ledger entry of one real pipeline run ---------------------------------------------------

GOOD = chapter("Good", "<p>A good chapter with ordinary text.</p>")


def _bomb(z: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("OEBPS/zeros.bin")
    info.compress_type = zipfile.ZIP_DEFLATED  # 300 MB of zeros in about 300 KB
    with z.open(info, "w", force_zip64=True) as f:
        chunk = bytes(1024**2)
        for _ in range(300):
            f.write(chunk)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory, ray_local):
    books = tmp_path_factory.mktemp("books")
    make_epub(books / "good.epub", {"c.xhtml": GOOD})
    make_epub(books / "traversal.epub", {"c.xhtml": GOOD}, extra={"../../evil.txt": b"owned"})
    make_epub(books / "bomb.epub", {"c.xhtml": GOOD}, tamper=_bomb)
    make_epub(books / "missing-one.epub", {"c.xhtml": GOOD}, spine=["gone.xhtml", "c.xhtml"])
    make_epub(books / "missing-all.epub", {}, spine=["gone.xhtml"])
    broken = chapter("B", "<p>Broken <b>markup<p>still readable &nbsp; text</p>")
    make_epub(books / "broken.epub", {"c.xhtml": broken})
    (books / "notzip.epub").write_bytes(b"this is not a zip file at all")
    out = tmp_path_factory.mktemp("corpus")
    parser = argparse.ArgumentParser()
    epub_pipeline.add_arguments(parser)
    args = parser.parse_args([str(books), "--out", str(out), "--doc-timeout", "120", "--batch-size", "4"])
    assert epub_pipeline.main(args) == 0
    lines = [json.loads(x) for x in (out / "_ledger" / "epub.jsonl").read_text().splitlines()]
    entries = {e["origin"]: e for e in lines}
    assert len(entries) == 7
    return out, entries


def test_good_book_lands_in_readable_shards(ledger):
    out, entries = ledger
    assert entries["good.epub"]["status"] == "ok"
    urls = sorted(str(p) for p in (out / "doc_ocr").glob("*.tar"))
    rows = [sample_view(r) for r in wds.WebDataset(urls, shardshuffle=False).decode()]
    texts = [r["json"]["segments"][1]["text"] for r in rows if r["json"]["doc"] == "good.epub"]
    assert texts == ["A good chapter with ordinary text."]


def test_path_traversal_is_refused(ledger):
    e = ledger[1]["traversal.epub"]
    assert e["status"] == "failed" and e["error_class"] == "EpubError" and "path traversal" in e["error"]


def test_zip_bomb_is_refused(ledger):
    e = ledger[1]["bomb.epub"]
    assert e["status"] == "failed" and e["error_class"] == "EpubError" and "zip bomb" in e["error"]


def test_missing_spine_item_is_skipped_and_counted(ledger):
    e = ledger[1]["missing-one.epub"]
    assert e["status"] == "ok" and e["counts"]["missing_spine_items"] == 1 and e["samples"] == 1


def test_book_without_any_readable_chapter_fails_clearly(ledger):
    e = ledger[1]["missing-all.epub"]
    assert e["status"] == "failed" and "no readable chapter" in e["error"] and "gone.xhtml" in e["error"]


def test_broken_xhtml_is_read_as_html_and_counted(ledger):
    out, entries = ledger
    e = entries["broken.epub"]
    assert e["status"] == "ok" and e["counts"]["chapters_parsed_as_html"] == 1
    rows = [sample_view(r) for r in wds.WebDataset(sorted(str(p) for p in (out / "doc_ocr").glob("*.tar")), shardshuffle=False)]
    (text,) = [r["json"]["segments"][1]["text"] for r in rows if r["json"]["doc"] == "broken.epub"]
    assert "Broken markup" in text and "still readable" in text


def test_not_a_zip_fails_clearly(ledger):
    e = ledger[1]["notzip.epub"]
    assert e["status"] == "failed" and "not a zip archive" in e["error"]


# --- long books: parts decided before rendering, each its own document ------------------------------------------------

def _novel(path, chapters: int, paragraphs: int, words: int = 60):
    """A generated novel whose paragraphs are numbered, so any loss, repeat or reordering shows."""
    text = {f"ch{c:03d}.xhtml": chapter(f"Chapter {c}", f"<h1>Chapter {c}</h1>" + "".join(
        f"<p>c{c:03d}p{p:02d} " + " ".join(["whale", "sea", "ship", "sail", "harpoon"][(c + p + w) % 5] for w in range(words))
        + "</p>" for p in range(paragraphs))) for c in range(chapters)}
    return make_epub(path, text), text


def test_book_parts_cover_the_spine_in_bounded_runs_of_chapters(tmp_path):
    """A 135-chapter novel of 10 KB chapters (Moby-Dick's shape): parts of whole chapters, in order, none missing,
    each within the byte budget, decided from the zip directory alone."""
    from renderers.browser import epub

    book, text = _novel(tmp_path / "novel.epub", chapters=135, paragraphs=25)
    cfg = epub.EpubConfig()
    parts = epub.book_parts(book, cfg)
    assert parts[0][0] == 0 and parts[-1][1] == 135 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [len(t.encode()) for t in text.values()]
    assert all(sum(sizes[a:b]) <= cfg.part_bytes for a, b in parts)
    assert all(sum(sizes[a:b + 1]) > cfg.part_bytes for a, b in parts[:-1])  # no part could take the next chapter
    assert len(parts) == -(-sum(sizes) // cfg.part_bytes) or len(parts) == -(-sum(sizes) // cfg.part_bytes) + 1
    small = epub.EpubConfig(page=epub.PageConfig(max_pages=500, width=512, height=512))
    assert small.part_bytes == cfg.part_bytes // 4 and len(epub.book_parts(book, small)) > len(parts)


def test_long_book_renders_in_parts_and_loses_nothing(tmp_path, ray_local):
    """A book over the page bound: the old renderer cut it; now each part is a document with its own ledger line and
    keys, every paragraph is on some page exactly once, in order, and a re-run renders nothing again."""
    books = tmp_path / "books"
    books.mkdir()
    _novel(books / "long.epub", chapters=10, paragraphs=3, words=40)
    out = tmp_path / "corpus"
    parser = argparse.ArgumentParser()
    epub_pipeline.add_arguments(parser)
    argv = [str(books), "--out", str(out), "--set", "page.max_pages=6", "--set", "page.templates=[sans-large-print]"]
    assert epub_pipeline.main(parser.parse_args(argv)) == 0
    ledger_lines = (out / "_ledger" / "epub.jsonl").read_text().splitlines()
    lines = list({e["doc"]: e for e in map(json.loads, ledger_lines)}.values())  # the latest line of each part
    assert len(lines) > 2 and all(e["status"] == "ok" and e["origin"] == "long.epub" for e in lines)
    # one batch per part, but the parts' pages share byte-sized shards: here one, named by every part's latest line
    tars = sorted((out / "doc_ocr").glob("*.tar"))
    assert [t.name for t in tars] == sorted({s.split("/")[1] for e in lines for s in e["shards"]})
    assert len(tars) == 1 and "-merged-" in tars[0].name
    assert sorted(e["doc"] for e in lines)[0] == "long.epub#C0" and all("#C" in e["doc"] for e in lines)
    assert not any(k in e["counts"] for e in lines for k in ("chapters_over_page_limit", "pages_over_limit"))
    rows = [sample_view(r) for r in wds.WebDataset(sorted(str(p) for p in (out / "doc_ocr").glob("*.tar")), shardshuffle=False)]
    assert len({r["__key__"] for r in rows}) == len(rows) == sum(e["samples"] for e in lines)
    for doc in {r["json"]["doc"] for r in rows}:
        assert sorted(r["json"]["part"] for r in rows if r["json"]["doc"] == doc) == list(range(sum(
            r["json"]["doc"] == doc for r in rows)))  # each part's pages are numbered from 0
    rows.sort(key=lambda r: (r["json"]["meta"]["book_part"], r["json"]["part"]))
    assert {r["json"]["meta"]["book"] for r in rows} == {"long.epub"}
    assert {r["json"]["meta"]["book_parts"] for r in rows} == {len(lines)}
    labels = [w for r in rows for w in r["json"]["segments"][1]["text"].split() if w[:1] == "c" and w[4:5] == "p"]
    assert labels == [f"c{c:03d}p{p:02d}" for c in range(10) for p in range(3)]
    assert epub_pipeline.main(parser.parse_args(argv)) == 0
    assert len((out / "_ledger" / "epub.jsonl").read_text().splitlines()) == len(ledger_lines)
