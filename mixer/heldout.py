"""Split a corpus by document into a training corpus and a held-out corpus for evaluation.

Held-out documents are chosen per category by the hash of their id (stable across runs and machines): a
`fraction` of them, and at least one wherever a category has two or more documents, so that even a small corpus
gets an evaluation set. Conversation categories (`sft_*`) go to training whole: the SFT build keeps its own
taxonomy-stratified evaluation split. Shards that go whole to one side are hard-linked, not copied.
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


def held_out_docs(docs: list[str], fraction: float) -> set[str]:
    """The `doc` ids on the held-out side: a `fraction` of the documents (the parts of a book count as one), by
    hash, at least one and never all where there are two or more."""
    documents = sorted({document_of(d) for d in docs}, key=lambda d: hashlib.sha1(d.encode("utf-8")).hexdigest())
    n = round(fraction * len(documents))
    if len(documents) >= 2:
        n = min(max(n, 1), len(documents) - 1)
    held = set(documents[:n])
    return {d for d in docs if document_of(d) in held}


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
    summary: dict = {"fingerprint": corpus_fingerprint(corpus), "fraction": fraction, "categories": {}}
    for cat in sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.startswith("_")):
        read_index(cat)  # a category without an index is not a finished corpus folder: refuse it
        docs = [d for shard in shard_paths(cat) for d in read_sidecar(shard).docs]
        held = set() if cat.name.startswith("sft_") else held_out_docs(sorted(set(docs)), fraction)
        summary["categories"][cat.name] = {"docs": len({document_of(d) for d in docs}),
                                           "heldout_docs": len({document_of(d) for d in held})}
        if not held:
            _link_category(cat, partial / "train" / cat.name)
            continue
        with ShardWriter(partial / "train" / cat.name, "split") as train, \
                ShardWriter(partial / "heldout" / cat.name, "split") as heldout:
            for shard in shard_paths(cat):
                for sample in read_shard(shard):
                    (heldout if sample.doc in held else train).write(sample)
        for side in ("train", "heldout"):
            write_index(partial / side / cat.name)
    (partial / "split.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return summary
