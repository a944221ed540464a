"""Conversation sets -> SFT samples with roles on every segment and a taxonomy path.

Formats, detected per record:
- LLaVA / ShareGPT4V: `{"image": path | [paths], "conversations": [{"from": "human"|"gpt"|"system", "value"}]}`,
  images placed where the `<image>` placeholders are;
- OpenAI-style: `{"messages": [{"role", "content": str | [{"type": "text"} | {"type": "image_url"} | {"type": "image"}]}]}`
  (image parts as `data:` URLs or paths; string contents may use `<image>` with an `images` list);
- this project's own SFT shards (`.tar`), taken as they are.
A record's own label (`taxonomy` as a path or a unique leaf name) wins; otherwise, and after an unknown label,
the classifier decides; below `min_confidence` the conversation is filed under the taxonomy's `Others`.
Everything dropped is counted by reason: bad JSON lines, missing or undecodable images, placeholder counts that do
not match the images, conversations that end on a user turn, unknown roles, unknown labels (then classified).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from renderers.images import BadImage, ImageLimits, check_image, load_ref
from renderers.records.caption import image_root
from renderers.records.reader import read_records
from renderers.sft.classify import make_classifier
from renderers.sft.taxonomy import Taxonomy, UnknownLabel, load_taxonomy
from vlcorpus.document import DocInput
from vlcorpus.sample import SFT_CATEGORIES, TEXT_ONLY_CATEGORIES, Sample
from vlcorpus.shards import read_shard

PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}


@dataclass
class SftConfig:
    taxonomy: str = ""  # a taxonomy YAML; empty: DeepSeek-VL Table 3 (renderers/sft/taxonomy.yaml)
    image_root: str = ""  # where image paths point; default: the folder of the conversation file
    classifier: str = "embedding"  # or "keyword"
    min_confidence: float = 0.5  # below it a classified conversation goes to Others
    eval_fraction: float = 0.1  # per leaf, of the deduplicated conversations
    eval_max_per_leaf: int = 50
    max_per_leaf: int = 2000  # train cap per leaf (down-sampling)
    target_per_leaf: int = 200  # leaves with fewer train samples are up-sampled towards it ...
    max_upsample: int = 3  # ... by at most this factor
    seed: int = 0
    derived_min_chars: int = 50  # derived answers shorter than this are skipped
    derived_max_chars: int = 12_000  # and longer ones too (they would not fit a training sequence)
    limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        if not 0 <= self.min_confidence <= 1 or not 0 <= self.eval_fraction < 1:
            raise ValueError("min_confidence must be in [0, 1] and eval_fraction in [0, 1)")
        if self.max_upsample < 1 or self.eval_max_per_leaf < 0 or not 0 <= self.target_per_leaf <= self.max_per_leaf:
            raise ValueError("need max_upsample >= 1, eval_max_per_leaf >= 0 and 0 <= target_per_leaf <= max_per_leaf")
        if self.classifier not in ("embedding", "keyword"):
            raise ValueError(f"classifier {self.classifier!r}: use 'embedding' or 'keyword'")


class Dropped(Exception):
    """A conversation that cannot be used; `reason` is its stats counter."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@lru_cache(maxsize=4)
def taxonomy_for(path: str) -> Taxonomy:
    return load_taxonomy(path or None)


