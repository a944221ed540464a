"""Control run: does the demo model use the pixels? The same three-stage training as a finished `vlcorpus run`,
on a copy of its mixtures where every image is replaced by uniform noise of the same size, evaluated on the same
held-out split (real images). Image-dependent items (the multimodal categories) should score lower than in the
real run; bits per byte on text-only data should not care.

    PYTHONPATH=$PWD python benchmarks/eval_control.py out/demo [--config e2e.yaml]

Writes OUT/control/{mix,train}, prints both runs' scores side by side and draws OUT/control/control.png.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from chain.run import E2EConfig
from trainer.config import SCHEDULE_DIR
from trainer.eval_plots import plot_results
from vlcorpus.cli import main as cli_main
from vlcorpus.config import load_config
from vlcorpus.shards import ShardWriter, read_shard, shard_paths


def noise_like(data: bytes, rng: np.random.Generator) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def noised_mixture(mix: Path, out: Path, seed: int = 0) -> None:
    """Every sample of every stage as it is, but each image is noise (PNG, same size); mixture.json copied."""
    rng = np.random.default_rng(seed)
    for stage in sorted(p for p in mix.iterdir() if (p / "mixture.json").exists()):
        for cat in sorted(p for p in stage.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            with ShardWriter(out / stage.name / cat.name, cat.name) as w:
                for shard in shard_paths(cat):
                    for s in read_shard(shard):
                        renamed = {n: n.rsplit(".", 1)[0] + ".png" for n in s.images}
                        s.images = {renamed[n]: noise_like(d, rng) for n, d in s.images.items()}
                        s.segments = [{**g, "image": renamed[g["image"]]} if "image" in g else g for g in s.segments]
                        w.write(s)
        shutil.copy(stage / "mixture.json", out / stage.name / "mixture.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="a finished `vlcorpus run` folder (mix/, tokenizer/, split/, train/)")
    p.add_argument("--config", type=Path, default=Path("e2e.yaml"), help="the run's config (its train settings)")
    args = p.parse_args()
    cfg = load_config(E2EConfig, args.config, [f"out={args.out}"])
    control = args.out / "control"
    if not (control / "mix").exists():
        noised_mixture(args.out / "mix", control / ".mix.partial")
        (control / ".mix.partial").rename(control / "mix")
    t = cfg.train
    argv = ["train", "--mix", str(control / "mix"), "--tokenizer", str(args.out / "tokenizer"), "--out",
            str(control / "train"), "--preset", t.model.preset, "--device", t.device, "--scale", str(t.scale),
            "--eval", str(args.out / "split" / "heldout"), "--eval-items", str(t.eval_items), "--num-workers",
            str(t.num_workers), "--ckpt-interval", str(t.ckpt_interval)]
    argv += [a for s in cfg.stages for a in ("--schedule", str(SCHEDULE_DIR / f"{s}.yaml"))]
    argv += (["--max-seq-len", str(t.max_seq_len)] if t.max_seq_len else []) + [a for o in t.stage_overrides for a in ("--stage-set", o)]
    if cli_main(argv):
        raise SystemExit("control training failed")
    runs = {name: [json.loads(x) for x in (folder / "eval.jsonl").read_text().splitlines()]
            for name, folder in (("images", args.out / "train"), ("noise", control / "train"))}
    print(f"{'category':<14}{'images: option_acc':<28}{'noise: option_acc':<28}")
    real, noise = runs["images"][-1], runs["noise"][-1]
    for cat in sorted(c for c in real["categories"] if "option_acc" in real["categories"][c]):
        a, b = real["categories"][cat], noise["categories"][cat]
        print(f"{cat:<14}{a['option_acc']:.3f} {a['option_acc_ci']!s:<22}{b['option_acc']:.3f} {b['option_acc_ci']!s:<22}")
    print(f"{'text bpb':<14}{real['bpb']:.3f} {real['bpb_ci']!s:<22}{noise['bpb']:.3f} {noise['bpb_ci']!s:<22}")
    both = [{**r, "stage": f"{name}:{r['stage']}"} for name, rs in runs.items() for r in rs]
    plot_results(both, control / "control.png", "real images vs noise in training (same held-out items)")
    (control / "control.json").write_text(json.dumps({"images": real, "noise": noise}, indent=1))


if __name__ == "__main__":
    main()
