"""Every GPU check of the trainer in one run: `pytest -m gpu`, then stage 2 with packing measured next to the bare
transformers models doing the same work.

    python benchmarks/train_gpu.py --device cuda --preset small --seq-len 4096 --out benchmarks/train_gpu_small.json
    python benchmarks/train_gpu.py --device cpu --preset tiny --seq-len 256 --steps 10 --warmup 2 --threads 1  # CPU smoke

1. `pytest -m gpu` on the trainer tests (packing on CUDA: sdpa -> flex attention, flash attention with cu_seqlens,
   a bf16 stage with evaluation, flex attention's q/k/v dtypes under bf16 autocast); skipped without CUDA.
2. The trainer (`trainer.train.train_stage`: the real loop, DataLoader workers, prefetch thread) on a synthetic
   stage-2 mixture, grouped steps and mixed batches; its metrics.jsonl gives per-step tokens/s, modality, data wait.
3. A bare `LlamaForCausalLM` of the trainer's LLM config (untied head as DeepSeek-LLM's, same attention kernel) on the trainer's own
   packed language micro-batches, pre-collated (it never waits on data), and a bare
   `DeepseekVLHybridForConditionalGeneration` (same config, same frozen towers) on its multimodal micro-batches;
   both with the same bf16 autocast, fused AdamW and clipping.
4. MFU: 6·N + 12·L·d·T FLOPs per token (N: LLM parameters without embeddings, plus the LM head; nanoGPT's estimate,
   attention as if unpacked) against the bf16 peak (measured matmul, and the data-sheet figure where known).

5. Flex attention (packed rows, the documents as a block mask) against SDPA on the same rows with no mask (its
   causal kernel: the upper bound) on the bare LLaMA, bf16 autocast: flex must not fall back to fp32.
6. Resume memory (`benchmarks/resume_memory.py`, the whole preset): CUDA and CPU peaks of reading a stage-3
   checkpoint above a fresh start holding the same optimizer state, and of the old full `torch.load`.

Targets: language steps >= 90% of the bare LLaMA, MFU >= 40% of the bf16 peak, data wait < 5%; flex >= 50% of SDPA's
causal kernel; resume adds < 10% of the model's bytes on the GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from trainer.config import ATTENTION, PRESETS, ModelConfig, RunConfig, StageConfig, load_stage
from trainer.data import Encoder, StepBatcher, Tally, read_mixture
from trainer.model import (
    attention,
    build_model,
    image_processor,
    image_token_count,
    llm_parameter_count,
    set_trainable,
)
from trainer.synthetic import make_mixture
from trainer.tokenizer import chat_format, corpus_texts, load_tokenizer, train_tokenizer
from trainer.train import train_stage

ROOT = Path(__file__).parents[1]

BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}  # dense bf16, data sheets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, n: int, iters: int) -> float:
    """Measured dense matmul FLOP/s (bf16 on CUDA, fp32 on CPU)."""
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


def pytest_gpu() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
           "tests/test_trainer.py", "tests/test_trainer_geometry.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


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
    def by(mod: str) -> list[dict]:
        return [m for m in steady if m["modality"] == mod]

    def tps(ms: list[dict]) -> float | None:
        return sum(m["tokens"] for m in ms) / sum(m["step_s"] for m in ms) if ms else None

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
        "realised_shares": metrics[-1]["realised_shares"],
    }


def batches(mix: Path, enc: Encoder, share: float, rows: int, micro: int, steps: int,
            varlen: bool) -> list[tuple[list[dict], int]]:
    """The trainer's own packed micro-batches of one modality (share 1.0: language, 0.0: multimodal), each step with
    its token count (padding left out, as the trainer counts)."""
    b = StepBatcher(read_mixture(mix, "stage2"), enc, seed=0, batch_size=rows, micro_batch_size=micro, packing=True,
                    target_share=share, modality_warmup_steps=0, varlen=varlen)
    tally, out = Tally(), []
    for s in range(steps):
        batch = b.next_batch(s, tally)
        b.record(tally, s, batch.modality, batch.counts(b.categories))
        out.append((batch.micro, batch.tokens))
    return out


def run_bare(model: torch.nn.Module, stream: list[tuple[list[dict], int]], device: torch.device, compile_: bool,
             warmup: int) -> dict:
    """A plain loop over pre-collated micro-batches: forward, backward, clip, fused AdamW step."""
    if compile_:
        (model.model.language_model if hasattr(model.model, "language_model") else model.model).compile()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    tokens, elapsed = 0, 0.0
    for i, (micro, step_tokens) in enumerate(stream):
        sync(device)
        t = time.perf_counter()
        n_target = max(int(sum((m["labels"] != -100).sum() for m in micro)), 1)
        for mb in micro:
            mb = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in mb.items()}
            with autocast:
                loss = model(**mb, num_items_in_batch=n_target, use_cache=False).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            elapsed += time.perf_counter() - t
            tokens += step_tokens
    return {"tokens_per_s": tokens / elapsed, "steps_measured": len(stream) - warmup}


def replace_attn(text_config, attn: str):
    """The LLM config as the VL model runs it (its attention kernel while packing)."""
    cfg = text_config.__class__(**text_config.to_dict())
    cfg._attn_implementation = attn
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--preset", default="small", choices=PRESETS)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rows", type=int, default=8, help="packed rows per optimizer step")
    p.add_argument("--micro", type=int, default=4, help="rows per forward pass")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the averages")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--samples", type=int, default=400, help="synthetic samples per category")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attn", default="sdpa", choices=ATTENTION)
    p.add_argument("--threads", type=int, help="torch CPU threads (a shared CPU box: 1 avoids OpenMP contention)")
    p.add_argument("--skip-pytest", action="store_true")
    p.add_argument("--out", default=None, help="write the results JSON here")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "preset": args.preset,
                    "attn": args.attn, "compile": args.compile, "seq_len": args.seq_len, "rows_per_step": args.rows,
                    "micro_rows": args.micro}
    if device.type == "cuda" and not args.skip_pytest:
        result["pytest_gpu"] = pytest_gpu()
        print(json.dumps(result["pytest_gpu"]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mix = make_mixture(tmp / "mix", samples_per_category=args.samples, shard_samples=50, max_words=600,
                           stages={"stage2": {"caption": 0.1, "doc_ocr": 0.1, "web_code": 0.1, "text": 0.7}})
        tok_dir = make_tokenizer(mix, tmp / "tok", args.vocab)
        base = load_stage("stage2", [f"steps={args.steps}", f"batch_size={args.rows}", f"seq_len={args.seq_len}",
                                     "warmup_steps=2", "modality_warmup_steps=0"])
        run = dict(mix=str(mix), tokenizer=str(tok_dir), device=args.device, micro_batch_size=args.micro,
                   num_workers=args.num_workers, compile=args.compile, ckpt_interval=10**9, seed=0,
                   model=ModelConfig(preset=args.preset, attn_implementation=args.attn))
        grouped = run_trainer(RunConfig(out=str(tmp / "grouped"), **run), base, args.warmup)
        mixed = run_trainer(RunConfig(out=str(tmp / "mixed"), **run), replace(base, grouped=False), args.warmup)

        tok = load_tokenizer(tok_dir)
        torch.manual_seed(0)
        vl = build_model(ModelConfig(preset=args.preset, attn_implementation=args.attn), tok, packing=True, device=device)
        n_llm, config = llm_parameter_count(vl), vl.config
        enc = Encoder(tok, chat_format(tok), image_token_count(config), image_processor(config), args.seq_len)
        varlen = args.attn.startswith("flash_attention")
        language = batches(mix, enc, 1.0, args.rows, args.micro, args.steps, varlen)
        multimodal = batches(mix, enc, 0.0, args.rows, args.micro, args.steps, varlen)
        llm_attn = attention(config, args.attn, True, device)["text_config"]
        text_config = replace_attn(config.text_config, llm_attn)
        llama = LlamaForCausalLM._from_config(text_config, attn_implementation=llm_attn, dtype=torch.float32).to(device)
        bare_llama = run_bare(llama, language, device, args.compile, args.warmup)
        del llama
        sdpa_config = replace_attn(config.text_config, "sdpa")
        llama = LlamaForCausalLM._from_config(sdpa_config, attn_implementation="sdpa", dtype=torch.float32).to(device)
        unmasked = [([{k: v for k, v in mb.items() if k != "position_ids"} for mb in micro], n) for micro, n in language]
        bare_sdpa_causal = run_bare(llama, unmasked, device, args.compile, args.warmup)
        del llama
        set_trainable(vl, list(base.trainable))
        bare_vl = run_bare(vl.to(device), multimodal, device, args.compile, args.warmup)
        del vl
        if device.type == "cuda":
            from benchmarks.resume_memory import compare

            resume_memory = compare(args.preset, False, "cuda", tmp / "resume")

    measured = matmul_peak(device, 8192 if device.type == "cuda" else 1024, 50 if device.type == "cuda" else 10)
    nominal = next((v for k, v in BF16_PEAK.items() if k in result["device"]), None)
    fpt = 6 * n_llm + 12 * config.text_config.num_hidden_layers * config.text_config.hidden_size * args.seq_len
    def mfu(tps: float | None, peak: float | None) -> float | None:
        return tps * fpt / peak if tps and peak else None

    result.update({
        "llm_params_non_embedding_plus_head": n_llm, "matmul_peak_tflops": measured / 1e12,
        "datasheet_bf16_peak_tflops": nominal / 1e12 if nominal else None,
        "trainer_grouped": grouped, "trainer_mixed": mixed, "bare_llama": bare_llama, "bare_deepseek_vl_hybrid": bare_vl,
        "bare_llama_sdpa_causal_unpacked": bare_sdpa_causal,
        "packed_llm_kernel_vs_sdpa_causal": bare_llama["tokens_per_s"] / bare_sdpa_causal["tokens_per_s"],
        "language_vs_bare_llama": grouped["language_tokens_per_s"] / bare_llama["tokens_per_s"],
        "multimodal_vs_bare_vl": (grouped["multimodal_tokens_per_s"] or 0) / bare_vl["tokens_per_s"],
        "mfu_language_steps_measured_peak": mfu(grouped["language_tokens_per_s"], measured),
        "mfu_language_steps_datasheet_peak": mfu(grouped["language_tokens_per_s"], nominal),
        "mfu_bare_llama_measured_peak": mfu(bare_llama["tokens_per_s"], measured),
        "grouped_over_mixed": grouped["tokens_per_s"] / mixed["tokens_per_s"],
    })
    peak_mfu = result["mfu_language_steps_datasheet_peak"] or result["mfu_language_steps_measured_peak"]
    result["targets"] = {
        "language steps >= 90% of bare LLaMA": result["language_vs_bare_llama"] >= 0.9,
        "MFU >= 40% of bf16 peak": peak_mfu >= 0.4,
        "data wait < 5%": grouped["data_wait_fraction"] < 0.05,
        "pytest -m gpu passed": result.get("pytest_gpu", {}).get("returncode") == 0 if device.type == "cuda" else None,
        "packed kernel >= 50% of SDPA causal": result["packed_llm_kernel_vs_sdpa_causal"] >= 0.5,
    }
    if device.type == "cuda":
        result["resume_memory"] = resume_memory
        extra = resume_memory["cuda_peak_above_start_bytes_resume_minus_fresh"]
        result["targets"]["resume adds < 10% of the model on the GPU"] = extra < 0.1 * resume_memory["fresh"]["model_bytes"]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
