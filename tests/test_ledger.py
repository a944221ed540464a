"""The ledger: a crash mid-append loses nothing committed, and one run at a time writes it."""

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


def test_second_run_on_the_same_ledger_is_refused(tmp_path):
    first, second = Ledger(tmp_path, "src"), Ledger(tmp_path, "src")
    with first:
        with pytest.raises(RuntimeError, match="another run"), second:
            pass
    with second:  # released on exit
        pass
