"""One big JSON document read a value at a time, so a multi-GB file is never held whole.

`JsonStream` walks the outer structure itself (an object's keys, an array's commas) and hands each inner value to
`json`'s C decoder (`raw_decode`): C speed per value, memory of one value. `text` holds the JSON text of the last
value read, so a caller can copy a record without encoding it again. A value longer than `max_chars` is not built:
`bounded()` skips it with a scanner that tracks only strings and brackets, and returns `TOO_LARGE`.

    s = JsonStream(f, max_chars)
    for key in s.members():                 # the caller consumes each key's value before asking for the next key
        if key == "annotations":
            for record in s.array(): ...    # each record, or TOO_LARGE
        else:
            s.skip()
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import BinaryIO

TOO_LARGE = object()  # what `bounded()` returns for a value over the bound
_WS = " \t\r\n"
_NOT_WS = re.compile(r"[^ \t\r\n]")
_IN_STRING = re.compile(r'["\\]')
_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,\]} \t\r\n]")
_SCAN = json.JSONDecoder().scan_once  # the C scanner behind raw_decode, without its Python wrapper


class ValueTooLarge(ValueError):
    pass


class JsonStream:
    def __init__(self, f: BinaryIO, max_chars: int, block: int = 1024**2):
        self._f, self._block, self.max_chars = f, block, max_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()  # a leading BOM is dropped, as json.loads does
        self._buf, self._pos, self._base, self._eof = "", 0, 0, False
        self.text = ""  # the JSON text of the last value `value()` returned

    @property
    def offset(self) -> int:
        """Characters consumed so far (for error messages)."""
        return self._base + self._pos

    def _more(self, at_least: int = 0) -> bool:
        """Append the next block of text (at least `at_least` bytes), dropping what was consumed; False at the end."""
        if self._eof:
            return False
        data = self._f.read(max(self._block, at_least))
        self._eof = not data
        self._base += self._pos
        self._buf = self._buf[self._pos :] + self._utf8.decode(data, final=self._eof)
        self._pos = 0
        return not self._eof

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        buf, pos = self._buf, self._pos
        if pos < len(buf) and buf[pos] not in _WS:
            return buf[pos]
        while True:
            m = _NOT_WS.search(self._buf, self._pos)
            if m:
                self._pos = m.start()
                return self._buf[self._pos]
            self._pos = len(self._buf)
            if not self._more():
                return ""

    def take(self, allowed: str) -> str:
        c = self.peek()
        if not c or c not in allowed:
            raise ValueError(f"expected one of {allowed!r} at character {self.offset}, found {c or 'the end'!r}")
        self._pos += 1
        return c

    def value(self) -> object:
        """The next value, decoded whole; `ValueTooLarge` (nothing consumed) when it is longer than `max_chars`."""
        self.peek()
        while True:
            try:
                obj, end = _SCAN(self._buf, self._pos)
                if end < len(self._buf) or self._eof:  # a number at the buffer's end may go on in the next block
                    self.text = self._buf[self._pos : end]
                    self._pos = end
                    return obj
            except (StopIteration, json.JSONDecodeError) as e:
                if self._eof:
                    at = e.value if isinstance(e, StopIteration) else e.pos
                    raise ValueError(f"JSON breaks at character {self._base + at}: {getattr(e, 'msg', 'expecting a value')}") from None
            pending = len(self._buf) - self._pos
            if pending > self.max_chars:
                raise ValueTooLarge(f"a value at character {self.offset} is longer than {self.max_chars:,} characters")
            self._more(at_least=pending)  # doubling: a long value costs linear time, not one retry per block

    def bounded(self) -> object:
        """The next value, or `TOO_LARGE` after skipping it when it is over the bound."""
        try:
            return self.value()
        except ValueTooLarge:
            self.skip()
            return TOO_LARGE

    def skip(self) -> None:
        """Consume the next value without building it: only strings and brackets are tracked."""
        c = self.peek()
        if c not in '[{"':
            while not (m := _SCALAR_END.search(self._buf, self._pos)):
                self._pos = len(self._buf)
                if not self._more():
                    return
            self._pos = m.start()
            return
        depth, in_string = 0, False
        while True:
            buf, i = self._buf, self._pos
            while i < len(buf):
                m = (_IN_STRING if in_string else _STRUCTURE).search(buf, i)
                if m is None:
                    i = len(buf)
                    break
                ch, i = m.group(), m.end()
                if in_string:
                    if ch == "\\":
                        i += 1  # the escaped character (may be the first of the next block)
                        continue
                    in_string = False
                elif ch == '"':
                    in_string = True
                    continue
                elif ch in "[{":
                    depth += 1
                    continue
                else:
                    depth -= 1
                if depth == 0:
                    self._pos = i
                    return
            carry = i - len(buf)
            self._pos = len(buf)
            if not self._more():
                raise ValueError(f"the file ends inside a value (character {self.offset})")
            self._pos = carry

    def array(self) -> Iterator[object]:
        """Consume `[ ... ]`, yielding each element (`bounded()`)."""
        self.take("[")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield self.bounded()
            buf, pos = self._buf, self._pos
            if pos + 1 < len(buf) and buf[pos] == ",":  # the common case (", " included), without a call
                self._pos = pos + 2 if buf[pos + 1] == " " else pos + 1
            elif self.take(",]") == "]":
                return

    def members(self) -> Iterator[str]:
        """Consume `{ ... }`, yielding each key; the caller consumes the key's value (value, skip, array, members)
        before asking for the next key."""
        self.take("{")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise ValueError(f"expected an object key at character {self.offset}")
            self.take(":")
            yield key
            if self.take(",}") == "}":
                return

    def values(self) -> Iterator[object]:
        """The values of `{ ... }` (`bounded()`), keys dropped (TextOCR's `anns`)."""
        for _ in self.members():
            yield self.bounded()

    def at_end(self) -> bool:
        return self.peek() == ""
