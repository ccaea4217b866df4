"""Detection: ``atlas db check`` and the ``db.corruption.detected`` event.

A detection must be recorded even when the database cannot be written, so it
goes to the journal only; the next recovery replays it into the ledger like
any other journaled event. Until then the ledger refuses to write to the
database (see ``Ledger._catch_up``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AtlasError
from ..ledger import Event, Journal, NewEvent, utc_now, verify
from ..ledger.chain import Chain, read_gaps
from ..ledger.journal import Located
from ..ledger.lock import WriterLock
from ..ledger.store import DETECTED
from ..receipts import Check
from ..workspace import Workspace
from . import checks as ck

SYSTEM_ACTOR = "atlas"


@dataclass
class DbCheck:
    ok: bool
    checks: list[Check]
    symptom: dict[str, Any] | None
    event_id: int | None = None
    not_recorded: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.model_dump() for c in self.checks],
                "symptom": self.symptom, "event_id": self.event_id,
                "not_recorded": self.not_recorded}


def _journal(ws: Workspace) -> Journal:
    return Journal(ws.journal_dir, ws.config.journal.segment_bytes)


def record_detection(ws: Workspace, symptom: dict[str, Any], actor: str = SYSTEM_ACTOR,
                     *, explicit: bool = False) -> tuple[Event | None, str | None]:
    """Append ``db.corruption.detected`` to the journal only. Returns (event, why not).

    One outage is recorded once: while a detection waits in the journal (the ledger
    does not hold it yet), a detection met in passing (``explicit=False``: a command
    that could not read the ledger) is not recorded again. An explicit check
    (`atlas db check`, with its failing pages) adds its symptom once, unless the
    detection waiting is already that same check's."""
    journal = _journal(ws)
    with WriterLock(ws.lock_path, timeout=30):
        tail = journal.tail()
        if tail.problem is not None:
            return None, f"the journal's tail is damaged ({tail.problem.describe()})"
        last = _last_journal_event(journal, tail.last_id)
        ledger_max = _ledger_max(ws)
        pending = last is not None and last.kind == DETECTED and (
            ledger_max is None or ledger_max < last.id)
        same_check = last is not None and last.payload.get("detected_by") == symptom.get(
            "detected_by")
        if last is not None and last.kind == DETECTED and (
                (pending and (not explicit or same_check))
                or last.payload.get("summary") == symptom.get("summary")):
            return last, None  # this outage is already on record

        if ledger_max is not None and ledger_max > tail.last_id:
            return None, (f"the ledger holds events up to {ledger_max} but the journal ends at "
                          f"{tail.last_id}; run `atlas recover`")
        chain = Chain(read_gaps(ws.journal_dir)).start_after(tail.last_id, tail.last_hash)
        event = Event.seal(NewEvent(DETECTED, actor, symptom, subject="ledger"),
                           chain.next_id, utc_now(), chain.prev)
        journal.append([event], tail)
        return event, None


def _last_journal_event(journal: Journal, last_id: int) -> Event | None:
    if last_id == 0:
        return None
    for item in journal.scan(after_id=last_id - 1):
        if isinstance(item, Located) and item.event.id == last_id:
            return item.event
    return None


def _ledger_max(ws: Workspace) -> int | None:
    if not ws.db_path.exists():
        return None
    try:
        conn = ck.open_ro(ws.db_path)
        try:
            row = conn.execute("SELECT max(id) FROM events").fetchone()
        finally:
            conn.close()
        return None if row is None or row[0] is None else int(row[0])
    except Exception:
        return None


def db_check(ws: Workspace, *, full: bool = False, actor: str = SYSTEM_ACTOR) -> DbCheck:
    """``quick_check`` (or ``integrity_check``) plus ledger == journal; record any failure."""
    checks: list[Check] = []
    problems: list[str] = []
    damage: list[str] = []
    if not ws.db_path.exists():
        checks.append(Check(name="database file", passed=False,
                            detail=f"{ws.db_path} is missing"))
        problems.append(f"{ws.db_path.name} is missing")
    else:
        pragma = "integrity_check" if full else "quick_check"
        outcome = ck.sqlite_check(ws.db_path, pragma)
        checks.append(outcome.check)
        if not outcome.check.passed:
            problems.append(f"{pragma}: {outcome.check.detail}")
            if outcome.value is None:  # the check raised instead of listing pages
                damage = ck.describe_damage(ws.db_path)
    t0 = time.perf_counter()
    try:
        report = verify(ws.db_path, _journal(ws), limit=20)
        first = report.discrepancies[0].describe() if report.discrepancies else ""
        checks.append(Check(name="ledger == journal", passed=report.ok,
                            detail=first or f"{report.last_id} events identical",
                            ms=round((time.perf_counter() - t0) * 1000, 3)))
        if not report.ok:
            problems.append(f"ledger != journal: {first} "
                            f"({len(report.discrepancies)} discrepancies)")
    except AtlasError as exc:
        checks.append(Check(name="ledger == journal", passed=False, detail=exc.message,
                            ms=round((time.perf_counter() - t0) * 1000, 3)))
        problems.append(f"ledger cannot be compared with the journal: {exc.message}")
    if not problems:
        return DbCheck(True, checks, None)
    symptom: dict[str, Any] = {"summary": "; ".join(problems), "detected_by": "atlas db check"
                               + (" --full" if full else ""),
                               "checks": [c.model_dump() for c in checks]}
    if damage:
        symptom["damage"] = damage
    event, why = record_detection(ws, symptom, actor, explicit=True)
    return DbCheck(False, checks, symptom, event.id if event else None, why)


__all__ = ["DETECTED", "DbCheck", "db_check", "record_detection"]
