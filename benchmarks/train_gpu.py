"""Stage-2 training speed: the trainer (packing, modality-grouped steps) next to a bare transformers LLaMA of the
same LLM size on the same token stream, plus MFU, data-wait fraction and grouped-vs-mixed batches.

    python benchmarks/train_gpu.py --device cuda --preset small --seq-len 4096      # the GPU measurement
    python benchmarks/train_gpu.py --device cpu --preset tiny --seq-len 512          # the CPU smoke version

Everything runs through `trainer.train.train_stage` (the real loop, DataLoader workers and all) on a synthetic
stage-2 mixture written here; its metrics.jsonl gives per-step tokens/s, modality and data wait. The bare LLaMA
gets the language micro-batches of the same stream, pre-collated (so it never waits on data), and the same
bf16 autocast / fused AdamW / SDPA settings. MFU counts 6·N + 12·L·d·T FLOPs per token (N: LLM parameters without
embeddings, plus the LM head; nanoGPT's estimate, attention as if unpacked) against a measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from trainer.config import ModelConfig, RunConfig, StageConfig, load_stage
from trainer.data import Encoder, StepBatcher, read_mixture
from trainer.model import (
    build_model,
    image_processor,
    image_token_count,
    llm_parameter_count,
)
from trainer.synthetic import make_mixture
from trainer.tokenizer import corpus_texts, load_tokenizer, special_ids, train_tokenizer
from trainer.train import train_stage

SCHEDULE = Path(__file__).parents[1] / "trainer" / "schedules" / "stage2.yaml"


def matmul_peak(device: torch.device, n: int, iters: int) -> float:
    """Measured dense matmul FLOP/s (bf16 on CUDA, fp32 on CPU): the ceiling MFU is quoted against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(cfg, n_params: int, seq_len: int) -> float:
    return 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def make_tokenizer(mix: Path, out: Path, vocab: int) -> Path:
    """BPE on the synthetic text, padded with unused tokens to `vocab` so the LM head has its real size."""
    tok = train_tokenizer(corpus_texts(mix), vocab, out)
    tok.add_tokens([f"<unused_{i}>" for i in range(vocab - len(tok))])
    tok.save_pretrained(str(out))
    return out


def run_trainer(run: RunConfig, stage: StageConfig, warmup: int) -> dict:
    train_stage(run, stage, None)
    metrics = [json.loads(x) for x in (Path(run.out) / stage.name / "metrics.jsonl").read_text().splitlines()]
    steady = metrics[warmup:]
    by = lambda mod: [m for m in steady if m["modality"] == mod]  # noqa: E731
    tps = lambda ms: sum(m["tokens"] for m in ms) / sum(m["step_s"] for m in ms) if ms else None  # noqa: E731
    return {
        "steps_measured": len(steady),
        "tokens_per_s": tps(steady),
        "language_tokens_per_s": tps(by("language")),
        "multimodal_tokens_per_s": tps(by("multimodal")),
        "mixed_tokens_per_s": tps(by("mixed")),
        "data_wait_fraction": sum(m["data_wait_s"] for m in steady) / sum(m["step_s"] for m in steady),
        "median_step_s": statistics.median(m["step_s"] for m in steady),
        "language_steps": len(by("language")),
        "multimodal_steps": len(by("multimodal")),
    }


def run_bare(batches: list[list[dict]], text_config, device: torch.device, compile_: bool, warmup: int,
             attn: str) -> dict:
    """A LlamaForCausalLM with the trainer's LLM config (tied head, as the VL model), on the same packed batches."""
    torch.manual_seed(0)
    text_config.tie_word_embeddings = True
    model = LlamaForCausalLM._from_config(text_config, attn_implementation=attn, dtype=torch.float32).to(device)
    if compile_:
        model.model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    tokens = 0
    elapsed = 0.0
    for i, micro in enumerate(batches):
        sync(device)
        t = time.perf_counter()
        n_target = max(int(sum((m["labels"] != -100).sum() for m in micro)), 1)
        for mb in micro:
            mb = {k: v.to(device, non_blocking=True) for k, v in mb.items()}
            with autocast:
                loss = model(**mb, num_items_in_batch=n_target, use_cache=False).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            elapsed += time.perf_counter() - t
            tokens += sum(m["input_ids"].numel() for m in micro)
    return {"tokens_per_s": tokens / elapsed, "steps_measured": len(batches) - warmup}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--preset", default="small")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rows", type=int, default=8, help="packed rows per optimizer step")
    p.add_argument("--micro", type=int, default=4, help="rows per forward pass")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the averages")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--samples", type=int, default=400, help="synthetic samples per category")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attn", default="sdpa", help="sdpa | flash_attention_2 | eager")
    p.add_argument("--out", default=None, help="write the results JSON here")
    args = p.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mix = make_mixture(tmp / "mix", samples_per_category=args.samples, shard_samples=50, max_words=600,
                           stages={"stage2": {"caption": 0.1, "doc_ocr": 0.1, "web_code": 0.1, "text": 0.7}})
        tok_dir = make_tokenizer(mix, tmp / "tok", args.vocab)
        base = load_stage(SCHEDULE, [f"steps={args.steps}", f"batch_size={args.rows}", f"seq_len={args.seq_len}",
                                     "warmup_steps=2", "modality_warmup_steps=0"])
        run = dict(mix=str(mix), tokenizer=str(tok_dir), model=ModelConfig(preset=args.preset, attn_implementation=args.attn), device=args.device,
                   micro_batch_size=args.micro, num_workers=args.num_workers, compile=args.compile,
                   ckpt_interval=10**9, seed=0)
        grouped = run_trainer(RunConfig(out=str(tmp / "grouped"), **run), base, args.warmup)
        base.grouped = False
        mixed = run_trainer(RunConfig(out=str(tmp / "mixed"), **run), base, args.warmup)

        tok = load_tokenizer(tok_dir)
        model = build_model(ModelConfig(preset=args.preset), tok)
        n_llm = llm_parameter_count(model)
        text_config = model.config.text_config
        enc = Encoder(tok, special_ids(tok), image_token_count(model.config), image_processor(model.config), args.seq_len)
        del model
        batcher = StepBatcher(read_mixture(mix, "stage2"), enc, seed=0, batch_size=args.rows, micro_batch_size=args.micro,
                              seq_len=args.seq_len, packing=True, target_share=1.0, modality_warmup_steps=0)
        stream = [batcher.next_batch(s).micro for s in range(args.steps)]
        bare = run_bare(stream, text_config, device, args.compile, args.warmup, args.attn)

    peak = matmul_peak(device, 8192 if device.type == "cuda" else 1024, 50 if device.type == "cuda" else 10)
    fpt = flops_per_token(text_config, n_llm, args.seq_len)
    mfu = lambda tps: tps * fpt / peak if tps else None  # noqa: E731
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "preset": args.preset, "attn": args.attn, "compile": args.compile, "seq_len": args.seq_len, "rows_per_step": args.rows, "micro_rows": args.micro,
        "llm_params_non_embedding_plus_head": n_llm, "matmul_peak_tflops": peak / 1e12,
        "trainer_grouped": grouped, "trainer_mixed": mixed, "bare_llama": bare,
        "language_vs_bare": grouped["language_tokens_per_s"] / bare["tokens_per_s"],
        "mfu_overall_llm_flops": mfu(grouped["tokens_per_s"]),
        "mfu_language_steps": mfu(grouped["language_tokens_per_s"]),
        "mfu_bare": mfu(bare["tokens_per_s"]),
        "grouped_over_mixed": grouped["tokens_per_s"] / mixed["tokens_per_s"],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
