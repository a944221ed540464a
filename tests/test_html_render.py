"""HTML rendering on the real Chromium: exact page text, hidden text, markdown forms, CJK glyphs, web_code pairs."""

from __future__ import annotations

import difflib
import io
import re
import subprocess

import numpy as np
import pytest
from browser_fixtures import (
    html_stage,
    image,
    new_runner,
    page_text,
    render_with,
    text_lines,
)
from PIL import Image

LINES = [f"line {i:03d} " + " ".join(["alpha", "beta", "gamma", "delta"][i % 4] for _ in range(3)) for i in range(60)]


@pytest.fixture(scope="module")
def runner():
    r = new_runner(html_stage())
    yield r
    r.close()


def _write(tmp_path, name, body, head=""):
    path = tmp_path / name
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>", "utf-8")
    return path


def test_native_pages_hold_exactly_the_lines_laid_out_on_them(runner, tmp_path):
    # 60 lines of 40 px: a 1024 px page holds 25 whole lines; line 25 (1000..1040) would cross the cut at 1024,
    # so each page must end at 1000 px, and its text must be exactly the lines inside it.
    head = "<style>body{margin:0;background:#fff} p{margin:0;height:40px;line-height:40px;font:22px monospace;white-space:nowrap}</style>"
    path = _write(tmp_path, "lines.html", "".join(f"<p>{t}</p>" for t in LINES), head)
    samples, counts = render_with(runner, html_stage(web_code=False), path)
    pages = [s for s in samples if s.category == "doc_ocr"]
    assert [s.meta["layout"] for s in pages] == ["native"] * 3
    assert [text_lines(s) for s in pages] == [LINES[0:25], LINES[25:50], LINES[50:60]]
    first = np.asarray(image(pages[0]))
    assert first.shape == (1024, 1024, 3)
    assert (first[1000:] == 255).all(), "what belongs to the next page must not show below the cut"
    assert (first[:1000] < 128).any()


def test_template_pages_hold_every_line_exactly_once_in_order(runner, tmp_path):
    path = _write(tmp_path, "plain.html", "".join(f"<p>{t}</p>" for t in LINES * 3))
    for template in ("serif-light", "serif-two-column"):
        samples, _ = render_with(runner, html_stage(web_code=False, page_templates=[template]), path)
        pages = [s for s in samples if s.category == "doc_ocr"]
        assert len(pages) > 1 and {s.meta["template"] for s in pages} == {template}
        assert [ln for s in pages for ln in text_lines(s)] == LINES * 3
        assert [s.part for s in pages] == list(range(len(pages)))


def test_pages_are_what_ocr_reads(runner, tmp_path):
    path = _write(tmp_path, "ocr.html", "".join(f"<p>{t}</p>" for t in LINES[:30]))
    samples, _ = render_with(runner, html_stage(web_code=False, page_templates=["sans-large-print"]), path)
    for s in samples[:2]:
        got = subprocess.run(["tesseract", "-", "-", "-l", "eng", "--psm", "4"], input=s.images["0.png"],
                             capture_output=True, check=True).stdout.decode()
        # The numbered lines OCR sees on the image are exactly the ones the text gives to this page.
        assert re.findall(r"\b\d{3}\b", got) == re.findall(r"\b\d{3}\b", page_text(s))
        assert difflib.SequenceMatcher(None, " ".join(got.split()), " ".join(page_text(s).split()), autojunk=False).ratio() > 0.85


