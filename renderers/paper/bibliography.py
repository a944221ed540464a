"""The paper's bibliography as LaTeXML should read it: the `<jobname>.bbl` that BibTeX makes for the PDF.

LaTeXML formats a `.bib` itself whenever one is there, in a recursive run that loads the paper's raw class and
packages and gives up on their first error (no bibliography, every citation unresolved); and it never prints
citations as the `.bst` does ("Goodfellow et al. (2014)" where the PDF says "[8]"). So a `.bbl` that is there (shipped,
or made when we compiled the PDF) is used as it is, and otherwise we write the `.aux` a LaTeX run would write (the `\\cite` keys in reading order, `\\bibdata`,
`\\bibstyle`) and run `bibtex` on it in the sandbox, time-bounded; LaTeXML is then told to read only the `.bbl`
(`--preload=[nobibtex]latexml.sty`, see `renderers.paper.latexml`). biblatex papers get BibTeX's `plainnat` on
their `\\addbibresource` files (biber's `.bbl` is biblatex's own format, which LaTeXML cannot read) and the small
binding `latexml_bindings/biblatex.sty.ltxml`.

What cannot be made is counted and explained, never fatal: the paper keeps the LaTeX route, its citations
become placeholders (`renderers.paper.latexml`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from renderers.paper.sandbox import MAX_TREE_BYTES, ToolTimeout, read_in_tree, run_tool, write_in_tree
from renderers.paper.sources import expand_inputs, read_tex

_CITE = re.compile(r"\\(?:no|auto|paren|text|foot|super|smart|full)?[Cc]ite[a-zA-Z]*\*?\s*(?:\[[^\]]*\]\s*){0,2}\{([^}]*)\}")
_STYLE = re.compile(r"\\bibliographystyle\s*\{([^}]*)\}")
_DATA = re.compile(r"\\bibliography\s*\{([^}]*)\}")
_RESOURCE = re.compile(r"\\addbibresource\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}")
_BIBLATEX = re.compile(r"\\(?:usepackage|RequirePackage)\s*(?:\[[^\]]*\])?\s*\{[^}]*\bbiblatex\b")
_DEFINITION = re.compile(r"\\(?:def|newcommand\*?|renewcommand\*?)\s*\{?(\\[A-Za-z@]+)\}?\s*\{([^{}]*)\}")
_COMPLAINT = re.compile(r"^(?:I was expecting|I couldn't|I found no|Repeated entry|Illegal|Warning--I didn't find)[^\n]*", re.M)
_MISSING_STYLE = re.compile(r"I couldn't open style file (\S+)")


@dataclass(frozen=True)
class BibSettings:
    timeout_s: float
    max_bib_mb: float
    sandbox: bool
    max_tree_bytes: int = MAX_TREE_BYTES


@dataclass
class Bibliography:
    """What was done, for `meta` and the ledger: where the `.bbl` came from (`present`: shipped, or made when we
    compiled the PDF; `bibtex`: made here; `none`), the cited
    keys (to recognise a key LaTeXML prints as link text), and why it is missing or partial."""

    source: str = "none"
    keys: tuple[str, ...] = ()
    error: str | None = None
    biblatex: bool = False  # LaTeXML must then preload our biblatex binding (a class may load biblatex itself)


def cited_keys(text: str) -> list[str]:
    keys: list[str] = []
    for m in _CITE.finditer(text):
        for k in m.group(1).split(","):
            k = k.strip()
            if k and k not in keys:
                keys.append(k)
    return keys


def _style(text: str, folder: Path, natbib: bool) -> str:
    """`\\bibliographystyle`, else the one a shipped class or package sets (aaai24.sty does, at `\\begin{document}`),
    else the only shipped `.bst`, else plainnat (natbib) or plain."""
    found = _STYLE.findall(text)
    if not found:
        for f in sorted(folder.glob("*.sty")) + sorted(folder.glob("*.cls")):
            found = _STYLE.findall(read_tex(f))
            if found:
                break
    if found:
        return found[-1].strip()
    bsts = sorted(folder.glob("*.bst"))
    return bsts[0].stem if len(bsts) == 1 else ("plainnat" if natbib else "plain")


def make_bbl(main: Path, tree: Path, settings: BibSettings, stats: Counter) -> Bibliography:
    """Make sure `main`'s folder holds `<jobname>.bbl` if the paper has a bibliography; say how (see module doc)."""
    text = expand_inputs(main, tree)
    # biblatex is often loaded by a shipped class (ReScience's), with its resource named by a macro
    classes = [expand_inputs(f, tree) for f in sorted(main.parent.glob("*.cls")) + sorted(main.parent.glob("*.sty"))]
    biblatex = any(_BIBLATEX.search(t) for t in (text, *classes))
    if biblatex:
        stats["biblatex"] += 1
    bib = _make_bbl(main, tree, settings, stats, text, classes if biblatex else None)
    bib.biblatex = biblatex
    return bib


