"""Chart/table question-answer sets -> `table_chart` samples: the image, then its questions and answers.

Field names follow the published sets: ChartQA (`imgname`, `query`, `label`), PlotQA (`image_index` of
`png/<index>.png`, `question_string`, `answer`, read from the `qa_pairs` list of `qa_pairs_V1.json`), DVQA-like
(`image`, `question`, `answer`), or one record per image with a `qa`/`qas` list. Records of the same image within
one input piece become one sample, so an image is stored once. Counted per record (a question, in ChartQA and
PlotQA): `records`, `imported`, and a reason for each one dropped (a chart whose image is missing drops each of
its questions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from renderers.images import ImageLimits, image_or_count
from renderers.records.caption import image_root, pair_sample
from renderers.records.reader import first_field, read_records
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample

_IMAGE = ("image", "imgname", "image_path", "file_name", "img", "image_index")
_QUESTION = ("question", "query", "question_string", "q")
_ANSWER = ("answer", "label", "a", "answers")
_QA_LISTS = ("qa", "qas", "questions")


@dataclass
class TableChartConfig:
    image_root: str = ""
    max_qa_per_image: int = 50
    limits: ImageLimits = field(default_factory=ImageLimits)


def _answer(value: object) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).strip() if value is not None else ""


def _pairs(rec: dict) -> list[tuple[str, str]]:
    items = first_field(rec, _QA_LISTS)
    items = items if isinstance(items, list) else [rec]
    out = []
    for it in items:
        if isinstance(it, dict):
            q, a = first_field(it, _QUESTION), _answer(first_field(it, _ANSWER))
            if isinstance(q, str) and q.strip() and a:
                out.append((q.strip(), a))
    return out


def image_ref(rec: dict) -> str | None:
    """The record's image path; PlotQA's `image_index` N names `png/N.png` (the split folder's `png/` is searched)."""
    ref = first_field(rec, _IMAGE)
    if isinstance(ref, int) and not isinstance(ref, bool):
        return f"{ref}.png"
    return ref if isinstance(ref, str) else None


def render(doc: DocInput, cfg: TableChartConfig, stats: Counter) -> Iterator[Sample]:
    stats.setdefault("imported", 0)  # counted in the unit even when nothing comes in
    groups: dict[str, list] = {}  # image -> [first position, records, pairs]
    for pos, rec in read_records(doc, stats):
        ref, pairs = image_ref(rec), _pairs(rec)
        if ref is None:
            stats["image_missing"] += 1
            continue
        if not pairs:
            stats["no_qa"] += 1
            continue
        group = groups.setdefault(ref, [pos, 0, []])
        group[1] += 1
        group[2].extend(pairs)
    root = image_root(doc, cfg.image_root)
    for ref, (pos, n, qa) in groups.items():
        reasons: Counter = Counter()
        image = image_or_count(ref, root, cfg.limits, reasons)
        if image is None:
            for reason in reasons:
                stats[reason] += n
            continue
        if len(qa) > cfg.max_qa_per_image:
            stats["qa_truncated"] += len(qa) - cfg.max_qa_per_image
            qa = qa[: cfg.max_qa_per_image]
        stats["imported"] += n
        text = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in qa)
        yield pair_sample("table_chart", doc, pos, image, text, {"image_ref": ref, "qa": len(qa)})
