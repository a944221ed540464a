"""`vlcorpus report PATH`: a static HTML page showing what a corpus or a mixture holds.

PATH is a corpus folder (`<corpus>/<category>/index.json`), a mixture stage (`MIX/<stage>/mixture.json`) or a
mixture folder (every stage in it). The page shows, per corpus or stage: a table of counts, a ratio chart
(requested vs realised for a mixture, with the tolerance around each request and the categories outside it in red;
shares of tokens and samples for a corpus), a mixture's budget and warnings, histograms of text tokens per sample
and of image sizes (matplotlib PNGs), and per category a grid of sample thumbnails with their text.
Counts come from index.json; the histograms and thumbnails from reading at most `--scan` samples per category.
A corpus also gets its curation funnel (`vlcorpus.curate.funnel`) and `<corpus>/README.md`, its dataset card
(`vlcorpus.curate.card`).
"""

from __future__ import annotations

import argparse
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from reports.paper_routes import corpus_routes
from vlcorpus import storage
from vlcorpus.curate.card import write_card
from vlcorpus.curate.funnel import funnel_section
from vlcorpus.sample import CATEGORIES
from vlcorpus.shards import read_index, read_samples

COMMAND = ("report",)
HELP = "write a static HTML report (thumbnails, ratio charts, histograms) of a corpus or a mixture"
THUMB_PX = 192


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=storage.location,
                   help="a corpus folder, a mixture stage folder or a mixture folder (local, or an s3:// / gs:// prefix)")
    p.add_argument("--out", type=storage.location,
                   help="report folder or prefix (default: <path>/report); index.html goes there")
    p.add_argument("--thumbs", type=int, default=8, help="samples shown per category (default %(default)s)")
    p.add_argument("--scan", type=int, default=2000, help="samples read per category for the histograms")
    p.add_argument("--chars", type=int, default=280, help="characters of text shown per sample")


def main(args: argparse.Namespace) -> int:
    out = args.out or storage.join(args.path, "report")
    if not storage.is_remote(out):
        print(f"report: {write_report(args.path, out, args.thumbs, args.scan, args.chars)}")
        return 0
    with storage.scratch("report") as local:  # written here, then uploaded: the page last
        write_report(args.path, local, args.thumbs, args.scan, args.chars)
        files = sorted((local / "assets").iterdir()) + [local / "index.html"]
        storage.put_files(files[:-1], [f"{out}/assets/{f.name}" for f in files[:-1]])
        storage.put_file(files[-1], f"{out}/index.html")
    print(f"report: {out}/index.html")
    return 0


@dataclass
class CategoryView:
    name: str
    index: dict
    tokens: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    shown: list[tuple[str, str, str]] = field(default_factory=list)  # (key, thumbnail file or "", text)


@dataclass
class View:
    title: str
    folder: storage.Location
    mixture: dict | None
    categories: list[CategoryView]


def find_views(path: storage.Location) -> list[View]:
    """What PATH holds: one view for a corpus or a stage, one per stage for a mixture folder."""
    remote = storage.is_remote(path)
    if not remote and not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    if storage.exists(storage.join(path, "mixture.json")):
        mixture = json.loads(storage.read_bytes(storage.join(path, "mixture.json")))
        return [_view(f"mixture {mixture['stage']}", path, mixture, list(mixture["categories"]))]
    folders = storage.folders(path) if remote else sorted(p for p in path.iterdir() if p.is_dir())
    stages = [p for p in folders if storage.exists(storage.join(p, "mixture.json"))]
    if stages:
        return [v for s in stages for v in find_views(s)]
    present = [c for c in CATEGORIES if storage.exists(storage.join(path, c, "index.json"))]
    if not present:
        raise FileNotFoundError(f"{path}: neither a corpus (no <category>/index.json) nor a mixture (no mixture.json)")
    return [_view(f"corpus {storage.name(path)}", path, None, present)]


EMPTY_INDEX = {"shards": [], "samples": 0, "bytes": 0, "text_tokens": 0, "images": 0}


def _view(title: str, folder: storage.Location, mixture: dict | None, names: list[str]) -> View:
    """A mixture shows every category it asked for (one that got nothing has no folder); a corpus what it holds."""
    indexed = {n for n in names if storage.exists(storage.join(folder, n, "index.json"))}
    cats = [CategoryView(n, read_index(storage.join(folder, n)) if n in indexed else EMPTY_INDEX)
            for n in names if mixture or n in indexed]
    return View(title, folder, mixture, cats)