def _make_bbl(main: Path, tree: Path, settings: BibSettings, stats: Counter, text: str,
              biblatex_sources: list[str] | None) -> Bibliography:
    keys = tuple(cited_keys(text))
    bbl = main.with_suffix(".bbl")
    if bbl.is_file() and "\\bibitem" in read_in_tree(bbl):  # not biber's own format
        stats["bbl_present"] += 1
        return Bibliography("present", keys)
    if biblatex_sources is not None:
        names, style = _resources(main.parent, [text, *biblatex_sources]), "plainnat"
    else:
        names = [n.strip() for m in _DATA.findall(text)[-1:] for n in m.split(",")]
        style = _style(text, main.parent, "natbib" in text)
    if not names or not keys:
        return Bibliography("none", keys)
    bibs = [main.parent / (n if n.endswith(".bib") else f"{n}.bib") for n in names if n]
    missing = [b.name for b in bibs if not b.is_file()]
    if missing:
        stats["bib_missing"] += 1
        return Bibliography("none", keys, f"bibliography file(s) not in the source: {', '.join(missing)}")
    size = sum(b.stat().st_size for b in bibs)
    if size > settings.max_bib_mb * 1024**2:
        stats["bib_too_large"] += 1
        return Bibliography("none", keys, f".bib files hold {size / 1024**2:.0f} MB, more than max_bib_mb={settings.max_bib_mb:g}")
    data = ",".join(str(b.relative_to(main.parent).with_suffix("")) for b in bibs)
    try:
        error = _bibtex(main, tree, keys, data, style, settings)
        if error and _MISSING_STYLE.search(error):  # e.g. IEEEtran.bst neither shipped nor installed
            stats["bst_missing"] += 1
            fallback = "plainnat" if "natbib" in text or biblatex_sources is not None else "plain"
            error = f"{_MISSING_STYLE.search(error).group(0)}; used {fallback}.bst. " + (
                _bibtex(main, tree, keys, data, fallback, settings) or "")
    except ToolTimeout as e:
        stats["bibtex_timeout"] += 1
        bbl.unlink(missing_ok=True)
        return Bibliography("none", keys, str(e))
    if not bbl.is_file() or "\\bibitem" not in read_in_tree(bbl):
        stats["bibtex_failed"] += 1
        bbl.unlink(missing_ok=True)
        return Bibliography("none", keys, f"bibtex made no bibliography: {(error or '')[-300:]}")
    if error:
        stats["bibtex_errors"] += 1
    stats["bbl_bibtex"] += 1
    return Bibliography("bibtex", keys, error[-300:] if error else None)


def _resources(folder: Path, texts: list[str]) -> list[str]:
    """biblatex's `\\addbibresource` files; a name given by a macro (`\\addbibresource{\\articleBIB}`) is looked up
    in the `\\def`s and `\\newcommand`s of the folder's TeX files, else taken to be the folder's only `.bib`."""
    names = [n.strip() for t in texts for m in _RESOURCE.findall(t) for n in m.split(",")]
    if not any(n.startswith("\\") for n in names):
        return names
    definitions = {}
    for f in sorted(folder.glob("*.tex")) + sorted(folder.glob("*.cls")) + sorted(folder.glob("*.sty")):
        definitions.update(_DEFINITION.findall(read_tex(f)))
    bibs = sorted(folder.glob("*.bib"))
    only = [bibs[0].name] if len(bibs) == 1 else []
    return [n for name in names for n in ([definitions[name]] if name in definitions else only if name.startswith("\\") else [name])]


def _bibtex(main: Path, tree: Path, keys: tuple[str, ...], data: str, style: str, settings: BibSettings) -> str | None:
    """Write `<jobname>.aux` and run bibtex on it; None, or bibtex's complaints (it still writes what it could)."""
    lines = [f"\\citation{{{k}}}" for k in keys] + [f"\\bibdata{{{data}}}", f"\\bibstyle{{{style}}}"]
    write_in_tree(main.with_suffix(".aux"), "\\relax\n" + "\n".join(lines) + "\n")
    log = tree.parent / "bibtex.log"
    code = run_tool(["bibtex", main.stem], tree=tree, cwd=main.parent, timeout_s=settings.timeout_s, log=log,
                    sandbox=settings.sandbox, max_bytes=settings.max_tree_bytes)
    if code <= 1:  # 1: warnings only (an empty field)
        return None
    out = log.read_text("utf-8", errors="replace")
    complaints = _COMPLAINT.findall(out)
    return f"bibtex exited with {code}: " + " | ".join(dict.fromkeys(complaints[:8]))
