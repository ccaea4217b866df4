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

from ..ledger import Event, Journal, projections
from ..ledger.chain import Chain, Gap, read_gaps, write_gaps
from ..ledger.events import GENESIS_HASH
from ..ledger.journal import LocatedStored
from ..ledger.migrations import migrate
from ..ledger.store import connect, event_from_row
from ..receipts import Action
from ..workspace import Workspace
from . import checks as ck
from .backup import BackupInfo
from .salvage import Salvage, salvage_events


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


# -- detection ---------------------------------------------------------------

@dataclass
class JournalWindow:
    events: dict[int, Event]
    problems: list[str]
    first_id: int | None
    last_id: int
    missing_segments: list[str]
    tail_clean: bool

    @property
    def intact(self) -> bool:
        return not self.problems and not self.missing_segments and self.tail_clean


def read_window(journal: Journal, after: int) -> JournalWindow:
    """The journal records after ``after`` (the backup's high-water mark), decoded.

    Only the segments that can hold them are read (:meth:`Journal.segments_from`); in
    those, records are checked from their stored text and only the ones after the mark
    are decoded. Damage in older segments is met by the final ledger == journal check
    (see :func:`_old_journal_damage`)."""
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
    return JournalWindow(events, problems, first, last, missing, tail.problem is None)


@dataclass
class Built:
    db: Path
    last_id: int
    last_ts: str | None
    replayed: int
    merged_from_salvage: list[int]
    gaps: list[Gap]
    unmerged: list[dict[str, Any]]
    max_known: int
    unknown_after: dict[str, Any] | None
    journal_needs_rewrite: bool
    salvage_notes: list[str]


def build_ledger(ws: Workspace, backup: BackupInfo | None, work: Path, steps: Steps,
           jr: JournalWindow, salvage_source: Path | None) -> Built:
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
        existing_gaps = [g for g in read_gaps(ws.journal_dir) if g.last <= hwm]

        # What the journal holds after the backup, and what it lacks.
        need_salvage = not jr.intact or any(
            i not in jr.events for i in range(hwm + 1, jr.last_id + 1))
        salvage = Salvage()
        ranges: list[tuple[int, int | None]] = []
        probe: int | None = None
        if salvage_source is not None and not need_salvage:
            # The journal covers the window; the file is needed only if it holds
            # events beyond the journal's end (a missing newest segment).
            def do_probe() -> str:
                nonlocal probe
                probe = probe_max_id(salvage_source)
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
                                 f"{jr.last_id} and the damaged file holds no id beyond "
                                 f"{probe}")
        elif salvage_source is not None:
            missing = [i for i in range(hwm + 1, jr.last_id + 1) if i not in jr.events]
            ranges = _as_ranges(missing) + [(max(hwm, jr.last_id) + 1, None)]

            def do_salvage() -> str:
                nonlocal salvage
                donor = backup.db_path if backup is not None else None
                salvage = salvage_events(salvage_source, work, ranges, header_donor=donor)
                return (f"read {len(salvage.events)} verifiable events from the damaged file "
                        f"({len(salvage.bad_rows)} rows failed their hash, "
                        f"{sum(b - a + 1 for a, b in salvage.unreadable)} ids unreadable)"
                        + ("" if need_salvage else "; the journal already covered the window"))
            steps.run("salvage", do_salvage, command="python rowid-range salvage")

        # Merge, in id order, under the hash chain.
        chain = Chain(existing_gaps).start_after(hwm, hwm_hash)
        max_known = max(hwm, jr.last_id, salvage.max_id_seen,
                        max((e.id for e in salvage.events.values()), default=0))
        gaps: list[Gap] = []
        merged: list[int] = []
        replayed = 0
        accepted: list[Event] = []
        candidates = sorted(set(jr.events) | set(salvage.events))
        lost_start: int | None = None
        for i in candidates:
            if i <= hwm:
                continue
            options = [e for e in (jr.events.get(i), salvage.events.get(i)) if e is not None]
            pick = None
            if i == chain.expected:
                pick = next((e for e in options if e.prev_hash == chain.prev), None)
            else:
                # a jump: acceptable only as a declared loss, and only if the rest of the
                # history after it is consistent on its own (its own hash verifies)
                pick = next((e for e in options if e.id > chain.expected), None)
                if pick is not None:
                    lost_start = chain.expected
            if pick is None:
                continue
            if pick.id != chain.expected:
                assert lost_start is not None
                gaps.append(Gap(lost_start, pick.id - 1, chain.prev, pick.prev_hash,
                                "lost in recovery: in no backup, journal record or readable row"))
            chain.advance(pick)
            accepted.append(pick)
            if pick is jr.events.get(i):
                replayed += 1
            else:
                merged.append(i)
        if max_known >= chain.expected:
            gaps.append(Gap(chain.expected, max_known, chain.prev, chain.prev,
                            "lost in recovery: the newest events could not be recovered"))
        accepted_ids = {e.id for e in accepted}
        unmerged = [{"id": e.id, "reason": "does not link into the hash chain",
                     "event": e.to_dict()} for i, e in salvage.events.items()
                    if i > hwm and i not in accepted_ids and jr.events.get(i) != e]
        unmerged += [{**r, "event": r.get("row")} for r in salvage.bad_rows if r["id"] > hwm]

        def replay() -> str:
            projections.apply_all(conn, accepted)
            first = accepted[0].id if accepted else None
            return (f"applied {len(accepted)} events after the backup's high-water mark {hwm}"
                    + (f" ({first}..{accepted[-1].id}; {replayed} from the journal, "
                       f"{len(merged)} salvaged)" if accepted else ""))

        steps.run("replay", replay)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        last = conn.execute("SELECT id, ts FROM events ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    unknown_after = None
    evidence_beyond = salvage.max_id_seen > jr.last_id
    salvage_complete = salvage.readable and not salvage.unreadable
    if evidence_beyond or (not jr.tail_clean and not salvage_complete):
        ts = str(last[1]) if last is not None and int(last[0]) == max_known else None
        unknown_after = {"id": max_known, "ts": ts, "why": _why_unknown(jr, evidence_beyond)}
    rewrite = bool(gaps) or bool(merged) or not jr.intact
    return Built(target, int(last[0]) if last else 0, str(last[1]) if last else None,
                  replayed, merged, existing_gaps + gaps, unmerged, max_known, unknown_after,
                  rewrite, salvage.notes)


def probe_max_id(path: Path) -> int | None:
    """max(id) of the damaged file, read without changing it; None when it cannot be
    read, or when a -wal beside it could hold more (then only salvage, which reads the
    WAL on its copy, can tell)."""
    if Path(str(path) + "-wal").exists():
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


def _why_unknown(jr: JournalWindow, evidence_beyond: bool) -> str:
    reasons = list(jr.missing_segments)
    if jr.problems:
        reasons.append(f"{len(jr.problems)} damaged journal record(s)")
    if not jr.tail_clean:
        reasons.append("the journal's tail is damaged")
    if evidence_beyond:
        reasons.append("the damaged database holds events beyond the journal's end "
                       "(a journal segment is missing)")
    return "; ".join(reasons) or "the journal cannot prove where history ends"


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



__all__ = ["Built", "JournalWindow", "Steps", "build_ledger", "elapsed_ms", "probe_max_id",
           "read_window", "write_journal"]
