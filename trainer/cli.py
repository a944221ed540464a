"""`vlcorpus train [--config run.yaml] [flags]`: one `RunConfig` (trainer/config.py) from a YAML file, flags on top,
read by the project's strict loader; then the stages in this process or on `--workers` Ray Train workers."""

from __future__ import annotations

import argparse
import json
import os

from trainer.config import RunConfig, load_stages
from trainer.train import run_stages
from vlcorpus.config import load_config

COMMAND = ("train",)
HELP = "train the DeepSeek-VL-style model through the stage schedule(s) on a mixture"

# flag -> RunConfig key (dotted for the model's settings); a flag left out keeps the file's value or the default
FLAGS = {
    "mix": "mix", "tokenizer": "tokenizer", "out": "out", "preset": "model.preset", "pretrained": "model.pretrained",
    "vision_pretrained": "model.vision_pretrained", "high_res_pretrained": "model.high_res_pretrained",
    "llm_pretrained": "model.llm_pretrained", "attn": "model.attn_implementation", "schedule": "schedules",
    "overrides": "stage_overrides", "scale": "scale", "max_seq_len": "max_seq_len",
    "micro_batch_size": "micro_batch_size", "seed": "seed", "device": "device", "compile": "compile",
    "activation_checkpointing": "activation_checkpointing", "num_workers": "num_workers",
    "ckpt_interval": "ckpt_interval", "keep_checkpoints": "keep_checkpoints", "eval_dir": "eval_dir",
    "eval_items": "eval_items", "eval_interval": "eval_interval", "stop_after": "stop_after", "workers": "workers",
    "fsdp": "fsdp",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="RunConfig YAML (keys of trainer.config.RunConfig); flags below override it")
    p.add_argument("--schedule", action="append", help="stage name (stage1..3) or YAML; repeat (default: all three)")
    p.add_argument("--mix", help="mixture folder or s3:// / gs:// prefix (<mix>/<stage>/mixture.json + <category>/*.tar)")
    p.add_argument("--tokenizer", help="local HF tokenizer directory (from scratch; a --pretrained bundle has its own)")
    p.add_argument("--out", help="run folder or s3:// / gs:// prefix (checkpoints, metrics, final bundles)")
    p.add_argument("--preset", help="tiny | small | deepseek-vl-1.3b")
    p.add_argument("--pretrained", help="DeepseekVL(Hybrid) bundle (local folder or s3:// / gs:// prefix) to start the first stage from")
    p.add_argument("--vision-pretrained", help="local SigLIP vision model directory")
    p.add_argument("--high-res-pretrained", help="local SAM vision model directory")
    p.add_argument("--llm-pretrained", help="local LLaMA-layout language model directory")
    p.add_argument("--attn", help="sdpa | flex_attention | flash_attention_2 | flash_attention_3 | eager")
    p.add_argument("--scale", type=float, help="multiplies every stage's steps, warm-ups and batch size")
    p.add_argument("--max-seq-len", type=int, help="cap every stage's sequence length (text tokens)")
    p.add_argument("--micro-batch-size", type=int, help="rows per forward pass (gradient accumulation above it)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the language model")
    p.add_argument("--activation-checkpointing", action="store_true", default=None)
    p.add_argument("--num-workers", type=int, help="DataLoader workers per category stream")
    p.add_argument("--ckpt-interval", type=int, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", type=int, help="how many checkpoints to keep (the newest)")
    p.add_argument("--eval", dest="eval_dir", help="held-out corpus/mixture folder: evaluate after each stage")
    p.add_argument("--eval-items", type=int)
    p.add_argument("--eval-interval", type=int, help="also evaluate every N steps (metrics and curves)")
    p.add_argument("--stop-after", type=int, help="stop each stage after this many steps (resume later)")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP); 1 trains in this process")
    p.add_argument("--fsdp", action="store_true", default=None, help="with --workers: shard the model (FSDP2)")
    p.add_argument("--set", dest="overrides", action="append", help="stage override: key=value (every stage) or NAME:key=value (stage NAME only)")


def run_config(args: argparse.Namespace) -> RunConfig:
    """The file, then the flags given, through the strict loader (a value is JSON, so a path stays a string)."""
    given = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    return load_config(RunConfig, args.config, given)


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
        print(json.dumps({k: v for k, v in s.items() if k != "stage_config"}))
    return 0
