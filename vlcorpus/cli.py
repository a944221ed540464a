"""`vlcorpus`: one command, subcommands grouped by what they do. Each command lives in its own module, which
declares `COMMAND = (group, name)` (or `(name,)`), `HELP`, `add_arguments(parser)` and `main(args) -> int`.

Only the command being run is imported: the others' `COMMAND` and `HELP` are read from their source (literal
assignments), because importing every command pulls in torch, transformers and PyMuPDF, seconds before any job
could start."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

from vlcorpus import __version__
from vlcorpus.config import ConfigError
from vlcorpus.driver import OutputFull
from vlcorpus.storage import StorageError

GROUPS = {
    "render": "render documents into page images and text (Ray job)",
    "extract": "extract image/code pairs and interleaved documents (Ray job)",
    "import": "import a published dataset format into a corpus category (Ray job)",
    "build": "build derived datasets from a corpus",
    "mix": "build the mixture of a training stage",
    "report": "write an HTML report of a corpus or mixture",
    "train": "train the model",
    "train-tokenizer": "train a byte-level BPE tokenizer on a corpus",
    "inspect": "print counts and samples of a shard or folder",
    "run": "run the whole chain from raw sources to a trained model",
}

# The one registry of commands. The source commands (groups in SOURCE_GROUPS) are also what `vlcorpus run` runs, in
# this order; a command that declares READS_CORPUS runs after the others, with the corpus they built.
COMMANDS = [
    "pipelines.render_arxiv",
    "pipelines.render_pdf",
    "pipelines.render_epub",
    "pipelines.render_html",
    "pipelines.extract_notebooks",
    "pipelines.extract_interleaved",
    "pipelines.import_caption",
    "pipelines.import_interleaved",
    "pipelines.import_table_chart",
    "pipelines.import_scene_ocr",
    "pipelines.import_text",
    "pipelines.build_sft",
    "pipelines.curate",
    "reports.inspect",
    "mixer.mix",
    "reports.corpus",
    "trainer.cli",
    "trainer.tokenizer",
    "trainer.eval_command",
    "chain.run",
]
SOURCE_GROUPS = ("render", "extract", "import", "build")


def command_modules() -> list[ModuleType]:
    return [importlib.import_module(m) for m in COMMANDS]


def declaration(module: str) -> tuple[tuple[str, ...], str]:
    """A command module's `COMMAND` and `HELP`, read from its source without importing it."""
    source = Path(importlib.util.find_spec(module).origin).read_text("utf-8")
    try:
        tree = ast.parse(source)
    except SystemError:  # CPython 3.11's "AST constructor recursion depth mismatch" (gh-106905), when a finalizer
        tree = ast.parse(source)  # or another thread builds an AST meanwhile: spurious, the same parse then works
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("COMMAND", "HELP"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return tuple(found["COMMAND"]), str(found["HELP"])


def source_commands() -> dict[str, ModuleType]:
    """Source kind (the module's `KIND`, else the command's last word: `arxiv`, `notebooks`, `sft`, ...) -> its
    module, in the order `vlcorpus run` runs them: the order of COMMANDS, those that read the corpus last."""
    sources = [m for m in command_modules() if m.COMMAND[0] in SOURCE_GROUPS]
    sources.sort(key=lambda m: getattr(m, "READS_CORPUS", False))
    return {getattr(m, "KIND", m.COMMAND[-1]): m for m in sources}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: every command is listed, only the one `argv` names gets its arguments (imported)."""
    words = [a for a in argv if not a.startswith("-")][:2]
    parser = argparse.ArgumentParser(prog="vlcorpus", description="vision-language pretraining corpora and training")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"vlcorpus {__version__}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for module in COMMANDS:
        command, help_text = declaration(module)
        group, *name = command
        if not name:
            p = top.add_parser(group, help=help_text, description=help_text)
        else:
            if group not in groups:
                gp = top.add_parser(group, help=GROUPS[group], description=GROUPS[group])
                groups[group] = gp.add_subparsers(dest="kind", required=True, metavar="KIND")
            p = groups[group].add_parser(name[0], help=help_text, description=help_text)
        if words[: len(command)] == list(command):
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.main(args)
    except (ConfigError, ValueError, FileNotFoundError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OutputFull as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
