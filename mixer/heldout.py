"""Split a corpus by document into a training corpus and a held-out corpus for evaluation.

Per category, about a `fraction` of its samples is held out (at least one, never all, where it has two or more):
whole documents (the parts of a book count as one), taken in the order of the hash of their id (stable across runs
and machines) while they fit. A category of few large documents, where no whole document fits, gets the rest of
its share from the last pages of one document instead, and `split.json` names that document (`split_within`): its
other pages train. Conversation categories (`sft_*`) go to training whole: the SFT build keeps its own
taxonomy-stratified evaluation split. Shards that go whole to one side are hard-linked, not copied.

`split.json` records the settings (`split_settings`): a run whose settings differ builds the split again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from vlcorpus.document import document_of
from vlcorpus.shards import (
    ShardWriter,
    read_index,
    read_shard,
    read_sidecar,
    shard_paths,
    sidecar_path,
    write_index,
)


def corpus_fingerprint(corpus: Path) -> str:
    """sha256 over every shard's own checksum (from the sidecars): changes whenever any shard does."""
    h = hashlib.sha256()
    for cat in sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for shard in shard_paths(cat):
            h.update(f"{cat.name}/{shard.name}:{read_sidecar(shard).checksum}\n".encode())
    return h.hexdigest()


def split_settings(fraction: float) -> dict:
    """What a split depends on besides the corpus: a split made with other settings is not this run's split."""
    return {"fraction": fraction, "method": "samples by document hash, pages of one document when none fits"}


def held_out_keys(samples: list[tuple[str, str, int]], fraction: float) -> tuple[set[str], list[str]]:
    """The keys of the held-out samples among `samples` (key, doc id, part), and the documents split between the
    sides (see the module docstring)."""
    n = len(samples)
    if n < 2:
        return set(), []
    target = min(max(round(fraction * n), 1), n - 1)
    by_document: dict[str, list[tuple[str, int, str]]] = {}
    for key, doc, part in samples:
        by_document.setdefault(document_of(doc), []).append((doc, part, key))
    order = sorted(by_document, key=lambda d: hashlib.sha1(d.encode("utf-8")).hexdigest())
    held: set[str] = set()
    for document in order:
        if len(held) + len(by_document[document]) <= target:
            held.update(key for _, _, key in by_document[document])
    if 2 * len(held) >= target:
        return held, []
    document = next(d for d in order if by_document[d][0][2] not in held)
    tail = sorted(by_document[document])[-(target - len(held)):]
    held.update(key for _, _, key in tail)
    return held, [document]


def _link_category(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for shard in shard_paths(src):
        for f in (shard, sidecar_path(shard)):
            os.link(f, dst / f.name)
    write_index(dst)


def split_corpus(corpus: Path, out: Path, fraction: float) -> dict:
    """Write `<out>/train` and `<out>/heldout`; `<out>/split.json` (written last) says what went where.

    Builds in `<out>.partial` and renames it into place, so a crash never leaves a split that looks finished.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be between 0 and 1, got {fraction}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    summary: dict = {"fingerprint": corpus_fingerprint(corpus), "settings": split_settings(fraction), "categories": {}}
    for cat in sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.startswith("_")):
        read_index(cat)  # a category without an index is not a finished corpus folder: refuse it
        samples = [(s.key, s.doc, s.part) for shard in shard_paths(cat) for s in read_shard(shard)]
        held, within = (set(), []) if cat.name.startswith("sft_") else held_out_keys(samples, fraction)
        summary["categories"][cat.name] = {
            "docs": len({document_of(d) for _, d, _ in samples}),
            "heldout_docs": len({document_of(d) for k, d, _ in samples if k in held}),
            "samples": len(samples), "heldout_samples": len(held), "split_within": within}
        if not held:
            _link_category(cat, partial / "train" / cat.name)
            continue
        with ShardWriter(partial / "train" / cat.name, "split") as train, \
                ShardWriter(partial / "heldout" / cat.name, "split") as heldout:
            for shard in shard_paths(cat):
                for sample in read_shard(shard):
                    (heldout if sample.key in held else train).write(sample)
        for side in ("train", "heldout"):
            write_index(partial / side / cat.name)
    (partial / "split.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return summary
