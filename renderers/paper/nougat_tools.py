"""Nougat's dataset tools (LaTeXML HTML -> markdown -> pages) without Nougat's model stack.

`nougat-ocr` is installed with `--no-deps`: its `nougat/__init__.py` imports the OCR model (timm, lightning, ...),
which the dataset tools never use. We register a bare `nougat` package whose `__path__` is the installed package
folder, so `import nougat.dataset...` finds the real submodules while `nougat/__init__.py` never runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


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

parse_latexml = latexml_parser.parse_latexml
format_document = markdown.format_document
split_markdown = split_md_to_pages.split_markdown
remove_pretty_linebreaks = nougat_utils.remove_pretty_linebreaks
