"""The hash chain, and the gaps a recovery declared in it.

Normally event ``n`` carries ``prev_hash == hash(n - 1)``. When a recovery
proves that events ``first..last`` are lost for good (neither backup, journal
nor salvage holds them), it declares a :class:`Gap`: the hash before the gap
and the ``prev_hash`` of the event after it. The chain then accepts exactly
that jump and nothing else, so a declared loss stays verifiable and an
undeclared one is still caught. Gaps live in two places, written from the same
list by the recovery that declares them:

* ``data/journal/gaps.jsonl`` (CRC-checked lines, like the journal), so that the
  journal alone can rebuild the ledger: a replay must know a gap before it
  reaches it;
* the ledger itself: a ``ledger.gap_declared`` event per gap, projected into the
  ``ledger_gaps`` table, so that every backup (and the database file when the
  journal directory is gone) holds the gaps declared before it.

A replay after a declared gap (:class:`Replayer`) cannot always apply the events
that depended on the lost ones; it records them without applying them.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError, JournalCorrupt
from ..fsutil import replace_durably
from . import projections
from .events import GENESIS_HASH, Event, canonical_json

GAPS_FILE = "gaps.jsonl"
GAP_DECLARED = "ledger.gap_declared"


@dataclass(frozen=True)
class Gap:
    first: int
    last: int
    prev_hash: str  # hash of event first - 1 (GENESIS_HASH when first == 1)
    next_prev_hash: str  # prev_hash of event last + 1
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Gap:
        return cls(int(p["first"]), int(p["last"]), str(p["prev_hash"]),
                   str(p["next_prev_hash"]), str(p.get("reason", "")))

    def covers(self, event_id: int) -> bool:
        return self.first <= event_id <= self.last


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


def gaps_in(conn: sqlite3.Connection) -> list[Gap]:
    """The gaps a ledger holds (its ``ledger_gaps`` table; none in a ledger older than
    the table)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='ledger_gaps'"
                    ).fetchone() is None:
        return []
    return [Gap(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in conn.execute(
        "SELECT first, last, prev_hash, next_prev_hash, reason FROM ledger_gaps ORDER BY first")]


def gaps_declared_by(events: Iterable[Event]) -> list[Gap]:
    """The gaps that ``ledger.gap_declared`` events among ``events`` declare."""
    out: list[Gap] = []
    for e in events:
        if e.kind == GAP_DECLARED:
            try:
                out.append(Gap.from_payload(e.payload))
            except (KeyError, TypeError, ValueError):
                continue  # not a declaration Atlas wrote: it declares nothing
    return out


def merge_gaps(*sources: Iterable[Gap]) -> list[Gap]:
    """One list of gaps from several sources, by first id (the first source that names a
    first id wins), in id order."""
    by_first: dict[int, Gap] = {}
    for source in sources:
        for g in source:
            by_first.setdefault(g.first, g)
    return [by_first[k] for k in sorted(by_first)]


# -- replaying after a declared gap ------------------------------------------------

@dataclass(frozen=True)
class Unapplied:
    """An event a replay recorded (its row is in the ledger) but did not apply."""

    id: int
    kind: str
    refers_to: tuple[int, ...]  # the lost (or themselves unapplied) events it names
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "refers_to": list(self.refers_to),
                "why": self.why}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unapplied:
        return cls(int(d["id"]), str(d["kind"]), tuple(d["refers_to"]), str(d["why"]))


@dataclass
class Replayer:
    """Applies journaled events to a ledger in id order: catch-up on open, `ledger
    rebuild`, and the replay of a recovery all use it.

    Every event in the journal was applied when it was appended (a projection runs
    before the journal write), so on replay its projection fails only when the tables
    differ from what they were then, and after a declared gap they may: the lost events
    are not there (a ``lead.updated`` of a lead whose ``lead.created`` is lost). Such an
    event is still inserted (ledger == journal holds, and the hash chain with it); its
    projection is rolled back and skipped, and it is listed in :attr:`unapplied` with
    the lost ids it names. Before the first gap nothing can explain a failure, and it is
    raised as it always was. Whether an event applies depends only on the tables, which
    depend only on the events before it: the same journal and gaps replay to the same
    tables. New appends never come here: the ledger refuses them (:class:`InputError`)."""

    gaps: list[Gap]
    unapplied: list[Unapplied] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gaps = sorted(self.gaps, key=lambda g: g.first)
        self._first_lost = self.gaps[0].first if self.gaps else None
        self._skipped: set[int] = set()

    def apply(self, conn: sqlite3.Connection, event: Event) -> None:
        if (self._first_lost is None or event.id < self._first_lost
                or event.kind not in projections.PROJECTIONS):  # nothing that could fail
            projections.apply(conn, event)
            return
        projections.insert_event(conn, event)
        conn.execute("SAVEPOINT replay_event")
        try:
            projections.project(conn, event)
        except (InputError, sqlite3.IntegrityError) as exc:
            conn.execute("ROLLBACK TO replay_event")
            why = exc.message if isinstance(exc, InputError) else f"{exc}"
            self.unapplied.append(Unapplied(event.id, event.kind, self._refers_to(event), why))
            self._skipped.add(event.id)
        finally:
            conn.execute("RELEASE replay_event")

    def _refers_to(self, event: Event) -> tuple[int, ...]:
        """The ids the payload names (``id``, ``*_id``, ``*_ids``) that are lost or were
        themselves not applied."""
        named: list[object] = []
        for key, value in event.payload.items():
            if key == "id" or key.endswith("_id"):
                named.append(value)
            elif key.endswith("_ids") and isinstance(value, list):
                named += value
        return tuple(sorted({i for i in named if type(i) is int and (
            i in self._skipped or any(g.covers(i) for g in self.gaps))}))


def describe_unapplied(unapplied: Iterable[Unapplied]) -> list[str]:
    """One phrase per group: the events that name the same lost events, and those that
    name none (they failed for another reason the loss explains)."""
    groups: dict[tuple[int, ...], list[Unapplied]] = {}
    for u in unapplied:
        groups.setdefault(u.refers_to, []).append(u)
    out = []
    for refs, items in groups.items():
        ids = ", ".join(f"{u.id} ({u.kind})" for u in items)
        if refs:
            out.append(f"event(s) {ids} refer to lost event(s) {', '.join(map(str, refs))} "
                       "and were recorded but not applied")
        else:
            out.append(f"event(s) {ids} could not be applied after the declared loss "
                       f"({items[0].why}) and were recorded but not applied")
    return out


__all__ = ["GAPS_FILE", "GAP_DECLARED", "Chain", "Gap", "Linked", "Replayer", "Unapplied",
           "describe_unapplied", "gaps_declared_by", "gaps_in", "merge_gaps", "read_gaps",
           "write_gaps"]
