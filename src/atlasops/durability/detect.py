"""Detection: ``atlas db check`` and the ``db.corruption.detected`` event.

A detection must be recorded even when the database cannot be written, so it
goes to the journal only; the next recovery replays it into the ledger like
any other journaled event. Until then the ledger refuses to write to the
database (see ``Ledger._catch_up``).

Because a detection stops every write until `atlas recover`, one is recorded
only on evidence, seen twice: SQLite's own verdict that the file is damaged
(problems listed, or SQLITE_CORRUPT / SQLITE_NOTADB raised), or a difference
between the ledger and the journal read as they stood at one moment
(:func:`verify` with the writer lock). A check that cannot run (the database is
locked, a file cannot be read) records nothing and says so. Journal events the
ledger has not applied yet (a write interrupted between its journal write and
its commit, or a WAL tail SQLite dropped) are not damage either: the next
command that opens the ledger applies them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AtlasError, Conflict, DatabaseCorrupt, StorageError
from ..ledger import Event, Journal, NewEvent, utc_now, verify
from ..ledger.chain import Chain, read_gaps
from ..ledger.journal import Located
from ..ledger.lock import WriterLock
from ..ledger.store import DETECTED
from ..receipts import Check
from ..workspace import Workspace
from . import checks as ck

SYSTEM_ACTOR = "atlas"
LOCK_WAIT = 30.0  # seconds a check waits for the writer lock (a recovery can hold it long)


@dataclass
class Inspection:
    """What one look at the live ledger found."""

    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damage, one phrase each
    damage: list[str] = field(default_factory=list)  # what a file that raised can show
    head: int = 0  # the ledger's last event, as compared
    unapplied: tuple[int, int] | None = None  # journal events the ledger has not applied
    pending: list[Event] = field(default_factory=list)  # detections among them
    notes: list[str] = field(default_factory=list)


@dataclass
class DbCheck:
    ok: bool
    checks: list[Check]
    symptom: dict[str, Any] | None
    event_id: int | None = None
    not_recorded: str | None = None
    notes: list[str] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.model_dump() for c in self.checks],
                "symptom": self.symptom, "event_id": self.event_id,
                "not_recorded": self.not_recorded, "pending_detections": self.pending,
                "notes": self.notes}


def _journal(ws: Workspace) -> Journal:
    return Journal(ws.journal_dir, ws.config.journal.segment_bytes)


def cannot_check(why: str) -> StorageError:
    return StorageError(
        f"the database could not be checked: {why}; nothing was recorded",
        hint="A check that cannot run proves nothing about the file. Try again once the "
             "cause above is gone (another process holding the database or the writer "
             "lock); if a file is damaged, `atlas recover --dry-run` shows the plan.")


def inspect_ledger(ws: Workspace, *, full: bool = False, compare_damaged: bool = True,
                   held: bool = False) -> Inspection:
    """``quick_check`` (``integrity_check`` with ``full``) of the live file, then ledger ==
    journal compared as of one moment (not when ``data/journal/`` is missing; with
    ``compare_damaged=False``, not when the file already failed). ``held``: the caller
    holds the writer lock throughout, so the file may be read leaving no trace
    (:func:`~checks.live_immutable`). Raises :func:`cannot_check` when a check cannot
    run."""
    found = Inspection()
    immutable = held and ck.live_immutable(ws.db_path)
    if not ws.journal_dir.is_dir():
        found.problems.append("data/journal/ is missing")
    try:
        empty = ws.db_path.stat().st_size == 0
    except FileNotFoundError:
        found.checks.append(Check(name="database file", passed=False,
                                  detail=f"{ws.db_path} is missing"))
        found.problems.append(f"{ws.db_path.name} is missing")
        return found
    if empty:
        found.checks.append(Check(name="database file", passed=False,
                                  detail=f"{ws.db_path} is empty (0 bytes)"))
        found.problems.append(f"{ws.db_path.name} is empty (0 bytes)")
        return found
    pragma = "integrity_check" if full else "quick_check"
    outcome = ck.sqlite_check(ws.db_path, pragma, immutable=immutable)
    found.checks.append(outcome.check)
    if not outcome.check.passed:
        if not outcome.corrupt:
            raise cannot_check(f"{pragma} could not run ({outcome.check.detail})")
        found.problems.append(f"{pragma}: {outcome.check.detail}")
        if outcome.value is None:  # the check raised instead of listing pages
            found.damage = ck.describe_damage(ws.db_path, immutable=immutable)
        if not compare_damaged:
            return found
    if ws.journal_dir.is_dir():
        _compare(ws, found, immutable)
    return found


def _compare(ws: Workspace, found: Inspection, immutable: bool) -> None:
    """ledger == journal, both read as of one moment (the writer lock held only to start
    the read and note the journal's end). Events after the ledger's last one that the
    journal holds are not applied yet, not damage."""
    t0 = time.perf_counter()
    journal = _journal(ws)

    def check(passed: bool, detail: str) -> None:
        found.checks.append(Check(name="ledger == journal", passed=passed, detail=detail,
                                  ms=round((time.perf_counter() - t0) * 1000, 3)))
    try:
        report = verify(ws.db_path, journal, limit=20, immutable=immutable,
                        lock=WriterLock(ws.lock_path, timeout=LOCK_WAIT))
    except (Conflict, StorageError) as exc:
        # a file SQLite already found damaged may fail in any way; otherwise only its
        # verdict is damage, and a comparison that cannot run proves nothing
        if isinstance(exc, Conflict) or not (found.problems or isinstance(
                exc, DatabaseCorrupt)):
            raise cannot_check(f"the ledger could not be compared with the journal "
                               f"({exc.message})") from exc
        check(False, exc.message)
        found.problems.append(f"ledger cannot be compared with the journal: {exc.message}")
        return
    head = found.head = report.ledger_head
    damage = [d for d in report.discrepancies
              if not (d.where == "ledger" and (d.event_id or 0) > head)]
    if damage:
        first = damage[0].describe()
        check(False, first)
        found.problems.append(f"ledger != journal: {first} ({len(damage)} discrepancies)")
        return
    end = max(report.journal_end or 0, head)
    if report.tail_problem:
        found.notes.append(f"the journal's tail after event {end} is torn "
                           f"({report.tail_problem}): a write that never completed; the "
                           "next write sets it aside into data/journal/torn/")
    if end == head:
        check(True, f"{head} events identical")
        return
    found.unapplied = (head + 1, end)
    found.pending = _detections(journal, head, end)
    others = end - head - len(found.pending)
    check(True, f"events 1..{head} identical; the journal's events {head + 1}..{end} are "
                "not applied to the ledger yet")
    if others:
        found.notes.append(
            f"{others} journaled event(s) after event {head} are not in the ledger yet (a "
            "write interrupted between its journal write and its commit, or a WAL tail "
            "SQLite dropped): the next command that opens the ledger applies them")


def _detections(journal: Journal, after: int, upto: int) -> list[Event]:
    found = []
    for item in journal.scan(after_id=after):
        if isinstance(item, Located):
            if item.event.id > upto:
                break
            if item.event.kind == DETECTED:
                found.append(item.event)
    return found


def confirm_damage(ws: Workspace, pragma: str = "quick_check") -> ck.Outcome | None:
    """``pragma`` on the live file, twice: the second outcome when both times SQLite said
    the file is damaged, else None (a detection stops every write: one look is not
    enough)."""
    for _ in range(2):
        outcome = ck.sqlite_check(ws.db_path, pragma)
        if not outcome.corrupt:
            return None
    return outcome


def file_id(ws: Workspace) -> tuple[int, int] | None:
    """Which file is at the ledger's path (device, inode); None when there is none."""
    try:
        st = ws.db_path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def record_detection(ws: Workspace, symptom: dict[str, Any], actor: str = SYSTEM_ACTOR,
                     *, explicit: bool = False, seen: tuple[int, int] | None = None
                     ) -> tuple[Event | None, str | None]:
    """Append ``db.corruption.detected`` to the journal only. Returns (event, why not).

    The caller has the evidence (see the module docstring), from the file ``seen``
    (:func:`file_id` before it looked): if another file is in place by the time the
    writer lock is held (a recovery swapped one in meanwhile), the evidence is about a
    file that is gone, and nothing is recorded. One outage is recorded once: while a
    detection waits in the journal (the ledger does not hold it yet), a detection met
    in passing (``explicit=False``: a command that could not read the ledger) is not
    recorded again. An explicit check (`atlas db check`, with its failing pages) adds
    its symptom once, unless the detection waiting is already that same check's."""
    journal = _journal(ws)
    with WriterLock(ws.lock_path, timeout=LOCK_WAIT):
        if seen is not None and file_id(ws) != seen:
            return None, ("the database file was replaced while it was checked (a recovery "
                          "finished meanwhile?): check again")
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


def record_if_confirmed(ws: Workspace, exc: DatabaseCorrupt) -> tuple[Event | None, str | None]:
    """A command met ``exc`` reading the ledger. Record the detection only when SQLite
    confirms the damage on fresh connections (:func:`confirm_damage` with
    ``quick_check``, then ``integrity_check``). Returns (event, why not recorded);
    (None, None) when ``exc`` is the refusal of a detection already waiting."""
    if exc.details.get("detection") is not None:
        return None, None
    seen = file_id(ws)
    try:
        for pragma in ("quick_check", "integrity_check"):
            confirmed = confirm_damage(ws, pragma)
            if confirmed is not None:
                return record_detection(ws, {
                    "summary": exc.message, "detected_by": "reading the ledger",
                    "confirmed_by": f"{pragma}: {confirmed.check.detail}"}, seen=seen)
    except AtlasError as failed:
        return None, f"not recorded: {failed.message}"
    return None, ("not recorded as a detection: SQLite did not confirm it on fresh "
                  "connections (quick_check, integrity_check)")


def _last_journal_event(journal: Journal, last_id: int) -> Event | None:
    if last_id == 0:
        return None
    for item in journal.scan(after_id=last_id - 1):
        if isinstance(item, Located) and item.event.id == last_id:
            return item.event
    return None


def _ledger_max(ws: Workspace) -> int | None:
    """Under the writer lock: the ledger's last event id (None when it cannot be read)."""
    if not ws.db_path.exists():
        return None
    try:
        conn = ck.open_ro(ws.db_path, immutable=ck.live_immutable(ws.db_path))
        try:
            row = conn.execute("SELECT max(id) FROM events").fetchone()
        finally:
            conn.close()
        return None if row is None or row[0] is None else int(row[0])
    except Exception:
        return None


def db_check(ws: Workspace, *, full: bool = False, actor: str = SYSTEM_ACTOR) -> DbCheck:
    """Inspect the live ledger; record damage only when a second look confirms it.

    Not ok also when a detection waits in the journal (writes stay refused until
    `atlas recover`), even if the file passes now: nothing new is recorded then."""
    seen = file_id(ws)
    found = inspect_ledger(ws, full=full)
    if found.problems:  # a detection stops every write: look again before recording
        first = found.problems
        found = inspect_ledger(ws, full=full)
        if not found.problems:
            found.notes.append(f"a first look found {'; '.join(first)}, a second look did "
                               "not: not recorded")
    checks = list(found.checks)
    if found.pending:
        last = found.pending[-1]
        checks.append(Check(name="no detection pending", passed=False, detail=(
            f"event {', '.join(str(e.id) for e in found.pending)} ({DETECTED}: "
            f"{last.payload.get('summary', 'no summary')}) waits in the journal: Atlas "
            "writes nothing until `atlas recover` closes it")))
    pending = [e.id for e in found.pending]
    if not found.problems:
        return DbCheck(not pending, checks, None, notes=found.notes, pending=pending)
    symptom: dict[str, Any] = {"summary": "; ".join(found.problems),
                               "detected_by": "atlas db check" + (" --full" if full else ""),
                               "checks": [c.model_dump() for c in found.checks]}
    if found.damage:
        symptom["damage"] = found.damage
    event, why = record_detection(ws, symptom, actor, explicit=True, seen=seen)
    return DbCheck(False, checks, symptom, event.id if event else None, why, found.notes,
                   pending)


__all__ = ["DETECTED", "DbCheck", "Inspection", "cannot_check", "confirm_damage", "db_check",
           "file_id", "inspect_ledger", "record_detection", "record_if_confirmed"]
