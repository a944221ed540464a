"""Progress in a log is lines, not carriage-return frames."""

from vlcorpus import progress as progress_module
from vlcorpus.progress import LogProgress, progress


def test_a_log_gets_periodic_lines_not_bar_frames(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    with progress(4, "render stub", unit="doc") as bar:  # pytest's captured stderr is not a terminal
        assert isinstance(bar, LogProgress)
        for _ in range(4):
            bar.update(1)
            bar.set_postfix({"ok": 1}, refresh=False)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 5  # one per update (the interval is 0 here) and the last one at close
    assert lines[0].startswith("render stub: 1/4 doc (25%), ") and lines[-1].startswith("render stub: 4/4 doc (100%)")
    assert lines[-1].endswith(", ok=1")


def test_lines_are_spaced_by_the_interval(capsys):
    bar = LogProgress(1000, "train stage1", unit="step", initial=10)
    for _ in range(990):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("train stage1: 1000/1000 step (100%)")
