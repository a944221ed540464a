"""The text normalisation Nougat's `Splitter` matches markdown and PDF words with, extended for maths, with an
exact map back to the original string.

Nougat strips spaces, `* _ ^ { } # -`, `\\( \\)`, `\\left`, `\\frac`… before its fuzzy search (about 8 edits allowed
for 22 words), but not the font and accent commands: `\\(p(\\mathbf{x}|\\theta)\\)` against the PDF's `p(x|θ)` costs
7 edits for one `\\mathbf`, so the pages of a maths paper fail to align. We strip those too. Nougat then maps a
match back with `count_special_chars`, which re-counts each removed token in the prefix; that count goes wrong as
soon as tokens overlap or are added (the first try cut pages seven words early). Here `normalize` returns, for
every kept character, its index in the original, and the cut is read from that map.
"""

from __future__ import annotations

import re

# Removed wholly (a command only where no letter follows: `\right` but not `\rightarrow`).
_COMMANDS = (
    "mathbf mathrm mathcal mathbb mathit mathsf mathtt mathscr mathfrak boldsymbol bm cal bf it rm widehat hat "
    "widetilde tilde bar overline underline vec dot ddot operatorname textrm textbf textit textsf texttt textup "
    "text emph displaystyle textstyle scriptstyle limits nolimits mathop right left bigl bigr big Bigl Bigr Big "
    "biggl biggr bigg Biggl Biggr Bigg quad qquad hskip vskip frac dfrac tfrac "
    # accents: the PDF's text says "Ball´e" or "é" (LaTeX-encoded by Nougat as \\textasciiacute e, \\'e), the
    # markdown "Balle" (Nougat unidecodes it)
    "textasciiacute textasciigrave textasciicircum textasciitilde textasciidieresis textasciimacron "
    "textasciibreve textasciicaron u v H c"
).split()
_LITERALS = ("[REF]", "[ENDREF]", "\\(", "\\)", "\\[", "\\]", "\\ ", "\\,", "\\;", "\\!", "\\:",
             "\\'", "\\`", '\\"', "\\~", "\\=", "\\.", "\\^")
# Nougat's placeholders for floats and footnotes, which the markdown holds in place and the PDF's text elsewhere.
_PLACEHOLDER = r"\[(?:FOOTNOTE|FIGURE|TABLE)[^\]]*\].*?\[END(?:FOOTNOTE|FIGURE|TABLE)\]"
_REMOVE = re.compile("|".join(
    [_PLACEHOLDER] + [re.escape(t) for t in _LITERALS]
    + [rf"\\{c}(?![A-Za-z])\*?" for c in sorted(_COMMANDS, key=len, reverse=True)]
))
_DROP = frozenset(" \n\t*_^{}#-")
_REPLACE = {"\\sum": "X", "\\varphi": "\\phi"}  # Nougat's: the PDF's text encodes these so
_MATH_OPEN = re.compile(r"(?<!\\)\\[(\[]")
_HEADING_PREFIX = re.compile(r"(?:^|\n)#+[ \t]*(?:[A-Z]?\d+(?:\.\d+)*\.?)?[ \t]*$")


def normalize(s: str) -> tuple[str, list[int]]:
    """`s` lower-cased without markup and maths decoration, and for each kept character its index in `s`."""
    out: list[str] = []
    index: list[int] = []
    i = 0
    while i < len(s):
        m = _REMOVE.match(s, i)
        if m:
            i = m.end()
            continue
        for src, dest in _REPLACE.items():
            if s.startswith(src, i) and not s[i + len(src): i + len(src) + 1].isalpha():
                out.extend(dest.lower())
                index.extend([i] * len(dest))
                i += len(src)
                break
        else:
            if s[i] not in _DROP:
                out.append(s[i].lower())
                index.append(i)
            i += 1
    return "".join(out), index


def remove_special_chars(string: str) -> str:
    """Replaces `Splitter.remove_special_chars`."""
    return normalize(string)[0]


def count_special_chars(string: str, char_ind: int) -> int:
    """Replaces `Splitter.count_special_chars`: how far to move normalised position `char_ind` to reach the same
    place in `string`. A cut falling inside maths moves to the formula's start, and one after a heading's `##`,
    a section number or a `**` moves before them, so no formula or heading is split across pages."""
    _, index = normalize(string)
    char_ind = max(char_ind, 0)  # Nougat's reverse search can hand over a negative offset at a paragraph's start
    pos = index[char_ind] if char_ind < len(index) else len(string)
    opens = [m.start() for m in _MATH_OPEN.finditer(string, 0, pos)]
    if opens:
        o = opens[-1]
        close = string.find("\\)" if string[o + 1] == "(" else "\\]", o + 2)
        if close == -1 or close + 2 > pos:
            pos = o
    heading = _HEADING_PREFIX.search(string, 0, pos)
    if heading and heading.end() == pos:
        pos = heading.start() + (string[heading.start()] == "\n")
    while pos > 0 and string[pos - 1] in "*_":
        pos -= 1
    return pos - char_ind
