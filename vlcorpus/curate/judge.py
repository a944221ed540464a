"""What the corpus pass learns about one sample, in a Ray task: the verdict of the per-sample rules (prose quality,
personal data in an image-text pair, NSFW) and what the corpus-wide steps compare (image hashes, a MinHash
signature, benchmark n-gram hits). A rule that raises on a sample drops that sample (`curation_error`) and the pass
goes on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from vlcorpus.curate import pii
from vlcorpus.curate.config import CurationConfig
from vlcorpus.curate.decontam import ngrams, signature
from vlcorpus.curate.images import image_hashes, nsfw_score
from vlcorpus.curate.language import identify
from vlcorpus.curate.quality import quality
from vlcorpus.sample import Sample

# The funnel's steps in the order they judge; a sample is counted under the first that drops it.
STEPS = ("unreadable", "curation_error", "quality", "pii", "nsfw", "benchmark", "heldout", "image_duplicate")
REDACTED = "pii_redacted"  # the change counted per type as `pii_redacted_<type>`


@dataclass
class Verdict:
    key: str
    doc: str
    origin: str
    reason: str | None = None  # the per-sample rule that drops it: `quality_<rule>`, `pii_in_image_pair`, `nsfw`, ...
    pii: dict[str, int] = field(default_factory=dict)
    images: list[tuple[str, int]] = field(default_factory=list)  # (sha256, pHash) per image, in segment order
    signature: bytes | None = None
    benchmark: bool = False
    language: str = ""
    license: str = ""


STEP_OF = {"unreadable_sample": "unreadable", "image_undecodable": "unreadable", "pii_in_image_pair": "pii", "nsfw": "nsfw",
           "benchmark_ngram_overlap": "benchmark", "heldout_near_duplicate": "heldout",
           "image_duplicate": "image_duplicate", "image_near_duplicate": "image_duplicate"}


def step_of(reason: str) -> str:
    """The funnel step a drop reason belongs to."""
    for prefix in ("quality", "curation_error"):
        if reason.startswith(prefix + "_"):
            return prefix
    return STEP_OF[reason]


def judge(sample: Sample, cfg: CurationConfig, bench: set[int] | None, sign: bool) -> Verdict:
    v = Verdict(sample.key, sample.doc, sample.origin)
    try:
        _judge(sample, cfg, bench, sign, v)
    except Exception as e:  # noqa: BLE001 - a rule failing on one sample drops that sample, with the class named
        v.reason = f"curation_error_{type(e).__name__}"
    return v


def _judge(sample: Sample, cfg: CurationConfig, bench: set[int] | None, sign: bool, v: Verdict) -> None:
    rules, text = cfg.rules(sample.category), sample.text
    language = sample.meta.get("language") or identify(text)[0]
    v.language = language
    prov = sample.meta.get("provenance") or {}
    v.license = prov.get("license_spdx") or prov.get("license") or "unknown"
    if rules.quality and language in cfg.quality_languages:
        v.reason = quality(language).verdict(text)
    if rules.pii != "off":
        v.pii = dict(pii.redact(text)[1])
        if v.reason is None and v.pii and rules.pii == "drop":
            v.reason = "pii_in_image_pair"
    images = [sample.images[s["image"]] for s in sample.segments if "image" in s]
    try:
        v.images = [image_hashes(data) for data in images]  # decodes each image whole
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        v.reason = "image_undecodable"
        return
    if v.reason is None and rules.nsfw and any(nsfw_score(data) >= cfg.nsfw_threshold for data in images):
        v.reason = "nsfw"
    if bench:
        v.benchmark = not bench.isdisjoint(ngrams(text, cfg.ngram))
    if sign:
        v.signature = signature(text)


def redact_sample(sample: Sample) -> Counter:
    """Replace personal data in every text segment by typed placeholders; the count per type."""
    found: Counter = Counter()
    for seg in sample.segments:
        if "text" in seg:
            seg["text"], n = pii.redact(seg["text"])
            found.update(n)
    return found
