"""Nougat's dataset tools (LaTeXML HTML -> markdown -> pages) without Nougat's model stack.

`nougat-ocr` is installed with `--no-deps`: its `nougat/__init__.py` imports the OCR model (timm, lightning, ...),
which the dataset tools never use. We register a bare `nougat` package whose `__path__` is the installed package
folder, so `import nougat.dataset...` finds the real submodules while `nougat/__init__.py` never runs.

For the page split, three things are changed at import, none in Nougat's files: the PDF text it aligns to
(`split_md_to_pages.get_doc_text` -> `renderers.paper.page_text`), the text normalisation of its `Splitter`
(-> `renderers.paper.normalize`), and three bugs of `split_markdown`, recompiled from its installed source with the
few lines changed (`_patch`, see the edits below); each puts the wrong text on a page with a high score.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from pathlib import Path

from renderers.paper import normalize, page_text


def _register_bare_package() -> None:
    if "nougat" in sys.modules:
        return
    spec = importlib.util.find_spec("nougat")  # finds the package without executing its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nougat-ocr is not installed (pip install --no-deps nougat-ocr==0.1.17)")
    pkg = types.ModuleType("nougat")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__ = str(Path(pkg.__path__[0]) / "__init__.py")
    pkg.__package__ = "nougat"
    sys.modules["nougat"] = pkg


_register_bare_package()

latexml_parser = importlib.import_module("nougat.dataset.parser.latexml_parser")
markdown = importlib.import_module("nougat.dataset.parser.markdown")
split_md_to_pages = importlib.import_module("nougat.dataset.split_md_to_pages")
nougat_utils = importlib.import_module("nougat.dataset.utils.utils")
splitter = importlib.import_module("nougat.dataset.splitter")

# After a PDF page with fewer than two words, Nougat appends a page boundary and then the real one too: the text
# of every later page moves onto the next page, with its high score. Without the line, such a page's boundary is
# found from the previous page's last words alone.
_EMPTY_PAGE_SHIFT = ("            if len(words_f) < 2:\n                pages.append(pages[-1])\n", "")
# A page that starts and ends in the same markdown paragraph is cut at the end offset after the start offset was
# already cut away (para[a:][:b], not para[a:b]): an empty page gets the next text. Cut the end first.
_SAME_PARAGRAPH_CUT = (
    "                lines[0] = lines[0][pages[i][1] :]\n                lines[-1] = lines[-1][: pages[i + 1][1]]\n",
    "                lines[-1] = lines[-1][: pages[i + 1][1]]\n                lines[0] = lines[0][pages[i][1] :]\n",
)

# It matches paragraphs with the float and footnote placeholders cut out, then cuts the paragraphs that still hold
# them at the same offsets: after a placeholder, a page starts or ends that much too early or too late (a page can
# start inside "[FIGURE:A1.F4]"). Keep them; the normalisation skips them (`renderers.paper.normalize`).
_PLACEHOLDER_OFFSETS = ('re.sub(r"(\\[(FOOTNOTE|FIGURE|TABLE).*?END\\2\\])", "", p)', "p")


def _patch(module: types.ModuleType, name: str, *edits: tuple[str, str]) -> None:
    """Recompile `module.name` from its installed source with `edits` (each old text occurring exactly once)."""
    source = inspect.getsource(getattr(module, name))
    for old, new in edits:
        if source.count(old) != 1:
            raise ImportError(f"{module.__name__}.{name} is not nougat-ocr 0.1.17's: cannot patch {old.strip()!r}")
        source = source.replace(old, new)
    exec(compile(source, inspect.getsourcefile(module), "exec"), module.__dict__)


_patch(split_md_to_pages, "split_markdown", _EMPTY_PAGE_SHIFT, _SAME_PARAGRAPH_CUT, _PLACEHOLDER_OFFSETS)
split_md_to_pages.get_doc_text = page_text.get_doc_text
splitter.Splitter.remove_special_chars = staticmethod(normalize.remove_special_chars)
splitter.Splitter.count_special_chars = staticmethod(normalize.count_special_chars)

parse_latexml = latexml_parser.parse_latexml
format_document = markdown.format_document
split_markdown = split_md_to_pages.split_markdown
remove_pretty_linebreaks = nougat_utils.remove_pretty_linebreaks
