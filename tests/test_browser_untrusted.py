"""Untrusted pages on the real Chromium: no network, no JavaScript, bounded time and memory, crash recovery."""

from __future__ import annotations

import pytest
from browser_fixtures import doc_for, html_stage, new_runner, page_text

from pipelines.browser_runner import BrowserCrashed, RenderMemoryExceeded, RenderTimeout
from renderers.browser import html
from vlcorpus.driver import Stage

GOOD = "<!DOCTYPE html><html><body><p>a perfectly ordinary page</p></body></html>"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def test_no_request_leaves_the_document_and_each_is_counted(tmp_path, server):
    url, hits = server
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "secret.css").write_text("p{color:red}")
    (site / "own.css").write_text("p{color:#123}")
    page = _write(site, "page.html", f"""<!DOCTYPE html><html><head>
        <link rel="stylesheet" href="own.css"><link rel="stylesheet" href="{url}/a.css">
        <link rel="stylesheet" href="../secret.css"><link rel="prefetch" href="{url}/b">
        <style>@import url("{url}/c.css"); body {{ background-image: url("{url}/d.png") }}</style></head>
        <body><p>text</p><img src="{url}/e.png" alt="remote"><iframe src="{url}/f.html"></iframe>
        <img src="https://example.com/g.png"></body></html>""")
    runner = new_runner(html_stage(web_code=False))
    try:
        samples, counts = runner.render(doc_for(page, root=site))
    finally:
        runner.close()
    assert hits == []
    assert counts["blocked_requests"] >= 6  # a.css, c.css, d.png, e.png, f.html, g.png (prefetch may be skipped)
    assert counts["missing_files"] == 1  # ../secret.css resolves outside the document's folder
    assert counts["served_requests"] == 2  # the page and own.css
    assert "text" in page_text(samples[0])


def test_javascript_is_off_and_pages_cannot_navigate_away(tmp_path):
    (tmp_path / "other.html").write_text("<p>OTHER PAGE</p>")
    page = _write(tmp_path, "js.html", """<!DOCTYPE html><html><head><meta http-equiv="refresh" content="0; url=other.html">
        </head><body><p id="p">static text</p><script>document.getElementById("p").textContent = "SCRIPT RAN";</script>
        <noscript><p>shown without scripts</p></noscript></body></html>""")
    runner = new_runner(html_stage(web_code=False))
    try:
        samples, counts = runner.render(doc_for(page))
    finally:
        runner.close()
    text = page_text(samples[0])
    assert "static text" in text and "shown without scripts" in text
    assert "SCRIPT RAN" not in text and "OTHER PAGE" not in text


def test_infinite_script_is_stopped_and_the_browser_recycled(tmp_path):
    loop = _write(tmp_path, "loop.html", "<html><body><p>x</p><script>while (true) {}</script></body></html>")
    good = _write(tmp_path, "good.html", GOOD)
    runner = new_runner(html_stage(web_code=False, page_javascript=True), timeout_s=8)
    try:
        with pytest.raises(RenderTimeout):
            runner.render(doc_for(loop))
        samples, _ = runner.render(doc_for(good))
        assert runner.launches == 2
    finally:
        runner.close()
    assert "ordinary page" in page_text(samples[0])


@pytest.mark.slow
def test_100_mb_dom_is_bounded_and_the_job_goes_on(tmp_path):
    huge = tmp_path / "huge.html"
    row = "<div><span>cell</span> <b>text</b> <i>more</i></div>\n"
    with huge.open("w") as f:
        f.write("<html><body>")
        for _ in range(100 * 1024**2 // len(row)):
            f.write(row)
        f.write("</body></html>")
    good = _write(tmp_path, "good.html", GOOD)
    runner = new_runner(html_stage(web_code=False), timeout_s=10, memory_gb=1.5)
    try:
        with pytest.raises((RenderTimeout, RenderMemoryExceeded)):
            runner.render(doc_for(huge))
        assert runner.processes() and runner.launches == 2  # killed and relaunched
        samples, _ = runner.render(doc_for(good))
    finally:
        runner.close()
    assert "ordinary page" in page_text(samples[0])


def test_memory_bound_kills_the_browser(tmp_path):
    """An idle Chromium alone uses more than 50 MB: the watchdog must trip, kill it, and relaunch it."""
    good = _write(tmp_path, "good.html", GOOD)
    runner = new_runner(html_stage(web_code=False), memory_gb=0.05)
    try:
        with pytest.raises(RenderMemoryExceeded):
            runner.render(doc_for(good))
        assert runner.launches == 2 and runner.processes()
    finally:
        runner.close()


def _crashing_stage(crashes: int) -> tuple[Stage, dict]:
    """html.render, but the real browser process is killed under it the first `crashes` times."""
    state = {"left": crashes}

    def render(doc, cfg, stats, session):
        if state["left"]:
            state["left"] -= 1
            state["runner"].kill_processes()
        yield from html.render(doc, cfg, stats, session)

    stage = html_stage(web_code=False)
    return Stage(source="html", render=render, config=stage.config), state


def test_crashed_browser_is_restarted_and_the_document_retried_once(tmp_path):
    good = _write(tmp_path, "good.html", GOOD)
    stage, state = _crashing_stage(1)
    runner = state["runner"] = new_runner(stage)
    try:
        samples, counts = runner.render(doc_for(good))
        assert counts["browser_crashes"] == 1 and runner.launches == 2
        assert "ordinary page" in page_text(samples[0])
        state["left"] = 2
        with pytest.raises(BrowserCrashed):
            runner.render(doc_for(good))
        samples, _ = runner.render(doc_for(good))  # and the next document renders again
        assert samples
    finally:
        runner.close()


def test_pipeline_records_a_hanging_page_and_goes_on(tmp_path, ray_local):
    """Through Ray actors: the hanging page is a `Timeout` ledger line, the others render, a re-run has nothing to do."""
    import argparse
    import json

    from pipelines import html as html_pipeline

    site = tmp_path / "site"
    site.mkdir()
    _write(site, "a.html", GOOD)
    _write(site, "hang.html", "<html><body><p>x</p><script>while (true) {}</script></body></html>")
    _write(site, "z.html", "<!DOCTYPE html><html><body><h1>Last page</h1></body></html>")
    out = tmp_path / "corpus"
    parser = argparse.ArgumentParser()
    html_pipeline.add_arguments(parser)
    argv = [str(site), "--out", str(out), "--doc-timeout", "8", "--batch-size", "3", "--set", "page.javascript=true"]
    assert html_pipeline.main(parser.parse_args(argv)) == 0
    entries = {e["origin"]: e for e in map(json.loads, (out / "_ledger" / "html.jsonl").read_text().splitlines())}
    assert entries["hang.html"]["status"] == "failed" and entries["hang.html"]["error_class"] == "Timeout"
    assert entries["a.html"]["status"] == entries["z.html"]["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["_ledger", "doc_ocr", "web_code"]
    assert html_pipeline.main(parser.parse_args(argv)) == 0
    assert len((out / "_ledger" / "html.jsonl").read_text().splitlines()) == 3  # nothing rendered twice
