"""Derived SFT tasks from this project's own corpus, so the taxonomy's leaves fill from real rendered data.

- `doc_ocr` page (page image + the text on it) -> "OCR and Transcription": a prompt from the leaf's pool, the page
  text as the answer; pages whose text carries Markdown structure go to "Specified Format Transcription".
- `web_code` pair from a notebook (plot + the code that drew it) -> "Image to Code / Chart to Code";
  from an HTML page (screenshot + its HTML/CSS) -> "Image to Code / UI to Code".
The prompt is drawn deterministically (by the source sample's key) from the leaf's `prompts`; the eval split swaps it
for one of the leaf's `eval_prompts`, so evaluation prompts never appear in training.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator

from renderers.sft.conversations import SftConfig, taxonomy_for
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample
from vlcorpus.shards import read_shard

OCR = ("Recognition", "OCR and Transcription", "Printed Text Transcription")
OCR_FORMAT = ("Recognition", "OCR and Transcription", "Specified Format Transcription")
CHART_CODE = ("Conversion", "Image to Code", "Chart to Code")
UI_CODE = ("Conversion", "Image to Code", "UI to Code")
_MARKDOWN = re.compile(r"^(#{1,6} |\|.*\||[-*] |\d+\. )", re.M)


def pick(pool: tuple[str, ...], key: str) -> tuple[int, str]:
    i = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % len(pool)
    return i, pool[i]


def task_of(s: Sample) -> tuple[tuple[str, ...], str] | None:
    """(leaf, answer) for a corpus sample, or None when it is not a derivable pair."""
    text = s.text.strip()
    if s.category == "doc_ocr":
        return (OCR_FORMAT if len(_MARKDOWN.findall(text)) >= 2 else OCR), text
    if s.category == "web_code":
        origin = str(s.meta.get("source", s.source))
        if origin == "notebook":
            return CHART_CODE, f"```python\n{text}\n```"
        if origin == "html":
            return UI_CODE, f"```html\n{text}\n```"
    return None


def render(doc: DocInput, cfg: SftConfig, stats: Counter) -> Iterator[Sample]:
    taxonomy = taxonomy_for(cfg.taxonomy)
    for pos, s in enumerate(read_shard(doc.path)):
        task = task_of(s)
        if task is None:
            stats["not_derivable"] += 1
            continue
        if len(s.images) != 1:
            stats["not_one_image"] += 1
            continue
        leaf, answer = task
        if not cfg.derived_min_chars <= len(answer) <= cfg.derived_max_chars:
            stats["answer_length_out_of_bounds"] += 1
            continue
        (name, data), = s.images.items()
        index, prompt = pick(taxonomy.leaf(leaf).prompts, s.key)
        stats[f"derived_{leaf[-1].lower().replace(' ', '_')}"] += 1
        yield Sample(
            category="sft_taxonomy", source="derived", doc=doc.doc, part=pos, origin=doc.origin,
            segments=[{"role": "user", "image": name}, {"role": "user", "text": prompt}, {"role": "assistant", "text": answer}],
            images={name: data}, taxonomy=list(leaf),
            meta={"label_source": "derived", "confidence": 1.0, "derived_from": s.key, "prompt_index": index},
        )
