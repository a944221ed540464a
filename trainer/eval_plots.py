"""Pictures of evaluation results (`trainer.evaluate`): accuracies and bits per byte with their 95% intervals,
across the evaluations of a run (after each stage, or every N steps), per category."""

from __future__ import annotations

import math
from pathlib import Path

from trainer.evaluate import ACCURACIES


def label(result: dict) -> str:
    """How one evaluation is named on an axis: its stage, and its step when it ran during training."""
    return f"{result.get('stage', '')}@{result['step']}" if "step" in result else str(result.get("stage", "model"))


def _errors(values: list[float], cis: list[list[float]]) -> list[list[float]]:
    return [[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]]


def plot_results(results: list[dict], path: str | Path, title: str = "held-out evaluation") -> None:
    """One panel per accuracy (each category a line over the evaluations, with its Wilson interval as error bars
    and chance dashed) and one of bits per byte (bootstrap intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [label(r) for r in results]
    x = list(range(len(results)))
    cats = sorted({c for r in results for c, v in r.get("categories", {}).items() if "option_acc" in v})
    fig, axes = plt.subplots(1, len(ACCURACIES) + 1, figsize=(5 * len(ACCURACIES) + 5, 4.4))
    for ax, (key, name) in zip(axes, ACCURACIES):
        for i, cat in enumerate(["all", *cats]):
            rows = [(j, r if cat == "all" else r["categories"].get(cat, {})) for j, r in enumerate(results)]
            rows = [(j, e) for j, e in rows if key in e and not math.isnan(e[key])]
            if not rows:
                continue
            xs = [j + (i - len(cats) / 2) * 0.04 for j, _ in rows]  # side by side, so the bars stay readable
            ys = [e[key] for _, e in rows]
            n = rows[-1][1]["items"]
            ax.errorbar(xs, ys, yerr=_errors(ys, [e[f"{key}_ci"] for _, e in rows]), marker="o", capsize=3,
                        linewidth=2.5 if cat == "all" else 1, color="black" if cat == "all" else f"C{i}",
                        label=f"{cat} (n={n})")
        chance = next((r["chance"] for r in results if not math.isnan(r.get("chance", math.nan))), None)
        if chance:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set(title=name, ylim=(0, 1), xticks=x, xticklabels=names, ylabel="accuracy (95% Wilson interval)")
    axes[0].legend(fontsize=7, loc="upper left")
    ax = axes[-1]
    series = [("text", lambda r: r)] + [(c, lambda r, c=c: r.get("categories", {}).get(c, {}))
                                        for c in sorted({c for r in results for c in r.get("categories", {})})
                                        if c != "text"]
    for i, (cat, get) in enumerate(series):
        rows = [(j, get(r)) for j, r in enumerate(results) if "bpb" in get(r)]
        if rows:
            ys = [e["bpb"] for _, e in rows]
            ax.errorbar([j for j, _ in rows], ys, yerr=_errors(ys, [e["bpb_ci"] for _, e in rows]), marker="o",
                        capsize=3, linewidth=2.5 if cat == "text" else 1, color="black" if cat == "text" else f"C{i}",
                        label=f"{cat} ({rows[-1][1]['bpb_bytes']:,} B)")
    ax.set(title="bits per byte (95% bootstrap interval)", xticks=x, xticklabels=names, ylabel="bits per byte")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
