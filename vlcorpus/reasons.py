"""Every name a ledger line's `counts` may hold, with its one-line meaning: what a renderer dropped (a drop reason)
and what it only did (a counter that is not a drop). `vlcorpus inspect`, the jobs' drop warnings and `--strict`
count as dropped whatever is not declared here as a non-drop; `tests/test_reasons.py` checks that every name the
code writes is declared, and `docs/reasons.md` is generated from this table (`python -m vlcorpus.reasons`).

A new reason: add one `Reason` to `REASONS`, in its family, then regenerate docs/reasons.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reason:
    name: str
    family: str  # the section of docs/reasons.md it is listed under
    meaning: str
    drop: bool = True  # False: a count of what was done, not of something lost
    prefix: bool = False  # True: `name` starts a family of names (`name<suffix>`), the suffix says which


def _family(family: str, *rows: tuple[str, str], drop: bool = True) -> tuple[Reason, ...]:
    return tuple(Reason(name, family, meaning, drop) for name, meaning in rows)


REASONS: tuple[Reason, ...] = (
    *_family(
        "images",
        ("image_missing", "an image reference that names no file (or no usable reference at all)"),
        ("image_outside_root", "an image path whose real path leaves the input folder (and any image_root granted)"),
        ("image_remote", "an image URL (never fetched) that no img2dataset download inside the input provides"),
        ("image_unreadable", "an image path that is a symlink loop, FIFO, socket or device (never opened)"),
        ("image_too_large", "an image over the encoded-size bound"),
        ("image_too_many_pixels", "an image over the pixel bound, checked from its header (decompression bombs too)"),
        ("image_too_small", "an image with a side under the minimum"),
        ("image_undecodable", "an image that does not decode (bad base64, unparsable SVG included)"),
        ("image_uniform", "an image whose channels are all within the tolerance (an empty plot)"),
        ("image_unsupported", "a notebook output of an image type that is not read"),
    ),
    *_family(
        "records",
        ("bad_record", "a record that is not an object, or not a shape its importer reads"),
        ("bad_json_line", "a JSONL line that does not parse"),
        ("bad_json_member", "a JSON member of a tar that does not parse"),
        ("record_too_large", "a record over --max-record-mb (dropped unparsed)"),
        ("unknown_image_id", "a COCO caption whose image_id is in no `images` entry"),
        ("image_unplaced", "an interleaved document whose images' matched_text_index lies outside its text"),
        ("images_skipped", "images left out of an interleaved document that is kept"),
        ("images_over_max", "images of an interleaved document past max_images"),
        ("qa_truncated", "questions of a chart past max_qa_per_image"),
        ("no_caption", "a caption record without a caption"),
        ("no_text_field", "a text record without a `text` field"),
        ("no_qa", "a chart record without a question-answer pair"),
        ("no_legible_words", "a scene-text image without a legible word"),
        ("no_images", "an interleaved document without an image"),
        ("text_too_short", "a text record under min_chars"),
        ("bad_unicode", "a record holding a lone UTF-16 surrogate: valid JSON, but not text"),
        ("image_path_invalid", "an image path holding a NUL character"),
        ("duplicate_image_id", "a COCO caption whose image_id several `images` entries share"),
    ),
    *_family(
        "notebooks",
        ("code_too_short", "a plot cell under min_cell_lines of code"),
        ("code_over_budget", "a plot cell whose code is over the line or character budget"),
        ("not_one_image", "not exactly one image where one is required (a plot cell; a derived SFT task)"),
        ("malformed_cell", "a notebook cell that is not an object"),
        ("non_python_cell", "a code cell that is not Python (or does not parse)"),
        ("unknown_output", "a cell output of a type nbformat does not define"),
        ("duplicate_image", "a sample whose image another sample of the same job already owns (Stage.unique)"),
    ),
    *_family(
        "pages (papers, HTML, EPUB)",
        ("page_too_little_text", "a page with less text than min_page_chars"),
        ("page_too_large", "a PDF page larger than max_page_pt on a side"),
        ("pages_over_limit", "pages past the document's page bound"),
        ("chapters_over_page_limit", "EPUB chapters past the book part's page bound"),
        ("blank_pages", "pages with nothing drawn"),
        ("missing_spine_items", "EPUB spine entries that name no manifest item or no file"),
        ("spine_items_not_documents", "EPUB spine entries that are not XHTML/HTML documents"),
        ("missing_files", "files a page asked for that the input folder does not hold"),
        ("web_code_too_long", "an HTML page whose cleaned code is over max_code_chars (no web_code pair)"),
        ("math_cut", "formulas only partly visible on their page, left out of the page text"),
        ("words_cut", "words only partly visible on their page, left out of the page text"),
        ("lines_outside_page", "text lines not wholly inside their page, left out of the page text"),
        ("duplicate_spine_items", "EPUB spine entries repeating a chapter already in the spine (rendered once)"),
        ("pages_over_size_budget", "EPUB pages past the book's size-based page budget (10 + one per min_page_bytes unpacked)"),
        ("chapters_over_size_budget", "EPUB chapters skipped once the book's size-based page budget is spent"),
    ),
    *_family(
        "papers: the LaTeX route",
        ("page_low_confidence", "a LaTeX page under min_page_score (the page takes its PDF's text layer)"),
        ("page_unverified", "a LaTeX page its PDF page does not print enough of (text layer instead)"),
        ("page_beyond_split", "a PDF page past the LaTeX split (text layer instead)"),
        ("no_main_tex", "no main .tex file (every page from the text layer)"),
        ("main_tex_ambiguous", "several candidate main .tex files (every page from the text layer)"),
        ("unsafe_source", "a source archive refused as unsafe (every page from the text layer)"),
        ("latexml_timeout", "LaTeXML ran out of time (every page from the text layer)"),
        ("latexml_failed", "LaTeXML failed (every page from the text layer)"),
        ("split_failed", "Nougat's split of the markdown over the pages failed (every page from the text layer)"),
        ("compile_timeout", "a source without its PDF whose compilation ran out of time"),
        ("compile_failed", "a source without its PDF whose compilation gave no PDF"),
        ("bib_missing", "a .bib file the paper names is missing"),
        ("bib_too_large", "a .bib file over the size bound"),
        ("bst_missing", "the bibliography style the paper names is missing"),
        ("bibtex_errors", "BibTeX reported errors (the .bbl it wrote is used)"),
        ("bibtex_timeout", "BibTeX ran out of time"),
        ("bibtex_failed", "BibTeX failed"),
        ("pictures_outside_folder", "pictures the paper includes from outside its folder (never read)"),
    ),
    *_family(
        "SFT conversations",
        ("image_placeholder_mismatch", "image placeholders in the text that do not match the images given"),
        ("not_a_conversation", "a record that is no conversation format read"),
        ("bad_turn", "a turn that is not an object with text"),
        ("unknown_role", "a turn whose role is not user, assistant or system"),
        ("no_exchange", "a conversation without both a user and an assistant turn"),
        ("empty_answer", "a conversation whose assistant turns hold no text"),
        ("ends_with_user_turn", "a conversation that ends on a user turn"),
        ("unknown_taxonomy_label", "a taxonomy label that is no leaf of the taxonomy"),
        ("images_in_text_category", "a conversation with images filed under a text-only category"),
        ("not_derivable", "a corpus sample no SFT task can be derived from"),
        ("answer_length_out_of_bounds", "a derived answer outside derived_min_chars..derived_max_chars"),
        ("not_selected", "a conversation left out by the plan (a duplicate, or over its leaf's cap)"),
    ),
    *_family(
        "interleaved extraction",
        ("image_repeated", "an image shown in 3 or more documents of one input (logos, ornaments)"),
        ("image_duplicate", "an image the document (or, in curation, the corpus) already showed; its first appearance keeps it"),
        ("image_pixel", "an image with both sides at most 4 px (tracking pixels, spacers)"),
        ("image_icon", "an image with both sides under 150 px (icons, buttons)"),
        ("image_small_side", "an image with one side under 150 px (rules, thin banners)"),
        ("image_aspect", "an image whose longer side is over 3x the shorter"),
        ("image_shown_small", "an image the page displays with a side under 150 px (<img width height>), OBELICS's rendered-size rule"),
        ("part_no_images", "an interleaved part without an image (not written)"),
        ("page_furniture", "PDF running heads and page numbers left out of an interleaved document"),
        ("cell_errors", "notebook error tracebacks left out of an interleaved document"),
    ),
    *_family(
        "curation (vlcorpus curate, mixtures)",
        ("pii_in_image_pair", "personal data or a secret in the text of an image-text pair whose image shows it (dropped, never one side redacted)"),
        ("nsfw", "an image scored at or above nsfw_threshold by nudenet"),
        ("image_near_duplicate", "every image of the sample is within the pHash distance of an image the corpus already kept"),
        ("benchmark_ngram_overlap", "a sample sharing a 13-gram with a text of --benchmarks (lm-evaluation-harness's overlap)"),
        ("heldout_near_duplicate", "a MinHash near-duplicate of a held-out sample (--heldout)"),
        ("unreadable_sample", "a sample whose members do not parse as the sample contract"),
        ("language_not_selected", "(mixer) a sample outside its category's `languages` selection"),
        ("license_not_selected", "(mixer) a sample outside its category's licence selection"),
    ),
    *_family(
        "trainer",
        ("over_seq_budget", "(in the trainer's metrics and summary.json) a sample with no target left within the "
                            "sequence budget"),
    ),
    *_family(
        "counters that are not drops",
        ("records", "records read, in the importer's unit (captions, documents, questions, images)"),
        ("imported", "records imported, in the importer's unit"),
        ("pages", "pages written"),
        ("pairs", "plot/code pairs written"),
        ("images", "images found in a notebook's outputs"),
        ("classified", "SFT conversations labelled by the taxonomy classifier"),
        ("classified_others", "classified conversations that landed in the `Others` leaf"),
        ("upsampled_copies", "extra copies written to balance a small taxonomy leaf"),
        ("blocked_requests", "network requests the browser was refused"),
        ("navigations_blocked", "navigations away from the document the browser was refused"),
        ("popups_blocked", "popup navigations (window.open) the browser aborted"),
        ("math_tex", "formulas whose LaTeX is the document's own TeX (x-tex annotation, MathJax 2 script, TeX typeset "
                     "from the page)"),
        ("math_typeset", "formulas a MathJax or KaTeX page kept as TeX in its DOM, typeset by the bundled MathJax"),
        ("math_tex_errors", "typeset formulas whose TeX has an error (drawn as their source, as MathJax shows them)"),
        ("math_undefined_macros", "typeset formulas using a macro the page's readable configuration does not define "
                                  "(drawn as its name, as MathJax shows it)"),
        ("math_unstyled", "KaTeX or MathJax output whose stylesheet did not load, shown once as its MathML"),
        ("math_typeset_failed", "pages whose TeX MathJax failed to typeset as a whole (their TeX left as it stands)"),
        ("math_converted", "formulas converted from presentation MathML to LaTeX (mathml-to-latex)"),
        ("math_unconverted", "formulas with no TeX and nothing convertible, kept as the text the page shows"),
        ("scaled_to_fit", "boxes (formulas, tables, images) scaled down to fit a column or page"),
        ("served_requests", "requests served from the input folder"),
        ("browser_crashes", "browser crashes recovered from (the document rendered again)"),
        ("chapters_parsed_as_html", "EPUB chapters that are not well-formed XML, parsed as HTML instead"),
        ("code_elements_dropped", "elements removed from a page's code for its web_code pair"),
        ("code_css_rules_dropped", "CSS rules removed from a page's code"),
        ("code_inline_data_dropped", "inline data (data: URLs, base64) removed from a page's code"),
        ("text_from_latex", "papers whose pages come from their LaTeX"),
        ("text_from_pdf", "papers whose pages come from the PDF's text layer"),
        ("pages_from_text_layer", "pages of a LaTeX-route paper that took the text layer"),
        ("pdf_compiled", "papers whose PDF was compiled from the source"),
        ("bbl_present", "papers shipped with their .bbl"),
        ("bbl_bibtex", "papers whose .bbl BibTeX wrote"),
        ("biblatex", "papers using biblatex (bibliography from LaTeXML's own processing)"),
        ("labels_unresolved", "references to labels LaTeXML could not resolve (rewritten as ??)"),
        ("citations_unresolved", "citations LaTeXML could not resolve (rewritten as [?])"),
        ("citations_as_text", "citations kept as their text"),
        ("math_unparsed", "formulas LaTeXML's grammar could not parse (their LaTeX kept)"),
        ("latexml_errors", "errors LaTeXML reported on a paper it still converted"),
        drop=False,
    ),
)
PREFIXES: tuple[Reason, ...] = (
    Reason("derived_", "name prefixes", "`derived_<task>`: conversations the SFT build derived per taxonomy task",
           drop=False, prefix=True),
    Reason("pii_redacted_", "name prefixes", "`pii_redacted_<type>`: personal data or secrets replaced by a typed "
           "placeholder in a text sample (email, phone, ip_address, card_number, aws_key, private_key, secret_token)",
           drop=False, prefix=True),
    Reason("quality_", "name prefixes", "`quality_<family>_<rule>`: free prose that failed "
           "that datatrove rule (family: gopher, repetition, c4 or fineweb)", prefix=True),
    Reason("curation_error_", "name prefixes", "`curation_error_<exception>`: a curation rule raised on the sample; "
           "it is dropped and the pass goes on", prefix=True),
)
NOT_DROP_PREFIXES = tuple(r.name for r in PREFIXES if not r.drop)

BY_NAME = {r.name: r for r in REASONS}
NOT_DROPS = frozenset(r.name for r in REASONS if not r.drop)
DOC = Path(__file__).resolve().parent.parent / "docs" / "reasons.md"


def is_declared(name: str) -> bool:
    return name in BY_NAME or name.startswith(tuple(r.name for r in PREFIXES))


def markdown() -> str:
    """docs/reasons.md: one table per family."""
    lines = ["# Drop reasons and counters", "",
             "Generated from `vlcorpus/reasons.py` by `python -m vlcorpus.reasons`; do not edit by hand.", "",
             "Every ledger line's `counts` uses this one vocabulary. A record importer counts each dropped record "
             "once, in its unit, under the reason that dropped it; an interleaved document dropped for its images "
             "takes the most common reason they failed. An input that must not be read at all (its real path leaves "
             "the input folder, a broken or looping link, a FIFO) gets a `failed` line with the error class "
             "`UnsafeInput`. The names that start with a prefix of the last table are families; those marked "
             "\"not a drop\" count what was done."]
    table = (*REASONS, *PREFIXES)
    for family in dict.fromkeys(r.family for r in table):
        lines += ["", f"## {family[0].upper()}{family[1:]}", "", "| name | meaning |", "|---|---|"]
        lines += [f"| `{r.name}{'<…>' if r.prefix else ''}` | {r.meaning}{'' if r.drop or not r.prefix else ' (not a drop)'} |"
                  for r in table if r.family == family]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(markdown(), "utf-8")
