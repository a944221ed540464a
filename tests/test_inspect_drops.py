"""`vlcorpus inspect` shows what every source dropped, by reason, SFT staging included, and counts only output shards
in its totals."""

from __future__ import annotations

import json

import pytest

from vlcorpus.cli import main as cli
from vlcorpus.drops import drop_report
from vlcorpus.ledger import Entry


def conversation(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


@pytest.mark.usefixtures("ray_local")
def test_inspect_of_sft_builds(tmp_path, capsys):
    conv = tmp_path / "conv"
    conv.mkdir()
    dropped = [conversation(("human", f"Question {i}?"), ("gpt", "An answer."), ("human", "Sure?")) for i in range(3)]
    (conv / "all_dropped.json").write_text(json.dumps(dropped))
    out = tmp_path / "dropped"
    assert cli(["build", "sft", str(conv), "--out", str(out), "--set", "classifier=keyword"]) == 0
    capsys.readouterr()
    assert cli(["inspect", str(out), "--samples", "0"]) == 0
    shown = capsys.readouterr().out
    assert "ledger sft_in (_sft_staging): ok 0, filtered 1, failed 0, samples 0" in shown
    assert "dropped: ends_with_user_turn 3" in shown and "\n0 shard(s)" in shown

    (conv / "sft_text").mkdir()
    (conv / "sft_text" / "chat.json").write_text(json.dumps([conversation(("human", "What is two plus two?"), ("gpt", "Four."))]))
    out = tmp_path / "one"
    assert cli(["build", "sft", str(conv), "--out", str(out), "--set", "classifier=keyword"]) == 0
    capsys.readouterr()
    assert cli(["inspect", str(out), "--samples", "0"]) == 0
    shown = capsys.readouterr().out
    assert "\n1 shard(s)\n  sft_text                1 samples" in shown  # the staged copy is not counted as output
    assert "not counted (staging and eval folders): _sft_staging/ 1 shard(s)" in shown
    assert "ledger sft (train): " not in shown and "ledger sft: ok 1" in shown


def test_counts_of_what_was_made_are_not_drops():
    entry = Entry(doc="d", origin="d", status="ok", samples=3, counts={
        "derived_chart_to_code": 2, "text_from_latex": 1, "pages_from_text_layer": 1, "page_low_confidence": 1,
        "answer_length_out_of_bounds": 4})
    assert drop_report([entry]).reasons == {"page_low_confidence": 1, "answer_length_out_of_bounds": 4}