def scan(view: View, assets: Path, thumbs: int, limit: int, chars: int) -> None:
    """Fill each category's histograms data and thumbnails by streaming its first `limit` samples."""
    from PIL import Image

    for cat in view.categories:
        shards = [storage.join(view.folder, cat.name, s["shard"]) for s in cat.index["shards"]]
        for i, sample in enumerate(read_samples(shards)):
            if i >= limit:
                break
            cat.tokens.append(sample.text_tokens)
            first = None
            for seg in sample.segments:
                if "image" in seg:
                    with Image.open(io.BytesIO(sample.images[seg["image"]])) as im:
                        cat.widths.append(im.width)
                        cat.heights.append(im.height)
                        if first is None and len(cat.shown) < thumbs:
                            im.thumbnail((THUMB_PX, THUMB_PX))
                            first = f"{_slug(view.title)}-{cat.name}-{len(cat.shown)}.jpg"
                            im.convert("RGB").save(assets / first, "JPEG", quality=85)
            if len(cat.shown) < thumbs:
                text = sample.text
                text = text[:chars] + (" …" if len(text) > chars else "")
                cat.shown.append((sample.key, first or "", text))


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s)


def charts(view: View, assets: Path) -> dict[str, str]:
    """The three PNG charts of a view; returns chart name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in view.categories]
    files = {}
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = range(len(names))
    if view.mixture:
        cats = view.mixture["categories"]
        tol = view.mixture["tolerance_points"] / 100
        requested = [cats[n]["requested_ratio"] for n in names]
        realised = [cats[n]["realised_ratio"] for n in names]
        off = [abs(cats[n]["deviation_points"]) > view.mixture["tolerance_points"] for n in names]
        ax.bar([i - 0.2 for i in x], requested, 0.4, label="requested", color="C0",
               yerr=[[min(r, tol) for r in requested], [tol] * len(names)], error_kw={"capsize": 3, "elinewidth": 0.8})
        ax.bar([i + 0.2 for i in x], realised, 0.4, label=f"realised (red: more than {tol:.0%} off)",
               color=["C3" if o else "C1" for o in off])
        for i, n in enumerate(names):
            ax.annotate(f"{cats[n]['deviation_points']:+.1f}", (i + 0.2, realised[i]), ha="center", va="bottom",
                        fontsize=7, color="C3" if off[i] else "0.3")
        ax.set_ylabel(f"share of {view.mixture['unit']} (whisker: ±{tol:.0%})")
    else:
        tok = sum(c.index["text_tokens"] for c in view.categories) or 1
        smp = sum(c.index["samples"] for c in view.categories) or 1
        ax.bar([i - 0.2 for i in x], [c.index["text_tokens"] / tok for c in view.categories], 0.4, label="text tokens")
        ax.bar([i + 0.2 for i in x], [c.index["samples"] / smp for c in view.categories], 0.4, label="samples")
        ax.set_ylabel("share")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.legend()
    ax.set_title(f"{view.title}: ratios")
    files["ratios"] = _save(fig, assets, view, "ratios")

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, c in enumerate(view.categories):  # colour Ci is category i in every chart
        if c.tokens:
            ax.hist(c.tokens, bins=30, histtype="step", label=c.name, color=f"C{i % 10}")
    ax.set_xlabel("text tokens per sample (estimated)")
    ax.set_ylabel("samples")
    ax.legend(fontsize="small")
    ax.set_title(f"{view.title}: text tokens")
    files["tokens"] = _save(fig, assets, view, "tokens")

    fig, (aw, ah) = plt.subplots(1, 2, figsize=(8, 3.6))
    for i, c in enumerate(view.categories):
        if c.widths:
            aw.hist(c.widths, bins=20, histtype="step", label=c.name, color=f"C{i % 10}")
            ah.hist(c.heights, bins=20, histtype="step", label=c.name, color=f"C{i % 10}")
    aw.set_xlabel("image width (px)")
    ah.set_xlabel("image height (px)")
    aw.set_ylabel("images")
    aw.legend(fontsize="small")
    fig.suptitle(f"{view.title}: image sizes")
    files["image-sizes"] = _save(fig, assets, view, "image-sizes")
    return files


def _save(fig, assets: Path, view: View, name: str) -> str:
    import matplotlib.pyplot as plt

    file = f"{_slug(view.title)}-{name}.png"
    fig.tight_layout()
    fig.savefig(assets / file, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return file


CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
.charts img{max-width:48%;margin:4px}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
figure.sample{margin:0;border:1px solid #ddd;padding:6px;background:#fafafa}figure.sample img{max-width:100%;display:block}
figcaption{font-size:12px;white-space:pre-wrap;word-break:break-word}.key{color:#888;font-family:monospace;font-size:11px}
tr.warn td{background:#fdecea}ul.warnings{color:#a12;font-size:13px}p.budget{font-size:13px;color:#444}"""


