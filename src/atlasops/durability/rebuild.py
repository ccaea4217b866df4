"""Building the recovered ledger: read the journal window after the backup, salvage,
merge under the hash chain, declare exact gaps, and write a fresh journal.

``recovery`` orchestrates (diagnose, choose, quarantine, verify, swap, receipt);
this module does the work between the restore and the verification.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger import Event, Journal, NewEvent, projections, utc_now
from ..ledger.chain import (
    GAP_DECLARED,
    Chain,
    Gap,
    Replayer,
    Unapplied,
    describe_unapplied,
    gaps_declared_by,
    gaps_in,
    merge_gaps,
    read_gaps,
    write_gaps,
)
from ..ledger.events import GENESIS_HASH
from ..ledger.journal import LocatedStored
from ..ledger.migrations import migrate
from ..ledger.store import SYSTEM_ACTOR, connect, event_from_row
from ..receipts import Action
from ..workspace import Workspace
from . import checks as ck
from .backup import BackupInfo
from .salvage import Salvage, salvage_events, sqlite_recover_probe


@dataclass
class Steps:
    actions: list[Action] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[], str], command: str | None = None) -> None:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            self.actions.append(Action(name=name, result=f"failed: {exc}", command=command,
                                       ms=elapsed_ms(t0)))
            raise
        self.actions.append(Action(name=name, result=result, command=command, ms=elapsed_ms(t0)))


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


# -- the journal after the backup ---------------------------------------------

@dataclass
class JournalWindow:
    events: dict[int, Event]
    problems: list[str]
    first_id: int | None
    last_id: int
    missing_segments: list[str]
    tail_clean: bool
    missing_dir: bool = False
    # the newest segment has reached the rotation size: the next append would have
    # started a new one, so the journal may go on in a segment that is missing
    last_segment_full: bool = False

    @property
    def intact(self) -> bool:
        return (not self.problems and not self.missing_segments and self.tail_clean
                and not self.missing_dir)


def read_window(journal: Journal, after: int) -> JournalWindow:
    """The journal records after ``after`` (the backup's high-water mark), decoded.

    Only the segments that can hold them are read (:meth:`Journal.segments_from`); in
    those, records are checked from their stored text and only the ones after the mark
    are decoded. Damage in older segments is met by the final ledger == journal check
    (see ``recovery._old_journal_damage``). A missing journal directory reads as an
    empty journal that says so."""
    if not journal.directory.is_dir():
        return JournalWindow({}, [], None, 0, [], True, missing_dir=True)
    events: dict[int, Event] = {}
    problems: list[str] = []
    first: int | None = None
    last = 0
    prev_last = 0
    missing: list[str] = []
    for seg in journal.segments_from(after):
        start = Journal.first_id_of(seg)
        if prev_last and start != prev_last + 1:
            missing.append(f"events {prev_last + 1}..{start - 1} (no segment holds them)")
        seg_last = prev_last
        for item in journal.scan_segment_stored(seg):
            if isinstance(item, LocatedStored):
                e = item.event
                first = e.id if first is None else min(first, e.id)
                last = max(last, e.id)
                seg_last = max(seg_last, e.id)
                if e.id > after:
                    if e.hash_ok():
                        events[e.id] = e.event()
                    else:
                        problems.append(f"event {e.id} at {item.segment} line {item.line}: "
                                        "hash does not match its contents")
            else:
                problems.append(item.describe())
        prev_last = seg_last
    tail = journal.tail()
    return JournalWindow(events, problems, first, last, missing, tail.problem is None,
                         last_segment_full=tail.size >= journal.segment_bytes)


# -- merging under the hash chain ----------------------------------------------

@dataclass
class Merged:
    accepted: list[Event] = field(default_factory=list)
    replayed: int = 0
    salvaged: list[int] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)  # declared by this merge: new loss
    earlier: list[Gap] = field(default_factory=list)  # declared before, crossed again
    unmerged: list[dict[str, Any]] = field(default_factory=list)


LOST = "lost in recovery: in no backup, journal record or verifiable row"


def merge(hwm: int, hwm_hash: str, journal: dict[int, Event], salvaged: dict[int, Event],
          max_known: int, known: list[Gap] | None = None) -> Merged:
    """Put the journal's records and the salvaged rows after the backup in id order,
    accepting only what the hash chain ties to trusted history.

    A journal record is trusted on its own (its CRC and its hash): it is accepted where
    it links to the event before it, and after a gap too (the gap is declared). A
    salvaged row (its own hash verifies) is accepted only when the chain ties it to
    trusted history: its ``prev_hash`` is the hash of the accepted event just before it;
    or it follows a gap an earlier recovery declared (``known``) exactly: the gap's
    recorded hashes link the event before the gap to this row; or, for a run of rows
    after a new gap, the rows link to each other and the journal record right after the
    run names the run's last hash as its ``prev_hash``. A run after a gap that nothing
    anchors stays out (kept for review) and its ids are lost. Every id in
    ``hwm+1..max_known`` that is not accepted falls in a declared gap: an earlier one
    crossed again (``earlier``), or a new one (``gaps``)."""
    out = Merged()
    chain = Chain().start_after(hwm, hwm_hash)
    declared = {g.first: g for g in known or ()}
    run: list[Event] = []  # salvaged rows after a gap, linked to each other, not anchored

    def keep_for_review(events: list[Event], reason: str) -> None:
        out.unmerged.extend({"id": e.id, "reason": reason, "event": e.to_dict()}
                            for e in events)

    def earlier_gap(e: Event) -> Gap | None:
        """The gap declared before that links the accepted history to ``e``, if any."""
        g = declared.get(chain.expected)
        if g is not None and g.last == e.id - 1 and g.prev_hash == chain.prev and (
                e.prev_hash == g.next_prev_hash):
            return g
        return None

    def accept(e: Event, *, from_journal: bool) -> None:
        if e.id != chain.expected:
            g = earlier_gap(e)
            if g is not None:
                out.earlier.append(g)
            else:
                out.gaps.append(Gap(chain.expected, e.id - 1, chain.prev, e.prev_hash, LOST))
        chain.advance(e)
        out.accepted.append(e)
        if from_journal:
            out.replayed += 1
        else:
            out.salvaged.append(e.id)

    for i in sorted(i for i in set(journal) | set(salvaged) if i > hwm):
        j, s = journal.get(i), salvaged.get(i)
        if s is not None and j is not None:
            if s != j:
                keep_for_review([s], "differs from the journal record of the same id")
            s = None
        if run and j is not None and j.id == run[-1].id + 1 and j.prev_hash == run[-1].hash:
            for e in run:  # the journal record anchors the run that precedes it
                accept(e, from_journal=False)
            run = []
        elif run and s is not None and s.id == run[-1].id + 1 and s.prev_hash == run[-1].hash:
            run.append(s)
            continue
        elif run:
            keep_for_review(run, "after a gap: no journal record links to it, so the "
                            "hash chain cannot verify it")
            run = []
        if i == chain.expected:
            if j is not None and j.prev_hash == chain.prev:
                accept(j, from_journal=True)
            elif s is not None and s.prev_hash == chain.prev:
                accept(s, from_journal=False)
            else:
                keep_for_review([e for e in (j, s) if e is not None],
                                f"does not link to event {i - 1} in the hash chain")
        elif j is not None:
            accept(j, from_journal=True)
        elif s is not None and earlier_gap(s) is not None:
            accept(s, from_journal=False)
        elif s is not None:
            run = [s]
    if run:
        keep_for_review(run, "after a gap: no journal record links to it, so the hash "
                        "chain cannot verify it")
    if max_known >= chain.expected:
        g = declared.get(chain.expected)
        if g is not None and g.last == max_known and g.prev_hash == chain.prev:
            out.earlier.append(g)
        else:
            out.gaps.append(Gap(chain.expected, max_known, chain.prev, chain.prev,
                                "lost in recovery: the newest events could not be recovered"))
    return out


# -- building the recovered ledger -------------------------------------------------

@dataclass
class Built:
    db: Path
    last_id: int
    last_ts: str | None
    replayed: int
    merged_from_salvage: list[int]
    gaps: list[Gap]  # every gap the recovered ledger's chain crosses
    new_gaps: list[Gap]  # declared by this recovery: its loss
    earlier_gaps: list[Gap]  # declared by earlier recoveries
    unapplied: list[Unapplied]
    unmerged: list[dict[str, Any]]
    max_known: int
    unknown_after: dict[str, Any] | None
    journal_needs_rewrite: bool
    salvage_notes: list[str]


def build_ledger(ws: Workspace, backup: BackupInfo | None, work: Path, steps: Steps,
                 jr: JournalWindow, salvage_source: Callable[[], Path | None],
                 marks: list[BackupInfo]) -> Built:
    """Restore, REINDEX, salvage, merge and replay into ``work/leads.db``.

    ``salvage_source`` returns the damaged file to read (None when there is none); it
    is called only after the restore and REINDEX, so a quarantine copy can still be
    under way while they run. ``marks`` are the backups whose high-water marks show how
    far history reached (the chosen one, and any other whose manifest states one).

    The gaps earlier recoveries declared are taken from every source that holds them:
    the backup's ``ledger_gaps`` table, the journal's ``gaps.jsonl``, the
    ``ledger.gap_declared`` events in the journal window and in the damaged file, and
    the damaged file's own table (so a missing journal directory loses none of them)."""
    target = work / "leads.db"
    hwm = backup.hwm_event_id or 0 if backup is not None else 0
    hwm_hash = (backup.hwm_hash if backup is not None else None) or GENESIS_HASH

    def restore() -> str:
        if backup is None:
            conn = connect(target)
            migrate(conn)
            conn.close()
            return "no usable backup: started from an empty ledger (journal from event 1)"
        shutil.copyfile(backup.db_path, target)
        os.chmod(target, 0o600)
        return f"copied {backup.name}/leads.db to a temporary path"

    steps.run("restore", restore, command=f"cp {backup.db_path} {target}" if backup else None)
    conn = connect(target)
    try:
        steps.run("reindex", lambda: (conn.execute("REINDEX"), "rebuilt every index")[1],
                  command="REINDEX")
        migrate(conn)
        in_backup = gaps_in(conn)
        salvage = _salvage(backup, work, steps, jr, hwm, salvage_source())
        known = merge_gaps(in_backup, [] if jr.missing_dir else read_gaps(ws.journal_dir),
                           gaps_declared_by(jr.events.values()), salvage.gaps,
                           gaps_declared_by(salvage.events.values()))
        max_known = max(hwm, jr.last_id, salvage.max_id_seen,
                        max((e.id for e in salvage.events.values()), default=0))
        m = merge(hwm, hwm_hash, jr.events, salvage.events, max_known, known)
        m.unmerged += [{**r, "event": r.get("row")} for r in salvage.bad_rows if r["id"] > hwm]
        earlier = merge_gaps([g for g in known if g.last <= hwm], m.earlier)
        gaps = merge_gaps(earlier, m.gaps)
        replayer = Replayer(gaps)

        def replay() -> str:
            apply_all(conn, replayer.apply, m.accepted)
            a = m.accepted
            return (f"applied {len(a)} events after the backup's high-water mark {hwm}"
                    + (f" ({a[0].id}..{a[-1].id}; {m.replayed} from the journal, "
                       f"{len(m.salvaged)} salvaged)" if a else "")
                    + "".join(f"; {p}" for p in describe_unapplied(replayer.unapplied)))

        steps.run("replay", replay)
        last = conn.execute("SELECT id, ts, hash FROM events ORDER BY id DESC LIMIT 1"
                            ).fetchone()
        declared = _declare_gaps(conn, gaps, steps)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    last_id = int(last[0]) if last else 0
    last_ts = str(last[1]) if last else None
    why = why_unknown(jr, marks, salvage, hwm)
    unknown_after = None if why is None else {
        "id": max_known, "ts": last_ts if last_id == max_known else None, "why": why}
    rewrite = (bool(m.gaps) or bool(m.salvaged) or declared or not jr.intact
               or last_id > jr.last_id)
    return Built(target, last_id, last_ts, m.replayed, m.salvaged, gaps, m.gaps,
                 [g for g in known if g in earlier or any(_overlap(g, n) for n in m.gaps)],
                 replayer.unapplied, m.unmerged, max_known, unknown_after, rewrite,
                 salvage.notes)


def apply_all(conn: sqlite3.Connection, apply: Callable[[sqlite3.Connection, Event], None],
              events: list[Event]) -> None:
    """Apply ``events`` in one write transaction: all of them, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for e in events:
            apply(conn, e)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _overlap(a: Gap, b: Gap) -> bool:
    return a.first <= b.last and b.first <= a.last


def _declare_gaps(conn: sqlite3.Connection, gaps: list[Gap], steps: Steps) -> bool:
    """Record a ``ledger.gap_declared`` event for each gap of the recovered chain that its
    ``ledger_gaps`` table lacks (this recovery's, and any an older Atlas kept only in
    ``gaps.jsonl``), after its last event. Returns whether any was recorded."""
    have = set(gaps_in(conn))
    todo = [g for g in gaps if g not in have]
    if not todo:
        return False

    def declare() -> str:
        row = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        chain = Chain(gaps).start_after(int(row[0]) if row else 0, row[1] if row else None)
        next_id, prev, ts = chain.next_id, chain.prev, utc_now()
        events = []
        for g in todo:
            events.append(Event.seal(NewEvent(GAP_DECLARED, SYSTEM_ACTOR, g.to_dict(),
                                              subject="ledger"), next_id, ts, prev))
            next_id, prev = next_id + 1, events[-1].hash
        apply_all(conn, projections.apply, events)
        return (f"recorded {len(events)} {GAP_DECLARED} event(s) ({events[0].id}.."
                f"{events[-1].id}) for the gap(s) " + ", ".join(
                    f"{g.first}..{g.last}" for g in todo) + ": the ledger keeps its gaps, "
                "so every backup holds them")

    steps.run("declare gaps", declare)
    return True


def _salvage(backup: BackupInfo | None, work: Path, steps: Steps, jr: JournalWindow,
             hwm: int, source: Path | None) -> Salvage:
    """Read from the damaged file what the journal lacks after the backup, or events
    beyond the journal's end. Skipped when a read-only probe shows there is nothing."""
    salvage = Salvage()
    if source is None:
        return salvage
    need = not jr.intact or any(i not in jr.events for i in range(hwm + 1, jr.last_id + 1))
    probe: int | None = None
    if not need:
        # The journal covers the window; the file is needed only if it holds
        # events beyond the journal's end (a missing newest segment).
        def do_probe() -> str:
            nonlocal probe
            probe = probe_max_id(source)
            if probe is None:
                return ("the damaged file's max(id) cannot be read: salvaging it to "
                        "find any events beyond the journal's end")
            if probe > max(hwm, jr.last_id):
                return (f"the damaged file holds ids up to {probe}, beyond the "
                        f"journal's end ({jr.last_id}): salvaging it")
            return (f"the journal holds every event after {hwm} with a clean tail and "
                    f"the damaged file's max(id) is {probe}: nothing to salvage")
        steps.run("probe damaged file", do_probe,
                  command="SELECT max(id) FROM events (read-only, immutable)")
    if probe is not None and probe <= max(hwm, jr.last_id):
        salvage.max_id_seen, salvage.readable = probe, True
        salvage.notes.append(f"salvage skipped: the journal covers events {hwm + 1}.."
                             f"{jr.last_id} and the damaged file holds no id beyond {probe}")
        return salvage
    steps.run("probe sqlite3 .recover",
              lambda: f"{sqlite_recover_probe()[1]}; salvage reads rowid ranges in Python",
              command="sqlite3 <a healthy test file> .recover")
    missing = [i for i in range(hwm + 1, jr.last_id + 1) if i not in jr.events]
    ranges = _as_ranges(missing) + [(max(hwm, jr.last_id) + 1, None)]

    def do_salvage() -> str:
        nonlocal salvage
        donor = backup.db_path if backup is not None else None
        salvage = salvage_events(source, work, ranges, header_donor=donor)
        return (f"read {len(salvage.events)} events whose own hash verifies from the damaged "
                f"file ({len(salvage.bad_rows)} rows failed their hash, "
                f"{sum(b - a + 1 for a, b in salvage.unreadable)} ids unreadable)"
                + ("" if need else "; the journal already covered the window"))
    steps.run("salvage", do_salvage, command="python rowid-range salvage")
    return salvage


def probe_max_id(path: Path) -> int | None:
    """max(id) of the damaged file, read without changing it; None when it cannot be
    read, or when a -wal beside it could hold more (then only salvage, which reads the
    WAL on its copy, can tell). An empty -wal (a read-only look at the live file leaves
    one) holds nothing."""
    wal = Path(str(path) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None
    try:
        conn = ck.open_ro(path, immutable=True)
        try:
            row = conn.execute("SELECT max(id) FROM events").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return 0 if row is None or row[0] is None else int(row[0])


def why_unknown(jr: JournalWindow, marks: list[BackupInfo], salvage: Salvage, hwm: int = 0
                ) -> str | None:
    """Why nothing after the last known event can be known, or None when the journal
    proves where history ends."""
    reasons: list[str] = []
    mark = max(marks, key=lambda b: b.hwm_event_id or 0, default=None)
    end = max(hwm, jr.last_id)
    if jr.missing_dir:
        reasons.append("the journal directory was missing")
    elif mark is not None and jr.last_id <= (mark.hwm_event_id or 0):
        reasons.append(
            f"the journal ends at event {jr.last_id}, at or before backup {mark.name}'s "
            f"high-water mark {mark.hwm_event_id}; every backup records its receipt as "
            "the next event, so the journal's newest records are missing")
    elif jr.last_segment_full and salvage.max_id_seen <= jr.last_id:
        reasons.append(
            f"the journal's newest segment is full, and the journal goes on in a new "
            f"segment after a full one: either nothing was written after event "
            f"{jr.last_id}, or a newer segment is missing")
    if salvage.max_id_seen > jr.last_id and not jr.missing_dir:
        reasons.append(_beyond_the_journal(jr, salvage.max_id_seen))
    elif not jr.tail_clean and not (salvage.readable and not salvage.unreadable):
        reasons.append("the journal's tail is damaged")
    unread = _unreadable_beyond(salvage, end)
    if unread is not None and not jr.missing_dir:
        reasons.append(unread)
    if not reasons:
        return None
    return "; ".join([*reasons, *jr.missing_segments,
                      *([f"{len(jr.problems)} damaged journal record(s)"] if jr.problems
                        else [])])


def _beyond_the_journal(jr: JournalWindow, max_seen: int) -> str:
    """What is true when the database file holds events the journal does not."""
    held = f"the database file holds events up to {max_seen}"
    if not jr.tail_clean:
        return (f"the journal's tail is damaged after event {jr.last_id}, and {held}: "
                "the damaged tail may have held more")
    if jr.last_segment_full:
        return (f"{held}, beyond the journal's end ({jr.last_id}) in a full segment: a "
                "newer journal segment is missing")
    return (f"{held}, beyond the journal's end ({jr.last_id}): the journal lost its newest "
            "records")


def _unreadable_beyond(salvage: Salvage, end: int) -> str | None:
    """The damaged file is the one witness of events the journal may have lost at its
    end (records cut at a record boundary leave no trace in the journal): when it is
    there but cannot be read after ``end``, nothing proves where history ended."""
    if salvage.tried and not salvage.readable:
        return (f"the database file's events cannot be read at all, so events after "
                f"the journal's end ({end}) may be there")
    beyond = [(max(a, end + 1), b) for a, b in salvage.unreadable if b > end]
    if not beyond:
        return None
    return (f"the database file cannot be read beyond the journal's end ({end}): "
            f"{sum(b - a + 1 for a, b in beyond)} ids from {beyond[0][0]} on are unreadable, "
            "so events the journal lost may be there")


def _as_ranges(ids: list[int]) -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def write_journal(db: Path, target: Path, segment_bytes: int, gaps: list[Gap]) -> int:
    """Write a fresh journal for the recovered ledger (the old one goes to quarantine)."""
    target.mkdir(mode=0o700)
    journal = Journal(target, segment_bytes)
    tail = journal.tail()
    conn = connect(db, create=False)
    count = 0
    try:
        cur = conn.execute("SELECT * FROM events ORDER BY id")
        cur.row_factory = sqlite3.Row
        batch: list[Event] = []
        for row in cur:
            batch.append(event_from_row(row))
            if len(batch) >= 1000:
                tail = journal.append(batch, tail)
                count += len(batch)
                batch = []
        if batch:
            tail = journal.append(batch, tail)
            count += len(batch)
    finally:
        conn.close()
    if gaps:
        write_gaps(target, gaps)
    return count



__all__ = ["Built", "JournalWindow", "Merged", "Steps", "build_ledger", "elapsed_ms", "merge",
           "probe_max_id", "read_window", "why_unknown", "write_journal"]
