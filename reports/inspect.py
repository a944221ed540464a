"""`vlcorpus inspect PATH`: what a shard, category folder or corpus holds, what each source dropped and why, and a
look at a few samples. On a terminal, control characters from documents are printed escaped (`\\x1b`): sample text
could otherwise set the window title or clear the screen."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

from reports.paper_routes import corpus_routes, describe
from vlcorpus import storage
from vlcorpus.drops import drop_report
from vlcorpus.ledger import STATUSES, Ledger
from vlcorpus.shards import read_samples, shard_paths, verify_shard

COMMAND = ("inspect",)
HELP = "print counts, drops by reason and samples of a shard, category folder or corpus folder"

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (but tab and line feed), DEL, C1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=storage.location,
                   help="a .tar shard, a category folder or a corpus folder (local, or an s3:// / gs:// prefix)")
    p.add_argument("--samples", type=int, default=3, help="samples to show (default %(default)s)")
    p.add_argument("--chars", type=int, default=300, help="characters of text to show per sample")
    p.add_argument("--verify", action="store_true", help="check every shard against its sidecar's checksum")


def image_size(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return f"{im.width}x{im.height} {im.format}"


def ledgers(corpus: Path) -> list[tuple[str, Path, str]]:
    """(label, folder holding `_ledger/`, source) of every ledger of a corpus folder: its own, and those of its
    staging and eval folders (`_sft_staging/`, `_eval/`), whose shards are not the corpus's output."""
    if storage.is_remote(corpus):  # a ledger on a store is a folder of segments per source
        return [(storage.name(f), corpus, storage.name(f)) for f in storage.folders(f"{corpus}/_ledger")]
    folders = [corpus] + sorted(p for p in corpus.glob("_*") if p.is_dir() and (p / "_ledger").is_dir())
    out = []
    for folder in folders:
        for f in sorted((folder / "_ledger").glob("*.jsonl")):
            label = f.stem if folder == corpus else f"{f.stem} ({folder.name})"
            out.append((label, folder, f.stem))
    return out


def print_ledgers(corpus: Path) -> None:
    for label, folder, source in ledgers(corpus):
        rep = drop_report(Ledger(folder, source).latest().values())
        print(f"ledger {label}: " + ", ".join(f"{s} {rep.status[s]}" for s in STATUSES) + f", samples {rep.samples}")
        if rep.records:
            print(f"  records: {rep.imported} of {rep.records} imported")
        if rep.reasons:
            print("  dropped: " + ", ".join(f"{k} {v}" for k, v in rep.reasons.most_common()))


def split_output(path: Path, shards: list[Path]) -> tuple[list[Path], Counter]:
    """The corpus's output shards, and how many shards each staging or eval folder (`_*/`) holds besides."""
    remote = storage.is_remote(path)
    if remote and path.endswith(".tar") or not remote and not path.is_dir():
        return shards, Counter()
    output, other = [], Counter()
    for s in shards:
        top = s[len(path) + 1:].split("/")[0] if remote else s.relative_to(path).parts[0]
        if top.startswith("_"):
            other[top] += 1
        else:
            output.append(s)
    return output, other


def print_paper_routes(corpus: Path) -> None:
    """Papers (`render arxiv|pdf`): the route their pages took and why (`reports.paper_routes`)."""
    for source, summary in corpus_routes(corpus).items():
        print(safe("\n".join(describe(source, summary))))


def safe(text: str) -> str:
    """`text` with its control characters escaped when standard output is a terminal (piped output stays exact)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) if sys.stdout.isatty() else text


def main(args: argparse.Namespace) -> int:
    shards = shard_paths(args.path)
    if args.verify:
        for s in shards:
            verify_shard(s)
        print(f"verified {len(shards)} shard(s) against their sidecars")
    if storage.is_remote(args.path):
        print_ledgers(args.path)
    elif args.path.is_dir():
        print_ledgers(args.path)
        print_paper_routes(args.path)
    shards, not_output = split_output(args.path, shards)
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
            print(safe(f"\n--- {sample.key}  [{sample.category}]  {sample.origin} part {sample.part}"))
            for seg in sample.segments:
                role = f"{seg['role']}: " if "role" in seg else ""
                if "image" in seg:
                    print(f"  {role}<image {seg['image']} {image_size(sample.images[seg['image']])}>")
                else:
                    text = seg["text"]
                    more = f" … (+{len(text) - args.chars} chars)" if len(text) > args.chars else ""
                    print(safe("  " + role + text[: args.chars].replace("\n", "\n  ") + more))
            if sample.taxonomy:
                print(safe(f"  taxonomy: {' / '.join(sample.taxonomy)}"))
            print(safe(f"  meta: {json.dumps(sample.meta, ensure_ascii=False)[: args.chars]}"))
    print(f"\n{len(shards)} shard(s)")
    for cat in sorted(per_category):
        print(f"  {cat:16s} {per_category[cat]:8d} samples {tokens[cat]:10d} text tokens {images[cat]:7d} images")
    if not_output:
        print("not counted (staging and eval folders): " + ", ".join(f"{k}/ {v} shard(s)" for k, v in sorted(not_output.items())))
    return 0
