"""What a source's ledger entries say it dropped, and why: the counts `vlcorpus inspect`, the import commands'
warnings and `--strict` read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from vlcorpus.ledger import STATUSES, Entry
from vlcorpus.reasons import NOT_DROP_PREFIXES, NOT_DROPS

MAX_DROP_SHARE = 0.2  # a job that drops more than this share of its records (or inputs) warns; fails under --strict


def is_drop(key: str) -> bool:
    """Whether a ledger count says something was dropped: every name not declared a non-drop in `vlcorpus.reasons`."""
    return key not in NOT_DROPS and not key.startswith(NOT_DROP_PREFIXES)


@dataclass
class DropReport:
    """What one source's ledger entries say: inputs by status, records read and imported (in the importer's unit,
    where its renderer counts them), and every drop reason with its count."""

    inputs: int = 0
    status: Counter = field(default_factory=Counter)
    samples: int = 0
    records: int = 0  # 0 when the source does not count records (its unit is the ledger line)
    imported: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def dropped_share(self) -> float:
        if self.records:
            return 1 - self.imported / self.records
        return 1 - self.status["ok"] / self.inputs if self.inputs else 1.0

    def too_many_dropped(self, share: float) -> bool:
        """Nothing imported, or more than `share` dropped."""
        nothing = self.imported == 0 if self.records else self.status["ok"] == 0
        return nothing or self.dropped_share > share


def drop_report(entries: Iterable[Entry]) -> DropReport:
    rep = DropReport()
    per_record = False
    for e in entries:
        rep.inputs += 1
        rep.status[e.status] += 1
        rep.samples += e.samples
        per_record |= "imported" in e.counts
        rep.records += e.counts.get("records", 0)
        rep.imported += e.counts.get("imported", 0)
        drops = {k: v for k, v in e.counts.items() if is_drop(k) and v}
        rep.reasons.update(drops)
        if e.status == "failed":
            rep.reasons[f"failed: {e.error_class}"] += 1
        elif e.status == "filtered" and not drops:
            rep.reasons[f"filtered: {(e.error or '')[:80]}"] += 1
    if not per_record:
        rep.records = rep.imported = 0
    for s in STATUSES:
        rep.status[s] += 0
    return rep
