"""Language identification: py3langid, whose model (97 languages, ISO 639-1 codes) ships inside the wheel, so
nothing is downloaded at run time. The text a document *declares* (an EPUB's dc:language) is not trusted as the
answer: renderers keep it as `meta.declared_language`."""

from __future__ import annotations

from functools import lru_cache

UNDETERMINED = "und"  # BCP 47's code for text with too few letters to tell (empty, symbols, binary garbage)
MAX_CHARS = 20_000  # the head of a long text decides: bounded time per sample, and enough for a stable answer
MIN_LETTERS = 3
# py3langid also tells varieties apart under ISO 639-3 codes; those with an ISO 639-1 macrolanguage are reported as it
# (Moroccan and Egyptian Arabic are `ar`, Cantonese and Wu are `zh`); languages without a 639-1 code keep their 639-3
MACRO = {"ary": "ar", "arz": "ar", "yue": "zh", "wuu": "zh", "uzs": "uz", "gug": "gn", "sdh": "ku", "fuv": "ff",
         "kik": "ki", "zxx": UNDETERMINED}


@lru_cache(maxsize=1)
def identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, or 639-3 for a language without one; probability); `und` with 0.0 when the text has fewer than MIN_LETTERS letters. A mixed-
    language text gets its dominant language with a lower probability."""
    head = text[:MAX_CHARS]
    if sum(ch.isalpha() for ch in head[:2000]) < MIN_LETTERS and sum(ch.isalpha() for ch in head) < MIN_LETTERS:
        return UNDETERMINED, 0.0
    code, prob = identifier().classify(head)
    code = MACRO.get(code, code)
    return code, round(float(prob), 4) if code != UNDETERMINED else 0.0
