"""`vlcorpus run --config e2e.yaml`: raw sources -> corpus -> held-out split -> stage mixtures -> tokenizer ->
training stages 1 -> 2 -> 3 with evaluation -> one report folder.

Every step is the same `vlcorpus` command a user would type, run in this process so that one Ray serves them
all (local, or the cluster named by --address / RAY_ADDRESS). Re-running resumes: pipelines skip what their
ledgers hold, finished steps are skipped by their markers (split.json, mixture.json, tokenizer.json, the
trainer's summaries), and a step whose input changed is rebuilt together with everything after it.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mixer.heldout import corpus_fingerprint, split_corpus
from trainer.config import SCHEDULE_DIR
from trainer.eval_plots import label, plot_results
from vlcorpus.cli import main as cli_main
from vlcorpus.cli import source_commands
from vlcorpus.config import load_config

COMMAND = ("run",)
HELP = "run the whole chain from raw sources to a trained, evaluated model (see e2e.yaml)"
log = logging.getLogger("vlcorpus.e2e")

@dataclass
class TrainSettings:
    preset: str = "tiny"
    device: str = "auto"
    scale: float = 1.0  # multiplies every stage's steps, warm-ups and batch size
    max_seq_len: int | None = None  # caps every stage's sequence length (compact runs)
    vocab_size: int = 8000
    eval_items: int = 32
    workers: int = 1  # Ray Train workers
    num_workers: int = 2  # DataLoader workers per category stream (0: decode in the training process)
    ckpt_interval: int = 100  # steps between checkpoints (a killed run resumes from the last one)
    overrides: list[str] = field(default_factory=list)  # stage settings, key=value


@dataclass
class E2EConfig:
    out: str = "out/e2e"
    sources: dict[str, str] = field(default_factory=dict)  # kind -> input folder (kinds: vlcorpus.cli.source_commands)
    heldout_fraction: float = 0.1
    stages: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3"])
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        known = source_commands()
        unknown = sorted(set(self.sources) - set(known))
        if unknown:
            raise ValueError(f"sources: unknown kind(s) {unknown}; known: {', '.join(known)}")
        if not self.sources:
            raise ValueError("sources: name at least one input folder")
        for kind, folder in self.sources.items():
            if not Path(folder).exists():
                raise ValueError(f"sources.{kind}: {folder} does not exist")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="e2e YAML (see e2e.yaml in the repository)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. out=/data/run")
    p.add_argument("--preset", help="model preset (tiny | small | deepseek-vl-1.3b); same as --set train.preset=")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="same as --set train.device=")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")


def _cli(argv: list[str]) -> None:
    log.info("$ vlcorpus %s", " ".join(argv))
    code = cli_main(argv)
    if code:
        raise SystemExit(f"error: step `vlcorpus {' '.join(argv)}` failed with exit code {code}")


def _step(name: str) -> float:
    log.info("==== %s", name)
    return time.monotonic()


def build_corpus(cfg: E2EConfig, corpus: Path, ray_args: list[str]) -> None:
    for kind, command in source_commands().items():
        if kind in cfg.sources:
            extra = ["--corpus", str(corpus)] if getattr(command, "READS_CORPUS", False) else []
            _cli([*command.COMMAND, cfg.sources[kind], "--out", str(corpus), *extra, *ray_args])


def run(cfg: E2EConfig, ray_args: list[str]) -> Path:
    out = Path(cfg.out)
    corpus, split, mix, tok, train = out / "corpus", out / "split", out / "mix", out / "tokenizer", out / "train"
    t = _step("1/6 corpus: render, extract, import, build")
    build_corpus(cfg, corpus, ray_args)
    log.info("corpus built in %.0f s", time.monotonic() - t)

    _step("2/6 held-out split")
    fingerprint = corpus_fingerprint(corpus)
    marker = split / "split.json"
    if not marker.exists() or json.loads(marker.read_text())["fingerprint"] != fingerprint:
        for stale in (mix, tok, train, out / "report"):  # built from an older corpus
            shutil.rmtree(stale, ignore_errors=True)
        summary = split_corpus(corpus, split, cfg.heldout_fraction)
        log.info("held out: %s", {k: v["heldout_docs"] for k, v in summary["categories"].items()})

    _step("3/6 mixtures")
    for stage in cfg.stages:
        if not (mix / stage / "mixture.json").exists():
            _cli(["mix", str(split / "train"), "--mixture", stage, "--out", str(mix), "--overwrite", *ray_args])

    _step("4/6 tokenizer")
    if not (tok / "tokenizer.json").exists():
        partial = tok.with_name(tok.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _cli(["train-tokenizer", str(split / "train"), "--out", str(partial), "--vocab-size", str(cfg.train.vocab_size)])
        partial.rename(tok)

    _step("5/6 training stages " + " -> ".join(cfg.stages) + " with evaluation")
    train_args = ["train", "--mix", str(mix), "--tokenizer", str(tok), "--out", str(train),
                  "--preset", cfg.train.preset, "--device", cfg.train.device, "--scale", str(cfg.train.scale),
                  "--eval", str(split / "heldout"), "--eval-items", str(cfg.train.eval_items),
                  "--workers", str(cfg.train.workers), "--num-workers", str(cfg.train.num_workers),
                  "--ckpt-interval", str(cfg.train.ckpt_interval)]
    for s in cfg.stages:
        train_args += ["--schedule", str(SCHEDULE_DIR / f"{s}.yaml")]
    if cfg.train.max_seq_len:
        train_args += ["--max-seq-len", str(cfg.train.max_seq_len)]
    for o in cfg.train.overrides:
        train_args += ["--set", o]
    _cli(train_args)

    _step("6/6 report")
    report = out / "report"
    _cli(["report", str(corpus), "--out", str(report / "corpus")])
    _cli(["report", str(mix), "--out", str(report / "mix")])
    write_report_page(report, train, cfg.stages, mix)
    return report


def _score_cell(entry: dict, key: str, chance: float | None) -> str:
    """`value [low, high]`; an accuracy whose whole 95% interval is above chance is marked."""
    if key not in entry or entry[key] != entry[key]:  # absent or NaN
        return "<td></td>"
    lo, hi = entry[f"{key}_ci"]
    above = chance is not None and lo > chance
    return f'<td class="{"above" if above else ""}">{entry[key]:.3f} <small>[{lo:.3f}, {hi:.3f}]</small></td>'


def eval_table(evals: list[dict]) -> str:
    """Rows: each evaluation (stage, or stage@step) and under it each category; every score with its interval."""
    cols = [("option_acc", "option acc"), ("option_acc_norm", "option acc_norm"), ("mc_ppl_acc", "MC-PPL acc"),
            ("bpb", "bits per byte")]
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
        note = (f"<p>Chance is {chance:.2f} (4 options). Highlighted: accuracies whose whole 95% Wilson interval lies "
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


def main(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.preset:
        overrides.append(f"train.preset={args.preset}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(E2EConfig, args.config, overrides)
    ray_args = (["--address", args.address] if args.address else []) + (
        ["--num-cpus", str(args.num_cpus)] if args.num_cpus else [])
    start = time.monotonic()
    report = run(cfg, ray_args)
    out = Path(cfg.out)
    print(f"""
done in {time.monotonic() - start:.0f} s. Everything is under {out}/:
  corpus       {out}/corpus          (shards per category; ledgers in _ledger/)
  split        {out}/split           (train/ and heldout/ corpora)
  mixtures     {out}/mix             (<stage>/mixture.json + ratio-tagged tars)
  tokenizer    {out}/tokenizer
  model        {out}/train           (<stage>/final = Hugging Face format; metrics, curves, eval.jsonl)
  report       {report}/index.html""")
    return 0
