"""The report's curation section: per category the funnel of `vlcorpus curate` (in -> each filter -> out), the
redactions per type, and the removed samples kept in `_removed/` (thumbnail, reason, text) so a reader can judge
the false positives."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from vlcorpus.shards import read_samples, shard_paths

SUMMARY = "_curation/summary.json"
THUMB_PX = 160


def read_summary(corpus: Path) -> dict | None:
    path = corpus / SUMMARY
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def removed_examples(corpus: Path, category: str, assets: Path, chars: int) -> list[tuple[str, str, str]]:
    """(reason, thumbnail file or "", text) of each removed sample kept for the category."""
    from PIL import Image

    folder = corpus / "_removed" / category
    shown = []
    for n, s in enumerate(read_samples(shard_paths(folder)) if folder.is_dir() else []):
        thumb = ""
        first = next((seg["image"] for seg in s.segments if "image" in seg), None)
        if first is not None and s.meta.get("removed_by") != "image_undecodable":
            with Image.open(io.BytesIO(s.images[first])) as im:
                im.thumbnail((THUMB_PX, THUMB_PX))
                thumb = f"removed-{category}-{n}.jpg"
                im.convert("RGB").save(assets / thumb, "JPEG", quality=85)
        text = s.text[:chars] + (" …" if len(s.text) > chars else "")
        shown.append((s.meta.get("removed_by", "?"), thumb, text))
    return shown


def funnel_section(corpus: Path, assets: Path, chars: int = 280) -> str:
    """HTML of the curation funnel; a note when the corpus was not curated."""
    e = html.escape
    summary = read_summary(corpus)
    if summary is None:
        return ("<section class='curation'><h3>curation</h3><p>not curated: run <code>vlcorpus curate</code> for the "
                "quality, personal-data, NSFW, duplicate and decontamination filters</p></section>")
    steps = summary["steps"]
    head = "".join(f"<th>{e(s)}</th>" for s in steps)
    rows, grids = [], []
    for cat, c in summary["categories"].items():
        cells = "".join(f"<td>{'-' + str(c['dropped'][s]) if c['dropped'][s] else ''}</td>" for s in steps)
        red = ", ".join(f"{e(k)} {v}" for k, v in c["redacted"].items()) or ""
        rows.append(f"<tr data-category='{e(cat)}'><td>{e(cat)}</td><td>{c['in']}</td>{cells}<td>{c['out']}</td>"
                    f"<td style='text-align:left'>{red}</td></tr>")
        shown = removed_examples(corpus, cat, assets, chars)
        if shown:
            grids.append(f"<h4>{e(cat)}: removed</h4><div class='grid'>")
            for reason, thumb, text in shown:
                img = f"<img src='assets/{thumb}' alt='{e(reason)}'>" if thumb else ""
                grids.append(f"<figure class='sample removed' data-reason='{e(reason)}'>{img}<figcaption>"
                             f"<span class='key'>{e(reason)}</span>\n{e(text)}</figcaption></figure>")
            grids.append("</div>")
    return "\n".join([
        "<section class='curation'><h3>curation funnel</h3>",
        f"<table class='funnel'><tr><th>category</th><th>in</th>{head}<th>out</th><th>redacted</th></tr>", *rows,
        "</table>", *grids, "</section>"])
