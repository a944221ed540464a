"""Each published dataset layout (tests/dataset_layouts.py) imported as its publisher ships it, with no
`--set`, through the real command on a local Ray and read back with webdataset: every record arrives with its
images in the right places, sidecars leave no ledger line, drops are counted in the user's unit, hostile members
are refused, and an import that takes nothing in says why and fails under --strict."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests import dataset_layouts as layouts
from vlcorpus.cli import main as cli
from vlcorpus.ledger import Ledger

LAYOUTS = {
    **layouts.WRITERS,
    "mmc4_zip_script": lambda root: layouts.write_mmc4_zip(root, zip_name="script", images_dir="stem"),
    "img2dataset_files": lambda root: layouts.write_img2dataset(root, output_format="files"),
    "hf_parquet_embed": lambda root: layouts.write_hf_parquet(root, embed=True),
    **layouts.BAD_INPUT,
    "hf_parquet_outside": lambda root: layouts.write_hf_parquet(root, images_outside=True),
}


def ledger(out: Path, source: str) -> list:
    return list(Ledger(out, source).latest().values())


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_imports_as_published(name, tmp_path):
    exp = LAYOUTS[name](tmp_path / "in")
    layouts.check_faithful(exp)
    out = tmp_path / "out"
    assert cli(["import", exp.command, str(exp.input), "--out", str(out), "--num-cpus", "1"]) == 0
    assert not exp.compare(layouts.load_corpus(out, exp.category, exp.images))
    entries = ledger(out, exp.command)
    origins = {e.origin for e in entries}
    assert not [s for s in exp.sidecars if any(o == s or o.startswith(f"{s}:") for o in origins)], "a sidecar got a ledger line"
    counts: Counter = Counter()
    for e in entries:
        counts.update(e.counts)
    assert dict(counts) == (exp.drops or {"records": exp.records, "imported": exp.records})
    assert {e.origin for e in entries if e.error_class == "UnsafeInput"} == set(exp.refused)
    assert not [e for e in entries if e.status == "failed" and e.error_class != "UnsafeInput"]
    for p in exp.must_not_exist:
        assert not p.exists()
    assert not list(tmp_path.rglob("mmc4_zip_escape.jsonl"))


@pytest.mark.usefixtures("ray_local")
def test_an_import_of_nothing_says_why_and_fails_under_strict(tmp_path, capsys):
    """OBELICS without its images downloaded: every document is dropped (`image_remote`); the console names the
    reason, and --strict turns it into exit status 3. A folder with nothing importable says so too."""
    exp = layouts.write_obelics(tmp_path / "obelics", images="none")
    out = tmp_path / "out"
    assert cli(["import", "interleaved", str(exp.input), "--out", str(out), "--num-cpus", "1"]) == 0
    shown = capsys.readouterr().out
    assert "imported 0 of 2 documents" in shown and "image_remote 2" in shown and "with img2dataset" in shown
    assert cli(["import", "interleaved", str(exp.input), "--out", str(out), "--num-cpus", "1", "--strict"]) == 3
    (tmp_path / "empty").mkdir()
    assert cli(["import", "caption", str(tmp_path / "empty"), "--out", str(out), "--strict"]) == 3
    assert "no inputs were found" in capsys.readouterr().out


@pytest.mark.usefixtures("ray_local")
def test_strict_share_of_drops(tmp_path, capsys):
    """COCO with one caption of six pointing at a missing image id: 17% dropped passes the default 20% share and
    fails a 10% one under --strict."""
    exp = layouts.write_coco(tmp_path / "coco", bad_image_id=True)
    out = tmp_path / "out"
    assert cli(["import", "caption", str(exp.input), "--out", str(out), "--num-cpus", "1", "--strict"]) == 0
    assert "5 of 6 captions imported" in capsys.readouterr().out
    assert cli(["import", "caption", str(exp.input), "--out", str(out), "--strict", "--max-drop-share", "0.1"]) == 3
    assert "unknown_image_id 1" in capsys.readouterr().out
