"""Untrusted pages on the real Chromium: no network (no connection even to loopback), no JavaScript, bounded time and
memory, crash recovery, and no browser files left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from browser_fixtures import (
    LoopbackListeners,
    doc_for,
    html_stage,
    new_runner,
    page_text,
)

from renderers.browser import html
from renderers.browser.runner import (
    FILES_PREFIX,
    BrowserCrashed,
    RenderMemoryExceeded,
    RenderTimeout,
    owner_alive,
    remove_leftovers,
)
from renderers.browser.session import DirSite, Session
from vlcorpus.stage import Stage

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


def loopback_page(ports: list[int], udp_port: int) -> str:
    """Every way a page without scripts makes the browser open a connection, aimed at loopback services."""
    a, b, c, d = ports
    return f"""<!DOCTYPE html><html><head>
        <meta http-equiv="refresh" content="0; url=http://127.0.0.1:{a}/refresh">
        <link rel="preconnect" href="https://127.0.0.1:{b}"><link rel="dns-prefetch" href="http://localhost:{c}">
        <link rel="prefetch" href="http://127.0.0.1:{d}/prefetch"><link rel="stylesheet" href="https://127.0.0.1:{a}/s.css">
        <style>@font-face {{ font-family: f; src: url("http://localhost:{b}/f.woff") }} p {{ font-family: f }}</style>
        </head><body><p>the page's own text</p>
        <iframe src="http://127.0.0.1:{a}/frame"></iframe><iframe src="https://127.0.0.1:{b}/tls-frame"></iframe>
        <object data="http://127.0.0.1:{c}/object"></object><embed src="https://127.0.0.1:{d}/embed">
        <iframe src="http://localhost:{d}/by-name"></iframe><iframe src="http://[::1]:{a}/v6"></iframe>
        <img src="http://127.0.0.1:{udp_port}/img"><video src="https://127.0.0.1:{c}/v.mp4"></video>
        </body></html>"""


# Run with JavaScript on: each attempt reports how it ended, so the test knows the page did try.
SCRIPTED = """async ([a, b, c, stun]) => {
    const tries = {};
    const attempt = async (name, f) => { try { await f(); tries[name] = "ok"; } catch (e) { tries[name] = String(e); } };
    await attempt("fetch", () => fetch(`http://127.0.0.1:${a}/fetch`));
    await attempt("fetch_tls", () => fetch(`https://127.0.0.1:${b}/fetch`, {mode: "no-cors"}));
    await attempt("websocket", () => new Promise((ok, fail) => {
        const ws = new WebSocket(`ws://127.0.0.1:${c}/ws`); ws.onopen = ok; ws.onerror = () => fail("error"); }));
    await attempt("beacon", async () => { if (!navigator.sendBeacon(`http://127.0.0.1:${a}/beacon`, "x")) throw "refused"; });
    await attempt("webrtc", async () => {
        const pc = new RTCPeerConnection({iceServers: [{urls: `stun:127.0.0.1:${stun}`},
                                                       {urls: `turn:127.0.0.1:${c}?transport=tcp`, username: "u", credential: "p"}]});
        pc.createDataChannel("d");
        await pc.setLocalDescription(await pc.createOffer());
        await new Promise(done => { pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
                                    setTimeout(done, 5000); });
        pc.close();
    });
    return tries;
}"""


def test_no_connection_reaches_loopback_services(tmp_path):
    """Frames, objects, embeds, a meta refresh, preconnects (http:// and https://) without JavaScript, and fetch,
    WebSocket, beacon and WebRTC (STUN over UDP, TURN over TCP) with it: none opens a connection to a loopback port."""
    listeners = LoopbackListeners()
    page = _write(tmp_path, "loopback.html", loopback_page(listeners.ports, listeners.udp_port))
    runner = new_runner(html_stage(web_code=True))
    try:
        samples, counts = runner.render(doc_for(page))
        stats: Counter = Counter()
        with Session(runner.browser, runner.server, 60).page(DirSite(tmp_path, 1 << 20), 800, 600, 1, True, stats) as p:
            p.goto("/loopback.html")
            tries = p.evaluate(SCRIPTED, [*listeners.ports[:3], listeners.udp_port])
        seen = listeners.connections()
    finally:
        runner.close()
        listeners.close()
    assert seen == [], f"connections reached loopback listeners: {seen}"
    assert "the page's own text" in page_text(samples[0])
    assert counts["blocked_requests"] >= 8 and counts["navigations_blocked"] == 1
    assert set(tries) == {"fetch", "fetch_tls", "websocket", "beacon", "webrtc"}
    assert all(tries[k] != "ok" for k in ("fetch", "fetch_tls", "websocket")), tries
    assert stats["blocked_requests"] >= 3


def test_browser_sees_a_cleared_environment_and_its_files_go_with_the_runner(monkeypatch):
    """Playwright's profile and artifacts folders and Chromium's own temporary files are made in the runner's folder,
    not in the system's temporary folder, and `close` removes it; no browser process sees the worker's variables."""
    monkeypatch.setenv("VLCORPUS_CANARY_TOKEN", "canary-5f1e")
    runner = new_runner(html_stage(web_code=False))
    try:
        folder = runner.files.path
        assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(FILES_PREFIX)
        processes = runner.processes()
        (browser,) = [p for p in processes if any(a.startswith("--vlcorpus-browser=") for a in p.cmdline())]
        (profile,) = [a.split("=", 1)[1] for a in browser.cmdline() if a.startswith("--user-data-dir=")]
        assert os.path.dirname(profile) == str(folder) and os.path.isdir(profile)
        assert browser.environ()["TMPDIR"] == browser.environ()["HOME"] == str(folder)
        assert os.environ.get("TMPDIR") != str(folder)  # only the driver's start saw it
        assert len(processes) > 2 and not [p for p in processes if "canary-5f1e" in str(p.environ())]
    finally:
        runner.close()
    assert not folder.exists()


KEEP_A_RUNNER = """
import time
from pipelines import render_html as html_job
from renderers.browser.runner import BrowserRunner
runner = BrowserRunner(html_job.STAGE)
print(runner.files.path, flush=True)
time.sleep(600)
"""


def test_browser_files_go_when_the_worker_is_killed():
    """A worker killed with SIGKILL, its whole process group with it (Chromium and the Playwright driver too, as when
    Ray ends an actor): the watcher removes the folder."""
    proc = subprocess.Popen([sys.executable, "-c", KEEP_A_RUNNER], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    folder = Path(proc.stdout.readline().strip())
    assert folder.name.startswith(FILES_PREFIX) and any(folder.glob("playwright_chromiumdev_profile-*"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(300):  # the watcher runs as soon as the pipe closes; allow a loaded machine its time
        if not folder.exists():
            break
        time.sleep(0.1)
    assert not folder.exists()


def test_leftovers_of_dead_runners_are_removed_on_start(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    me = psutil.Process()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(done.stdout)
    folders = {
        "dead": tmp_path / f"{FILES_PREFIX}{dead_pid}-{int(me.create_time())}-abc",
        "reused_pid": tmp_path / f"{FILES_PREFIX}{me.pid}-{int(me.create_time()) - 100}-abc",
        "alive": tmp_path / f"{FILES_PREFIX}{me.pid}-{int(me.create_time())}-abc",
        "not_ours": tmp_path / f"{FILES_PREFIX}something-else",
    }
    for f in folders.values():
        (f / "playwright_chromiumdev_profile-x").mkdir(parents=True)
    assert [owner_alive(f) for f in folders.values()] == [psutil.pid_exists(dead_pid), False, True, True]
    if psutil.pid_exists(dead_pid):
        pytest.skip("the dead runner's pid was reused at once")
    assert remove_leftovers() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(folders[k].name for k in ("alive", "not_ours"))


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


def test_a_killed_playwright_driver_is_replaced(tmp_path):
    """What the watchdog does when a Playwright call stays pending after the browser was killed: it ends the driver.
    The runner then starts a new driver and browser, and the document renders."""
    good = _write(tmp_path, "good.html", GOOD)
    runner = new_runner(html_stage(web_code=False))
    try:
        old = runner.driver
        assert old is not None and "run-driver" in old.cmdline()
        runner.kill_driver()
        old.wait(30)
        samples, _ = runner.render(doc_for(good))
        assert runner.driver is not old and runner.driver_alive() and runner.launches == 2
    finally:
        runner.close()
    assert "ordinary page" in page_text(samples[0])


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

    from pipelines import render_html as html_pipeline

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
    lines = len((out / "_ledger" / "html.jsonl").read_text().splitlines())  # a line per page, and per merged shard move
    assert html_pipeline.main(parser.parse_args(argv)) == 0
    assert len((out / "_ledger" / "html.jsonl").read_text().splitlines()) == lines  # nothing rendered twice
