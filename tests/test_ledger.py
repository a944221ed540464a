"""The ledger: a crash mid-append loses nothing committed, and one run at a time writes it."""

import errno
import os

import pytest

from vlcorpus.ledger import Entry, Ledger


def test_ledger_ignores_a_torn_last_line_and_repairs_it_on_append(tmp_path):
    ledger = Ledger(tmp_path, "src")
    ledger.append([Entry(doc="a", origin="a", status="ok", samples=1)])
    with open(ledger.path, "a") as f:
        f.write('{"doc": "b", "origin": "b", "sta')  # a crash mid-append
    assert list(ledger.latest()) == ["a"]
    ledger.append([Entry(doc="c", origin="c", status="failed", error_class="X", error="boom")])
    latest = ledger.latest()
    assert list(latest) == ["a", "c"] and latest["c"].error == "boom"


def test_a_disk_full_mid_append_commits_none_of_the_batch(tmp_path, monkeypatch):
    """The disk fills after half of a batch's lines are written: those complete lines would commit documents whose
    shards the job then removes. The append is cut back to where it began before the error goes on."""
    ledger = Ledger(tmp_path, "src")
    ledger.append([Entry(doc="a", origin="a", status="ok", samples=1)])
    before = ledger.path.read_bytes()
    real, calls = os.write, []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", half_then_full)
    batch = [Entry(doc=d, origin=d, status="ok", samples=1) for d in ("b", "c", "d", "e")]
    with pytest.raises(OSError, match="No space left"):
        ledger.append(batch)
    monkeypatch.undo()
    assert len(calls) == 2 and ledger.path.read_bytes() == before and list(ledger.latest()) == ["a"]


def test_second_run_on_the_same_ledger_is_refused(tmp_path):
    first, second = Ledger(tmp_path, "src"), Ledger(tmp_path, "src")
    with first:
        with pytest.raises(RuntimeError, match="another run"), second:
            pass
    with second:  # released on exit
        pass
