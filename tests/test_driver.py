import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import stub_renderers
from vlcorpus.document import Bounds, DocInput
from vlcorpus.driver import Options, run_pipeline
from vlcorpus.ledger import Ledger
from vlcorpus.shards import read_samples, shard_paths, verify_shard
from vlcorpus.stage import Stage

pytestmark = pytest.mark.usefixtures("ray_local")


def docs(*names: str) -> list[DocInput]:
    return [DocInput(doc=n, origin=f"in/{n}", path=f"/nonexistent/{n}") for n in names]


def stage(batch_size: int = 3, bounds: Bounds = Bounds(), **cfg) -> Stage:
    return Stage(source="stub", render=stub_renderers.render, config=cfg, batch_size=batch_size, bounds=bounds)


def keys(out: Path) -> list[str]:
    return [s.key for s in read_samples(shard_paths(out / "text"))]


def test_every_document_lands_in_the_ledger_and_bad_ones_do_not_stop_the_job(tmp_path):
    names = ["a", "raise1", "hang1", "hog1", "filter1", "offcontract1", "b"]
    bounds = Bounds(timeout_s=5, memory_gb=1.0)
    counts = run_pipeline(stage(batch_size=4, bounds=bounds), docs(*names), Options(out=tmp_path))
    latest = Ledger(tmp_path, "stub").latest()
    assert set(latest) == set(names)
    assert counts == {"ok": 2, "filtered": 1, "failed": 4, "samples": 4}
    assert latest["a"].status == "ok" and latest["a"].samples == 2 and latest["a"].counts == {"pages": 2}
    assert latest["raise1"].error_class == "ValueError" and "cannot parse raise1" in latest["raise1"].error
    assert latest["hang1"].error_class == "Timeout" and "5 s" in latest["hang1"].error
    assert latest["hog1"].error_class in ("MemoryError", "ProcessDied")
    assert latest["filter1"].status == "filtered" and "text layer" in latest["filter1"].error
    assert latest["filter1"].counts == {"pages_without_text": 3}
    assert latest["offcontract1"].error_class == "ContractError" and "segments" in latest["offcontract1"].error
    got = keys(tmp_path)
    assert len(got) == len(set(got)) == 4
    for shard in shard_paths(tmp_path / "text"):
        verify_shard(shard)
    index = json.loads((tmp_path / "text" / "index.json").read_text())
    assert index["samples"] == 4


def test_rerun_skips_done_documents_and_retries_failed_on_request(tmp_path):
    run_pipeline(stage(bounds=Bounds(timeout_s=10, memory_gb=2.0)), docs("a", "b", "raise1"), Options(out=tmp_path))
    first = sorted(keys(tmp_path))
    counts = run_pipeline(stage(), docs("a", "b", "raise1", "c"), Options(out=tmp_path))
    assert counts["ok"] == 1 and counts["failed"] == 0  # only c was pending
    after = keys(tmp_path)
    assert set(first) < set(after) and len(after) == len(set(after)) == 6
    retried = run_pipeline(stage(), docs("a", "b", "raise1", "c"), Options(out=tmp_path, retry_failed=True))
    assert retried["failed"] == 1 and retried["ok"] == 0
    assert len(Ledger(tmp_path, "stub").path.read_text().splitlines()) == 5


def test_a_child_that_dies_mid_batch_keeps_what_earlier_documents_wrote(tmp_path):
    """The batch's shard survives its child: the replacement resumes it, so a, b and c land once; the exception that
    cannot unpickle (as tarfile's filter errors) still reaches the ledger by class and message."""
    names = ["a", "crash1", "b", "twoarg1", "c"]  # batches of 2 on the 2 CPUs: [a, crash1] [b, twoarg1] [c]
    counts = run_pipeline(stage(batch_size=5), docs(*names), Options(out=tmp_path))
    latest = Ledger(tmp_path, "stub").latest()
    assert counts == {"ok": 3, "filtered": 0, "failed": 2, "samples": 6}
    assert latest["crash1"].error_class == "ProcessDied" and "died" in latest["crash1"].error
    assert latest["twoarg1"].error_class == "TwoArgError"
    assert latest["twoarg1"].error == "twoarg1: link outside the archive"
    shards = shard_paths(tmp_path / "text")
    assert sorted(d for s in shards for d in verify_shard(s).docs) == ["a", "b", "c"]
    assert sorted((s.doc, s.part) for s in read_samples(shards)) == [(d, p) for d in "abc" for p in (0, 1)]
    assert latest["a"].shards == [f"text/{shards[0].name}"]  # the shard open when the child died, finished by the next


