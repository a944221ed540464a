"""`vlcorpus extract notebooks INPUT --out CORPUS`: Jupyter notebooks -> plot/code pairs in `web_code`.

Notebooks are small, so a Ray task renders a batch of them (64 by default) in its worker's bounded child process.
Exact-duplicate images are dropped job-wide through the driver's `Stage.unique`: each sample claims the sha256 of
its image in one registry actor; the first sample key to claim a hash owns it, and any other sample with that image
is dropped and counted as `duplicate_image`. A retried batch claims with the same deterministic keys, so it keeps
what it owned; a resumed job first registers the images its committed shards hold (after the driver's reconcile has
removed the shards no ledger line commits). Which copy wins depends on the order batches finish; the set of images
written does not.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pipelines.job import add_job_arguments, renderer_config, run_job
from renderers.notebook import pairs as notebook
from vlcorpus.document import Bounds, DocInput
from vlcorpus.inputs import discover
from vlcorpus.sample import Sample
from vlcorpus.stage import Stage, Unique

COMMAND = ("extract", "notebooks")
HELP = "Jupyter notebooks -> plot/code pairs (web_code samples)"
CATEGORIES = ("web_code",)  # what it can write: `vlcorpus run` checks mixtures against it
SOURCE = "notebook"


def image_hash(sample: Sample) -> str:
    return sample.meta["image_sha256"]


def mark_job_unique(sample: Sample) -> None:
    sample.meta["filters"]["image_checks"].append("job_unique")


STAGE = Stage(source=SOURCE, render=notebook.render, batch_size=64, bounds=Bounds(timeout_s=120, memory_gb=2),
              unique=Unique(value=image_hash, reason="duplicate_image", mark=mark_job_unique))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    p.add_argument("--keep-magics", action="store_true", help="keep %%magic, !shell and help? lines in the code")
    p.add_argument("--all-kernels", action="store_true",
                   help="keep notebooks of every kernel language, not only Python")


def notebooks(root: Path) -> list[DocInput]:
    """Every .ipynb under `root` except Jupyter's autosave copies in `.ipynb_checkpoints/`."""
    return [d for d in discover(root, (".ipynb",)) if ".ipynb_checkpoints" not in Path(d.origin).parts]


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(notebook.NotebookConfig, args)
    if args.keep_magics:
        cfg = replace(cfg, keep_magics=True)
    if args.all_kernels:
        cfg = replace(cfg, languages=[])
    run_job(replace(STAGE, config=cfg), notebooks(args.input), args)
    return 0
