"""The three-stage DeepSeek-VL schedule: one loop that reads top to bottom (nanoGPT's train.py, around transformers'
model). `vlcorpus train` is `trainer/cli.py`; `--workers N` runs `run_stages` on Ray Train workers
(`trainer/distributed.py`), each of which sees the process group and wraps the model in DDP or FSDP2.

Each stage starts from the previous stage's `final/` bundle, trains the parameter groups its schedule names,
checkpoints to `<out>/<stage>/ckpt/step-NNNNNNNN/` (written in a temporary folder, then renamed; the last
`keep_checkpoints` kept) and resumes from the newest one when re-run. A finished stage (its `summary.json`) is skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from trainer import checkpoint, store
from trainer.config import ModelConfig, RunConfig, StageConfig
from trainer.data import OVER_BUDGET, Encoder, StepBatcher, Tally, read_mixture
from trainer.model import (
    build_model,
    has_processor,
    has_tokenizer,
    image_token_count,
    load_processor,
    new_processor,
    save_bundle,
    set_trainable,
)
from trainer.tokenizer import chat_format, load_tokenizer
from vlcorpus import storage
from vlcorpus.config import ConfigError
from vlcorpus.shards import atomic_write_json, fsync_dir

log = logging.getLogger("trainer")
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # FSDP: gathered to rank 0, a collective


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


@dataclass
class StageRun:
    """Everything one stage trains with, on this rank."""

    run: RunConfig
    stage: StageConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    raw: torch.nn.Module  # the model itself (FSDP shards it in place; DDP wraps it)
    model: torch.nn.Module  # what the loop calls: raw, or its DDP wrapper
    processor: object
    encoder: Encoder
    fsdp: bool
    resume: Path | None  # the checkpoint folder the stage continues from (its weights already loaded)
    trainable: list[torch.nn.Parameter] | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()


# --- checkpoints ---------------------------------------------------------------------------------------------------


def save_checkpoint(st: StageRun, step: int, data_state: dict, tally: Tally) -> None:
    """Every rank writes its data position and RNG and its shards of the model and optimizer (`trainer.checkpoint`),
    rank 0 the scheduler and `state.json`, all into a temporary folder that rank 0 renames to `step-N` once complete;
    only the last `keep_checkpoints` stay."""
    ckpt = st.out / "ckpt"
    tmp = ckpt / f".step-{step:08d}.tmp"
    if st.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    st.barrier()
    checkpoint.save_rank(tmp, st.rank, {"data": data_state, "tally": tally.state_dict(),
                                        "rng": checkpoint.rng_state(), "step": step})
    hyper = checkpoint.save_tensors(tmp, st.model, st.optimizer)
    if st.rank == 0:
        atomic_write_json(tmp / checkpoint.STATE, {"optimizer": hyper, "scheduler": st.scheduler.state_dict(),
                                                   "step": step, "run": asdict(st.run), "stage": asdict(st.stage)})
    st.barrier()
    if st.rank == 0:
        checkpoint.fsync_tree(tmp)
        final = ckpt / f"step-{step:08d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(ckpt)
        for old in sorted(ckpt.glob("step-*"))[: -st.run.keep_checkpoints]:
            shutil.rmtree(old)
        store.push_checkpoint(st.run.out, st.stage.name, final, st.run.keep_checkpoints)


# --- one stage, top to bottom --------------------------------------------------------------------------------------


def open_stage(run: RunConfig, stage: StageConfig, init_from: str | None) -> StageRun:
    """Tokenizer, processor and model (from `init_from`'s bundle, or from scratch), the newest checkpoint's weights,
    the stage's trainable groups, and the DDP/FSDP wrapping."""
    rank, world = rank_world()
    device = pick_device(run)
    torch.manual_seed(run.seed)  # the same initial weights on every rank (FSDP shards them without a broadcast)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (frozen towers' heads, loss)
    out = store.local_root(run.out) / stage.name
    if rank == 0:
        store.pull_stage(run.out, stage.name)  # `out` on a store: its committed checkpoint, before any rank looks
    if world > 1:
        dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for stale in (out / "ckpt").glob(".step-*.tmp"):  # a checkpoint interrupted while written
            shutil.rmtree(stale)

    processor = load_processor(init_from) if has_processor(init_from) else None
    if processor is not None:  # a bundle: its own tokenizer, image processor and chat template
        tokenizer = processor.tokenizer
    else:  # new special tokens only from scratch
        tokenizer = load_tokenizer(init_from if has_tokenizer(init_from) else run.tokenizer, scratch=init_from is None)
    chat = chat_format(tokenizer)
    mcfg = ModelConfig(**{**asdict(run.model), "pretrained": init_from})
    model = build_model(mcfg, tokenizer, stage.packing, device)
    processor = processor or new_processor(model.config, tokenizer, chat)
    n_img = image_token_count(model.config)
    if stage.seq_len + n_img > model.config.text_config.max_position_embeddings:
        raise ConfigError(f"{stage.name}: seq_len {stage.seq_len} + {n_img} image tokens exceed the LLM's "
                          f"{model.config.text_config.max_position_embeddings} positions; lower seq_len")
    encoder = Encoder(tokenizer, chat, n_img, processor.image_processor, stage.seq_len)
    encoder.check_template(processor)

    set_trainable(model, stage.trainable)
    if run.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    raw, fsdp = model, run.fsdp and world > 1
    model = wrap(model, fsdp, world, run.compile)
    resume = checkpoint.latest_checkpoint(out / "ckpt")
    if resume is not None:  # in place, into the (sharded) parameters
        checkpoint.load_model(resume, model)
    return StageRun(run, stage, out, rank, world, device, raw, model, processor, encoder, fsdp, resume)


def wrap(model: torch.nn.Module, fsdp: bool, world: int, compile_: bool) -> torch.nn.Module:
    """FSDP2 (one shard group per decoder layer, the rest in the root group) or DDP over several ranks, then each
    decoder layer compiled on its own (the order of PyTorch's FSDP2 docs and torchtitan: FSDP's hooks stay outside
    the compiled regions, and the attention mask is built eagerly, so unpacked rows keep SDPA's causal kernels).

    A rank whose micro-batches hold no image leaves the towers' and adaptor's parameters without gradients while
    another rank's have them: DDP finds them (`find_unused_parameters`), FSDP2 reduce-scatters zeros for them, so
    every rank runs the same collectives."""
    layers = model.model.language_model.layers
    if fsdp:
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        model.set_reduce_scatter_unused_params(True)
    if compile_:
        for layer in layers:
            layer.compile()
    if world > 1 and not fsdp:
        return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    return model


def make_optimizer(st: StageRun) -> None:
    st.trainable = [p for p in st.model.parameters() if p.requires_grad]
    st.optimizer = torch.optim.AdamW(st.trainable, lr=st.stage.lr, betas=tuple(st.stage.betas),
                                     weight_decay=st.stage.weight_decay, fused=st.device.type == "cuda")
    st.scheduler = torch.optim.lr_scheduler.LambdaLR(st.optimizer, lambda s: lr_factor(s, st.stage))


def restore(st: StageRun) -> tuple[int, dict | None, Tally]:
    """Optimizer, scheduler, RNG and data position from the newest checkpoint: (step, data state, tally)."""
    if st.resume is None:
        return 0, None, Tally()
    own = checkpoint.read_rank(st.resume, st.rank)
    state = checkpoint.read_state(st.resume)
    checkpoint.load_optimizer(st.resume, st.raw, st.optimizer, state["optimizer"])
    st.scheduler.load_state_dict(state["scheduler"])
    checkpoint.set_rng_state(own["rng"])
    log.info("%s: resuming at step %d from %s", st.stage.name, state["step"], st.resume)
    return state["step"], own["data"], Tally.from_state(own["tally"])


def make_batcher(st: StageRun, data_state: dict | None) -> StepBatcher:
    rows = math.ceil(st.stage.batch_size / st.world)
    micro = min(st.run.micro_batch_size or rows, rows)
    varlen = st.run.model.attn_implementation.startswith("flash_attention")
    return StepBatcher(read_mixture(st.run.mix, st.stage.mix_stage), st.encoder, seed=st.run.seed, batch_size=rows,
                       micro_batch_size=micro, packing=st.stage.packing, target_share=st.stage.language_share,
                       modality_warmup_steps=st.stage.modality_warmup_steps, grouped=st.stage.grouped, varlen=varlen,
                       num_workers=st.run.num_workers, pin_memory=st.device.type == "cuda", world=st.world,
                       state=data_state)


def sum_over_ranks(st: StageRun, values: list[float]) -> list[float]:
    if st.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=st.device if st.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def train_step(st: StageRun, micro: list[dict], n_target: float) -> tuple[float, float, float]:
    """Forward/backward over the micro-batches, one optimizer step; (loss per target token over all ranks, grad
    norm, lr). Each rank's loss is divided by the step's target tokens over all ranks, times the world size because
    DDP/FSDP average gradients over ranks: every target token weighs the same, whatever rank holds it."""
    items = torch.tensor(max(n_target, 1.0) / st.world, device=st.device)
    losses = []
    for i, mb in enumerate(micro):
        mb = {k: v.to(st.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in mb.items()}
        sync = st.world == 1 or i == len(micro) - 1
        if st.fsdp:
            st.model.set_requires_gradient_sync(sync)
        with contextlib.nullcontext() if sync or st.fsdp else st.model.no_sync():
            with st.autocast:
                loss = st.model(**mb, num_items_in_batch=items, use_cache=False).loss
            if not loss.requires_grad:
                raise RuntimeError(f"{st.stage.name}: a micro-batch reaches no trainable parameter (it trains "
                                   f"{st.stage.trainable}; a stage that trains only the adaptor needs images)")
            loss.backward()
        losses.append(loss.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(st.trainable, st.stage.grad_clip)
    lr = st.scheduler.get_last_lr()[0]
    st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    total = torch.stack(losses).sum()
    if st.world > 1:
        dist.all_reduce(total)
    return total.item() / st.world, grad_norm.item(), lr  # the step's only host syncs


def evaluate_model(st: StageRun) -> dict:
    """The one call of `trainer.evaluate.evaluate` (during the stage and after it), on every rank: each scores its
    share of the items and texts, and all get the whole result. Under FSDP the root group (towers, adaptor,
    embeddings, LM head, which evaluation calls directly) is gathered for it; the decoder layers gather themselves."""
    from trainer.evaluate import Ranks, evaluate

    if st.fsdp:
        st.raw.unshard()
    try:
        return evaluate(st.raw, st.encoder, st.run.eval_dir, items=st.run.eval_items, seed=st.run.seed,
                        categories=eval_categories(st.run), ranks=Ranks(st.rank, st.world))
    finally:
        if st.fsdp:
            st.raw.reshard()


def eval_categories(run: RunConfig) -> tuple[str, ...] | None:
    return tuple(run.eval_categories) if run.eval_categories else None


def check_eval(run: RunConfig) -> None:
    """Build the evaluation set once before any training (no model needed): a held-out folder that cannot give what
    the run asks for stops the run now, not after a stage has trained; left-out categories are logged here."""
    from trainer.evaluate import EvalConfig, load_eval_set

    if run.eval_dir:
        load_eval_set(run.eval_dir, EvalConfig(items=run.eval_items, seed=run.seed, categories=eval_categories(run)))


class Metrics:
    """`metrics.jsonl`, TensorBoard and the progress bar on rank 0; `curves.png` at the end of the stage."""

    def __init__(self, st: StageRun, start: int):
        self.st, self.path = st, st.out / "metrics.jsonl"
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.rows = [m for m in map(json.loads, lines) if m["step"] < start]
        self.writer = self.progress = None
        if st.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            from vlcorpus.progress import progress as progress_bar

            self.path.write_text("".join(json.dumps(m) + "\n" for m in self.rows))
            self.writer = SummaryWriter(str(st.out / "tensorboard"), purge_step=start)
            self.progress = progress_bar(st.stage.steps, st.stage.name, unit="step", initial=start)

    def log(self, m: dict) -> None:
        if self.st.rank != 0:
            return
        self.rows.append(m)
        with self.path.open("a") as f:
            f.write(json.dumps(m) + "\n")
        name, step = self.st.stage.name, m["step"]
        for k in ("loss", "lr", "grad_norm", "language_share", "realised_language_share", "tokens_per_s", "data_wait_s"):
            self.writer.add_scalar(f"{name}/{k}", m[k], step)
        self.writer.add_scalar(f"{name}/loss_{m['modality']}", m["loss"], step)
        for c, v in m["realised_shares"]["units"].items():
            self.writer.add_scalar(f"{name}/share_{c}", v, step)
        for k, v in m.get("eval", {}).items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{name}/eval_{k}", v, step)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{m['loss']:.3f}", mod=m["modality"][:4], lr=f"{m['lr']:.2e}")

    def close(self) -> None:
        if self.st.rank == 0:
            self.progress.close()
            self.writer.close()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows, steps = self.rows, [m["step"] for m in self.rows]
        fig, axes = plt.subplots(1, 5, figsize=(24, 3.6))
        for mod, color in (("language", "tab:blue"), ("multimodal", "tab:orange"), ("mixed", "tab:green")):
            pts = [(m["step"], m["loss"]) for m in rows if m["modality"] == mod]
            if pts:
                axes[0].plot(*zip(*pts), ".-", color=color, label=mod, markersize=3)
        axes[0].set(title="loss per target token", xlabel="step")
        axes[0].legend()
        axes[1].plot(steps, [m["lr"] for m in rows])
        axes[1].set(title="learning rate", xlabel="step")
        axes[2].plot(steps, [m["language_share"] for m in rows], label="scheduled")
        axes[2].plot(steps, [m["realised_language_share"] for m in rows], label="realised")
        axes[2].set(title="language share (cumulative, mixture unit)", xlabel="step", ylim=(-0.05, 1.05))
        axes[2].legend()
        for c in sorted({c for m in rows for c in m["realised_shares"]["units"]}):
            axes[3].plot(steps, [m["realised_shares"]["units"].get(c, 0.0) for m in rows], label=c)
        axes[3].set(title="realised share per category", xlabel="step", ylim=(-0.05, 1.05))
        axes[3].legend(fontsize=7)
        evals = [(m["step"], m["eval"]) for m in rows if "eval" in m]
        for k in ("mc_acc", "mc_acc_norm", "bpb"):
            pts = [(s, e[k]) for s, e in evals if isinstance(e.get(k), (int, float)) and math.isfinite(e[k])]
            if pts:
                axes[4].plot(*zip(*pts), "o-", label=k, markersize=3)
        axes[4].set(title="evaluation (held-out)", xlabel="step")
        if evals:
            axes[4].legend()
        fig.suptitle(f"{self.st.stage.name} ({self.st.run.model.preset})")
        fig.tight_layout()
        fig.savefig(self.st.out / "curves.png", dpi=100)
        plt.close(fig)


def train_stage(run: RunConfig, stage: StageConfig, init_from: str | None) -> dict:
    """Train one stage to its `final/` bundle; return its summary."""
    st = open_stage(run, stage, init_from)
    make_optimizer(st)
    start, data_state, tally = restore(st)
    batcher = make_batcher(st, data_state)
    metrics = Metrics(st, start)
    end = stage.steps if run.stop_after is None else min(stage.steps, run.stop_after)
    languages = batcher.mixture.language

    st.model.train()
    batcher.start()
    if start < end:
        batcher.prefetch(start, tally)
    t0 = time.perf_counter()
    for step in range(start, end):
        batch, data_after = batcher.result()
        t_data = time.perf_counter()
        counts = sum_over_ranks(st, batch.counts(batcher.categories))
        batcher.record(tally, step, batch.modality, counts)
        if step + 1 < end:
            batcher.prefetch(step + 1, tally)  # the next batch is drawn from the tally up to this step
        loss, grad_norm, lr = train_step(st, batch.micro, counts[-2])
        t_end = time.perf_counter()
        m = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "modality": batch.modality,
             "language_share": batcher.share(step), "realised_language_share": tally.language_share(languages),
             "realised_shares": {"units": tally.shares(tally.units), "tokens": tally.shares(tally.tokens),
                                 "samples": tally.shares(tally.samples)},
             "tokens": counts[-1], "target_tokens": counts[-2], "samples": dict(batch.samples),
             "dropped": sum(tally.dropped.values()), "cut": sum(tally.cut.values()),
             "data_wait_s": t_data - t0, "step_s": t_end - t0, "tokens_per_s": counts[-1] / (t_end - t0)}
        if run.eval_dir and run.eval_interval and (step + 1) % run.eval_interval == 0:
            m["eval"] = evaluate_model(st)
        metrics.log(m)
        if (step + 1) % run.ckpt_interval == 0 or step + 1 == end:
            save_checkpoint(st, step + 1, data_after, tally)
        t0 = time.perf_counter()
    batcher.close()
    metrics.close()
    if end < stage.steps:
        log.info("%s: stopped after step %d as asked (stop_after); re-run to resume", stage.name, end)
        return {"stopped_at": end}
    return finish_stage(st, batcher, tally, metrics)


def finish_stage(st: StageRun, batcher: StepBatcher, tally: Tally, metrics: Metrics) -> dict:
    """The `final/` bundle, the curves, the evaluation and `summary.json`."""
    final = st.out / "final"
    mixture = batcher.mixture
    summary = {"stage": st.stage.name, "steps": st.stage.steps, "final": str(final), "unit": mixture.unit,
               "language_share_target": batcher.target,
               "realised_language_share": tally.language_share(mixture.language),
               "realised_shares": {"units": tally.shares(tally.units), "tokens": tally.shares(tally.tokens),
                                   "samples": tally.shares(tally.samples)},
               "mixture_ratios": mixture.ratios, "requested_ratios": mixture.requested,
               "samples_by_category": dict(tally.samples), "text_tokens_by_category": dict(tally.tokens),
               "dropped": {OVER_BUDGET: dict(tally.dropped)}, "cut_samples": dict(tally.cut),
               "steps_by_modality": dict(tally.steps), "chat_format": st.encoder.chat.name,
               "stage_config": asdict(st.stage)}
    model_state = get_model_state_dict(st.model, options=FULL_STATE) if st.fsdp else None
    if st.rank == 0:
        save_bundle(st.raw, st.processor, st.encoder.chat, final, state_dict=model_state)
        metrics.plot()
    if st.run.eval_dir:
        summary["eval"] = evaluate_model(st)
    if st.rank == 0:
        if st.run.eval_dir:
            with (store.local_root(st.run.out) / "eval.jsonl").open("a") as f:
                f.write(json.dumps({"stage": st.stage.name, **summary["eval"]}) + "\n")
        atomic_write_json(st.out / "summary.json", summary)
        store.push_final(st.run.out, st.stage.name)
    st.barrier()
    return summary


def run_stages(run: RunConfig, stages: list[StageConfig]) -> list[dict]:
    """Stages in order, each from the previous one's final bundle; finished stages are skipped."""
    run.check_paths()
    check_eval(run)
    if not sys.stderr.isatty():  # transformers' own bars (loading, saving weights) would be carriage-return frames
        transformers.utils.logging.disable_progress_bar()
    init_from = store.pretrained(run.model.pretrained)
    summaries = []
    for stage in stages:
        done = store.finished(run.out, stage.name)
        if done is not None:
            log.info("%s: already finished (%s); skipping", stage.name, storage.join(storage.location(run.out), stage.name))
            summaries.append(done)
        else:
            summary = train_stage(run, stage, init_from)
            summaries.append(summary)
            if "stopped_at" in summary:
                break
        init_from = store.final_bundle(run.out, stage.name)
    return summaries
