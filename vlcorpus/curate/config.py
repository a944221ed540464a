"""What curation does to each category, as plain data (`vlcorpus curate --config FILE`, `--set KEY=VALUE`).

Why per category: a rule is right for one kind of text and wrong for another. The Gopher/C4/FineWeb prose rules
judge free prose (`text`, `interleaved`, the text SFT sets); a page of equations or a table rendered for OCR is not
"low quality", so `doc_ocr`, `table_chart`, `scene_ocr`, `web_code` and captions are never judged as prose. Personal
data is redacted where the text stands alone; where an image shows the same text (a rendered page, a screenshot, a
chart, a photographed sign) the pair is dropped instead, so text and image never disagree. Perceptual image
duplicates are looked for among photos and figures, not among rendered text pages, whose layouts look alike to a
perceptual hash whatever they say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlcorpus.config import ConfigError
from vlcorpus.sample import CATEGORIES

PII_MODES = ("redact", "drop", "off")
IMAGE_DEDUP_MODES = ("near", "exact", "off")


@dataclass
class Rules:
    """The rules of one category."""

    quality: bool = False  # Gopher quality + repetition, C4 and FineWeb line rules (datatrove's filters)
    pii: str = "redact"  # redact: typed placeholders in the text; drop: drop the sample (its image shows the text)
    image_dedup: str = "exact"  # near: exact + perceptual hash; exact: identical image bytes only
    nsfw: bool = False  # drop samples an image of which nudenet scores at or above `nsfw_threshold`

    def __post_init__(self) -> None:
        if self.pii not in PII_MODES:
            raise ConfigError(f"pii: {self.pii!r} is not one of {', '.join(PII_MODES)}")
        if self.image_dedup not in IMAGE_DEDUP_MODES:
            raise ConfigError(f"image_dedup: {self.image_dedup!r} is not one of {', '.join(IMAGE_DEDUP_MODES)}")


def default_rules() -> dict[str, Rules]:
    prose = Rules(quality=True, pii="redact", image_dedup="near", nsfw=True)
    rendered = Rules(pii="drop", image_dedup="exact")
    return {
        "text": Rules(quality=True, pii="redact"),
        "interleaved": prose,
        "caption": Rules(pii="drop", image_dedup="near", nsfw=True),
        "table_chart": rendered,
        "web_code": rendered,
        "scene_ocr": Rules(pii="drop", image_dedup="near", nsfw=True),
        "doc_ocr": rendered,
        "sft_taxonomy": Rules(pii="drop", image_dedup="exact", nsfw=True),
        "sft_general": Rules(pii="drop", image_dedup="exact", nsfw=True),
        "sft_table_chart": rendered,
        "sft_web_code": rendered,
        "sft_text": Rules(quality=False, pii="redact"),
    }


@dataclass
class CurationConfig:
    categories: dict[str, Rules] = field(default_factory=default_rules)
    quality_languages: list[str] = field(default_factory=lambda: ["en"])  # prose rules judge only these languages
    nsfw_threshold: float = 0.6  # nudenet's score of an "exposed" class at or above which a sample is dropped
    phash_distance: int = 4  # Hamming distance (of 64 bits) at or below which two images are near duplicates
    heldout_threshold: float = 0.8  # MinHash Jaccard estimate above which a training sample copies a held-out one
    ngram: int = 13  # benchmark overlap: word n-grams as lm-evaluation-harness's decontamination counts them
    removed_examples: int = 8  # removed samples kept per category and reason, for the report

    def __post_init__(self) -> None:
        unknown = sorted(set(self.categories) - set(CATEGORIES))
        if unknown:
            raise ConfigError(f"categories: {unknown} are not categories ({', '.join(CATEGORIES)})")
        self.categories = {**default_rules(), **self.categories}
        if not 0 < self.nsfw_threshold <= 1:
            raise ConfigError(f"nsfw_threshold: {self.nsfw_threshold} must be in (0, 1]")
        if not 0 <= self.phash_distance < 32:
            raise ConfigError(f"phash_distance: {self.phash_distance} must be in [0, 32)")
        if not 0 < self.heldout_threshold < 1:
            raise ConfigError(f"heldout_threshold: {self.heldout_threshold} must be in (0, 1)")
        if self.ngram < 1:
            raise ConfigError(f"ngram: {self.ngram} must be >= 1")

    def rules(self, category: str) -> Rules:
        return self.categories[category]
