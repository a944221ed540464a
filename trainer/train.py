"""`vlcorpus train --schedule stage1.yaml [--schedule ...] --mix MIX --tokenizer TOK --out RUN`: the three-stage
DeepSeek-VL schedule, one loop that reads top to bottom (nanoGPT's train.py, around transformers' model).

Each stage starts from the previous stage's final model (`<out>/<stage>/final`, `save_pretrained`), trains the
parameter groups its schedule names, checkpoints to `<out>/<stage>/ckpt/state.pt` (model, optimizer, scheduler,
step, RNG, data position) and resumes from there when re-run. A finished stage (its `summary.json`) is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from trainer.config import (
    DEFAULT_SCHEDULES,
    ModelConfig,
    RunConfig,
    StageConfig,
    load_stage,
)
from trainer.data import Encoder, StepBatcher, read_mixture, realised_language_share
from trainer.model import (
    build_model,
    image_processor,
    image_token_count,
    load_trained,
    set_trainable,
)
from trainer.tokenizer import load_tokenizer, special_ids
from vlcorpus.shards import atomic_write_json

COMMAND = ("train",)
HELP = "train the DeepSeek-VL-style model through the stage schedule(s) on a mixture"

log = logging.getLogger("trainer")


def lr_factor(step: int, stage: StageConfig) -> float:
    """Linear warm-up, then cosine down to `min_lr_ratio` or DeepSeek-LLM's multi-step decay."""
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    if stage.lr_schedule == "step":
        passed = sum(step >= m * stage.steps for m in stage.step_milestones)
        return stage.step_factor**passed
    progress = min(1.0, (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps))
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(run: RunConfig) -> torch.device:
    if run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is visible")
    return torch.device(run.device)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # FSDP: gathered to rank 0, a collective


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, data_state: dict, run: RunConfig,
                    stage: StageConfig, fsdp: bool) -> None:
    """Rank 0 writes the model/optimizer state; every rank writes its own data position and RNG."""
    rank, _ = rank_world()
    path.mkdir(parents=True, exist_ok=True)
    own = {"data": data_state, "rng": rng_state(), "step": step}
    torch.save(own, path / f".rank{rank}.pt.tmp")
    os.replace(path / f".rank{rank}.pt.tmp", path / f"rank{rank}.pt")
    if fsdp:
        model_state = get_model_state_dict(model, options=FULL_STATE)
        optim_state = get_optimizer_state_dict(model, optimizer, options=FULL_STATE)
    else:
        model_state = (model.module if hasattr(model, "module") else model).state_dict()
        optim_state = optimizer.state_dict()
    if rank == 0:
        state = {"model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                 "step": step, "run": asdict(run), "stage": asdict(stage)}
        torch.save(state, path / ".state.pt.tmp")
        os.replace(path / ".state.pt.tmp", path / "state.pt")


def _micro_loss(model, mb: dict, n_target: int, autocast) -> torch.Tensor:
    with autocast:
        out = model(**mb, num_items_in_batch=n_target, use_cache=False)
    return out.loss


def _plot_curves(metrics: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for mod, color in (("language", "tab:blue"), ("multimodal", "tab:orange"), ("mixed", "tab:green")):
        pts = [(m["step"], m["loss"]) for m in metrics if m["modality"] == mod]
        if pts:
            axes[0].plot(*zip(*pts), ".-", color=color, label=mod, markersize=3)
    axes[0].set(title="loss per target token", xlabel="step")
    axes[0].legend()
    axes[1].plot(steps, [m["lr"] for m in metrics])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(steps, [m["language_share"] for m in metrics], label="scheduled")
    axes[2].plot(steps, [m["realised_language_share"] for m in metrics], label="realised")
    axes[2].set(title="language share", xlabel="step", ylim=(-0.05, 1.05))
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_stage(run: RunConfig, stage: StageConfig, init_from: str | None) -> dict:
    """Train one stage to its `final/` directory; return its summary."""
    rank, world = rank_world()
    device = pick_device(run)
    torch.manual_seed(run.seed)  # the same initial weights on every rank (FSDP shards them without a broadcast)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (frozen towers' heads, loss)
    out = Path(run.out) / stage.name
    ckpt_dir, final_dir = out / "ckpt", out / "final"
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(run.tokenizer)
    mcfg = ModelConfig(**{**asdict(run.model), "pretrained": init_from})
    model = build_model(mcfg, tokenizer)
    set_trainable(model, stage.trainable)
    if run.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)

    state = None
    if (ckpt_dir / "state.pt").exists():
        state = torch.load(ckpt_dir / "state.pt", map_location=device, weights_only=False)
        own = torch.load(ckpt_dir / f"rank{rank}.pt", weights_only=False)
        if own["step"] != state["step"]:
            raise ValueError(f"{ckpt_dir}: rank {rank} data state is at step {own['step']}, the model at "
                             f"{state['step']} (interrupted while checkpointing); remove ckpt/ to restart the stage")
        model.load_state_dict(state["model"])

    raw = model
    fsdp = run.fsdp and world > 1
    if run.compile:
        model.model.language_model.compile()
    if fsdp:  # one shard group per decoder layer, the rest (towers, adaptor, embeddings) in the root group
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        fully_shard(model)
    elif world > 1:  # frozen towers and language-only steps leave some trainable parameters without gradients
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.lr, betas=tuple(stage.betas), weight_decay=stage.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, stage))
    start, data_state = 0, None
    if state is not None:
        if fsdp:
            # strict=False: a trainable parameter that never had a gradient yet (the adaptor after only language
            # steps) has no AdamW state, in the checkpoint or in an uninterrupted run
            set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, data_state = state["step"], own["data"]
        set_rng_state(own["rng"])
        log.info("%s: resuming at step %d from %s", stage.name, start, ckpt_dir)

    rows = math.ceil(stage.batch_size / world)
    micro = min(run.micro_batch_size or rows, rows)
    encoder = Encoder(tokenizer, special_ids(tokenizer), image_token_count(raw.config), image_processor(raw.config),
                      stage.seq_len)
    batcher = StepBatcher(read_mixture(run.mix, stage.mix_stage), encoder, seed=run.seed, batch_size=rows,
                          micro_batch_size=micro, seq_len=stage.seq_len, packing=stage.packing,
                          target_share=stage.language_share, modality_warmup_steps=stage.modality_warmup_steps,
                          grouped=stage.grouped, num_workers=run.num_workers, pin_memory=device.type == "cuda",
                          state=data_state)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())

    metrics_path = out / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    metrics = [m for m in metrics if m["step"] < start]
    writer = progress = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        from vlcorpus.progress import progress as progress_bar

        metrics_path.write_text("".join(json.dumps(m) + "\n" for m in metrics))
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start)
        progress = progress_bar(stage.steps, stage.name, unit="step", initial=start)

    model.train()
    end = stage.steps if run.stop_after is None else min(stage.steps, run.stop_after)
    t0 = time.perf_counter()
    for step, batch, data_after in batcher.iterate(start, end):
        t_data = time.perf_counter()
        n_target = max(batch.target_tokens, 1)
        losses = []
        for i, mb in enumerate(batch.micro):
            mb = {k: v.to(device, non_blocking=True) for k, v in mb.items()}
            sync = world == 1 or i == len(batch.micro) - 1
            if fsdp:
                model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or fsdp else model.no_sync():
                loss = _micro_loss(model, mb, n_target, autocast)
                loss.backward()
            losses.append(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        loss_sum, grad_norm = torch.stack(losses).sum().item(), grad_norm.item()  # the step's only host sync
        t_end = time.perf_counter()
        if rank == 0:
            m = {"step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "modality": batch.modality,
                 "language_share": batcher.share(step), "realised_language_share": realised_language_share(data_after),
                 "tokens": batch.tokens * world, "target_tokens": batch.target_tokens,
                 "categories": dict(batch.categories), "data_wait_s": t_data - t0, "step_s": t_end - t0,
                 "tokens_per_s": batch.tokens * world / (t_end - t0)}
            metrics.append(m)
            with metrics_path.open("a") as f:
                f.write(json.dumps(m) + "\n")
            for k in ("loss", "lr", "grad_norm", "language_share", "realised_language_share", "tokens_per_s", "data_wait_s"):
                writer.add_scalar(f"{stage.name}/{k}", m[k], step)
            writer.add_scalar(f"{stage.name}/loss_{batch.modality}", loss_sum, step)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum:.3f}", mod=batch.modality[:4], lr=f"{lr:.2e}")
        if (step + 1) % run.ckpt_interval == 0 or step + 1 == end:
            save_checkpoint(ckpt_dir, model, optimizer, scheduler, step + 1, data_after, run, stage, fsdp)
        t0 = time.perf_counter()
    batcher.close()
    if rank == 0:
        progress.close()
        writer.close()
    if end < stage.steps:
        log.info("%s: stopped after step %d as asked (stop_after); re-run to resume", stage.name, end)
        return {"stopped_at": end}

    summary = {"stage": stage.name, "steps": stage.steps, "final": str(final_dir),
               "language_share_target": batcher.target,
               "realised_language_share": batcher.realised_language_share(),
               "steps_by_modality": dict(batcher.steps_by_modality), "samples_by_category": dict(batcher.consumed),
               "mixture_ratios": batcher.mixture.ratios, "ratio_source": batcher.mixture.ratio_source,
               "stage_config": asdict(stage)}
    model_state = get_model_state_dict(model, options=FULL_STATE) if fsdp else None
    if rank == 0:
        raw.save_pretrained(str(final_dir), state_dict=model_state)
        tokenizer.save_pretrained(str(final_dir))
        _plot_curves(metrics, out / "curves.png", f"{stage.name} ({run.model.preset})")
        if run.eval_dir:
            from trainer.evaluate import evaluate

            evaluated = load_trained(final_dir, run.model.attn_implementation).to(device) if fsdp else raw
            summary["eval"] = evaluate(evaluated, encoder, run.eval_dir, items=run.eval_items, seed=run.seed)
            with (Path(run.out) / "eval.jsonl").open("a") as f:
                f.write(json.dumps({"stage": stage.name, **summary["eval"]}) + "\n")
        atomic_write_json(out / "summary.json", summary)
    if world > 1:
        dist.barrier()
    return summary


