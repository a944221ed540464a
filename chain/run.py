"""`vlcorpus run --config e2e.yaml`: raw sources -> corpus -> held-out split -> stage mixtures -> tokenizer ->
training stages 1 -> 2 -> 3 with evaluation -> one report folder.

Every step is the same `vlcorpus` command a user would type, run in this process so that one Ray serves them
all (local, or the cluster named by --address / RAY_ADDRESS). Re-running resumes: pipelines skip what their
ledgers hold, finished steps are skipped by their markers (split.json, mixture.json, tokenizer.json, the
trainer's summaries), and a step whose input changed is rebuilt together with everything after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from mixer.config import MixtureConfig, load_mixture
from mixer.heldout import corpus_fingerprint, split_corpus, split_settings
from reports.run_page import write_report_page
from trainer.config import DEVICES, PRESETS, VOCAB_SIZE, RunConfig, load_stages, split_override
from trainer.train import check_eval
from vlcorpus.cli import main as cli_main
from vlcorpus.cli import source_commands
from vlcorpus.config import ConfigError, load_config

COMMAND = ("run",)
HELP = "run the whole chain from raw sources to a trained, evaluated model (see e2e.yaml)"
log = logging.getLogger("vlcorpus.e2e")


@dataclass
class StageMixture:
    """A stage's mixture in this run: which file, and what to change in it (there is no mixture file to edit)."""

    file: str = ""  # a mixture YAML, or a shipped name (stage1|stage2|stage3); default: the stage's own name
    overrides: list[str] = field(default_factory=list)  # key=value, e.g. categories.caption.on_short=warn


@dataclass
class E2EConfig:
    out: str = "out/e2e"
    sources: dict[str, str] = field(default_factory=dict)  # kind -> input folder (kinds: vlcorpus.cli.source_commands)
    heldout_fraction: float = 0.1
    stages: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3"])
    mixtures: dict[str, StageMixture] = field(default_factory=dict)  # stage -> its mixture, where not the shipped one
    # The stage mixtures adapt to the categories this run's sources give: a category none gives is left out and the
    # others renormalised (mixture.json says so), a stage left with none is skipped. strict: stop instead.
    strict: bool = False
    strict_mix: bool = False  # a mixture warning (a share more than 2 points off, a category left out) stops the run
    vocab_size: int = VOCAB_SIZE  # the tokenizer trained on the corpus
    # the trainer's own settings (trainer.config.RunConfig); the chain fills in mix, out, tokenizer, eval_dir and
    # schedules (from `stages`)
    train: RunConfig = field(default_factory=RunConfig)

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
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction: {self.heldout_fraction} must be between 0 and 1")
        unused = sorted(set(self.mixtures) - set(self.stages))
        if unused:
            raise ValueError(f"mixtures: {', '.join(unused)} not among the run's stages ({', '.join(self.stages)})")

    def mixture(self, stage: str) -> StageMixture:
        return self.mixtures.get(stage, StageMixture())


NO_SOURCE = "no source of this run writes it"
NO_SAMPLES = "the run's corpus holds no sample of it"


