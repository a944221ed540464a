"""Personal data and secrets: found by pattern, validated (Luhn for card numbers, address ranges for IPs, Shannon
entropy for tokens), replaced by typed placeholders and counted per type.

Order matters: private-key blocks and keys go first, so the digits inside a key are never read as a phone number.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDERS = {
    "private_key": "<PRIVATE_KEY>",
    "aws_key": "<AWS_KEY>",
    "secret_token": "<SECRET_TOKEN>",
    "email": "<EMAIL>",
    "card_number": "<CARD_NUMBER>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}
TOKEN_MIN_ENTROPY = 4.3  # bits per character: random base64 reaches ~5, hex ids cap at 4, English words ~3.5


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


_URL_WORD = re.compile(r"://|www\.|\.[a-z]{2,}/", re.IGNORECASE)


def in_url(m: re.Match) -> bool:
    """Whether the match is part of a URL (a path segment or an id in it is not a secret or a card)."""
    before = m.string[max(0, m.start() - 300) : m.start()]
    word = re.split(r"[\s(\[<\"']", before)[-1]
    return bool(_URL_WORD.search(word))


def _card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group())
    # issuer prefixes: 2 and 5 Mastercard, 3 Amex/Diners/JCB, 4 Visa, 6 Discover/UnionPay
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn(digits) and not in_url(m)


def _ip(m: re.Match) -> bool:
    """A public address: loopback, private, link-local and documentation ranges (127.0.0.1 in a config file, 10.0.0.1
    in a tutorial) identify no one."""
    try:
        return ipaddress.ip_address(m.group()).is_global
    except ValueError:
        return False


def _token(m: re.Match) -> bool:
    s = m.group()
    return (any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s)
            and entropy(s) >= TOKEN_MIN_ENTROPY and not in_url(m))


def _phone(m: re.Match) -> bool:
    return 8 <= sum(c.isdigit() for c in m.group()) <= 15


PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("private_key", re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----.*?-----END[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----",
                               re.DOTALL), None),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"), None),
    ("secret_token", re.compile(r"(?<![\w/+=.-])[A-Za-z0-9_+/=-]{32,}(?![\w/+=-])"), _token),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("card_number", re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d.-])"), _card),
    ("ip_address", re.compile(r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){3,7})(?![\w:]|\.\w)"),
     _ip),
    ("phone", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}"
                         r"|\(\d{3}\) ?\d{3}[-.]\d{4}|\d{3}[-.]\d{3}[-.]\d{4})(?![\w])"), _phone),
]


def redact(text: str) -> tuple[str, Counter]:
    """The text with every finding replaced by its type's placeholder, and the count per type."""
    found: Counter = Counter()
    for kind, pattern, valid in PATTERNS:
        def replace(m: re.Match, kind: str = kind, valid=valid) -> str:
            if valid is not None and not valid(m):
                return m.group()
            found[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, found
