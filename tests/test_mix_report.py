"""`vlcorpus report`: the HTML page of a corpus and of a mixture, loaded in the real headless Chromium."""

from __future__ import annotations

import json

import pytest
from mix_corpus import build_corpus

from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus import cli
from vlcorpus.sample import CATEGORIES, PRETRAIN_CATEGORIES

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def load(browser, page_path):
    page = browser.new_page()
    page.goto(page_path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page


def images_loaded(page, selector: str) -> list[int]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : 0)")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    corpus = build_corpus(root / "corpus", per_category=24)
    run_mix([corpus], load_mixture("stage2"), root / "mix", local=True)
    run_mix([corpus], load_mixture("stage1"), root / "mix", local=True)
    return root


def test_mixture_report_shows_ratios_charts_and_thumbnails(mixed, browser, capsys):
    stage = mixed / "mix" / "stage2"
    assert cli.main(["report", str(stage), "--out", str(mixed / "rep2"), "--thumbs", "5"]) == 0
    assert "index.html" in capsys.readouterr().out
    page = load(browser, mixed / "rep2" / "index.html")
    assert page.locator("section.view[data-kind='mixture']").count() == 1
    charts = {c: page.locator(f"img.chart[data-chart='{c}']").count() for c in ("ratios", "tokens", "image-sizes")}
    assert charts == {"ratios": 1, "tokens": 1, "image-sizes": 1}
    assert all(w > 100 for w in images_loaded(page, "img.chart"))
    mixture = json.loads((stage / "mixture.json").read_text())
    for cat in PRETRAIN_CATEGORIES:
        section = page.locator(f"section.category[data-category='{cat}']")
        assert section.count() == 1
        shown = section.locator("figure.sample")
        assert 1 <= shown.count() <= 5
        assert section.locator("img").count() == (0 if cat == "text" else shown.count())
        assert cat in shown.first.inner_text()  # the sample's own text is on the page
        row = page.locator(f"table.counts tr[data-category='{cat}']").inner_text()
        c = mixture["categories"][cat]
        assert f"{c['requested_ratio']:.4f}" in row and f"{c['realised_ratio']:.4f}" in row
    assert all(w > 0 for w in images_loaded(page, "figure.sample img"))
    page.close()


def test_report_of_a_mixture_folder_and_of_a_corpus(mixed, browser):
    from mixer.report import write_report

    page = load(browser, write_report(mixed / "mix", mixed / "rep-all"))
    kinds = page.eval_on_selector_all("section.view", "els => els.map(e => e.dataset.kind + ':' + e.querySelector('h2').textContent)")
    assert kinds == ["mixture:mixture stage1", "mixture:mixture stage2"]
    page.close()
    page = load(browser, write_report(mixed / "corpus", mixed / "rep-corpus", thumbs=3))
    assert page.locator("section.view[data-kind='corpus']").count() == 1
    assert page.locator("section.category").count() == len(CATEGORIES)
    assert page.locator("figure.sample").count() == 3 * len(CATEGORIES)
    assert len(images_loaded(page, "img.chart")) == 3 and all(w > 100 for w in images_loaded(page, "img.chart"))
    page.close()


def test_report_refuses_a_folder_that_is_neither(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert cli.main(["report", str(tmp_path / "x")]) == 2
    assert "neither a corpus" in capsys.readouterr().err