def check_mixtures(cfg: E2EConfig, present: set[str] | None = None, why: str = NO_SOURCE) -> dict[str, MixtureConfig]:
    """Every stage's mixture against the categories `present` (default: those this run's sources can write), before
    anything is rendered and again before mixing (the corpus's own categories). A category that is not present is
    left out (`left_out`, with `why`), the others renormalised: the paper's Tables 1 and 2 over what exists. A stage
    left with nothing is not run. Both are printed loudly; with `strict` they stop the run, saying what to change.
    Returns the mixtures of the stages that run, in order."""
    commands = source_commands()
    writes = {kind: commands[kind].CATEGORIES for kind in cfg.sources}
    if present is None:
        present = {c for cats in writes.values() for c in cats}
    mixtures, problems, skipped = {}, [], {}
    for stage in cfg.stages:
        m = cfg.mixture(stage)
        try:
            mixture = load_mixture(m.file or stage, m.overrides)
        except ConfigError as e:
            raise ConfigError(f"mixtures.{stage}: {e}") from None
        if mixture.stage != stage:
            raise ConfigError(f"mixtures.{stage}.file: {m.file} is the mixture of stage {mixture.stage!r}; the run "
                              f"mixes {stage!r} (it writes mix/{stage} for trainer/schedules/{stage}.yaml)")
        lacking = [c for c, spec in mixture.categories.items()
                   if spec.ratio > 0 and c not in present and c not in mixture.left_out]
        if lacking and cfg.strict:
            kinds = {c: [k for k, mod in commands.items() if c in mod.CATEGORIES] for c in lacking}
            problems.append(f"{stage} needs {', '.join(lacking)} ({why}). Add a source ("
                            + "; ".join(f"for {c}: sources: {{{' | '.join(kinds[c])}: FOLDER}}" for c in lacking)
                            + f"), or drop {stage} from stages, or set strict: false to mix {stage} without "
                            f"{'it' if len(lacking) == 1 else 'them'} (the other ratios renormalised)")
            continue
        left = {**mixture.left_out, **{c: why for c in lacking}}
        if all(c in left for c, spec in mixture.categories.items() if spec.ratio > 0):
            skipped[stage] = f"none of its categories ({', '.join(mixture.categories)}) is there: {why}"
            continue
        mixtures[stage] = replace(mixture, left_out=left)
    if problems:
        sources = "; ".join(f"{k} -> {', '.join(c)}" for k, c in writes.items())
        raise ConfigError(f"strict: this run's sources write {sources}:\n" + "\n".join(problems))
    if not mixtures:
        raise ConfigError(f"no stage of {', '.join(cfg.stages)} can be mixed from this run's sources: "
                          + "; ".join(f"{s}: {w}" for s, w in skipped.items()))
    banner = []
    for stage, mix in mixtures.items():
        reasons: dict[str, list[str]] = {}
        for c, w in mix.left_out.items():
            reasons.setdefault(w, []).append(c)
        if reasons:
            banner.append(f"{stage}: mixed without " + "; ".join(f"{', '.join(cs)} ({w})" for w, cs in reasons.items())
                          + "; the other ratios renormalised")
    banner += [f"{stage}: NOT RUN, {reason}" for stage, reason in skipped.items()]
    if banner:
        log.warning("\n%s\nThe stage mixtures adapt to what this run's sources give (strict: true stops instead):\n  %s"
                    "\n%s", "=" * 78, "\n  ".join(banner), "=" * 78)
    return mixtures


def check_eval_categories(cfg: E2EConfig) -> None:
    """`train.eval_categories` against what this run's sources can write, before anything is rendered."""
    commands = source_commands()
    writable = {c for kind in cfg.sources for c in commands[kind].CATEGORIES}
    missing = [c for c in cfg.train.eval_categories or [] if c not in writable]
    if missing:
        raise ConfigError(f"train.eval_categories: no source of this run writes {', '.join(missing)}; remove it, or "
                          "leave eval_categories out to evaluate every category that gives held-out items")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="e2e YAML (see e2e.yaml in the repository)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. out=/data/run")
    p.add_argument("--preset", choices=PRESETS, help="model size; same as --set train.model.preset=")
    p.add_argument("--device", choices=DEVICES, help="same as --set train.device=")
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


def mix_stage(cfg: E2EConfig, stage: str, mixture: MixtureConfig, corpus: Path, mix: Path, train: Path,
              ray_args: list[str]) -> None:
    """`vlcorpus mix` for one stage, unless mix/<stage> was built from this very mixture (config and strictness);
    a stage mixed again invalidates the training built on the old one. A failure says what to change in the run."""
    done = mix / stage / "mixture.json"
    if done.exists():
        old = json.loads(done.read_text("utf-8"))
        if old.get("config_hash") == mixture.config_hash() and old.get("strict") == cfg.strict_mix:
            return
        log.info("%s: the run's mixture changed since %s was written; mixing again, training again", stage, done)
        shutil.rmtree(train, ignore_errors=True)
    m = cfg.mixture(stage)
    overrides = [*m.overrides, *(f"left_out.{c}={why}" for c, why in mixture.left_out.items())]
    argv = ["mix", str(corpus), "--mixture", m.file or stage, "--out", str(mix), "--overwrite",
            *(a for o in overrides for a in ("--set", o)), *(["--strict"] if cfg.strict_mix else []), *ray_args]
    log.info("$ vlcorpus %s", " ".join(argv))
    if cli_main(argv):
        raise SystemExit(
            f"error: the {stage} mixture cannot be built from this run's corpus (the error above says why). In a run "
            f"there is no mixture file to edit: change it in the run config, e.g.\n"
            f"  mixtures:\n    {stage}:\n      overrides: [budget=dominant, categories.<category>.on_short=warn]\n"
            f"(any key of the mixture file: categories.<category>.ratio / max_upsample / on_short, budget, unit, "
            f"seed), or mixtures.{stage}.file: YOUR_MIXTURE.yaml"
            + ("; strict_mix: false makes share warnings warnings again" if cfg.strict_mix else "")
            + ". Re-running resumes: the corpus and split are kept.")


