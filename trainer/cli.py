"""`vlcorpus train [--config run.yaml] [flags]`: one `RunConfig` (trainer/config.py) from a YAML file, flags on top,
read by the project's strict loader; then the stages in this process or on `--workers` Ray Train workers."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

from trainer.config import RunConfig, load_stages
from trainer.train import run_stages
from vlcorpus.config import load_config

COMMAND = ("train",)
HELP = "train the DeepSeek-VL-style model through the stage schedule(s) on a mixture"


def run_settings(cls: type = RunConfig, prefix: str = "") -> Iterator[tuple[str, Field, Any]]:
    """(key, field, type) of every setting with a flag: RunConfig's, and ModelConfig's under `model.`."""
    types = get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(types[f.name]):
            yield from run_settings(types[f.name], f"{prefix}{f.name}.")
        elif "help" in f.metadata:
            yield prefix + f.name, f, types[f.name]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="RunConfig YAML (keys of trainer.config.RunConfig); the flags below override it")
    for key, f, kind in run_settings():
        default = f.default_factory() if f.default is MISSING else f.default
        shown = f" (default {default})" if default not in (None, "", [], False) else ""
        more: dict[str, Any] = {"dest": key, "help": f.metadata["help"] + shown}
        if kind is bool:
            more.update(action="store_true", default=None)
        elif get_origin(kind) is list:
            more.update(action="append", metavar=f.name.upper())
        else:
            more.update(type=next(t for t in (*get_args(kind), kind) if t is not type(None)),
                        choices=f.metadata["choices"], metavar=None if f.metadata["choices"] else f.name.upper())
        p.add_argument(f.metadata["flag"] or "--" + f.name.replace("_", "-"), **more)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one RunConfig key, dotted below `model` (e.g. model.shape.llm.num_hidden_layers=2)")


def run_config(args: argparse.Namespace) -> RunConfig:
    """The file, then the flags given (each value as JSON, so a path stays a string), then `--set`, through the
    strict loader."""
    given = [f"{key}={json.dumps(getattr(args, key))}" for key, _, _ in run_settings() if getattr(args, key) is not None]
    return load_config(RunConfig, args.config, given + args.set)


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = run_config(args)
    run.check_paths()
    stages = load_stages(run)
    if run.workers > 1:
        from trainer.distributed import launch

        summaries = launch(run, stages)
    else:
        summaries = run_stages(run, stages)
    for s in summaries:
        print(stage_line(s))
    return 0


def stage_line(summary: dict) -> str:
    """One readable line per stage for the log; the whole record is `<out>/<stage>/summary.json` (and every step's
    is in `metrics.jsonl`)."""
    if "stopped_at" in summary:
        return f"stopped after step {summary['stopped_at']} as asked (stop_after); re-run to resume"
    line = f"{summary['stage']}: {summary['steps']} steps"
    share = summary.get("realised_language_share")
    if share is not None:
        line += f", language share {share:.2f} (target {summary['language_share_target']:.2f})"
    ev = summary.get("eval")
    if ev and ev.get("option_acc") == ev.get("option_acc"):  # present and not NaN
        lo, hi = ev["option_acc_ci"]
        line += f", held-out option acc {ev['option_acc']:.3f} [{lo:.3f}, {hi:.3f}] on {ev['items']} items"
    return f"{line} -> {summary['final']} (summary.json beside it)"
