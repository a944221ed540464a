"""`vlcorpus inspect PATH`: what a shard, category folder or corpus holds, what each source dropped and why, and a
look at a few samples."""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vlcorpus.ledger import STATUSES, Entry, Ledger
from vlcorpus.shards import read_samples, shard_paths, verify_shard

COMMAND = ("inspect",)
HELP = "print counts, drops by reason and samples of a shard, category folder or corpus folder"

# Ledger counters that say what a renderer did, not what it dropped (README, "Drop reasons").
NOT_DROPS = frozenset({
    "records", "imported", "pages", "pairs", "images", "classified", "classified_others", "blocked_requests",
    "navigations_blocked", "served_requests", "browser_crashes", "text_from_latex", "upsampled_copies",
    "chapters_parsed_as_html", "code_elements_dropped", "code_css_rules_dropped", "code_inline_data_dropped",
    "text_from_pdf", "pages_from_text_layer", "pdf_compiled", "bbl_present", "bbl_bibtex", "biblatex",
    "labels_unresolved", "citations_unresolved", "citations_as_text", "math_unparsed", "latexml_errors",
    "math_tex", "math_converted", "math_unconverted", "scaled_to_fit",
})
NOT_DROP_PREFIXES = ("derived_",)  # the SFT build's count of conversations derived per taxonomy task


def is_drop(key: str) -> bool:
    return key not in NOT_DROPS and not key.startswith(NOT_DROP_PREFIXES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="a .tar shard, a category folder or a corpus folder")
    p.add_argument("--samples", type=int, default=3, help="samples to show (default %(default)s)")
    p.add_argument("--chars", type=int, default=300, help="characters of text to show per sample")
    p.add_argument("--verify", action="store_true", help="check every shard against its sidecar's checksum")


def image_size(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return f"{im.width}x{im.height} {im.format}"


@dataclass
class DropReport:
    """What one source's ledger entries say: inputs by status, records read and imported (in the importer's unit,
    where its renderer counts them), and every drop reason with its count."""

    inputs: int = 0
    status: Counter = field(default_factory=Counter)
    samples: int = 0
    records: int = 0  # 0 when the source does not count records (its unit is the ledger line)
    imported: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def dropped_share(self) -> float:
        if self.records:
            return 1 - self.imported / self.records
        return 1 - self.status["ok"] / self.inputs if self.inputs else 1.0

    def too_many_dropped(self, share: float) -> bool:
        """Nothing imported, or more than `share` dropped."""
        nothing = self.imported == 0 if self.records else self.status["ok"] == 0
        return nothing or self.dropped_share > share


def drop_report(entries: Iterable[Entry]) -> DropReport:
    rep = DropReport()
    per_record = False
    for e in entries:
        rep.inputs += 1
        rep.status[e.status] += 1
        rep.samples += e.samples
        per_record |= "imported" in e.counts
        rep.records += e.counts.get("records", 0)
        rep.imported += e.counts.get("imported", 0)
        drops = {k: v for k, v in e.counts.items() if is_drop(k) and v}
        rep.reasons.update(drops)
        if e.status == "failed":
            rep.reasons[f"failed: {e.error_class}"] += 1
        elif e.status == "filtered" and not drops:
            rep.reasons[f"filtered: {(e.error or '')[:80]}"] += 1
    if not per_record:
        rep.records = rep.imported = 0
    for s in STATUSES:
        rep.status[s] += 0
    return rep


def ledgers(corpus: Path) -> list[tuple[str, Path, str]]:
    """(label, folder holding `_ledger/`, source) of every ledger of a corpus folder: its own, and those of its
    staging and eval folders (`_sft_staging/`, `_eval/`), whose shards are not the corpus's output."""
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
    if not path.is_dir():
        return shards, Counter()
    output, other = [], Counter()
    for s in shards:
        top = s.relative_to(path).parts[0]
        if top.startswith("_"):
            other[top] += 1
        else:
            output.append(s)
    return output, other


def print_paper_routes(corpus: Path) -> None:
    """Papers (`render arxiv|pdf`): the route their pages took and why (`renderers.paper.routes`)."""
    from renderers.paper.routes import corpus_routes, describe

    for source, summary in corpus_routes(corpus).items():
        print("\n".join(describe(source, summary)))


def main(args: argparse.Namespace) -> int:
    shards = shard_paths(args.path)
    if args.verify:
        for s in shards:
            verify_shard(s)
        print(f"verified {len(shards)} shard(s) against their sidecars")
    if args.path.is_dir():
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
    if not_output:
        print("not counted (staging and eval folders): " + ", ".join(f"{k}/ {v} shard(s)" for k, v in sorted(not_output.items())))
    return 0
