"""`vlcorpus eval MODEL HELDOUT`: evaluate a trained model directory on a held-out corpus (`trainer.evaluate`).

MODEL is what the trainer writes as `<run>/<stage>/final` (or a released DeepSeek-VL checkpoint in that format):
the model (`config.json` + weights), its tokenizer and its image processor (`preprocessor_config.json`). Before
anything is scored, the tokenizer is checked against the model (vocabulary size, the image placeholder and the
special tokens' ids), so a wrong tokenizer stops with a message instead of giving meaningless scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import torch

from trainer import store
from trainer.config import DEVICES
from trainer.evaluate import ACCURACIES, EvalConfig, evaluate_set, load_eval_set
from trainer.tokenizer import IMAGE, load_tokenizer, special_ids
from vlcorpus import storage

COMMAND = ("eval",)
HELP = "evaluate a model directory on a held-out corpus: multi-choice items per category, bits per byte"
log = logging.getLogger("trainer.eval")


def load_processor(model_dir: Path):
    """The image processor saved with the model; its settings (sizes, mean, padding) are part of the model."""
    if not (model_dir / "preprocessor_config.json").exists():
        raise ValueError(
            f"{model_dir}: no preprocessor_config.json, so the image processor this model was trained with is "
            "unknown. Save it beside the model (trainer.model.image_processor(config).save_pretrained(DIR) for a "
            "vlcorpus model), or copy it from the checkpoint the model came from")
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(model_dir))


def check_tokenizer(model, tokenizer, where: str) -> None:
    """Stop when the tokenizer is not the model's: ids past the embedding, or special tokens at other ids."""
    text = model.config.text_config
    if len(tokenizer) > text.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {len(tokenizer):,} tokens, the model's embedding only "
                         f"{text.vocab_size:,}: this is not the tokenizer the model was trained with (pass --tokenizer)")
    ids = special_ids(tokenizer)
    expected = {IMAGE: (ids.image, model.config.image_token_id), "bos": (ids.bos, text.bos_token_id),
                "eos": (ids.eos, text.eos_token_id)}
    wrong = [f"{name} is {got} in the tokenizer, {want} in the model" for name, (got, want) in expected.items()
             if want is not None and got != want]
    if wrong:
        raise ValueError(f"{where}: the tokenizer does not match the model ({'; '.join(wrong)}): pass the tokenizer "
                         "the model was trained with (--tokenizer)")


def load_model(model_dir: Path, tokenizer_dir: Path | None, device: str, seq_len: int | None):
    from trainer.data import Encoder
    from trainer.model import image_token_count, load_trained

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; MODEL is a model directory such as RUN/stage3/final")
    processor = load_processor(model_dir)
    model = load_trained(model_dir).to(device)
    tok_dir = tokenizer_dir or model_dir
    if not (tok_dir / "tokenizer_config.json").exists() and not (tok_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{tok_dir}: no tokenizer files; pass --tokenizer DIR")
    tokenizer = load_tokenizer(tok_dir)
    if tok_dir != model_dir and (model_dir / "tokenizer.json").exists():
        own = load_tokenizer(model_dir).get_vocab()
        differ = len(set(own.items()) ^ set(tokenizer.get_vocab().items()))
        if differ:
            raise ValueError(f"{tok_dir}: not the tokenizer saved with the model in {model_dir} ({differ:,} token ids "
                             "differ); leave out --tokenizer to use the model's own")
    check_tokenizer(model, tokenizer, str(tok_dir))
    length = seq_len or model.config.text_config.max_position_embeddings
    return model, Encoder(tokenizer, special_ids(tokenizer), image_token_count(model.config), processor, length)


def format_table(result: dict) -> str:
    def cell(e: dict, key: str) -> str:
        if key not in e or math.isnan(e[key]):
            return ""
        lo, hi = e[f"{key}_ci"]
        return f"{e[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    cols = [key for key, _ in ACCURACIES] + ["bpb"]
    rows = [("all", result)] + sorted(result["categories"].items())
    lines = [f"{'category':<14}{'items':>6}  " + "".join(f"{c:<24}" for c in cols)]
    for name, e in rows:
        lines.append(f"{name:<14}{e.get('items', ''):>6}  " + "".join(f"{cell(e, c):<24}" for c in cols))
    lines.append(f"chance {result['chance']:.3f}; 95% intervals: Wilson (accuracies), bootstrap over samples (bpb)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=storage.location,
                   help="model directory or s3:// / gs:// prefix, e.g. RUN/stage3/final (weights, tokenizer, preprocessor_config.json)")
    p.add_argument("heldout", type=storage.location, help="held-out corpus or mixture folder (or prefix), e.g. OUT/split/heldout")
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the model directory)")
    p.add_argument("--items", type=int, default=200, help="multiple-choice items per category")
    p.add_argument("--categories", nargs="+", help="multimodal categories to build items for (default: every held-out one that gives items; the others are logged with why)")
    p.add_argument("--bpb-bytes", type=int, default=100_000, help="text bytes scored per category for bits per byte")
    p.add_argument("--seq-len", type=int, help="longest sequence scored (default: the model's maximum)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--out", type=storage.location, help="folder (or s3:// / gs:// prefix) for eval.json and eval.png")


def main(args: argparse.Namespace) -> int:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cfg = EvalConfig(items=args.items, bpb_bytes=args.bpb_bytes, seed=args.seed,
                     categories=tuple(args.categories) if args.categories else None)
    eval_set = load_eval_set(args.heldout, cfg)  # bad held-out folders fail before the model loads
    model, encoder = load_model(Path(store.pretrained(str(args.model))), args.tokenizer, device, args.seq_len)
    log.info("%d items over %s; bits per byte over %s", len(eval_set.items),
             ", ".join(sorted({i.category for i in eval_set.items})), ", ".join(c for c, s in eval_set.texts.items() if s))
    result = {"model": str(args.model), "heldout": str(args.heldout), **evaluate_set(model, encoder, eval_set, cfg)}
    print(format_table(result))
    if args.out and storage.is_remote(args.out):
        with storage.scratch("eval") as local:
            write_results(result, args, local)
            files = [local / "eval.json", local / "eval.png"]
            storage.put_files(files, [f"{args.out}/{f.name}" for f in files])
    elif args.out:
        write_results(result, args, args.out)
    if args.out:
        print(f"-> {args.out}/eval.json, {args.out}/eval.png")
    return 0


def write_results(result: dict, args: argparse.Namespace, folder: Path) -> None:
    from trainer.eval_plots import plot_results

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(result, indent=1))
    plot_results([{**result, "stage": storage.name(args.model)}], folder / "eval.png", f"{args.model} on {args.heldout}")
