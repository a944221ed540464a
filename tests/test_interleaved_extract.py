"""`vlcorpus extract interleaved`: real documents (the demo's Sphinx pages, Japanese EPUB with SVG figures, ReScience
paper, handson-ml2 notebook) -> interleaved samples, checked for reading order, image placement and counts against
the source read independently (lxml over the raw page, nbformat cells, PyMuPDF captions)."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import lxml.html
import pymupdf
import pytest
import webdataset as wds
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines import extract_interleaved as job
from renderers.browser.epub import Book, EpubConfig
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.render import render
from renderers.interleaved.split import Budget
from tests.helpers import sample_view
from vlcorpus import cli
from vlcorpus.document import DocInput
from vlcorpus.ledger import Ledger
from vlcorpus.shards import shard_paths

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
SITE = DEMO / "html" / "intro-python-IB"
PAGE = SITE / "clase_15.html"


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def extract(path: Path, root: Path | None = None, cfg: ExtractConfig | None = None, **related: str):
    stats: Counter = Counter()
    doc = DocInput(doc=path.name, origin=path.name, path=str(path), related={"root": str(root or path.parent), **related})
    samples = [s.validate() for s in render(doc, cfg or ExtractConfig(), stats)]
    return samples, stats


def stream(samples) -> list[tuple[str, str]]:
    """Every sample's segments in order, as ("text", paragraph) / ("image", ref)."""
    out = []
    for s in samples:
        refs = iter(im["ref"] for im in s.meta["images"])
        for seg in s.segments:
            out.append(("image", next(refs)) if "image" in seg else ("text", seg["text"]))
    return out


def words_before(items: list[tuple[str, str]], i: int, n: int) -> list[str]:
    found: list[str] = []
    for kind, value in reversed(items[:i]):
        if kind == "text":
            found = words(value) + found
            if len(found) >= n:
                break
    return found[-n:]


def source_sequence(page: Path) -> list[tuple[str, str]]:
    """The page's main element read naively in document order: its words and its `<img>` sources."""
    main = lxml.html.parse(str(page)).getroot().xpath('//div[@role="main"]')[0]
    seq = []
    for event, el in lxml.etree.iterwalk(main, events=("start", "end")):
        if event == "start" and el.tag == "img":
            seq.append(("image", el.get("src")))
        elif event == "start" and isinstance(el.tag, str) and el.tag not in ("script", "style") and el.text:
            seq.append(("text", el.text))
        if event == "end" and el is not main and el.tail:
            seq.append(("text", el.tail))
    return seq


def test_html_page_images_in_source_order_after_the_words_before_them():
    samples, stats = extract(PAGE, SITE)
    got = stream(samples)
    source = source_sequence(PAGE)
    source_images = [v for k, v in source if k == "image"]
    images = [v for k, v in got if k == "image"]
    assert images == source_images and len(images) == 8 == stats["images"]  # every figure, in order
    for ref in images:  # each image follows the words that precede it in the page
        want = words_before(source, source.index(("image", ref)), 6)
        assert words_before(got, got.index(("image", ref)), 6) == want, ref
    text = " ".join(v for k, v in got if k == "text")
    assert "Anterior" not in text and "Siguiente" not in text  # the Sphinx footer's prev/next links
    assert samples[0].meta["language"] == "es" and samples[0].meta["input"] == "html"


def test_split_under_the_budget_keeps_each_image_with_its_paragraph():
    whole, _ = extract(SITE / "clase_05.html", SITE, ExtractConfig(budget=Budget(max_tokens=100_000)))
    budget = Budget(max_tokens=1200)
    parts, stats = extract(SITE / "clase_05.html", SITE, ExtractConfig(budget=budget))
    assert len(whole) == 1
    whole_items = stream(whole)
    # nothing lost or reordered: the parts and the dropped text-only parts are the whole document
    kept = stream(parts)
    assert [x for x in whole_items if x[0] == "image"] == [x for x in kept if x[0] == "image"]
    for s in parts:
        segs = s.segments
        tokens = s.text_tokens + budget.image_tokens * len(s.images)
        assert tokens <= budget.max_tokens or len([g for g in segs if "text" in g]) <= 2
        first_image = next(i for i, g in enumerate(segs) if "image" in g)
        assert first_image == 1, "the paragraph that introduces the image is in the same part"
        ref = s.meta["images"][0]["ref"]
        intro = whole_items[whole_items.index(("image", ref)) - 1][1]
        assert segs[0]["text"].endswith(intro.split("\n\n")[-1])
    assert stats["part_no_images"] >= 1