def _mixture_rows(view: View) -> tuple[str, list[str]]:
    """The mixture's extra table columns (header, one cell group per category in view order)."""
    if not view.mixture:
        return "", ["" for _ in view.categories]
    cats = view.mixture["categories"]
    cells = []
    for c in view.categories:
        m = cats[c.name]
        cells.append(f"<td>{m['requested_ratio']:.4f}</td><td>{m['realised_ratio']:.4f}</td>"
                     f"<td class='dev'>{m['deviation_points']:+.2f}</td><td>{m['realised']['text_tokens']:.4f}</td>"
                     f"<td>{m['realised']['samples']:.4f}</td><td>{m['repeat_factor']:.2f}</td><td>{m['streams']}</td>")
    head = ("<th>requested</th><th>realised</th><th>points off</th><th>share of tokens</th><th>share of samples</th>"
            "<th>repeat</th><th>streams</th>")
    return head, cells


def render_view(view: View, chart_files: dict[str, str]) -> str:
    e = html.escape
    head, cells = _mixture_rows(view)
    rows = []
    for c, extra in zip(view.categories, cells):
        warn = bool(view.mixture and view.mixture["categories"][c.name]["warnings"])
        rows.append(f"<tr data-category='{e(c.name)}'{' class=warn' if warn else ''}><td>{e(c.name)}</td>"
                    f"<td>{c.index['samples']}</td><td>{c.index['text_tokens']}</td><td>{c.index['images']}</td>"
                    f"<td>{c.index['bytes'] / 1e6:.2f}</td>{extra}</tr>")
    about = []
    if view.mixture:
        about.append(f"<p class='budget'>{e(view.mixture['budget']['explained'])}</p>")
        warnings = view.mixture["warnings"]
        if warnings:
            about.append(f"<ul class='warnings'>{''.join(f'<li>{e(w)}</li>' for w in warnings)}</ul>")
    parts = [
        f"<section class='view' data-kind='{'mixture' if view.mixture else 'corpus'}'>",
        f"<h2>{e(view.title)}</h2><p>{e(str(view.folder))}</p>", *about,
        f"<table class='counts'><tr><th>category</th><th>samples</th><th>text tokens</th><th>images</th><th>MB</th>{head}</tr>",
        *rows, "</table><div class='charts'>",
        *(f"<img class='chart' data-chart='{n}' src='assets/{f}' alt='{n} chart'>" for n, f in chart_files.items()),
        "</div>",
    ]
    for c in view.categories:
        parts.append(f"<section class='category' data-category='{e(c.name)}'><h3>{e(c.name)}</h3><div class='grid'>")
        for key, thumb, text in c.shown:
            img = f"<img src='assets/{thumb}' alt='{e(key)}'>" if thumb else ""
            parts.append(f"<figure class='sample'>{img}<figcaption><span class='key'>{e(key)}</span>\n{e(text)}</figcaption></figure>")
        parts.append("</div></section>")
    parts.append("</section>")
    return "\n".join(parts)


def paper_routes_section(corpus: Path) -> str:
    """Papers (`render arxiv|pdf`), per source: papers by route, pages paired from LaTeX and from the PDF's text
    layer, and why papers or pages lost the LaTeX route (`reports.paper_routes`); empty without paper ledgers."""
    e = html.escape
    parts = []
    for source, s in corpus_routes(corpus).items():
        def row(label: str, counts: dict) -> str:
            cells = ", ".join(f"{e(k)} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
            return f"<tr><td>{e(label)}</td><td style='text-align:left'>{cells}</td></tr>"

        pages = {"from LaTeX": s.pages_latex, "from the PDF's text layer": s.pages_text_layer, **s.pages_dropped}
        parts += [f"<section class='paper-routes' data-source='{e(source)}'><h3>{e(source)}: papers by route</h3>",
                  "<table>", row("papers", dict(s.by_route)), row("pages", pages),
                  row("why papers lost the LaTeX route", dict(s.route_lost)),
                  row("why pages took the text layer", dict(s.pages_refused)),
                  row("bibliographies", dict(s.bibliography)), "</table><ul>",
                  *(f"<li>{e(r.doc)}: {e(r.route)}{', ' + e(r.reason) if r.reason else ''}</li>" for r in s.examples),
                  "</ul></section>"]
    return "\n".join(parts)


def write_report(path: Path, out: Path, thumbs: int = 8, limit: int = 2000, chars: int = 280) -> Path:
    """Write `<out>/index.html` and `<out>/assets/`; return the page's path."""
    views = find_views(path)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    bodies = []
    for view in views:
        scan(view, assets, thumbs, limit, chars)
        bodies.append(render_view(view, charts(view, assets)))
        if view.mixture is None and not storage.is_remote(view.folder):  # paper routes read local ledgers
            bodies.append(paper_routes_section(view.folder))
            bodies.append(funnel_section(view.folder, assets, chars))
            write_card(view.folder)
    page = out / "index.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlcorpus report: {html.escape(str(path))}</title>"
        f"<style>{CSS}</style></head><body><h1>vlcorpus report</h1>\n" + "\n".join(bodies) + "\n</body></html>\n",
        "utf-8",
    )
    return page
