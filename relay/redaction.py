"""Redaction of what is stored: card numbers, long digit runs, e-mail addresses and a tenant's own
patterns become typed placeholders before a turn is written, sans-I/O.

The live conversation is untouched (the model hears the caller, the caller hears the agent);
only the records relay keeps pass through ``Redaction.record``: a turn's text as generated and
as heard, its timed fragments, and a tool call's arguments and output. Keys pressed can be
stored masked (``mask_dtmf``). Placeholders say what was there: ``[card]`` (13 to 19 digits
passing the Luhn check, written or spoken), ``[number]`` (any other run of six or more
digits spoken as words, "four one one one…", which speech recognition leaves unformatted),
``[email]`` (written, or spoken "name at example dot com"), ``[<name>]`` for a tenant's pattern.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import orjson

from relay.errors import InputError
from relay.store import Record, TurnRecord

MAX_PATTERNS = 20
MAX_PATTERN = 200  # characters of one pattern
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
SPOKEN_RUN = 6  # digits spoken as words in a row that are never stored

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_SPOKEN_EMAIL = re.compile(
    r"\b[\w+-]+(?: dot [\w+-]+)* at [\w-]+(?: dot [\w-]+)* dot (?:com|net|org|edu|gov|io|co|uk|de|fr|info|biz|us|ca)\b",
    re.I,
)
_DIGITS = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
          "six": "6", "seven": "7", "eight": "8", "nine": "9"}  # fmt: skip
_DIGIT_WORD = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|\d+)"
_SPOKEN = re.compile(rf"\b{_DIGIT_WORD}(?:[\s,.-]+{_DIGIT_WORD})+\b", re.I)
_DTMF = re.compile(r"\[DTMF ([0-9*#A-D]+)\]")


def luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and luhn(digits)


def _written_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match[0])
    return "[card]" if _card(digits) else match[0]


def _spoken_digits(match: re.Match[str]) -> str:
    tokens = re.split(r"[\s,.-]+", match[0].strip())
    digits = "".join(_WORDS.get(t.lower(), t) for t in tokens if t)
    if sum(1 for t in tokens if t.lower() in _WORDS) == 0:
        return match[0]  # written digits alone: the card check has seen them
    if _card(digits):
        return "[card]"
    return "[number]" if len(digits) >= SPOKEN_RUN else match[0]


@dataclass(frozen=True, slots=True)
class Redaction:
    """A tenant's redaction: on, with its own named patterns, and keys masked or not."""

    patterns: tuple[tuple[str, str], ...] = ()  # (placeholder name, regular expression)
    mask_dtmf: bool = False

    def problems(self) -> list[str]:
        out = []
        if len(self.patterns) > MAX_PATTERNS:
            out.append(f"at most {MAX_PATTERNS} patterns")
        for name, pattern in self.patterns:
            if not NAME.fullmatch(name):
                out.append(f"pattern name {name[:40]!r} must be a-z, 0-9, _ (≤ 32, a letter first)")
            if not pattern or len(pattern) > MAX_PATTERN:
                out.append(f"pattern {name[:40]!r} must be 1..{MAX_PATTERN} characters")
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                out.append(f"pattern {name[:40]!r} is not a regular expression: {exc}")
        return out

    def text(self, text: str) -> str:
        """``text`` as it may be stored."""
        text = _EMAIL.sub("[email]", text)
        text = _SPOKEN_EMAIL.sub("[email]", text)
        text = _DIGITS.sub(_written_card, text)
        text = _SPOKEN.sub(_spoken_digits, text)
        for name, pattern in self.patterns:
            text = re.sub(pattern, f"[{name}]", text)
        if self.mask_dtmf:
            text = _DTMF.sub(lambda m: f"[DTMF {'*' * len(m[1])}]", text)
        return text

    def record(self, record: Record) -> Record:
        """A record as it may be stored: a turn's texts redacted; every other record as it is."""
        if not isinstance(record, TurnRecord):
            return record
        generated = self.text(record.text_generated) if record.text_generated else record.text_generated
        heard = self.text(record.text_heard) if record.text_heard else record.text_heard
        return dataclasses.replace(
            record, text_generated=generated, text_heard=heard, fragments=self._fragments(record.fragments)
        )

    def _fragments(self, fragments: str | None) -> str | None:
        """Timed fragments, each redacted; when something to redact spans fragments, their text is
        dropped (the times stay): a number said across two fragments must not survive in pieces."""
        if not fragments:
            return fragments
        parts = orjson.loads(fragments)
        joined = " ".join(str(p[0]) for p in parts)
        each = [[self.text(str(p[0])), *p[1:]] for p in parts]
        if self.text(joined) != " ".join(str(p[0]) for p in each):
            each = [["", *p[1:]] for p in parts]
        return orjson.dumps(each).decode()

    # ---- stored form (a tenant's setting; the embedded store's is the environment's)

    def to_json(self) -> str:
        return orjson.dumps({"patterns": dict(self.patterns), "mask_dtmf": self.mask_dtmf}).decode()

    @classmethod
    def from_json(cls, text: str) -> Redaction:
        """The setting ``to_json`` wrote.

        Raises:
            InputError: not such a setting, or one with a bad pattern.
        """
        try:
            value = orjson.loads(text)
            patterns = value.get("patterns", {})
            found = cls(tuple((str(k), str(v)) for k, v in patterns.items()), bool(value.get("mask_dtmf", False)))
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            raise InputError('a redaction is {"patterns": {"name": "regex", …}, "mask_dtmf": false}') from None
        if found.problems():
            raise InputError("; ".join(found.problems()))
        return found