def shortened_book(src: Path, dest: Path, drop: list[str]) -> Path:
    """A copy of the book whose spine leaves out the items `drop` names (every member stays in the zip)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dest, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith(".opf"):
                data = re.sub(rb'<itemref idref="(%s)"/>' % b"|".join(d.encode() for d in drop), b"", data)
            out.writestr(info, data)
    return dest


def test_epub_spine_order_svg_rasterised_and_every_image_counted(tmp_path):
    # the book's first chapters, less its 25-puzzle chapter 00 (cairosvg takes a third of a second per puzzle)
    keep = {"html_cover", "html_titlepage", "html_nav", "html_notice", "html_01", "html_02", "html_03", "html_04"}
    with zipfile.ZipFile(DEMO / "epub" / "mushikuizan-taikai-ja.epub") as z:
        spine = re.findall(rb'<itemref idref="([^"]+)"/>', z.read("OEBPS/content.opf"))
    path = shortened_book(DEMO / "epub" / "mushikuizan-taikai-ja.epub", tmp_path / "book.epub",
                          [i.decode() for i in spine if i.decode() not in keep])
    samples, stats = extract(path)
    book = Book(path, EpubConfig(), Counter())
    chapters = [book.read(name) or b"" for name in book.spine]
    book.close()
    refs_in_book = sum(len(re.findall(rb"<(?:img|image)\b", c)) for c in chapters)
    refs = [im["ref"] for s in samples for im in s.meta["images"]]
    reasons = {k: v for k, v in stats.items() if k.startswith("image_")}
    assert stats["images"] == len(refs) >= 15
    assert stats["images"] + sum(reasons.values()) == refs_in_book  # every image kept or counted under a reason
    assert set(reasons) <= {"image_small_side", "image_icon", "image_aspect", "image_repeated"}
    # reading order: the kept images are a subsequence of the book's image references in spine order
    chapter, at = 0, 0
    for ref in refs:
        name = Path(ref).name.encode()
        while chapters[chapter].find(name, at) < 0:
            chapter, at = chapter + 1, 0
            assert chapter < len(chapters), f"{ref} is out of reading order"
        at = chapters[chapter].find(name, at) + 1
    assert all(s.meta["language"] == "ja" for s in samples)
    svgs = [name for s in samples for name, im in zip(s.images, s.meta["images"], strict=True) if im["ref"].endswith(".svg")]
    assert len(svgs) >= 15 and all(name.endswith(".png") for name in svgs)  # the SVGs, rasterised


def test_pdf_figures_stand_before_their_captions_and_running_heads_go():
    samples, stats = extract(DEMO / "arxiv" / "re-gorder" / "re-gorder.pdf")
    got = stream(samples)
    with pymupdf.open(DEMO / "arxiv" / "re-gorder" / "re-gorder.pdf") as pdf:
        captions = sorted({m for page in pdf for m in re.findall(r"^Figure (S?\d+)\.", page.get_text(), re.M)})
        heads = Counter(page.get_text().splitlines()[0] for page in pdf)
    assert captions == ["1", "2", "3", "4", "5", "6", "S1"]
    for n in captions:
        i = next(i for i, (k, v) in enumerate(got) if k == "text" and re.search(rf"(^|\n)(\(\w\) .*)?Figure {n}\.", v))
        assert got[i - 1][0] == "image", f"Figure {n}: its caption follows an image"
    head, count = heads.most_common(1)[0]
    assert count > 5 and stats["page_furniture"] >= count
    assert sum(v.count(head) for k, v in got if k == "text") <= 2  # the title page's own, not one per page


def test_pdf_two_columns_read_left_column_first(tmp_path):
    figure = next(SITE.glob("_images/*.png")).read_bytes()
    pdf = pymupdf.open()
    page = pdf.new_page(width=600, height=800)
    page.insert_textbox(pymupdf.Rect(40, 40, 560, 80), "A title that spans both columns of the page")
    left = ["Left one opens the first column.", "Left two introduces the figure below.", "Left three follows it."]
    right = ["Right one continues the text.", "Right two closes the page."]
    y = 100
    for k, line in enumerate(left):
        page.insert_textbox(pymupdf.Rect(40, y, 280, y + 40), line)
        y += 50
        if k == 1:
            page.insert_image(pymupdf.Rect(40, y, 280, y + 200), stream=figure)
            y += 210
    for k, line in enumerate(right):
        page.insert_textbox(pymupdf.Rect(320, 100 + 50 * k, 560, 140 + 50 * k), line)
    pdf.save(tmp_path / "columns.pdf")
    samples, _ = extract(tmp_path / "columns.pdf")
    got = [v if k == "text" else "IMAGE" for k, v in stream(samples)]
    flat = "\n\n".join(got).split("\n\n")
    assert flat == ["A title that spans both columns of the page", *left[:2], "IMAGE", left[2], *right]


def test_notebook_cells_outputs_and_images_in_order():
    path = DEMO / "notebooks" / "04_training_linear_models.ipynb"
    nb = json.loads(path.read_text())
    outputs = [(n, out) for n, c in enumerate(nb["cells"]) if c["cell_type"] == "code" for out in c.get("outputs", [])
               if any(m.startswith("image/") for m in out.get("data", {}))]
    md_images = sum(len(re.findall(r"!\[|<img", "".join(c["source"]))) for c in nb["cells"] if c["cell_type"] == "markdown")
    samples, stats = extract(path)
    got = stream(samples)
    kept = [v for k, v in got if k == "image"]
    assert stats["images"] + sum(v for k, v in stats.items() if k.startswith("image_")) == len(outputs) + md_images
    cells = [int(re.match(r"cell(\d+):", r).group(1)) for r in kept if r.startswith("cell")]
    assert cells == sorted(cells) and len(cells) >= 15
    for ref in kept:  # an output image follows the code of the cell that drew it
        n = int(ref.split(":")[0][4:])
        code = "".join(nb["cells"][n]["source"]).strip().splitlines()[-1]
        i = got.index(("image", ref))
        before = next(v for k, v in reversed(got[:i]) if k == "text")
        assert code in before


def png(size: tuple[int, int], color=(30, 90, 200)) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", size, (255, 255, 255))
    im.paste(color, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    im.save(buf, "PNG")
    return buf.getvalue()


def test_image_rules_and_containment_each_counted(tmp_path):
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    (site / "img" / "figure.png").write_bytes(png((400, 300)))
    (site / "img" / "figure2.png").write_bytes(png((400, 300), (20, 160, 40)))
    (site / "img" / "pixel.png").write_bytes(png((1, 1)))
    (site / "img" / "icon.png").write_bytes(png((32, 32)))
    (site / "img" / "banner.png").write_bytes(png((1200, 150)))
    (site / "img" / "logo.png").write_bytes(png((300, 200), (200, 20, 20)))
    (tmp_path / "secret.png").write_bytes(png((400, 300)))
    (site / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    body = """<html><body><nav><p>Home | About</p></nav><header><img src="img/logo.png"></header><main>
      <h1>Title of the article<g:plusone></g:plusone></h1><p>The first paragraph introduces the figure.</p>
      <figure><img src="img/figure.png" alt="a blue square"><figcaption>Figure 1. A square.</figcaption></figure>
      <p>Tracking <img src="img/pixel.png"> and <img src="img/icon.png"> inline.</p><img src="img/banner.png">
      <img src="../secret.png"><img src="img/link.png"><img src="https://example.org/x.png"><img src="img/none.png"><img src="img/figure2.png" width="60" height="45">
      <img src="img/logo.png"><p>The last paragraph of the article, after every image, long enough to be the
      main content of this page by the length of its text alone, as a page's article is, and then some more words
      so that the main element is chosen over the body.</p></main><footer>Copyright</footer></body></html>"""
    (site / "a.html").write_text(body.replace("Title of", "Page a:"))
    for name in ("b", "c"):  # the site's other pages show the logo too
        (site / f"{name}.html").write_text(f'<html><body><header><img src="img/logo.png"></header><p>Page {name}</p></body></html>')
    docs = {Path(d.path).name: d for d in job.documents(site, ExtractConfig())}
    assert docs["a.html"].related["repeated"] == "img/logo.png"  # on every page: a logo
    stats: Counter = Counter()
    samples = list(render(docs["a.html"], ExtractConfig(), stats))
    assert [s for s in samples[0].segments] == [
        {"text": "Page a: the article\n\nThe first paragraph introduces the figure."}, {"image": "0.png"},
        {"text": "Figure 1. A square.\n\nTracking and inline.\n\nThe last paragraph of the article, after every image, "
                 "long enough to be the main content of this page by the length of its text alone, as a page's article "
                 "is, and then some more words so that the main element is chosen over the body."}]
    assert samples[0].meta["images"][0]["alt"] == "a blue square"
    assert {k: v for k, v in stats.items() if k != "images"} == {
        "image_pixel": 1, "image_icon": 1, "image_aspect": 1, "image_outside_root": 2, "image_remote": 1,
        "image_missing": 1, "image_repeated": 1, "image_shown_small": 1}


def warc_record(writer: WARCWriter, url: str, body: bytes, ctype: str) -> None:
    headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def test_warc_pages_match_the_same_pages_on_disk(tmp_path):
    base = "https://fiolj.github.io/intro-python-IB/"
    with open(tmp_path / "crawl.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for page in ("clase_05.html", "clase_15.html"):
            warc_record(writer, base + page, (SITE / page).read_bytes(), "text/html; charset=utf-8")
        for image in sorted((SITE / "_images").iterdir()):
            warc_record(writer, base + "_images/" + image.name, image.read_bytes(), "image/png")
    from_warc, stats = extract(tmp_path / "crawl.warc.gz")
    from_disk = [s for page in ("clase_05.html", "clase_15.html") for s in extract(SITE / page, SITE)[0]]
    assert [s.segments for s in from_warc] == [s.segments for s in from_disk]
    assert [s.images for s in from_warc] == [s.images for s in from_disk]
    assert from_warc[0].meta["url"] == base + "clase_05.html" and stats["pages"] == 2
    assert stats["image_remote"] == 1  # clase_05's figure from another site: not in the archive, never fetched


@pytest.mark.slow
def test_job_writes_interleaved_shards_and_resumes(ray_local, tmp_path):
    src = tmp_path / "docs"
    shutil.copytree(SITE, src / "site")
    shutil.copy(DEMO / "notebooks" / "06_decision_trees.ipynb", src)
    shutil.copy(DEMO / "arxiv" / "rl-mapping" / "rl-mapping.pdf", src)
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    out = tmp_path / "corpus"
    args = ["extract", "interleaved", str(src), "--out", str(out), "--num-cpus", "1"]
    assert cli.main(args) == 0
    ledger = Ledger(out, "interleaved_docs").latest()
    assert {d: e.status for d, e in ledger.items()} == {
        "site/clase_05.html": "ok", "site/clase_15.html": "ok", "06_decision_trees.ipynb": "ok",
        "rl-mapping.pdf": "ok", "broken.pdf": "filtered"}
    urls = [str(p) for p in shard_paths(out / "interleaved")]
    rows = [sample_view(r, pil=True) for r in wds.WebDataset(urls, shardshuffle=False)]
    assert len(rows) == sum(e.samples for e in ledger.values())
    for row in rows:
        meta = row["json"]
        assert meta["category"] == "interleaved" and meta["source"] == "interleaved_docs"
        names = [g["image"] for g in meta["segments"] if "image" in g]
        assert names and all(min(row[n].size) >= 150 for n in names)
    assert cli.main(args) == 0  # resumed: nothing rendered again
    assert len(list(wds.WebDataset([str(p) for p in shard_paths(out / "interleaved")], shardshuffle=False))) == len(rows)


def test_run_knows_both_interleaved_kinds_and_the_demo_config(monkeypatch):
    from chain.run import E2EConfig, check_mixtures
    from vlcorpus.cli import source_commands
    from vlcorpus.config import load_config

    kinds = source_commands()
    assert kinds["interleaved_docs"] is job and kinds["interleaved"].COMMAND == ("import", "interleaved")
    monkeypatch.chdir(ROOT)
    cfg = load_config(E2EConfig, ROOT / "e2e.yaml", [])
    assert cfg.sources["interleaved_docs"] == "demo" and "interleaved" not in cfg.sources
    check_mixtures(cfg)  # stage 2 needs interleaved (on_short: error): the demo's documents write it
