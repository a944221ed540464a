"""`vlcorpus extract notebooks INPUT --out CORPUS`: Jupyter notebooks -> plot/code pairs in `web_code`.

Notebooks are small, so a Ray task renders a batch of them (64 by default), each in the driver's bounded child
process. Exact-duplicate images are dropped job-wide: every task asks one registry actor to claim the sha256 of
each image it is about to write; the first sample key to claim a hash owns it, and any other sample with that
image is dropped and counted as `duplicate_image`. A retried batch claims with the same deterministic keys, so it
keeps what it owned. A resumed job first claims the images its committed shards hold (after the driver's reconcile
has removed the shards no ledger line commits). Which copy wins depends on the order batches finish; the set of
images written does not.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from renderers.notebook import pairs as notebook
from vlcorpus.document import Bounds, DocInput, Filtered
from vlcorpus.driver import IsolatedRunner, Stage, reconcile
from vlcorpus.ledger import Ledger
from vlcorpus.runtime import init_ray
from vlcorpus.sample import Sample
from vlcorpus.shards import iter_members

COMMAND = ("extract", "notebooks")
HELP = "Jupyter notebooks -> plot/code pairs (web_code samples)"
CATEGORIES = ("web_code",)  # what it can write: `vlcorpus run` checks mixtures against it
SOURCE = "notebook"
STAGE = Stage(source=SOURCE, render=notebook.render, batch_size=64, bounds=Bounds(timeout_s=120, memory_gb=2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    p.add_argument("--keep-magics", action="store_true", help="keep %%magic, !shell and help? lines in the code")
    p.add_argument("--all-kernels", action="store_true",
                   help="keep notebooks of every kernel language, not only Python")


class ImageRegistry:
    """Ray actor: sha256 of an image -> key of the sample that owns it in this job."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, items: list[tuple[str, str]]) -> list[str]:
        """Claim each (hash, key); return each hash's owner (the key itself when the claim succeeded)."""
        return [self.owners.setdefault(h, key) for h, key in items]


class DedupRunner:
    """Renders each notebook in the bounded child process, then drops images another sample already owns."""

    def __init__(self, stage: Stage, registry) -> None:
        self.inner = IsolatedRunner(stage)
        self.registry = registry

    def render(self, doc: DocInput) -> tuple[list[Sample], dict[str, int]]:
        import ray

        samples, counts = self.inner.render(doc)
        owners = ray.get(self.registry.claim.remote([(s.meta["image_sha256"], s.key) for s in samples]))
        kept = [s for s, owner in zip(samples, owners) if owner == s.key]
        for s in kept:
            s.meta["filters"]["image_checks"].append("job_unique")
        duplicates = len(samples) - len(kept)
        if duplicates:
            counts["duplicate_image"] = counts.get("duplicate_image", 0) + duplicates
            counts["pairs"] = counts.get("pairs", 0) - duplicates
            if not kept:
                first = next(o for s, o in zip(samples, owners) if o != s.key)
                raise Filtered(f"all {duplicates} plot(s) duplicate images already written in this job "
                               f"(e.g. by {first})")
        return kept, counts

    def close(self) -> None:
        self.inner.close()


def committed_images(out: Path) -> Iterator[tuple[str, str]]:
    """(image sha256, key) of the notebook samples committed in `out`, so a resumed job keeps deduplicating.

    The driver's `reconcile` runs first (under the ledger lock), so shards of an interrupted run, which no ledger
    line commits, neither count nor stay."""
    if not out.exists():
        return
    with Ledger(out, SOURCE) as ledger:
        reconcile(out, SOURCE, ledger)
    for tar in sorted((out / "web_code").glob(f"{SOURCE}-*.tar")):
        for members in iter_members(tar):
            yield json.loads(members["json"])["meta"]["image_sha256"], members["__key__"]


def notebooks(root: Path) -> list[DocInput]:
    """Every .ipynb under `root` except Jupyter's autosave copies in `.ipynb_checkpoints/`."""
    return [d for d in discover(root, (".ipynb",)) if ".ipynb_checkpoints" not in Path(d.origin).parts]


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(notebook.NotebookConfig, args)
    if args.keep_magics:
        cfg = replace(cfg, keep_magics=True)
    if args.all_kernels:
        cfg = replace(cfg, languages=[])
    if not args.input.exists():
        raise SystemExit(f"error: input {args.input} does not exist")
    import ray

    init_ray(args.address, args.num_cpus)
    registry = ray.remote(ImageRegistry).options(num_cpus=0).remote()
    ray.get(registry.claim.remote(list(committed_images(args.out))))
    stage = replace(STAGE, config=cfg, make_runner=functools.partial(DedupRunner, registry=registry))
    run_job(stage, notebooks(args.input), args)
    return 0