def training_config(cfg: E2EConfig, out: Path, mixtures: dict[str, MixtureConfig]) -> RunConfig:
    """The trainer's run config for the stages that run; loading its stages checks every schedule and override
    (a stage not run takes its overrides, e.g. e2e.yaml's `stage3:lr=...`, with it)."""
    skipped = set(cfg.stages) - set(mixtures)
    run_cfg = replace(cfg.train, mix=str(out / "mix"), out=str(out / "train"), tokenizer=str(out / "tokenizer"),
                      eval_dir=str(out / "split" / "heldout"), schedules=list(mixtures),
                      stage_overrides=[o for o in cfg.train.stage_overrides if split_override(o)[0] not in skipped])
    load_stages(run_cfg)
    return run_cfg


def run(cfg: E2EConfig, ray_args: list[str]) -> Path:
    out = Path(cfg.out)
    corpus, split, mix, tok, train = out / "corpus", out / "split", out / "mix", out / "tokenizer", out / "train"
    mixtures = check_mixtures(cfg)  # before anything is rendered: the mixtures, the training stages, what to evaluate
    training_config(cfg, out, mixtures)
    check_eval_categories(cfg)
    t = _step("1/6 corpus: render, extract, import, build")
    build_corpus(cfg, corpus, ray_args)
    log.info("corpus built in %.0f s", time.monotonic() - t)

    _step("2/6 held-out split")
    marker = split / "split.json"
    made = json.loads(marker.read_text()) if marker.exists() else {}
    if (made.get("fingerprint"), made.get("settings")) != (corpus_fingerprint(corpus), split_settings(cfg.heldout_fraction)):
        for stale in (mix, tok, train, out / "report"):  # built from an older corpus or split
            shutil.rmtree(stale, ignore_errors=True)
        made = split_corpus(corpus, split, cfg.heldout_fraction)
    log.info("held out (samples of each category): %s", {k: f"{v['heldout_samples']}/{v['samples']}"
                                                        for k, v in made["categories"].items()})
    present = {c for c, v in made["categories"].items() if v["samples"] - v["heldout_samples"] > 0}
    mixtures = check_mixtures(cfg, present, NO_SAMPLES)  # the corpus as it came out
    run_cfg = training_config(cfg, out, mixtures)
    check_eval(run_cfg)  # before anything is mixed or trained

    _step("3/6 mixtures")
    for stage, mixture in mixtures.items():
        mix_stage(cfg, stage, mixture, split / "train", mix, train, ray_args)

    _step("4/6 tokenizer")
    if not (tok / "tokenizer.json").exists():
        partial = tok.with_name(tok.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _cli(["train-tokenizer", str(split / "train"), "--out", str(partial), "--vocab-size", str(cfg.vocab_size)])
        partial.rename(tok)

    _step("5/6 training stages " + " -> ".join(run_cfg.schedules) + " with evaluation")
    train.mkdir(parents=True, exist_ok=True)
    (train / "run.yaml").write_text(yaml.safe_dump(asdict(run_cfg), sort_keys=False))
    _cli(["train", "--config", str(train / "run.yaml")])

    _step("6/6 report")
    report = out / "report"
    _cli(["report", str(corpus), "--out", str(report / "corpus")])
    _cli(["report", str(mix), "--out", str(report / "mix")])
    write_report_page(report, train, run_cfg.schedules, mix)
    return report


def main(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.preset:
        overrides.append(f"train.model.preset={args.preset}")
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
