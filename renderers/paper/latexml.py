"""A LaTeX source tree -> Nougat markdown, through LaTeXML and Nougat's own parser (the route DeepSeek-VL used).

LaTeXML runs in bubblewrap (only the paper's folder and the TeX tool chain, a cleared environment, no network)
with its own timeout, killed as a process group; it reads the bibliography only from the `.bbl`
(`renderers.paper.bibliography`). Its HTML gets one pass before Nougat's parser: what the PDF prints for what could
not be resolved (`??` for a label, `[?]` for a citation), author-year citation links kept as their text, and
formulas LaTeXML could not parse kept as the LaTeX they were written in. Nougat refuses the whole paper on any of
these; we count them instead.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from renderers.paper.sandbox import MAX_TREE_BYTES, ArchiveLimits, ToolTimeout, UnsafeSource, read_in_tree, run_tool

# Our LaTeXML bindings (a stand-in for expl3, see latexml_bindings/expl3.pool.ltxml), searched before LaTeXML's own.
BINDINGS = Path(__file__).resolve().parent / "latexml_bindings"


class LatexmlError(RuntimeError):
    """LaTeXML produced no usable document (fatal error, timeout, or nothing parseable)."""


@dataclass(frozen=True)
class LatexmlSettings:
    timeout_s: float
    sandbox: bool
    archive: ArchiveLimits
    max_tree_bytes: int = MAX_TREE_BYTES


def latexml_to_html(main: Path, tree: Path, settings: LatexmlSettings, preload: tuple[str, ...] = ()) -> Path:
    """Run latexmlc on `main` inside `tree` (with our bindings `preload`ed too); return the HTML file. Raises
    LatexmlError, or ToolTimeout past the time bound (ours, or LaTeXML's own `--timeout` and loop limits).

    A paper's own bindings (`*.ltxml`, `<name>.latexml`) are Perl that LaTeXML runs: in the sandbox they are
    contained with it; without it they would run on the host as the worker, so they refuse the LaTeX route."""
    bindings = sorted(p.name for p in tree.rglob("*") if p.name.endswith((".ltxml", ".latexml")))
    if bindings and not settings.sandbox:
        raise UnsafeSource(f"the paper ships LaTeXML bindings ({', '.join(bindings[:5])}): Perl code, run only in the "
                           "sandbox (sandbox=true)")
    html = main.parent / "_latexml" / (main.stem + ".html")
    cmd = ["latexmlc", "--nocomments", "--nodefaultresources", "--nographicimages", "--nopictureimages",
           "--preload=[nobibtex]latexml.sty", "--preload=vlcorpus.sty", *(f"--preload={p}" for p in preload),
           f"--path={BINDINGS}", f"--timeout={int(settings.timeout_s)}", f"--dest=_latexml/{html.name}", main.name]
    log = tree.parent / "latexml.log"
    code = run_tool(cmd, tree=tree, cwd=main.parent, timeout_s=settings.timeout_s + 10, log=log,
                    sandbox=settings.sandbox, max_bytes=settings.max_tree_bytes, read_only=(str(BINDINGS),))
    if code != 0 or not html.exists():
        text = log.read_text("utf-8", errors="replace")
        if limit := re.search(r"^Fatal:timeout:(\S+).*$", text, re.M):  # its own --timeout, or a loop's token limit
            raise ToolTimeout(f"latexmlc stopped the conversion ({limit.group(1)}): {limit.group(0)[:200]}")
        fatal = re.findall(r"^Fatal:.*$", text, re.M)
        raise LatexmlError(f"latexmlc exited with {code}: {fatal[0] if fatal else text[-400:].strip()}")
    return html


def html_to_markdown(html: Path, stats: Counter, cite_keys: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    """Nougat's html2md step: minify, our pass (`resolve_for_nougat`), `parse_latexml`, `format_document(keep_refs=True)`
    -> (markdown, figures)."""
    import htmlmin
    from bs4 import BeautifulSoup

    from renderers.paper.nougat_tools import format_document, parse_latexml

    raw = read_in_tree(html).replace("\xa0", " ")
    soup = BeautifulSoup(htmlmin.minify(raw, remove_all_empty_space=1), features="html.parser")
    stats.update(resolve_for_nougat(soup, set(cite_keys)))
    try:
        doc = parse_latexml(soup)
    except ValueError as e:  # Nougat's own quality gate; after our pass it should not fire
        raise LatexmlError(f"Nougat's LaTeXML parser refused the paper: {e}") from None
    if doc is None:
        raise LatexmlError("LaTeXML's HTML has no <article> element")
    text, figures = format_document(doc, keep_refs=True)
    if not text.strip():
        raise LatexmlError("LaTeXML's HTML holds no text")
    return text, figures


_LINK_NUMBER = re.compile(r"[A-Za-z][:;.,_]?\d")  # Nougat takes the number from the link target for these


def resolve_for_nougat(soup, cite_keys: set[str]) -> Counter:
    """Rewrite LaTeXML's HTML in place so Nougat's parser takes the whole paper; return what was rewritten.

    - an undefined `\\ref` becomes `??` and an unresolved `\\cite` `[?]`, as the PDF prints them
      (`labels_unresolved`, `citations_unresolved`), where Nougat raises "missing reference detected";
    - a citation link whose text is not a number (natbib author-year: `Smith et al.`, `2016a`) becomes its text,
      or its number when the text is a bare citation key (`citations_as_text`), where Nougat raises
      "unusable reference";
    - `<math class="ltx_math_unparsed">` (a formula LaTeXML's grammar could not parse; its `alttext` is the LaTeX)
      is read as maths, not as its MathML glyphs (`math_unparsed`);
    - LaTeXML's error marks (undefined macros), which Nougat drops, are counted (`latexml_errors`).
    """
    n: Counter = Counter()
    for el in soup.select(".ltx_ref.ltx_missing_label"):
        el.replace_with("??")
        n["labels_unresolved"] += 1
    for el in soup.select(".ltx_ref.ltx_missing_citation"):
        el.replace_with("[?]")
        n["citations_unresolved"] += 1
    for a in soup.select("a.ltx_ref"):
        href, text = a.attrs.get("href") or "", a.get_text()
        if href.startswith("#bib") and not text.strip().isnumeric() and not _LINK_NUMBER.search(text):
            number = re.sub(r"\D", "", href.partition(".bib")[2])
            a.replace_with(number if text.strip() in cite_keys and number else text)
            n["citations_as_text"] += 1
    for m in soup.select("math.ltx_math_unparsed"):
        if m.attrs.get("alttext"):
            m["class"] = [*m.get("class", []), "ltx_Math"]
            n["math_unparsed"] += 1
    n["latexml_errors"] += len(soup.select(".ltx_ERROR"))
    return +n
