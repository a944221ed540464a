"""Decontamination. Against a benchmark folder: word 13-grams as lm-evaluation-harness's decontamination builds
them (lower-cased, punctuation removed, split on whitespace); a training sample that shares one 13-gram with any
benchmark text is dropped. Benchmark texts shorter than 13 words contribute no n-gram (as in the harness). Against
the held-out split: MinHash over word 3-grams (the mixer's signer) with datasketch's LSH; a training sample whose
estimated Jaccard similarity to a held-out sample exceeds the threshold is dropped."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from mixer.dedup import Signer, normalise

NUM_PERM = 128
_PUNCT = str.maketrans("", "", string.punctuation)


def ngrams(text: str, n: int) -> set[int]:
    words = text.lower().translate(_PUNCT).split()
    return {xxhash.xxh3_64_intdigest(" ".join(words[i : i + n]).encode("utf-8")) for i in range(len(words) - n + 1)}


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def benchmark_texts(folder: Path) -> Iterator[str]:
    """Every text of a benchmark folder: .txt files whole, every string field of .json and .jsonl records."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--benchmarks {folder}: not a folder")
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        if p.suffix == ".txt":
            yield p.read_text("utf-8", "replace")
        elif p.suffix == ".jsonl":
            for line in p.read_text("utf-8", "replace").splitlines():
                if line.strip():
                    try:
                        yield from _strings(json.loads(line))
                    except json.JSONDecodeError:
                        raise ValueError(f"--benchmarks: {p} has a line that is not JSON") from None
        elif p.suffix == ".json":
            try:
                yield from _strings(json.loads(p.read_text("utf-8", "replace")))
            except json.JSONDecodeError:
                raise ValueError(f"--benchmarks: {p} is not JSON") from None


def benchmark_ngrams(folder: Path, n: int) -> set[int]:
    grams: set[int] = set()
    for text in benchmark_texts(folder):
        grams |= ngrams(text, n)
    return grams


_signer: Signer | None = None


def signature(text: str) -> bytes | None:
    global _signer
    if _signer is None:
        _signer = Signer(NUM_PERM)
    return _signer(normalise(text))


class Heldout:
    """LSH index of the held-out samples' signatures."""

    def __init__(self, signatures: list[bytes], threshold: float):
        from datasketch import MinHash, MinHashLSH

        self._minhash, self._template = MinHash, MinHash(num_perm=NUM_PERM)  # permutations drawn once
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        for i, sig in enumerate(signatures):
            self.lsh.insert(str(i), self._m(sig))

    def _m(self, sig: bytes):
        t = self._template
        return self._minhash(num_perm=NUM_PERM, permutations=t.permutations, scheme=t.scheme,
                             hashvalues=np.frombuffer(sig, dtype=np.uint64))

    def near(self, sig: bytes | None) -> bool:
        return sig is not None and bool(self.lsh.query(self._m(sig)))
