"""The hash chain, and the gaps a recovery declared in it.

Normally event ``n`` carries ``prev_hash == hash(n - 1)``. When a recovery
proves that events ``first..last`` are lost for good (neither backup, journal
nor salvage holds them), it declares a :class:`Gap`: the hash before the gap
and the ``prev_hash`` of the event after it. The chain then accepts exactly
that jump and nothing else, so a declared loss stays verifiable and an
undeclared one is still caught. Gaps live in ``data/journal/gaps.jsonl``
(CRC-checked lines, like the journal) so that the journal alone can rebuild
the ledger.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ..errors import JournalCorrupt
from ..fsutil import replace_durably
from .events import GENESIS_HASH, canonical_json

GAPS_FILE = "gaps.jsonl"


@dataclass(frozen=True)
class Gap:
    first: int
    last: int
    prev_hash: str  # hash of event first - 1 (GENESIS_HASH when first == 1)
    next_prev_hash: str  # prev_hash of event last + 1
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Linked(Protocol):
    """What the chain needs of an event: :class:`~atlasops.ledger.events.Event`, or a
    :class:`~atlasops.ledger.events.StoredEvent` whose payload is still JSON text."""

    @property
    def id(self) -> int: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...
    def hash_ok(self) -> bool: ...


class Chain:
    """Checks ids and hash links as events stream past, in id order."""

    def __init__(self, gaps: Iterable[Gap] = ()) -> None:
        self.gaps = {g.first: g for g in gaps}
        self.expected = 1
        self.prev = GENESIS_HASH

    def start_after(self, event_id: int, event_hash: str | None) -> Chain:
        self.expected = event_id + 1
        self.prev = event_hash or GENESIS_HASH
        return self

    def problem(self, e: Linked) -> str | None:
        """Why ``e`` cannot come next, or None. Does not advance."""
        if not e.hash_ok():
            return "hash does not match the contents"
        if e.id == self.expected:
            if e.prev_hash != self.prev:
                return "prev_hash does not match the previous event"
            return None
        gap = self.gaps.get(self.expected)
        if gap is not None and gap.last == e.id - 1:
            if gap.prev_hash == self.prev and e.prev_hash == gap.next_prev_hash:
                return None
            return f"does not match the declared gap {gap.first}..{gap.last}"
        return f"expected event {self.expected}, found {e.id}"

    def advance(self, e: Linked) -> None:
        self.expected, self.prev = e.id + 1, e.hash

    def accept(self, e: Linked) -> str | None:
        problem = self.problem(e)
        self.advance(e)
        return problem

    @property
    def next_id(self) -> int:
        """The id the next appended event gets (after any gap declared at the end)."""
        gap = self.gaps.get(self.expected)
        return gap.last + 1 if gap is not None else self.expected


def read_gaps(journal_dir: Path) -> list[Gap]:
    path = Path(journal_dir) / GAPS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    gaps: list[Gap] = []
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            crc, body = line.split(b" ", 1)
            if int(crc, 16) != zlib.crc32(body):
                raise ValueError("checksum mismatch")
            gaps.append(Gap(**json.loads(body)))
        except (ValueError, TypeError) as exc:
            raise JournalCorrupt(f"{path} line {number} is damaged: {exc}") from exc
    return gaps


def write_gaps(journal_dir: Path, gaps: Iterable[Gap]) -> None:
    """Replace the gaps file atomically (write, fsync, rename, fsync the directory)."""
    path = Path(journal_dir) / GAPS_FILE
    lines = b""
    for g in sorted(gaps, key=lambda g: g.first):
        body = canonical_json(g.to_dict()).encode()
        lines += b"%08x " % zlib.crc32(body) + body + b"\n"
    replace_durably(path, lines)


__all__ = ["GAPS_FILE", "Chain", "Gap", "Linked", "read_gaps", "write_gaps"]
