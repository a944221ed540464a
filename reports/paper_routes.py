"""What became of each paper, read from its ledger line: the route its pages took and why (for `vlcorpus inspect`
and `vlcorpus report`). A paper's pages come from its LaTeX (maths as LaTeX) or from its PDF's text layer (maths
as Unicode); the ledger's counts say which, and with the names below, why a paper or a page lost the LaTeX route.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vlcorpus.ledger import Entry, Ledger
from vlcorpus.shards import read_samples, shard_paths

PAPER_SOURCES = ("arxiv", "pdf")
# Why a whole paper lost the LaTeX route (one per paper; the message is in its samples' `meta.latex_error`).
ROUTE_LOST = ("no_main_tex", "main_tex_ambiguous", "unsafe_source", "latexml_timeout", "latexml_failed", "split_failed")
# Why one page of a LaTeX-route paper took its text from the PDF's text layer instead (`meta.latex_page`).
PAGE_REFUSED = ("page_low_confidence", "page_unverified", "page_beyond_split")
# How the bibliography was made, and what went wrong with it (the paper keeps the LaTeX route).
BIBLIOGRAPHY = ("bbl_present", "bbl_bibtex", "biblatex", "bst_missing", "bibtex_errors", "bibtex_timeout",
                "bibtex_failed", "bib_missing", "bib_too_large")
# What LaTeXML's HTML needed before Nougat's parser took it (counts of elements, summed over papers).
REFERENCES = ("labels_unresolved", "citations_unresolved", "citations_as_text", "math_unparsed", "latexml_errors")


@dataclass
class PaperRoute:
    doc: str
    route: str  # latex | pdf | filtered | failed
    reason: str | None  # ROUTE_LOST name, or "<ErrorClass>: message" for filtered/failed, or "no source"
    pages_latex: int = 0
    pages_text_layer: int = 0
    pages_refused: dict[str, int] = field(default_factory=dict)


def paper_route(e: Entry) -> PaperRoute:
    c = e.counts
    if e.status != "ok":
        return PaperRoute(e.doc, e.status, f"{e.error_class}: {e.error}" if e.error_class else e.error)
    refused = {k: c[k] for k in PAGE_REFUSED if c.get(k)}
    if c.get("text_from_latex"):
        layer = c.get("pages_from_text_layer", 0)
        return PaperRoute(e.doc, "latex", None, c.get("pages", 0) - layer, layer, refused)
    lost = next((k for k in ROUTE_LOST if c.get(k)), "no source")
    return PaperRoute(e.doc, "pdf", lost, 0, c.get("pages", 0))


@dataclass
class RouteSummary:
    papers: int = 0
    by_route: Counter = field(default_factory=Counter)
    route_lost: Counter = field(default_factory=Counter)  # papers, by reason
    pages_latex: int = 0
    pages_text_layer: int = 0
    pages_refused: Counter = field(default_factory=Counter)  # pages, by reason
    pages_dropped: Counter = field(default_factory=Counter)  # pages with no sample: too little text, too large
    bibliography: Counter = field(default_factory=Counter)  # papers, by what happened
    references: Counter = field(default_factory=Counter)  # elements rewritten, summed
    examples: list[PaperRoute] = field(default_factory=list)  # papers that lost maths (route or pages)


def summarize_routes(entries: Iterable[Entry], examples: int = 10) -> RouteSummary:
    s = RouteSummary()
    for e in entries:
        r = paper_route(e)
        s.papers += 1
        s.by_route[r.route] += 1
        s.pages_latex += r.pages_latex
        s.pages_text_layer += r.pages_text_layer
        s.pages_refused.update(r.pages_refused)
        s.pages_dropped.update({k: e.counts[k] for k in ("page_too_little_text", "page_too_large") if e.counts.get(k)})
        s.bibliography.update({k: 1 for k in BIBLIOGRAPHY if e.counts.get(k)})
        s.references.update({k: e.counts[k] for k in REFERENCES if e.counts.get(k)})
        if r.route == "pdf" and r.reason != "no source":
            s.route_lost[r.reason] += 1
        if (r.route != "latex" and r.reason != "no source" or r.pages_refused) and len(s.examples) < examples:
            s.examples.append(r)
    return s


def corpus_routes(corpus: Path, examples: int = 10) -> dict[str, RouteSummary]:
    """Per paper source with a ledger in `corpus`, its summary; the example papers' messages filled in from their
    samples' `meta.latex_error` (read until all are found)."""
    out = {src: summarize_routes(Ledger(corpus, src).latest().values(), examples)
           for src in PAPER_SOURCES if (corpus / "_ledger" / f"{src}.jsonl").exists()}
    wanted = {(src, r.doc): r for src, s in out.items() for r in s.examples if r.route == "pdf"}
    if wanted and (corpus / "doc_ocr").is_dir():
        for sample in read_samples(shard_paths(corpus / "doc_ocr")):
            r = wanted.pop((sample.source, sample.doc), None)
            if r and sample.meta.get("latex_error"):
                r.reason = f"{r.reason}: {sample.meta['latex_error'][:200]}"
            if not wanted:
                break
    return out


def describe(source: str, s: RouteSummary) -> list[str]:
    """The summary as the lines `vlcorpus inspect` prints."""
    def share(n: int, of: int) -> str:
        return f"{n} ({n / of:.0%})" if of else str(n)

    def listing(c: Counter) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

    pages = s.pages_latex + s.pages_text_layer
    lines = [
        f"{source}: {s.papers} papers by route: " + ", ".join(f"{k} {share(v, s.papers)}" for k, v in s.by_route.most_common()),
        f"  pages paired {pages}: from LaTeX {share(s.pages_latex, pages)}, from the PDF's text layer "
        f"{share(s.pages_text_layer, pages)}; not paired: {listing(s.pages_dropped)}",
        f"  why papers lost the LaTeX route: {listing(s.route_lost)}",
        f"  why pages of LaTeX-route papers took the text layer: {listing(s.pages_refused)}",
        f"  bibliographies: {listing(s.bibliography)}; rewritten for Nougat: {listing(s.references)}",
    ]
    for r in s.examples:
        pages_note = f", pages from the text layer: {r.pages_text_layer} ({listing(Counter(r.pages_refused))})" if r.pages_refused else ""
        lines.append(f"    {r.doc}: {r.route}" + (f", {r.reason}" if r.reason else "") + pages_note)
    return lines
