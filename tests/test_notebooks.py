"""Notebook plot/code pairs: the renderer on built notebooks, the dependency rule, and the Ray job on bad input."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import webdataset as wds
from notebook_fixtures import (
    PLOT_CODE,
    b64,
    bomb_png,
    code_cell,
    image_output,
    notebook,
    plot_notebook,
    plot_png,
    png_output,
    write,
    write_huge_output_notebook,
)
from PIL import Image

from renderers.notebook.code import cell_names, clean_code, collate, dependencies
from renderers.notebook.pairs import NotebookConfig, NotebookError, render
from tests.helpers import sample_view
from vlcorpus import cli
from vlcorpus.config import load_config
from vlcorpus.document import DocInput, Filtered
from vlcorpus.ledger import Ledger
from vlcorpus.shards import shard_paths

DEMO = Path(__file__).resolve().parent.parent / "demo" / "notebooks"


def run(path: Path, cfg: NotebookConfig | None = None) -> tuple[list, Counter]:
    stats: Counter = Counter()
    samples = [s.validate() for s in render(DocInput(path.name, path.name, str(path)), cfg or NotebookConfig(), stats)]
    return samples, stats


def test_plot_paired_with_the_cells_it_depends_on(tmp_path):
    samples, stats = run(write(tmp_path / "a.ipynb", plot_notebook()))
    assert len(samples) == 1 and stats["pairs"] == 1
    s = samples[0]
    assert s.category == "web_code" and s.source == "notebook" and s.part == 0
    assert [list(seg) for seg in s.segments] == [["image"], ["text"]]
    code = s.segments[1]["text"]
    assert code.startswith("import numpy as np\nimport matplotlib.pyplot as plt")
    assert "xs = np.linspace" in code and code.endswith(PLOT_CODE)
    assert "unrelated" not in code  # the plot does not read it
    assert s.meta["cell"] == 4 and s.meta["code"]["cells"] == [1, 2, 4] and s.meta["code"]["analysis"] == "ast"
    assert s.meta["kernel"]["language"] == "python"
    assert s.meta["image"] == {"width": 160, "height": 120, "mime": "image/png"}
    assert s.meta["filters"]["images_in_cell"] == 1 and s.meta["filters"]["cell_code_lines"] == 6
    assert "not_uniform" in s.meta["filters"]["image_checks"]
    with Image.open(io.BytesIO(s.images["0.png"])) as im:
        assert im.size == (160, 120)


def test_dependency_rule():
    codes = {
        0: "from pylab import *",
        1: "import pandas as pd\nimport numpy as np",
        2: "df = pd.read_csv('x.csv')",
        3: "df['z'] = df.x * 2",  # a mutation: part of df's story
        4: "def f(a):\n    return np.sqrt(a) + scale",  # free names of a function body
        5: "scale = 3\nother = 1",
        6: "df.plot(f(df.z)); linspace(0, 1)",  # linspace only from the star import
        7: "this is not python (",
    }
    names = {i: cell_names(c, python=True) for i, c in codes.items()}
    assert names[4].needs == set() and names[4].deferred == {"np", "scale"} and names[4].binds == {"f"}
    assert names[3].binds == {"df"} and names[3].needs == {"df"}
    assert not names[7].parsed and "python" in names[7].needs
    # direct dependencies first (f, df, the star import for linspace), then what they need; f's body reads
    # `scale` when called from cell 6, so the later cell 5 counts
    assert dependencies(6, names) == [4, 3, 0, 5, 2, 1]
    assert cell_names("x = x + 1", python=True).needs == {"x"}  # read before bound
    assert cell_names("x = 1\ny = x", python=True).needs == frozenset()
    # text fallback for a cell that does not parse
    fallback = cell_names("y <- read(x)\nplot(y", python=False)
    assert fallback.binds == {"y"} and "x" in fallback.needs and not fallback.parsed
    # the budget keeps the first dependencies in that order and reports the rest
    ctx = collate(6, codes, names, max_lines=4, max_chars=10_000)
    assert ctx.cells == [3, 4, 6] and ctx.omitted == [0, 1, 2, 5]


def test_prompts_and_magics():
    prompted = ">>> import math\n>>> math.pi\n3.14159\nIn [3]: x = 1"
    assert clean_code(prompted, keep_magics=False) == "import math\nmath.pi\nx = 1"
    cell = "%matplotlib inline\n!pip install foo\nplt.plot(x)  # why?\nplt.plot?\n??np.linspace"
    assert clean_code(cell, keep_magics=False) == "plt.plot(x)  # why?"
    assert clean_code(cell, keep_magics=True) == cell
    assert clean_code("%%bash\nls", keep_magics=False) is None
    assert clean_code("%%time\nx = 1", keep_magics=False) == "x = 1"


def test_magics_kept_by_flag(tmp_path):
    nb = plot_notebook()
    nb["cells"][4]["source"] = "%matplotlib inline\n" + PLOT_CODE
    path = write(tmp_path / "m.ipynb", nb)
    assert "%matplotlib" not in run(path)[0][0].text
    kept = run(path, NotebookConfig(keep_magics=True))[0][0]
    assert "%matplotlib inline" in kept.text and kept.meta["code"]["analysis"] == "ast"


def test_paper_filters_and_image_checks(tmp_path):
    cells = [code_cell("import matplotlib.pyplot as plt", [])]
    cells.append(code_cell(PLOT_CODE, [png_output(plot_png(1)), png_output(plot_png(2))]))  # two images
    cells.append(code_cell("plt.plot(xs)\nplt.show()", [png_output(plot_png(3))]))  # two lines
    cells.append(code_cell(PLOT_CODE, [png_output(_blank_png((200, 100)))]))
    cells.append(code_cell(PLOT_CODE, [png_output(plot_png(5, size=(20, 20)))]))
    cells.append(code_cell(PLOT_CODE, [png_output(plot_png(4))]))  # the one kept
    path = write(tmp_path / "f.ipynb", notebook(cells))
    samples, stats = run(path)
    assert [s.meta["cell"] for s in samples] == [5]
    assert stats["not_one_image"] == 1 and stats["code_too_short"] == 1
    assert stats["image_uniform"] == 1 and stats["image_too_small"] == 1
    assert stats["images"] == 6
    # both paper filters are configurable; a cell's several images get their own parts
    loose = load_config(NotebookConfig, None, ["one_image_only=false", "min_cell_lines=2"])
    samples, _ = run(path, loose)
    assert [(s.meta["cell"], s.part) for s in samples] == [(1, 0), (1, 1), (2, 2), (5, 5)]
    # a plot cell longer than the code budget on its own is dropped, not cut
    samples, stats = run(path, NotebookConfig(max_code_lines=5, min_cell_lines=2))
    assert [s.meta["cell"] for s in samples] == [2] and stats["code_over_budget"] == 3


def _blank_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (250, 250, 250)).save(out, format="PNG")
    return out.getvalue()


def test_real_world_malformations_are_tolerated(tmp_path):
    lines = b64(plot_png(7))
    wrapped = [lines[i : i + 76] + "\n" for i in range(0, len(lines), 76)]  # old notebooks wrap base64 in lines
    cells = [
        {"cell_type": "code", "metadata": {}, "source": ["import matplotlib.pyplot as plt\n", "xs = ys = [1, 2]"]},
        code_cell("x = 1", [{"output_type": "widget_state", "data": {}}, "not even a dict"]),
        code_cell(PLOT_CODE, [{"output_type": "mystery"}, image_output({"image/png": wrapped})]),
        {"cell_type": "raw", "source": 7},
    ]
    samples, stats = run(write(tmp_path / "odd.ipynb", notebook(cells)))
    assert len(samples) == 1 and samples[0].meta["code"]["cells"] == [0, 2]
    assert stats["unknown_output"] == 3


def test_jpeg_alpha_and_svg_outputs(tmp_path):
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="300pt" height="150pt" viewBox="0 0 300 150">'
           '<rect width="300" height="150" fill="white"/><path d="M10 140 L290 10" stroke="blue" stroke-width="3"/>'
           "</svg>")
    opaque_rgba = plot_png(3, mode="RGBA")
    cells = [
        code_cell(PLOT_CODE, [image_output({"image/jpeg": b64(plot_png(1, fmt="JPEG"))})]),
        code_cell(PLOT_CODE, [image_output({"image/png": b64(plot_png(2, mode="RGBA", background=(0, 0, 0, 0)))})]),
        code_cell(PLOT_CODE, [image_output({"image/png": b64(opaque_rgba)})]),
        code_cell(PLOT_CODE, [image_output({"image/svg+xml": svg})]),
    ]
    samples, _ = run(write(tmp_path / "kinds.ipynb", notebook(cells)), NotebookConfig(svg_max_side=200))
    assert [list(s.images) for s in samples] == [["0.jpg"], ["0.png"], ["0.png"], ["0.png"]]
    with Image.open(io.BytesIO(samples[1].images["0.png"])) as im:
        assert im.mode == "RGB" and im.getpixel((2, 2)) == (255, 255, 255)  # transparency flattened onto white
    assert samples[2].images["0.png"] == opaque_rgba  # nothing to flatten: the original bytes are kept
    svg_sample = samples[3]
    assert svg_sample.meta["image"]["mime"] == "image/svg+xml"
    assert (svg_sample.meta["image"]["width"], svg_sample.meta["image"]["height"]) == (200, 100)  # 400x200 px, scaled


def test_nbformat_v3_is_upgraded(tmp_path):
    png = b64(plot_png(3))
    v3 = {
        "nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"},
        "worksheets": [{"metadata": {}, "cells": [
            {"cell_type": "code", "language": "python", "input": ["import pylab as pl\n", "xs = ys = range(3)"],
             "prompt_number": 1, "metadata": {}},  # no outputs key
            {"cell_type": "heading", "level": 1, "source": "Plot", "metadata": {}},
            {"cell_type": "code", "language": "python", "input": PLOT_CODE.replace("plt.", "pl."),
             "collapsed": False, "metadata": {}, "prompt_number": 2,
             "outputs": [{"output_type": "display_data", "png": png, "metadata": {}}, {"bogus": 1}]},
        ]}],
    }
    samples, _ = run(write(tmp_path / "v3.ipynb", v3))
    assert len(samples) == 1
    s = samples[0]
    assert s.meta["cell"] == 2 and s.meta["code"]["cells"] == [0, 2] and s.meta["kernel"]["language"] is None
    assert s.text.startswith("import pylab as pl")
    # a real notebook written by nbformat as v3 (split lines, v3 output keys) gives the same pairs as its v4 form
    v4_path = DEMO / "06_decision_trees.ipynb"
    nbformat.write(nbformat.convert(nbformat.read(v4_path, as_version=4), 3), tmp_path / "06_v3.ipynb")
    as_v3 = [(s.part, s.text, s.images) for s in run(tmp_path / "06_v3.ipynb")[0]]
    assert as_v3 and as_v3 == [(s.part, s.text, s.images) for s in run(v4_path)[0]]


def test_kernel_languages(tmp_path):
    nb = notebook([code_cell("library(ggplot2)\nd <- read.csv('x')\n", []),
                   code_cell("p <- ggplot(d)\np <- p + geom_point()\np <- p + xlab('x')\nprint(p)\n# done\n",
                             [png_output(plot_png(9))])], language="R")
    path = write(tmp_path / "r.ipynb", nb)
    with pytest.raises(Filtered, match="kernel language 'r'"):
        run(path)
    samples, _ = run(path, NotebookConfig(languages=[]))
    assert samples[0].meta["code"]["analysis"] == "text" and samples[0].meta["code"]["cells"] == [0, 1]


def test_unreadable_notebooks_raise_clear_errors(tmp_path):
    text = json.dumps(plot_notebook())
    with pytest.raises(NotebookError, match="truncated or invalid JSON"):
        run(write(tmp_path / "cut.ipynb", text[: len(text) // 2]))
    with pytest.raises(NotebookError, match="unsupported nbformat 5"):
        run(write(tmp_path / "v5.ipynb", {**plot_notebook(), "nbformat": 5}))
    with pytest.raises(NotebookError, match="unsupported nbformat None"):
        run(write(tmp_path / "plain.ipynb", {"some": "json"}))
    with pytest.raises(Filtered, match="no code cell has an image"):
        run(write(tmp_path / "none.ipynb", notebook([code_cell("x = 1", [])])))


def test_bad_images_are_dropped_with_reasons(tmp_path):
    cells = [code_cell(PLOT_CODE, [image_output({"image/png": "@@@ not base64 !!!"})]),
             code_cell(PLOT_CODE, [png_output(bomb_png(5000, 5000))]),  # under PIL's own limit, over ours
             code_cell(PLOT_CODE, [png_output(bomb_png(20000, 20000))]),  # over PIL's decompression-bomb limit
             code_cell(PLOT_CODE, [png_output(plot_png(1)[:200])])]  # truncated PNG
    with pytest.raises(Filtered) as info:
        run(write(tmp_path / "bad.ipynb", notebook(cells)))
    message = str(info.value)
    assert message.startswith("no plot/code pair kept (image_too_many_pixels 2, image_undecodable 2, images 4): ")
    assert "cell 0: image/png output: image data is not valid base64" in message
    assert "cell 1: image/png output: image of 5000x5000 = 25,000,000 pixels is over 16,000,000" in message
    assert "cell 2: image/png output: image is a decompression bomb" in message
    assert "cell 3: image/png output: image does not decode" in message


def _ledger(out: Path) -> dict:
    return {e.doc: e for e in Ledger(out, "notebook").latest().values()}


@pytest.mark.slow
def test_job_on_bad_input_goes_on(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write(src / "good.ipynb", plot_notebook(seed=1))
    (src / "copy").mkdir()
    write(src / "copy" / "good.ipynb", plot_notebook(seed=1))
    (src / ".ipynb_checkpoints").mkdir()  # Jupyter's autosave copies are not inputs
    write(src / ".ipynb_checkpoints" / "other-checkpoint.ipynb", plot_notebook(seed=2))
    write(src / "other.ipynb", plot_notebook(seed=2))
    text = json.dumps(plot_notebook(seed=3))
    write(src / "truncated.ipynb", text[: len(text) - 40])
    write(src / "wrong_version.ipynb", {**plot_notebook(seed=4), "nbformat": 2})
    write(src / "bad_base64.ipynb", notebook([code_cell(PLOT_CODE, [image_output({"image/png": "!!not*base64"})])]))
    write(src / "bomb.ipynb", notebook([code_cell(PLOT_CODE, [png_output(bomb_png(20000, 20000))])]))
    write_huge_output_notebook(src / "huge.ipynb", 200)
    out = tmp_path / "corpus"
    args = ["extract", "notebooks", str(src), "--out", str(out), "--doc-memory-gb", "2"]
    assert cli.main(args) == 0
    ledger = _ledger(out)
    assert len(ledger) == 8
    assert ledger["truncated.ipynb"].status == "failed" and ledger["truncated.ipynb"].error_class == "NotebookError"
    assert "truncated or invalid JSON" in ledger["truncated.ipynb"].error
    assert "unsupported nbformat 2" in ledger["wrong_version.ipynb"].error
    assert ledger["bad_base64.ipynb"].status == "filtered" and "not valid base64" in ledger["bad_base64.ipynb"].error
    assert "decompression bomb" in ledger["bomb.ipynb"].error
    assert ledger["huge.ipynb"].status == "filtered" and "over the 64 MB limit" in ledger["huge.ipynb"].error
    # the two identical notebooks: one owns the image, the other is a job-wide duplicate
    pair = [ledger["good.ipynb"], ledger["copy/good.ipynb"]]
    assert sorted(e.status for e in pair) == ["filtered", "ok"]
    assert "duplicate_image" in next(e.error for e in pair if e.status == "filtered")
    assert ledger["other.ipynb"].status == "ok" and ledger["other.ipynb"].counts["pairs"] == 1

    # the shards read back with the webdataset library
    tars = [str(p) for p in shard_paths(out / "web_code")]
    rows = [sample_view(r, pil=True) for r in wds.WebDataset(tars, shardshuffle=False)]
    assert len(rows) == 2
    assert {row["json"]["meta"]["notebook"] for row in rows} - {"good.ipynb", "copy/good.ipynb"} == {"other.ipynb"}
    for row in rows:
        assert row["json"]["segments"][0] == {"image": "0.png"} and row["0.png"].size == (160, 120)
        assert row["json"]["segments"][1]["text"].endswith(PLOT_CODE)
        assert row["json"]["meta"]["filters"]["image_checks"][-1] == "job_unique"

    # a resumed job renders nothing again; a new copy of a written image is dropped against the committed shards
    write(src / "late_copy.ipynb", plot_notebook(seed=2))
    assert cli.main(args) == 0
    ledger = _ledger(out)
    assert len(ledger) == 9 and ledger["late_copy.ipynb"].status == "filtered"
    assert "duplicate_image" in ledger["late_copy.ipynb"].error
    assert len(list(wds.WebDataset([str(p) for p in shard_paths(out / "web_code")], shardshuffle=False))) == 2


@pytest.mark.slow
def test_huge_output_inside_the_file_limit_is_skipped_in_bounded_memory(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_huge_output_notebook(src / "huge.ipynb", 200)
    out = tmp_path / "corpus"
    args = ["extract", "notebooks", str(src), "--out", str(out), "--doc-memory-gb", "2", "--set", "max_file_mb=512"]
    assert cli.main(args) == 0
    entry = _ledger(out)["huge.ipynb"]
    assert entry.status == "filtered"  # not failed: no MemoryError under the 2 GB bound
    assert "image/png output: 200.0 MB encoded, over the 8 MB limit" in entry.error


def test_demo_notebooks_yield_pairs():
    paths = sorted(DEMO.glob("*.ipynb"))
    assert len(paths) >= 2
    samples = []
    for path in paths:
        got, stats = run(path)
        assert got and stats["pairs"] == len(got)
        nb = json.loads(path.read_text("utf-8"))
        for s in got:
            own = clean_code("".join(nb["cells"][s.meta["cell"]]["source"]), keep_magics=False)
            assert s.text.endswith(own) and s.meta["code"]["cells"][-1] == s.meta["cell"]
        samples += got
    # the setup cell importing matplotlib is a direct dependency of nearly every plot and fits the default budget
    assert sum("import matplotlib" in s.text for s in samples) >= 0.9 * len(samples)


@pytest.mark.slow
def test_images_of_uncommitted_shards_do_not_count_as_written(ray_local, tmp_path):
    src, out = tmp_path / "in", tmp_path / "corpus"
    src.mkdir()
    write(src / "first.ipynb", plot_notebook(seed=5))
    assert cli.main(["extract", "notebooks", str(src), "--out", str(out)]) == 0
    assert len(shard_paths(out / "web_code")) == 1
    (out / "_ledger" / "notebook.jsonl").write_text("")  # as if the job died before committing its batch
    (src / "first.ipynb").rename(src / "second.ipynb")  # the same image under another document id
    assert cli.main(["extract", "notebooks", str(src), "--out", str(out)]) == 0
    ledger = _ledger(out)
    assert list(ledger) == ["second.ipynb"] and ledger["second.ipynb"].status == "ok"
    rows = list(wds.WebDataset([str(p) for p in shard_paths(out / "web_code")], shardshuffle=False))
    assert [sample_view(r)["json"]["doc"] for r in rows] == ["second.ipynb"]
