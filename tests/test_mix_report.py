"""`vlcorpus report`: the HTML page of a corpus and of a mixture, loaded in the real headless Chromium."""

from __future__ import annotations

import json

import pytest
from mix_corpus import build_corpus

from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus import cli
from vlcorpus.sample import CATEGORIES

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
    assert set(mixture["categories"]) == set(CATEGORIES)  # stage 2 draws SFT data at a small share
    for cat in CATEGORIES:  # every category asked for is on the page, written or not
        section = page.locator(f"section.category[data-category='{cat}']")
        assert section.count() == 1
        shown = section.locator("figure.sample")
        c = mixture["categories"][cat]
        row = page.locator(f"table.counts tr[data-category='{cat}']")
        assert f"{c['requested_ratio']:.4f}" in row.inner_text() and f"{c['realised_ratio']:.4f}" in row.inner_text()
        assert f"{c['deviation_points']:+.2f}" in row.locator("td.dev").inner_text()
        assert (row.get_attribute("class") == "warn") == bool(c["warnings"])
        if not c["written"]["samples"]:
            assert shown.count() == 0 and c["warnings"]
            continue
        assert 1 <= shown.count() <= 5
        assert section.locator("img").count() == (0 if cat in ("text", "sft_text") else shown.count())
        assert cat in shown.first.inner_text()  # the sample's own text is on the page
    assert {li.inner_text() for li in page.locator("ul.warnings li").all()} == set(mixture["warnings"])
    assert mixture["budget"]["explained"] in page.locator("p.budget").inner_text()
    assert all(w > 0 for w in images_loaded(page, "figure.sample img"))
    page.close()


def test_report_shows_a_share_outside_the_tolerance(tmp_path, browser):
    """Captions far short of their share: the row, the warning and the chart say so."""
    from reports.corpus import write_report

    corpus = build_corpus(tmp_path / "c", per_category=30, categories=("text",))
    build_corpus(tmp_path / "c", per_category=3, categories=("caption",))
    cfg = tmp_path / "m.yaml"
    cfg.write_text("stage: s\nbudget: dominant\ncategories:\n  caption: {ratio: 0.3, on_short: warn}\n"
                   "  text: {ratio: 0.7}\n")
    mix = run_mix([corpus], load_mixture(cfg), tmp_path / "mix", local=True)
    assert mix["categories"]["caption"]["deviation_points"] < -2
    page = load(browser, write_report(tmp_path / "mix" / "s", tmp_path / "rep"))
    row = page.locator("table.counts tr[data-category='caption']")
    assert row.get_attribute("class") == "warn" and row.locator("td.dev").inner_text().startswith("-")
    warnings = [li.inner_text() for li in page.locator("ul.warnings li").all()]
    assert warnings == mix["warnings"] and any("caption" in w and "requested" in w for w in warnings)
    assert images_loaded(page, "img.chart[data-chart='ratios']")[0] > 100
    page.close()


def test_report_of_a_mixture_folder_and_of_a_corpus(mixed, browser):
    from reports.corpus import write_report

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