def run_stages(run: RunConfig, stages: list[StageConfig]) -> list[dict]:
    """Stages in order, each from the previous one's final model; finished stages are skipped."""
    init_from = run.model.pretrained
    summaries = []
    for stage in stages:
        done = Path(run.out) / stage.name / "summary.json"
        if done.exists():
            log.info("%s: already finished (%s); skipping", stage.name, done)
            summaries.append(json.loads(done.read_text()))
        else:
            summary = train_stage(run, stage, init_from)
            summaries.append(summary)
            if "stopped_at" in summary:
                break
        init_from = str(Path(run.out) / stage.name / "final")
    return summaries


def load_stages(paths: list[str], overrides: list[str], run: RunConfig) -> list[StageConfig]:
    return [load_stage(p, overrides).scaled(run.scale, run.max_seq_len) for p in paths]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", action="append", help="stage YAML (repeat for several; default: all three stages)")
    p.add_argument("--mix", required=True, help="mixture folder (<mix>/<stage>/<category>/*.tar)")
    p.add_argument("--tokenizer", required=True, help="local HF tokenizer directory")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final models)")
    p.add_argument("--preset", default="tiny", help="tiny | small | deepseek-vl-1.3b")
    p.add_argument("--pretrained", help="local DeepseekVL(Hybrid) checkpoint directory to start stage 1 from")
    p.add_argument("--vision-pretrained", help="local SigLIP vision model directory")
    p.add_argument("--high-res-pretrained", help="local SAM vision model directory")
    p.add_argument("--llm-pretrained", help="local LLaMA-layout language model directory")
    p.add_argument("--attn", default="sdpa", help="attention kernel: sdpa | flash_attention_2 (needs flash-attn) | eager")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's steps, warm-ups and batch size")
    p.add_argument("--max-seq-len", type=int, help="cap every stage's sequence length")
    p.add_argument("--micro-batch-size", type=int, help="rows per forward pass (gradient accumulation above it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile the language model")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per category stream")
    p.add_argument("--ckpt-interval", type=int, default=100)
    p.add_argument("--eval", dest="eval_dir", help="held-out corpus/mixture folder: evaluate after each stage")
    p.add_argument("--eval-items", type=int, default=64)
    p.add_argument("--stop-after", type=int, help="stop each stage after this many steps (resume later)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP); 1 trains in this process")
    p.add_argument("--fsdp", action="store_true", help="with --workers: shard the model (FSDP2) instead of DDP")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="stage override key=value")


