"""`CORPUS/README.md` in the Hugging Face dataset-card form, written by `vlcorpus report CORPUS`: a YAML header
(license, language, task_categories, size_categories, pretty_name) and a body with the sources, the counts per
category, every filter with its drop count, and known limits. Counts come from the indexes, the ledgers and the
curation summary; languages and licences from the samples' meta (the summary's, or one pass over the samples)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from vlcorpus.curate.funnel import read_summary
from vlcorpus.ledger import Ledger
from vlcorpus.sample import CATEGORIES, Sample
from vlcorpus.shards import iter_members, read_index, shard_paths

TASKS = {"caption": "image-to-text", "doc_ocr": "image-to-text", "scene_ocr": "image-to-text",
         "web_code": "image-to-text", "table_chart": "visual-question-answering", "interleaved": "image-text-to-text",
         "text": "text-generation", "sft_text": "text-generation", "sft_taxonomy": "image-text-to-text",
         "sft_general": "image-text-to-text", "sft_table_chart": "visual-question-answering",
         "sft_web_code": "image-text-to-text"}
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
LIMITS = (
    ("Language is identified by py3langid from each sample's text; code, HTML sources and formula-heavy pages get the "
     "language of their words, and texts with fewer than three letters are `und`."),
    ("Prose rules (Gopher, C4, FineWeb) judge only the free-prose categories and only the configured languages; "
     "OCR pages, tables, charts and code are not judged as prose."),
    ("Personal data is found by pattern (e-mail, phone, IP, Luhn-valid card numbers, AWS keys, private-key blocks, "
     "high-entropy tokens): names and postal addresses are not detected. Image-text pairs whose text holds personal "
     "data are dropped, not redacted, and text drawn inside photographs is not read."),
    ("Perceptual duplicates are looked for among photos and figures only; rendered pages are deduplicated by exact "
     "bytes."),
    ("The NSFW filter is nudenet's detector at the configured threshold; it judges exposed bodies, not violence or "
     "other unsafe content."),
    ("Licences are what each source states (EPUB dc:rights, LICENSE files, dataset cards, metadata.json); a source "
     "without a statement is `unknown`, which does not mean free to use."),
)


def size_category(n: int) -> str:
    return next((label for bound, label in SIZES if n < bound), "n>1B")


def meta_counts(corpus: Path, categories: list[str]) -> tuple[Counter, Counter]:
    """(languages, licences) of every sample."""
    langs, licences = Counter(), Counter()
    for cat in categories:
        for shard in shard_paths(corpus / cat):
            for members in iter_members(shard):
                meta = Sample.from_wds(members).meta
                prov = meta.get("provenance") or {}
                langs[meta.get("language") or "und"] += 1
                licences[prov.get("license_spdx") or prov.get("license") or "unknown"] += 1
    return langs, licences


def ledger_drops(corpus: Path) -> dict[str, dict]:
    """Per producer (ledger): documents by status, and the counts its lines carry (drop reasons and statistics)."""
    out = {}
    for path in sorted((corpus / "_ledger").glob("*.jsonl")):
        entries = Ledger(corpus, path.stem).latest().values()
        status, reasons = Counter(e.status for e in entries), Counter()
        for e in entries:
            reasons.update(e.counts)
            if e.status != "ok":
                reasons[f"{e.status}: {e.error_class}"] += 1
        out[path.stem] = {"documents": dict(status), "reasons": dict(reasons)}
    return out


def write_card(corpus: Path) -> Path:
    categories = [c for c in CATEGORIES if (corpus / c / "index.json").exists()]
    indexes = {c: read_index(corpus / c) for c in categories}
    summary = read_summary(corpus)
    if summary is not None:
        langs = sum((Counter(c["languages"]) for c in summary["categories"].values()), Counter())
        licences = sum((Counter(c["licenses"]) for c in summary["categories"].values()), Counter())
    else:
        langs, licences = meta_counts(corpus, categories)
    total = sum(i["samples"] for i in indexes.values())
    ids = sorted({lic.lower() for lic in licences if lic != "unknown" and " " not in lic})
    header = {
        "license": (ids + (["unknown"] if len(ids) < len(licences) else [])) or ["unknown"],
        "language": sorted(code for code in langs if code != "und"),
        "task_categories": sorted({TASKS[c] for c in categories}),
        "size_categories": [size_category(total)],
        "pretty_name": f"vlcorpus {corpus.resolve().name}",
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {header['pretty_name']}", "",
             ("A vision-language pretraining corpus built by vlcorpus: WebDataset tars, one folder per category; each "
              "sample's `meta` carries its language and its provenance (source path, sha256, licence)."), "",
             "## Sources", "", "| producer | documents | ledger counts (drops and stats) |", "| --- | --- | --- |"]
    for source, d in ledger_drops(corpus).items():
        docs = ", ".join(f"{k} {v}" for k, v in sorted(d["documents"].items()))
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(d["reasons"].items(), key=lambda kv: -kv[1])) or "none"
        lines.append(f"| {source} | {docs} | {reasons} |")
    lines += ["", "## Categories", "", "| category | samples | text tokens | images |", "| --- | --- | --- | --- |"]
    lines += [f"| {c} | {i['samples']} | {i['text_tokens']} | {i['images']} |" for c, i in indexes.items()]
    lines += ["", "## Languages and licences", "",
              "Languages: " + (", ".join(f"{k} {v}" for k, v in langs.most_common()) or "none"), "",
              "Licences: " + (", ".join(f"{k} {v}" for k, v in licences.most_common()) or "none"), "",
              "## Filters", ""]
    if summary is None:
        lines.append("Not curated (`vlcorpus curate` was not run): only the producers' drops above apply.")
    else:
        lines += ["| category | in | " + " | ".join(summary["steps"]) + " | out | redacted |",
                  "| --- " * (len(summary["steps"]) + 4) + "|"]
        for cat, c in summary["categories"].items():
            red = ", ".join(f"{k} {v}" for k, v in c["redacted"].items()) or ""
            lines.append(f"| {cat} | {c['in']} | " + " | ".join(str(c["dropped"][s]) for s in summary["steps"])
                         + f" | {c['out']} | {red} |")
        reasons = sum((Counter(c["reasons"]) for c in summary["categories"].values()), Counter())
        lines += ["", "Drop reasons: " + (", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none")]
    lines += ["", "## Known limits", "", *(f"- {limit}" for limit in LIMITS), ""]
    path = corpus / "README.md"
    path.write_text("\n".join(lines), "utf-8")
    return path
