"""Prose quality: datatrove's Gopher quality and repetition rules and its C4 and FineWeb line rules, used as a
library (their thresholds are the published ones). A sample is judged on its joined text; the first rule that
fails names the drop reason `quality_<rule>_<datatrove's reason>`. C4's line rules decide here and do not rewrite:
a text whose lines were removed would no longer match the images beside it, so a sample whose text keeps fewer than
C4's five sentences after the line rules is dropped, and every other sample is kept whole.

Only languages in `quality_languages` are judged (the Gopher stop words and word lengths are English's); datatrove
tokenises words with spaCy's rule-based tokenizer of that language (shipped in the spaCy wheel, no model)."""

from __future__ import annotations

import csv
from functools import lru_cache


@lru_cache(maxsize=1)
def iso639_3() -> dict[str, str]:
    """ISO 639-1 -> the 639-3 code datatrove's word tokenizers are keyed by (from datatrove's own table)."""
    from datatrove.utils._import_utils import ASSETS_PATH

    with open(f"{ASSETS_PATH}/tokenizer_assignment.csv", encoding="utf-8") as f:
        return {row["code_1"]: row["code_3"] for row in csv.DictReader(f)
                if row["code_1"] and row["default_code_1"] == "TRUE"}


class Quality:
    """The four datatrove filters of one language, built once per worker."""

    def __init__(self, language: str):
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )

        code = iso639_3().get(language)
        if code is None:
            raise ValueError(f"quality_languages: datatrove has no word tokenizer for {language!r}")
        self.filters = (
            ("gopher", GopherQualityFilter(language=code)),
            ("repetition", GopherRepetitionFilter(language=code)),
            ("c4", C4QualityFilter(filter_no_terminal_punct=False, language=code)),  # FineWeb's C4 settings
            ("fineweb", FineWebQualityFilter(language=code)),
        )

    def verdict(self, text: str) -> str | None:
        """None when the text passes every rule, else the drop reason of the first rule it fails."""
        from datatrove.data import Document

        for name, flt in self.filters:
            result = flt.filter(Document(text=text, id=""))
            passed, why = result if isinstance(result, tuple) else (result, "failed")
            if not passed:
                return f"quality_{name}_{why.removeprefix('gopher_')}"
        return None


@lru_cache(maxsize=8)
def quality(language: str) -> Quality:
    return Quality(language)
