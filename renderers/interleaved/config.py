"""The extractor's settings (`--config` / `--set`), shared by every input kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from renderers.interleaved.rules import ImageRules
from renderers.interleaved.split import Budget


@dataclass
class ExtractConfig:
    rules: ImageRules = field(default_factory=ImageRules)
    budget: Budget = field(default_factory=Budget)
    max_file_mb: float = 256.0  # a larger input file is not read (an EPUB's members: renderers.browser.epub's limits)
    max_text_mb: float = 16.0  # one page's or WARC record's markup

    def __post_init__(self) -> None:
        if self.max_file_mb <= 0 or self.max_text_mb <= 0:
            raise ValueError("max_file_mb and max_text_mb must be positive")