def run_config(args: argparse.Namespace) -> RunConfig:
    model = ModelConfig(preset=args.preset, pretrained=args.pretrained, vision_pretrained=args.vision_pretrained,
                        high_res_pretrained=args.high_res_pretrained, llm_pretrained=args.llm_pretrained,
                        attn_implementation=args.attn)
    return RunConfig(mix=args.mix, out=args.out, tokenizer=args.tokenizer, model=model, scale=args.scale,
                     max_seq_len=args.max_seq_len, micro_batch_size=args.micro_batch_size, seed=args.seed,
                     device=args.device, compile=args.compile, activation_checkpointing=args.activation_checkpointing,
                     num_workers=args.num_workers, ckpt_interval=args.ckpt_interval, eval_dir=args.eval_dir,
                     eval_items=args.eval_items, stop_after=args.stop_after, fsdp=args.fsdp)


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = run_config(args)
    paths = args.schedule or [str(p) for p in DEFAULT_SCHEDULES]
    stages = load_stages(paths, args.overrides, run)
    if args.workers > 1:
        from trainer.distributed import launch

        summaries = launch(run, stages, args.workers)
    else:
        summaries = run_stages(run, stages)
    for s in summaries:
        print(json.dumps({k: v for k, v in s.items() if k != "stage_config"}))
    return 0