def test_hidden_text_is_left_out_and_structure_keeps_a_markdown_form(runner, tmp_path):
    body = """
      <h2>Heading two</h2>
      <p>visible one</p>
      <p style="display:none">HIDDEN display</p>
      <p style="visibility:hidden">HIDDEN visibility</p>
      <p style="opacity:0">HIDDEN opacity</p>
      <p style="color:transparent">HIDDEN transparent</p>
      <p style="font-size:0">HIDDEN zero size</p>
      <p style="position:absolute;left:-9999px">HIDDEN off the page</p>
      <p style="position:absolute;clip:rect(0 0 0 0)">HIDDEN clipped</p>
      <div style="height:20px;overflow:hidden;line-height:20px;width:300px">visible two<br>HIDDEN overflow</div>
      <div style="width:200px;overflow:hidden;white-space:nowrap">visible three HIDDENHIDDENHIDDENHIDDENHIDDEN</div>
      <script>document.write("HIDDEN script")</script>
      <ul><li>item one</li><li>item two</li></ul>
      <ol start="3"><li>third</li><li>fourth</li></ol>
      <ol type="i" start="3"><li>roman</li></ol><ol type="A"><li>alpha</li></ol><ol style="list-style:none"><li>bare</li></ol>
      <table><tr><th>name</th><th>value</th></tr><tr><td>a</td><td>1</td></tr></table>
      <img alt="a red square" width="60" height="60" src="data:image/gif;base64,R0lGODlhAQABAIAAAP8AAAAAACH5BAAAAAAALAAAAAABAAEAAAICRAEAOw==">
      <p>visible <b>bold</b><i>italic</i> <span style="text-transform:uppercase">shout</span></p>"""
    samples, _ = render_with(runner, html_stage(web_code=False), _write(tmp_path, "hidden.html", body))
    text = "\n".join(page_text(s) for s in samples)
    assert "HIDDEN" not in text
    assert text_lines(samples[0]) == [
        "## Heading two", "visible one", "visible two", "visible three", "- item one", "- item two", "3. third",
        "4. fourth", "iii. roman", "A. alpha", "bare", "| name | value |", "| a | 1 |", "![a red square]()", "visible bolditalic SHOUT"]


def test_cjk_renders_real_glyphs(runner, tmp_path):
    zh = "天地玄黃宇宙洪荒日月盈昃辰宿列張寒來暑往秋收冬藏閏餘成歲律呂調陽雲騰致雨露結為霜金生麗水玉出崑岡"
    body = f"<p lang='zh' style='writing-mode:vertical-rl'>{zh}</p>"
    samples, _ = render_with(runner, html_stage(web_code=False, layout="template", page_templates=["serif-light"]), _write(tmp_path, "zh.html", body))
    assert page_text(samples[0]).replace("\n", "") == zh  # vertical writing is set horizontally by the templates
    got = subprocess.run(["tesseract", "-", "-", "-l", "chi_sim", "--psm", "6"], input=samples[0].images["0.png"],
                         capture_output=True, check=True).stdout.decode()
    got = "".join(got.split())
    matched = sum(1 for ch in zh if ch in got)
    assert matched >= 0.6 * len(zh), f"OCR read {got!r}: glyphs look like tofu"
    # Tofu boxes are hollow outlines all alike: real glyphs differ from each other in ink.
    ink = np.asarray(image(samples[0]).convert("L")) < 128
    cells = [ink[72 + 10: 72 + 40, 72 + 22 * i: 72 + 22 * (i + 1)].sum() for i in range(20)]
    assert len(set(cells)) > 10


def test_web_code_is_clean_and_redraws_the_screenshot(runner, tmp_path):
    big = "data:image/png;base64," + "A" * 5000
    head = """<style>.used { color: #b00; font: 24px serif } .unused { color: blue } h1 { margin: 10px }</style>
              <script>alert(1)</script>"""
    body = f"""<h1 class="used" onclick="alert(2)">Title</h1><p><a href="javascript:alert(3)">link</a></p>
               <img src="{big}" width="10" height="10"><div style="height:3000px"></div><p class="unused">far below</p>"""
    samples, counts = render_with(runner, html_stage(), _write(tmp_path, "code.html", body, head))
    (code,) = [s for s in samples if s.category == "web_code"]
    src = code.segments[1]["text"]
    assert "<script" not in src and "onclick" not in src and "javascript:" not in src and "AAAAAAAAAA" not in src
    assert ".used" in src and ".unused" not in src and "far below" not in src
    assert counts["code_inline_data_dropped"] == 1
    redraw = tmp_path / "redraw.html"
    redraw.write_text(src, "utf-8")
    again, _ = render_with(runner, html_stage(), redraw)
    (code2,) = [s for s in again if s.category == "web_code"]
    a, b = (np.asarray(Image.open(io.BytesIO(s.images["0.png"])).convert("L"), dtype=float) for s in (code, code2))
    assert np.abs(a - b).mean() < 1.0
