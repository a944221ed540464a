"""Pages per second: the HTML renderer (layout measurement + exact page text + page screenshots) versus bare
Playwright screenshots of the same documents, one viewport per page, on the same Chromium in one run.

    python benchmarks/html_render.py [HTML_DIR] [--repeat N]

Bare: for each document a new context, `goto` (file://, JavaScript off), MathJax's own typesetting of the page's TeX
where the page loads MathJax or KaTeX (the bundle the renderer ships, default settings, `MathJax.typesetPromise()`),
then for each of the page-high viewports of the document `scrollTo` + `page.screenshot()`. Renderer: `renderers.browser.html.render` on the same documents with
web_code off (doc_ocr pages only), then with web_code on (one more screenshot and the code cleaning per document).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from pipelines import render_html as html_job
from renderers.browser import html
from renderers.browser.pages import asset
from renderers.browser.runner import BrowserRunner
from vlcorpus.document import Bounds, DocInput


def bare(runner: BrowserRunner, files: list[Path], cfg: html.PageConfig) -> int:
    pages = 0
    for f in files:
        context = runner.browser.new_context(viewport={"width": cfg.width, "height": cfg.height},
                                             device_scale_factor=cfg.scale, java_script_enabled=False)
        page = context.new_page()
        page.goto(f.resolve().as_uri(), wait_until="load")
        if page.evaluate(asset("js/tex_in_dom.js")) is not None:
            page.evaluate("async () => { window.MathJax = {startup: {typeset: false}};\n"
                          + asset("js/mathjax-tex-svg-full.js") + "\nawait MathJax.startup.promise; await MathJax.typesetPromise(); }")
        n = math.ceil(page.evaluate("() => document.documentElement.scrollHeight") / cfg.height)
        for i in range(n):
            page.evaluate(f"() => window.scrollTo(0, {i * cfg.height})")
            page.screenshot(type=cfg.image_format)
        pages += n
        context.close()
    return pages


def ours(runner: BrowserRunner, files: list[Path], root: Path, web_code: bool) -> tuple[int, int]:
    runner.stage = replace(runner.stage, config=html.HtmlConfig(web_code=web_code))
    pages = codes = 0
    for f in files:
        samples, _ = runner.render(DocInput(doc=f.name, origin=f.name, path=str(f), related={"root": str(root)}))
        pages += sum(s.category == "doc_ocr" for s in samples)
        codes += sum(s.category == "web_code" for s in samples)
    return pages, codes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("input", type=Path, nargs="?", default=Path("demo/html"))
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    files = sorted(args.input.rglob("*.html")) * args.repeat
    cfg = html.PageConfig()
    runner = BrowserRunner(replace(html_job.STAGE, config=html.HtmlConfig(), bounds=Bounds(timeout_s=600, memory_gb=8)))
    try:
        bare(runner, files[:1], cfg)  # warm-up: fonts, caches
        results = Counter()
        t = time.perf_counter()
        results["bare_pages"] = bare(runner, files, cfg)
        results["bare_s"] = time.perf_counter() - t
        t = time.perf_counter()
        results["ours_pages"], _ = ours(runner, files, args.input.resolve(), web_code=False)
        results["ours_s"] = time.perf_counter() - t
        t = time.perf_counter()
        results["code_pages"], results["code_samples"] = ours(runner, files, args.input.resolve(), web_code=True)
        results["code_s"] = time.perf_counter() - t
    finally:
        runner.close()
    bare_rate = results["bare_pages"] / results["bare_s"]
    ours_rate = results["ours_pages"] / results["ours_s"]
    code_rate = results["code_pages"] / results["code_s"]
    print(f"documents: {len(files)} from {args.input}, page {cfg.width}x{cfg.height} {cfg.image_format}")
    print(f"bare screenshots:          {results['bare_pages']:4d} pages in {results['bare_s']:6.1f} s = {bare_rate:5.2f} pages/s")
    print(f"renderer (doc_ocr):        {results['ours_pages']:4d} pages in {results['ours_s']:6.1f} s = {ours_rate:5.2f} pages/s"
          f"  ({bare_rate / ours_rate:.2f}x the bare time per page)")
    print(f"renderer (+ web_code):     {results['code_pages']:4d} pages + {results['code_samples']} code pairs in "
          f"{results['code_s']:6.1f} s = {code_rate:5.2f} pages/s ({bare_rate / code_rate:.2f}x)")


if __name__ == "__main__":
    main()
