import json
import re

import pytest

from renderers.records.text import split_paragraphs
from vlcorpus.cli import main
from vlcorpus.ledger import Ledger
from vlcorpus.shards import read_samples, shard_paths

PARAGRAPH = "The quick brown fox jumps over the lazy dog. " * 8


def test_split_paragraphs_packs_without_losing_text():
    text = "\n\n".join(f"{i} {PARAGRAPH}" for i in range(10))
    pieces = list(split_paragraphs(text, max_chars=1000))
    assert all(len(p) <= 1000 for p in pieces) and len(pieces) > 1
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_a_long_paragraph_is_cut_at_line_ends_only():
    para = "\n".join(f"line {i} " + "w" * (i % 70) for i in range(5000))  # one paragraph of 5000 lines
    pieces = list(split_paragraphs(para, max_chars=1000))
    assert all(len(p) <= 1000 for p in pieces) and len(pieces) > 100
    assert "\n".join(pieces) == para  # every cut is at a line end, nothing is lost or repeated


@pytest.mark.usefixtures("ray_local")
def test_import_text_then_inspect(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.md").write_text("\n\n".join(PARAGRAPH for _ in range(30)))
    (src / "sub" / "b.txt").write_text(PARAGRAPH * 2)
    (src / "tiny.txt").write_text("too short")
    (src / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    out = tmp_path / "corpus"
    assert main(["import", "text", str(src), "--out", str(out), "--set", "max_chars=2000"]) == 0
    samples = list(read_samples(shard_paths(out / "text")))
    assert {s.doc for s in samples} == {"a.md", "sub/b.txt"}
    assert all(len(s.text) <= 2000 for s in samples)
    latest = Ledger(out, "text").latest()
    assert latest["tiny.txt"].status == "filtered" and latest["tiny.txt"].counts == {"text_too_short": 1}
    assert latest["latin1.txt"].status == "failed" and "UTF-8" in latest["latin1.txt"].error
    capsys.readouterr()
    assert main(["inspect", str(out), "--verify", "--samples", "1"]) == 0
    shown = capsys.readouterr().out
    shards = shard_paths(out / "text")
    assert f"verified {len(shards)} shard(s)" in shown
    assert re.search(rf"^  text +{len(samples)} samples +\d+ text tokens", shown, re.M), shown
    assert "ledger text: ok 2, filtered 1, failed 1" in shown
    assert json.loads((out / "text" / "index.json").read_text())["samples"] == len(samples)


@pytest.mark.usefixtures("ray_local")
def test_files_the_job_does_not_read_get_a_ledger_line(tmp_path, capsys):
    import gzip

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(PARAGRAPH * 3)
    (src / "README.md.gz").write_bytes(gzip.compress(PARAGRAPH.encode()))
    (src / "notes.jsonl").write_text(json.dumps({"text": PARAGRAPH * 3}) + "\n")
    out = tmp_path / "corpus"
    for _ in range(2):  # the re-run writes no second line
        assert main(["import", "text", str(src), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "_ledger" / "text.jsonl").read_text().splitlines()]
    skipped = [e for e in lines if e["doc"] == "README.md.gz"]
    assert len(skipped) == 1 and skipped[0]["status"] == "filtered" and skipped[0]["counts"] == {"file_skipped": 1}
    assert ".txt, .md" in skipped[0]["error"]
    latest = Ledger(out, "text").latest()
    assert latest["a.txt"].status == "ok" and any(d.startswith("notes.jsonl") and e.status == "ok" for d, e in latest.items())
    assert "1 filtered" in capsys.readouterr().out.splitlines()[-2]


def test_bad_renderer_setting_stops_at_once(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    assert main(["import", "text", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "max_chars=10", "--set", "min_chars=50"]) == 2
    assert "min_chars" in capsys.readouterr().err
