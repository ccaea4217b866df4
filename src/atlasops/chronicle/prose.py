"""Small helpers that turn facts into plain sentences, deterministically."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


def count(n: int, one: str, many: str | None = None) -> str:
    """``count(1, "email")`` is "1 email"; ``count(0, "email")`` is "0 emails"."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def were(n: int) -> str:
    return "was" if n == 1 else "were"


def are(n: int) -> str:
    return "is" if n == 1 else "are"


def clock(ts: str) -> str:
    """``2026-06-27T10:12:00.000Z`` as ``10:12``."""
    return ts[11:16]


def age(hours: float) -> str:
    if hours < 1:
        return count(max(1, round(hours * 60)), "minute")
    if hours < 48:
        return count(round(hours), "hour")
    return count(round(hours / 24), "day")


def join(items: list[str]) -> str:
    """``["a", "b", "c"]`` as "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def sentence(text: str) -> str:
    """Ending with one full stop; capitalised unless it starts with a name from code
    (``quick_check``, ``leads.db``), which keeps its case."""
    text = text.strip()
    if not text:
        return text
    if text.split(" ", 1)[0].isalpha():
        text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def who(actor: str) -> str:
    """``owner:matt@x.example (token t1)`` as "the owner (matt@x.example, token t1)"."""
    role, _, name = actor.partition(":")
    if not name or role not in ("owner", "agent"):
        return actor or "someone"
    name, _, token = name.partition(" (token ")
    return f"the {role} ({name}" + (f", token {token.rstrip(')')}" if token else "") + ")"


def plurals(text: str) -> str:
    """``40 draft(s)`` as "40 drafts", ``1 day(s)`` as "1 day"."""
    return re.sub(r"\b(\d+) ((?:[a-z-]+ )?)([a-z-]+)\(s\)",
                  lambda m: f"{m[1]} {m[2]}{m[3]}{'' if m[1] == '1' else 's'}", text)


@dataclass
class Line:
    """A sentence of the chronicle, with what it rests on: ``refs`` point into the
    Sources list, ``receipts`` name the ledger receipts it was read from, ``events`` the
    events (a work-log note is an event, not a receipt)."""

    text: str
    refs: list[int] = field(default_factory=list)
    receipts: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "refs": self.refs, "receipts": self.receipts,
                "events": self.events}


__all__ = ["Line", "age", "are", "clock", "count", "join", "plurals", "sentence", "were", "who"]
