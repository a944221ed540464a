"""Progress of long work: a tqdm bar on a terminal, a plain line every `LOG_EVERY_S` seconds in a log.

A log (CI, `ray job submit`, `make demo > log`) cannot redraw a bar: tqdm's carriage-return frames become thousands
of lines. `progress()` gives the same small interface either way (`update`, `set_postfix`, `close`, `with`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

LOG_EVERY_S = 30.0


class LogProgress:
    """Writes `desc: n/total unit (pct), rate, postfix` to stderr at most every `LOG_EVERY_S` seconds, and at the end."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0):
        self.total, self.desc, self.unit, self.n, self.start = total, desc, unit, initial, initial
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LOG_EVERY_S:
            self._line()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def _line(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.t0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit}{pct}, {rate:.3g} {self.unit}/s, {elapsed:.0f} s{extra}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        self._line()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0) -> Any:
    """A tqdm bar when stderr is a terminal, else a `LogProgress`."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, mininterval=1)
    return LogProgress(total, desc, unit, initial)
