"""The page `vlcorpus run` ends with: links to the corpus and mixture reports, the held-out evaluations (a chart
with 95% intervals and the table behind it), how often training saw each sample, and the loss curves."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from trainer.eval_plots import label, plot_results
from trainer.evaluate import ACCURACIES


def _score_cell(entry: dict, key: str, chance: float | None) -> str:
    """`value [low, high]`; an accuracy whose whole 95% interval is above chance is marked."""
    if key not in entry or entry[key] != entry[key]:  # absent or NaN
        return "<td></td>"
    lo, hi = entry[f"{key}_ci"]
    above = chance is not None and lo > chance
    return f'<td class="{"above" if above else ""}">{entry[key]:.3f} <small>[{lo:.3f}, {hi:.3f}]</small></td>'


def eval_table(evals: list[dict]) -> str:
    """Rows: each evaluation (stage, or stage@step) and under it each category; every score with its interval."""
    cols = [*ACCURACIES, ("bpb", "bits per byte")]
    head = "<tr><th>after</th><th>category</th><th>items</th>" + "".join(f"<th>{n}</th>" for _, n in cols) + "<th>bpb bytes</th></tr>"
    rows = []
    for ev in evals:
        name = html.escape(label(ev))
        for cat, entry in [("all", ev), *sorted(ev.get("categories", {}).items())]:
            chance = ev.get("chance")
            cells = "".join(_score_cell(entry, k, chance if k != "bpb" else None) for k, _ in cols)
            rows.append(f'<tr class="{"all" if cat == "all" else ""}"><td>{name}</td><td>{cat}</td>'
                        f'<td>{entry.get("items", "")}</td>{cells}<td>{entry.get("bpb_bytes", "")}</td></tr>')
    return f'<table id="eval">{head}{"".join(rows)}</table>'


def reuse_table(train: Path, mix: Path, stages: list[str]) -> str:
    """Per stage and category: distinct samples in the mixture, samples training drew, draws per distinct sample
    (how often training saw each sample, on average: the mixture's own repeats included)."""
    rows = []
    for stage in stages:
        summary, meta = train / stage / "summary.json", mix / stage / "mixture.json"
        if not summary.exists() or not meta.exists():
            continue
        drawn = json.loads(summary.read_text()).get("samples_by_category", {})
        cats = json.loads(meta.read_text()).get("categories", {})
        for cat, n in sorted(drawn.items()):
            distinct = cats.get(cat, {}).get("distinct_samples") or 0
            seen = f"{n / distinct:.2f}" if distinct else ""
            rows.append(f"<tr><td>{stage}</td><td>{cat}</td><td>{distinct}</td><td>{n}</td><td>{seen}</td></tr>")
    head = "<tr><th>stage</th><th>category</th><th>distinct samples in the mixture</th><th>drawn by training</th><th>draws per distinct sample</th></tr>"
    return f'<table id="reuse">{head}{"".join(rows)}</table>' if rows else ""


def write_report_page(report: Path, train: Path, stages: list[str], mix: Path | None = None) -> None:
    """One page that links the corpus and mixture reports and shows the evaluations (a chart with 95% intervals
    and the table behind it) and the loss curves."""
    evals_path = train / "eval.jsonl"
    evals = [json.loads(line) for line in evals_path.read_text().splitlines()] if evals_path.exists() else []
    curves = []
    for stage in stages:
        if (train / stage / "curves.png").exists():
            shutil.copy(train / stage / "curves.png", report / f"{stage}-curves.png")
            curves.append(f"{stage}-curves.png")
    chart = ""
    if evals:
        plot_results(evals, report / "eval.png", "held-out evaluation after each stage (95% intervals)")
        chart = '<img src="eval.png" alt="evaluation chart">'
        chance = evals[-1].get("chance")
        options = f" ({round(1 / chance)} options)" if chance else ""  # chance is 1 / options; NaN without items
        note = (f"<p>Chance is {chance:.2f}{options}. Highlighted: accuracies whose whole 95% Wilson interval lies "
                "above chance. Bits per byte: held-out text-only samples (the <i>all</i> row) and each category's text "
                "with its images in context; 95% bootstrap intervals over samples.</p>")
    else:
        note = "<p>No evaluation ran (train without --eval).</p>"
    images = "".join(f'<figure><img src="{c}" alt="{c}"><figcaption>{c}</figcaption></figure>' for c in curves)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vlcorpus run</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 7px}}
tr.all td{{font-weight:bold;border-top:2px solid #888}} td.above{{background:#d9f2d9}} small{{color:#555}}
img{{max-width:100%}}</style></head><body>
<h1>vlcorpus: raw sources to a trained model</h1>
<ul><li><a href="corpus/index.html">corpus report</a></li><li><a href="mix/index.html">mixture report</a></li></ul>
<h2>Evaluation on the held-out split</h2>{chart}{note}{eval_table(evals)}
<h2>How often training saw each sample</h2>{reuse_table(train, mix, stages) if mix else ""}
<h2>Training curves</h2>{images}</body></html>"""
    (report / "index.html").write_text(page, encoding="utf-8")