def _split_placeholders(role: str, text: str, start: int) -> tuple[list[dict], int]:
    """Segments of one turn: text pieces around `<image>` placeholders, each placeholder an image slot."""
    segs: list[dict] = []
    pieces = text.split(PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if i:
            segs.append({"role": role, "image": start + i - 1})
        if piece.strip():
            segs.append({"role": role, "text": piece.strip()})
    return segs, len(pieces) - 1


def _role(raw: object) -> str:
    role = _ROLES.get(str(raw).lower()) if raw is not None else None
    if role is None:
        raise Dropped("unknown_role")
    return role


def _refs(value: object) -> list:
    return [] if value in (None, "", []) else list(value) if isinstance(value, list) else [value]


def parse_llava(rec: dict) -> tuple[list[dict], list]:
    refs = _refs(rec.get("image", rec.get("images")))
    segs, slots = [], 0
    for turn in rec["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise Dropped("bad_turn")
        s, n = _split_placeholders(_role(turn.get("from")), turn["value"], slots)
        segs += s
        slots += n
    if slots != len(refs):
        raise Dropped("image_placeholder_mismatch")
    return segs, refs


def parse_messages(rec: dict) -> tuple[list[dict], list]:
    listed, refs, segs, slots = _refs(rec.get("images")), [], [], 0
    for msg in rec["messages"]:
        if not isinstance(msg, dict):
            raise Dropped("bad_turn")
        role, content = _role(msg.get("role")), msg.get("content")
        if isinstance(content, str):
            s, n = _split_placeholders(role, content, slots)
            segs += s
            slots += n
            continue
        if not isinstance(content, list):
            raise Dropped("bad_turn")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if PLACEHOLDER in part["text"]:
                    raise Dropped("image_placeholder_mismatch")
                if part["text"].strip():
                    segs.append({"role": role, "text": part["text"].strip()})
            elif kind in ("image_url", "image"):
                ref = part.get(kind)
                refs.append(ref.get("url") if isinstance(ref, dict) and "url" in ref else ref)
                segs.append({"role": role, "image": None})
            else:
                raise Dropped("bad_turn")
    if slots != len(listed):
        raise Dropped("image_placeholder_mismatch")
    if slots:
        if refs:
            raise Dropped("image_placeholder_mismatch")
        refs = listed
    i = 0
    for seg in segs:  # number the image parts in order
        if "image" in seg:
            seg["image"] = i
            i += 1
    return segs, refs


def check_turns(segs: list[dict]) -> None:
    roles = [s["role"] for s in segs if s["role"] != "system"]
    if "user" not in roles or "assistant" not in roles:
        raise Dropped("no_exchange")
    if roles[-1] != "assistant":
        raise Dropped("ends_with_user_turn")
    if not any("text" in s for s in segs if s["role"] == "assistant"):
        raise Dropped("empty_answer")


def user_text(segments: list[dict]) -> str:
    return "\n".join(s["text"] for s in segments if s.get("role") == "user" and "text" in s)


def _materialise(segs: list[dict], refs: list, root, limits: ImageLimits) -> tuple[list[dict], dict[str, bytes]]:
    images: dict[str, bytes] = {}
    out = []
    for seg in segs:
        if "image" in seg:
            try:
                image = check_image(load_ref(refs[seg["image"]], root), limits)
            except BadImage as e:
                raise Dropped(e.reason) from None
            name = f"{len(images)}.{image.ext}"
            images[name] = image.data
            out.append({"role": seg["role"], "image": name})
        else:
            out.append(seg)
    return out, images


def _conversations(doc: DocInput, cfg: SftConfig, stats: Counter) -> Iterator[tuple[int, dict, list[dict], dict[str, bytes]]]:
    """(position, record, segments, images) of each usable conversation in this input."""
    if doc.related.get("format") == "tar":
        for pos, s in enumerate(read_shard(doc.path)):
            if not s.segments[0].get("role"):
                stats["not_a_conversation"] += 1
                continue
            rec = {"taxonomy": s.taxonomy, "category": s.category, "id": s.key}
            yield pos, rec, s.segments, s.images
        return
    root = image_root(doc, cfg.image_root)
    for pos, rec in read_records(doc, stats):
        try:
            if isinstance(rec.get("conversations"), list):
                segs, refs = parse_llava(rec)
            elif isinstance(rec.get("messages"), list):
                segs, refs = parse_messages(rec)
            else:
                raise Dropped("not_a_conversation")
            check_turns(segs)
            segs, images = _materialise(segs, refs, root, cfg.limits)
        except Dropped as e:
            stats[e.reason] += 1
            continue
        yield pos, rec, segs, images


def render(doc: DocInput, cfg: SftConfig, stats: Counter) -> Iterator[Sample]:
    taxonomy = taxonomy_for(cfg.taxonomy)
    pending: list[tuple[int, dict, list[dict], dict[str, bytes], str]] = []
    for pos, rec, segs, images in _conversations(doc, cfg, stats):
        category = rec.get("category") if rec.get("category") in SFT_CATEGORIES else doc.related.get("category", "sft_taxonomy")
        if category in TEXT_ONLY_CATEGORIES and images:
            stats["images_in_text_category"] += 1
            continue
        pending.append((pos, rec, segs, images, category))
    labels: dict[int, tuple[tuple[str, ...], float, str]] = {}
    unlabelled = []
    for i, (_, rec, _, _, category) in enumerate(pending):
        label = rec.get("taxonomy") or rec.get("label")
        if label:
            try:
                labels[i] = (taxonomy.resolve(label), 1.0, "dataset")
                continue
            except UnknownLabel:
                stats["unknown_taxonomy_label"] += 1
        if category == "sft_taxonomy":
            unlabelled.append(i)
    if unlabelled:
        classifier = make_classifier(cfg.classifier, taxonomy)
        results = classifier.classify([user_text(pending[i][2]) or " " for i in unlabelled])
        for i, (path, conf) in zip(unlabelled, results):
            if conf < cfg.min_confidence:
                path = (taxonomy.others,)
                stats["classified_others"] += 1
            stats["classified"] += 1
            labels[i] = (path, conf, classifier.name)
    for i, (pos, rec, segs, images, category) in enumerate(pending):
        path, conf, how = labels.get(i, (None, 0.0, ""))
        meta = {"record": pos, "label_source": how, "confidence": conf} if path else {"record": pos}
        if rec.get("id") is not None:
            meta["id"] = str(rec["id"])
        yield Sample(category=category, source="sft_in", doc=doc.doc, part=pos, origin=doc.origin, segments=segs,
                     images=images, taxonomy=list(path) if path else None, meta=meta)
