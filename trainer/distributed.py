"""`vlcorpus train --workers N`: the same stage loop on N Ray Train workers (TorchTrainer, DDP or FSDP2).

Ray Train starts the workers and the process group (NCCL on GPUs, gloo on CPUs); each worker runs
`trainer.train.run_stages`, which sees the process group and wraps the model. Data reading stays plain webdataset
(split by rank through torch.distributed), so this is the only trainer module that imports Ray.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from trainer.config import RunConfig, StageConfig
from trainer.train import run_stages
from vlcorpus.config import from_dict
from vlcorpus.runtime import init_ray


def _worker(config: dict) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stages(from_dict(RunConfig, config["run"]), [from_dict(StageConfig, s) for s in config["stages"]])


def scaling_config(run: RunConfig):
    """One GPU per worker for `--device cuda`, or for `auto` when the cluster has GPUs: decided from the cluster's
    resources, never from the driver's own `torch.cuda` (the head of `ray_cluster.yaml` has no GPU). On an
    autoscaling cluster whose GPU nodes are not up yet, `auto` sees none: ask for `--device cuda`."""
    import ray
    from ray.train import ScalingConfig

    use_gpu = run.device == "cuda" or (run.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    return ScalingConfig(num_workers=run.workers, use_gpu=use_gpu)


def launch(run: RunConfig, stages: list[StageConfig], address: str | None = None) -> list[dict]:
    """Train on `run.workers` Ray Train workers; return the stage summaries rank 0 wrote."""
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(address)
    absolute = {k: str(Path(v).resolve()) for k in ("mix", "out", "tokenizer", "eval_dir") if (v := getattr(run, k))}
    run = replace(run, **absolute)  # Ray workers run in their own working directory
    if run.model.pretrained:
        run = replace(run, model=replace(run.model, pretrained=str(Path(run.model.pretrained).resolve())))
    scaling = scaling_config(run)
    out = Path(run.out).resolve()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"run": asdict(run), "stages": [asdict(s) for s in stages]},
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RayRunConfig(name="train", storage_path=str(out / "_ray")),
    )
    trainer.fit()
    summaries = []
    for stage in stages:
        path = out / stage.name / "summary.json"
        if path.exists():
            summaries.append(json.loads(path.read_text()))
    return summaries
