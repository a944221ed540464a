"""`vlcorpus inspect PATH`: what a shard, category folder or corpus holds, and a look at a few samples."""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

from vlcorpus.ledger import Ledger, summarize
from vlcorpus.shards import read_samples, shard_paths, verify_shard

COMMAND = ("inspect",)
HELP = "print counts and show samples of a shard, category folder or corpus folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="a .tar shard, a category folder or a corpus folder")
    p.add_argument("--samples", type=int, default=3, help="samples to show (default %(default)s)")
    p.add_argument("--chars", type=int, default=300, help="characters of text to show per sample")
    p.add_argument("--verify", action="store_true", help="check every shard against its sidecar's checksum")


def image_size(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return f"{im.width}x{im.height} {im.format}"


def main(args: argparse.Namespace) -> int:
    shards = shard_paths(args.path)
    if args.verify:
        for s in shards:
            verify_shard(s)
        print(f"verified {len(shards)} shard(s) against their sidecars")
    ledger_dir = args.path / "_ledger" if args.path.is_dir() else None
    if ledger_dir and ledger_dir.exists():
        for f in sorted(ledger_dir.glob("*.jsonl")):
            counts = summarize(Ledger(args.path, f.stem).latest().values())
            print(f"ledger {f.stem}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    per_category: Counter = Counter()
    tokens: Counter = Counter()
    images: Counter = Counter()
    shown = 0
    for sample in read_samples(shards):
        per_category[sample.category] += 1
        tokens[sample.category] += sample.text_tokens
        images[sample.category] += len(sample.images)
        if shown < args.samples:
            shown += 1
            print(f"\n--- {sample.key}  [{sample.category}]  {sample.origin} part {sample.part}")
            for seg in sample.segments:
                role = f"{seg['role']}: " if "role" in seg else ""
                if "image" in seg:
                    print(f"  {role}<image {seg['image']} {image_size(sample.images[seg['image']])}>")
                else:
                    text = seg["text"]
                    more = f" … (+{len(text) - args.chars} chars)" if len(text) > args.chars else ""
                    print("  " + role + text[: args.chars].replace("\n", "\n  ") + more)
            if sample.taxonomy:
                print(f"  taxonomy: {' / '.join(sample.taxonomy)}")
            print(f"  meta: {json.dumps(sample.meta, ensure_ascii=False)[: args.chars]}")
    print(f"\n{len(shards)} shard(s)")
    for cat in sorted(per_category):
        print(f"  {cat:16s} {per_category[cat]:8d} samples {tokens[cat]:10d} text tokens {images[cat]:7d} images")
    return 0
