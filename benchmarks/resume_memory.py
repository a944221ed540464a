"""Peak memory of resuming a stage against a fresh start of it, each in its own process.

    python benchmarks/resume_memory.py --preset small --out /tmp/resume_mem      # CPU RSS, the whole small preset
    python benchmarks/resume_memory.py --preset small --device cuda --out ...    # GPU: torch.cuda.max_memory_allocated

A stage-3 checkpoint (aligner, SigLIP and LLM training: the largest optimizer state) is written after one step. Then,
each in its own process, the stage is opened (`open_stage`, `make_optimizer`) and, from there on, the peak resident
memory above that point is measured (Linux: VmHWM reset through /proc/self/clear_refs) while
- fresh: the optimizer state a resume holds is allocated (AdamW's two moments, zeros): what a first step allocates;
- resume: the checkpoint is read (`trainer.checkpoint.load_model`, `trainer.train.restore`: in place);
- legacy: the same state as one full `torch.load`ed dict, as the trainer did before (a second copy of everything).
`resume - fresh` is what loading costs on top of the state itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
SHAPE = {"vision": {"num_hidden_layers": 1},
         "high_res": {"num_hidden_layers": 1, "global_attn_indexes": [0], "hidden_size": 192, "num_attention_heads": 3,
                      "mlp_dim": 768},
         "llm": {"num_hidden_layers": 2}}  # the real geometry at a reduced depth (tests/test_trainer_geometry.py)


def _configs(work: Path, preset: str, reduced: bool, device: str):
    from trainer.config import ModelConfig, RunConfig, load_stage

    model = ModelConfig(preset=preset, shape=SHAPE if reduced else {})
    run = RunConfig(mix=str(work / "mix"), out=str(work / "run"), tokenizer=str(work / "tok"), model=model,
                    num_workers=0, ckpt_interval=1, seed=0, device=device)
    return run, load_stage("stage3", ["steps=2", "batch_size=1", "seq_len=128", "warmup_steps=1", "language_share=0.0"])


def prepare(work: Path, preset: str, reduced: bool, device: str) -> None:
    """The mixture, tokenizer and a checkpoint after one stage-3 step."""
    from dataclasses import replace

    from trainer.synthetic import make_mixture
    from trainer.tokenizer import corpus_texts, train_tokenizer
    from trainer.train import train_stage

    make_mixture(work / "mix", samples_per_category=4, shard_samples=4, max_words=40)
    train_tokenizer(corpus_texts(work / "mix"), 600, work / "tok")
    run, st = _configs(work, preset, reduced, device)
    train_stage(replace(run, stop_after=1), st, None)


def _status(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def measure(work: Path, preset: str, reduced: bool, device: str, mode: str) -> dict:
    """In this process: open the stage without its checkpoint, then load it (or not) and report the peak memory
    above the point where loading starts."""
    from trainer import checkpoint
    from trainer.train import make_optimizer, open_stage, restore

    run, st_cfg = _configs(work, preset, reduced, device)
    ckpt = checkpoint.latest_checkpoint(Path(run.out) / st_cfg.name / "ckpt")
    run.out = str(work / f"open-{mode}")  # no checkpoint there: the model as a fresh start builds it
    st = open_stage(run, st_cfg, None)
    make_optimizer(st)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base = _status("VmRSS")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    if mode == "resume":
        checkpoint.load_model(ckpt, st.model)
        st.resume = ckpt
        assert restore(st)[0] == 1
    elif mode == "legacy":
        state = torch.load(work / "legacy.pt", map_location=device, weights_only=True)
        st.raw.load_state_dict(state["model"])
        st.optimizer.load_state_dict(state["optimizer"])
    else:
        for p in st.trainable:
            st.optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
    peak = _status("VmHWM")  # before the legacy dict is dropped: its copy is what the old resume held
    if mode == "resume":
        torch.save({"model": st.raw.state_dict(), "optimizer": st.optimizer.state_dict()}, work / "legacy.pt")
    state_bytes = sum(t.numel() * t.element_size() for s in st.optimizer.state.values() for t in s.values())
    out = {"rss_peak_above_start_bytes": peak - base, "optimizer_state_bytes": state_bytes,
           "model_bytes": sum(p.numel() * p.element_size() for p in st.raw.parameters())}
    if device == "cuda":
        out["cuda_peak_above_start_bytes"] = torch.cuda.max_memory_allocated() - cuda_base
    return out


def compare(preset: str, reduced: bool, device: str, work: Path) -> dict:
    """Both measurements, each in a fresh interpreter (peak RSS is per process)."""
    prepare(work, preset, reduced, device)
    res = {}
    for mode in ("fresh", "resume", "legacy"):  # resume writes the legacy file
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.resume_memory import measure; "
                f"from pathlib import Path; print(json.dumps(measure(Path({str(work)!r}), {preset!r}, {reduced}, "
                f"{device!r}, {mode!r})))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{mode}: {proc.stderr[-3000:]}")
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("rss_peak_above_start_bytes", "cuda_peak_above_start_bytes"):
        if key in res["fresh"]:
            res[f"{key}_resume_minus_fresh"] = res["resume"][key] - res["fresh"][key]
            res[f"{key}_legacy_minus_fresh"] = res["legacy"][key] - res["fresh"][key]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--reduced", action="store_true", help="the real geometry at a reduced depth (the test's shape)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", help="work folder (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    print(json.dumps(compare(args.preset, args.reduced, args.device, work), indent=1))


if __name__ == "__main__":
    main()