def test_one_bounded_child_serves_batch_after_batch(tmp_path):
    children = tmp_path / "children"
    children.mkdir()
    counts = run_pipeline(stage(batch_size=2, child_pid_dir=str(children)), docs(*[f"d{i}" for i in range(16)]),
                          Options(out=tmp_path / "out"))
    assert counts["ok"] == 16
    assert 1 <= len(list(children.iterdir())) < 8, "a child was started per batch (8 batches)"


def test_duplicate_document_ids_stop_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="given twice"):
        run_pipeline(stage(), docs("a", "a"), Options(out=tmp_path))


def test_killed_ray_worker_is_retried_and_no_sample_is_duplicated(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed: list[int] = []

    def kill_first_worker():
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            for f in pid_dir.glob("*.pid"):
                pid = int(f.stem)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    names = [f"d{i}" for i in range(8)]
    counts = run_pipeline(stage(batch_size=4, pid_dir=str(pid_dir), sleep=0.5), docs(*names), Options(out=tmp_path / "out"))
    killer.join()
    assert killed, "no Ray worker was killed"
    assert counts["ok"] == 8
    got = keys(tmp_path / "out")
    assert len(got) == len(set(got)) == 16


CRASH_SCRIPT = """
import sys
from tests import stub_renderers
from vlcorpus.document import DocInput
from vlcorpus.driver import Options, run_pipeline
from vlcorpus.stage import Stage
from vlcorpus.runtime import init_ray
init_ray(num_cpus=1)
docs = [DocInput(doc=f"d{i:02d}", origin=f"d{i:02d}", path="-") for i in range(int(sys.argv[2]))]
run_pipeline(Stage(source="stub", render=stub_renderers.render, config={"sleep": 0.3}, batch_size=2),
             docs, Options(out=sys.argv[1], max_shard_samples=3))
"""


@pytest.mark.slow
def test_sigkill_mid_job_then_rerun_gives_every_input_exactly_once(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(out), "16"], env=env, start_new_session=True)
    ledger = out / "_ledger" / "stub.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and (not ledger.exists() or len(ledger.read_text().splitlines()) < 4):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(ledger.read_text().splitlines())
    assert 4 <= committed < 16, "the kill did not land mid-job"
    counts = run_pipeline(stage(batch_size=2), docs(*[f"d{i:02d}" for i in range(16)]), Options(out=out))
    assert counts["ok"] == 16 - committed
    got = keys(out)
    assert len(got) == len(set(got)) == 32
    assert not list(out.rglob(".*.tmp"))
    for shard in shard_paths(out / "text"):
        verify_shard(shard)


@pytest.fixture
def small_volume(tmp_path):
    """A 3 MB tmpfs: a real disk-full condition (needs root, as in CI)."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_at_commit_time_removes_every_uncommitted_batch(tmp_path, monkeypatch):
    """The disk fills when the driver appends a batch's ledger lines (not in a worker): the batches still in flight
    were left writing, and their half-written shards stayed. Now no batch commits after that, every uncommitted one
    is removed once it ends, and a rerun completes."""
    import errno

    from vlcorpus.driver import OutputFull

    def full(self, entries):
        raise OSError(errno.ENOSPC, "No space left on device")

    names = [f"d{i:02d}" for i in range(12)]
    big = stage(batch_size=2, parts=20)
    monkeypatch.setattr(Ledger, "append", full)
    with pytest.raises(OutputFull, match="no space left"):
        run_pipeline(big, docs(*names), Options(out=tmp_path, max_in_flight=4))
    monkeypatch.undo()
    assert not list(tmp_path.rglob(".*.tmp")) and not shard_paths(tmp_path / "text")
    run_pipeline(big, docs(*names), Options(out=tmp_path))
    got = keys(tmp_path)
    assert len(got) == len(set(got)) == 12 * 20


def test_disk_full_stops_with_a_clear_error_and_a_rerun_completes(small_volume):
    from vlcorpus.driver import OutputFull

    out = small_volume / "out"
    names = [f"d{i:02d}" for i in range(12)]
    filler = small_volume / "filler"
    with open(filler, "wb") as f:  # fill the volume, then leave 64 KB: room for a few shards, not all 240 samples
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with open(filler, "r+b") as f:
        f.truncate(max(0, filler.stat().st_size - 65536))
    big = stage(batch_size=2, parts=20)
    with pytest.raises(OutputFull, match="no space left"):
        run_pipeline(big, docs(*names), Options(out=out))
    assert not list(out.rglob(".*.tmp"))
    for shard in shard_paths(out / "text"):
        verify_shard(shard)
    filler.unlink()
    run_pipeline(big, docs(*names), Options(out=out))
    got = keys(out)
    assert len(got) == len(set(got)) == 12 * 20
