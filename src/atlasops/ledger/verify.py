"""Verify the ledger against the journal, and rebuild a ledger from the journal."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Conflict, InputError, JournalCorrupt
from . import projections
from .chain import Chain, Gap, Replayer, read_gaps
from .events import Event, StoredEvent
from .journal import Journal, Problem, RecordError, Tail, decode_stored
from .lock import WriterLock
from .migrations import migrate
from .store import connect, connect_ro, event_from_row, storage_error, stored_events


@dataclass
class Discrepancy:
    where: str  # "journal" | "ledger" | "both" | "tables"
    event_id: int | None
    problem: str

    def describe(self) -> str:
        if self.event_id is None:
            return f"[{self.where}] {self.problem}"
        return f"[{self.where}] event {self.event_id}: {self.problem}"


@dataclass
class VerifyReport:
    journal_records: int = 0
    ledger_events: int = 0
    journal_segments: int = 0
    last_id: int = 0
    # the ledger's last event when the comparison began, and (with a lock) where the
    # journal ended then: the comparison reads both sides as of that moment
    ledger_head: int = 0
    journal_end: int | None = None
    tail_problem: str | None = None  # torn bytes after that tail (not read, not counted)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    # the hash-chain problems among the discrepancies, by side ("journal", "ledger")
    chain_breaks: dict[str, list[Discrepancy]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["chain_breaks"]
        out["ok"] = self.ok
        out["first_discrepancy"] = (
            self.discrepancies[0].describe() if self.discrepancies else None)
        return out


def _ledger_events(conn: sqlite3.Connection) -> Iterator[Event]:
    cur = conn.execute("SELECT * FROM events ORDER BY id")
    cur.row_factory = sqlite3.Row
    for row in cur:
        yield event_from_row(row)


class _Stop(Exception):
    pass


class _Side:
    """One side's chain, reporting problems into the shared report."""

    def __init__(self, side: str, report: VerifyReport, limit: int, gaps: list[Gap]) -> None:
        self.side, self.report, self.limit = side, report, limit
        self.chain = Chain(gaps)

    def add(self, where: str, event_id: int | None, problem: str) -> None:
        self.report.discrepancies.append(Discrepancy(where, event_id, problem))
        if len(self.report.discrepancies) >= self.limit:
            raise _Stop

    def check(self, e: StoredEvent, where: str = "") -> None:
        problem = self.chain.accept(e)
        if problem is not None:
            self.report.chain_breaks.setdefault(self.side, []).append(
                Discrepancy(self.side, e.id, problem + where))
            self.add(self.side, e.id, problem + where)


def verify(db_path: Path, journal: Journal, *, limit: int = 50,
           lock: WriterLock | None = None, immutable: bool = False) -> VerifyReport:
    """Check the hash chain of both, and that they hold exactly the same events.

    A merge-join by id over two streams, so memory stays flat on a large ledger.
    Stops collecting after ``limit`` discrepancies.

    With ``lock`` (the workspace's writer lock) the two sides are compared as they
    stood at one moment, while writers go on: a writer journals its events and then
    commits them, both under the lock, so while it is held no write is half done. A
    read transaction is begun on the database and the journal's tail is noted under
    the lock; the lock is released, and the comparison reads the database's snapshot
    and the journal up to that tail. Without it, a write landing between the reads of
    the two sides looks like a discrepancy. ``immutable``: see
    :func:`~atlasops.ledger.store.ro_uri`.

    Both sides are read as :class:`StoredEvent` (payloads stay JSON text): a journal
    record Atlas wrote is proven by its reader, and a ledger row identical to a proven
    record is proven with it; everything else is hashed here, falling back to the
    decoded event wherever the stored text alone does not decide."""
    report = VerifyReport(journal_segments=len(journal.segments()))
    gaps = read_gaps(journal.directory)
    jchain, lchain = _Side("journal", report, limit, gaps), _Side("ledger", report, limit, gaps)
    conn = connect_ro(db_path, immutable=immutable)
    try:
        upto = _snapshot(conn, db_path, journal, lock, report)
    except BaseException:
        conn.close()
        raise

    current: list[StoredEvent | None] = [None]  # the ledger row the merge is at

    def journal_events() -> Iterator[tuple[StoredEvent, str]]:
        for item in journal.scan_checked(upto):
            if isinstance(item, Problem):
                jchain.add("journal", None, item.describe())
                continue
            line, segment, offset, number = item
            led_now = current[0]
            if led_now is not None and led_now.matches_record(line[9:]):
                e = led_now  # the record is exactly this row's canonical spelling
            else:
                try:
                    e = decode_stored(line)
                except RecordError as exc:
                    jchain.add("journal", None,
                               Problem(segment, offset, number, str(exc)).describe())
                    continue
            if e.id > 0:
                yield e, f" at {segment} line {number}"

    def next_ledger() -> StoredEvent | None:
        current[0] = next(lit, None)
        return current[0]

    try:
        jit, lit = journal_events(), stored_events(conn)
        led = next_ledger()
        j = next(jit, None)
        while j is not None or led is not None:
            if led is None or (j is not None and j[0].id < led.id):
                assert j is not None
                report.journal_records += 1
                jchain.check(*j)
                jchain.add("ledger", j[0].id, "in the journal but missing from the ledger")
                j = next(jit, None)
            elif j is None or led.id < j[0].id:
                report.ledger_events += 1
                lchain.check(led)
                lchain.add("journal", led.id, "in the ledger but missing from the journal")
                led = next_ledger()
            else:
                report.journal_records += 1
                report.ledger_events += 1
                jchain.check(*j)
                same = led.same_as(j[0])  # proves led's hash when equal to a proven record
                lchain.check(led)
                if not same:
                    lchain.add("both", led.id, "the ledger row differs from the journal record")
                report.last_id = led.id
                led = next_ledger()
                j = next(jit, None)
    except _Stop:
        pass
    except sqlite3.Error as exc:
        raise storage_error(exc, db_path) from exc
    finally:
        conn.close()
    return report


def moment(db_path: Path, journal: Journal, lock: WriterLock) -> tuple[sqlite3.Connection, Tail]:
    """The ledger and the journal as they stood at one moment: a read connection with its
    read transaction begun, and the journal's tail, both taken under the writer lock (so
    no write is half done), then the lock is released. The caller closes the connection."""
    conn = connect_ro(db_path)
    report = VerifyReport()
    try:
        tail = _snapshot(conn, db_path, journal, lock, report)
    except BaseException:
        conn.close()
        raise
    assert tail is not None
    return conn, tail


def _snapshot(conn: sqlite3.Connection, db_path: Path, journal: Journal,
              lock: WriterLock | None, report: VerifyReport) -> Tail | None:
    """Begin the read transaction the comparison reads the ledger in; with ``lock``,
    under it, returning the journal's tail at the same moment (None without)."""
    def begin() -> None:
        conn.execute("BEGIN")
        row = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        report.ledger_head = int(row[0])

    try:
        if lock is None:
            begin()
            return None
        with lock:
            begin()
            tail = journal.tail()
    except sqlite3.Error as exc:
        raise storage_error(exc, db_path) from exc
    report.journal_end = tail.last_id
    report.tail_problem = tail.problem.describe() if tail.problem is not None else None
    return tail


@dataclass
class RebuildReport:
    path: str
    events: int
    last_id: int
    last_hash: str | None
    # events after a declared gap recorded but not applied (see chain.Replayer)
    unapplied: list[dict[str, Any]] = field(default_factory=list)


def rebuild(journal: Journal, into: Path, *, after_db: Path | None = None,
            upto: int | None = None) -> RebuildReport:
    """Replay the journal into a new database at ``into`` (which must not exist): all of
    it, or its records up to event ``upto`` (a tail noted under the writer lock: the
    journal as it stood at one moment, without a torn write after it)."""
    into = Path(into)
    if into.exists():
        raise Conflict(f"{into} already exists; Atlas never overwrites a database",
                       hint="Choose a new path, or move the existing file away first.")
    if not into.parent.is_dir():
        raise InputError(f"cannot write {into}: the directory {into.parent} does not exist",
                         hint="Create the directory first, or choose another path.")
    conn = connect(into)
    count = 0
    gaps = read_gaps(journal.directory)
    chain, replayer = Chain(gaps), Replayer(gaps)
    last: Event | None = None
    try:
        migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        for item in journal.scan():
            if isinstance(item, Problem):
                conn.execute("ROLLBACK")
                raise JournalCorrupt(f"cannot replay the journal: {item.describe()}")
            event = item.event
            if upto is not None and event.id > upto:
                break
            problem = chain.accept(event)
            if problem is not None:
                conn.execute("ROLLBACK")
                raise JournalCorrupt(
                    f"journal record for event {event.id} at {item.segment} line {item.line} "
                    f"breaks the hash chain: {problem}")
            replayer.apply(conn, event)
            last = event
            count += 1
            if upto is not None and event.id >= upto:
                break  # the journal as it stood: what follows (a torn write) is not read
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(into) + suffix).unlink(missing_ok=True)
        raise
    conn.close()
    return RebuildReport(str(into), count, last.id if last else 0, last.hash if last else None,
                         [u.to_dict() for u in replayer.unapplied])


def compare_tables(a_path: Path | sqlite3.Connection, b_path: Path, *,
                   limit: int = 10) -> list[str]:
    """The first ``limit`` differences between the projected tables of two ledgers, table by
    table in primary-key order (streamed: neither ledger is loaded whole). ``a_path`` may
    be an open connection (a read snapshot the caller began); it is left open."""
    a = a_path if isinstance(a_path, sqlite3.Connection) else connect_ro(a_path)
    b = connect_ro(b_path)
    found: list[str] = []
    try:
        for table in projections.PROJECTED_TABLES:
            sql = f"SELECT * FROM {table} ORDER BY 1"
            rows_a, rows_b = a.execute(sql), b.execute(sql)
            while len(found) < limit:
                ra, rb = rows_a.fetchone(), rows_b.fetchone()
                if ra is None and rb is None:
                    break
                if ra != rb:
                    key = (ra or rb)[0]
                    found.append(f"table {table}, row {key!r}: "
                                 f"{'missing' if ra is None else tuple(ra)!r} in the ledger, "
                                 f"{'missing' if rb is None else tuple(rb)!r} in the replay")
                    if ra is None or rb is None or ra[0] != rb[0]:
                        break  # rows no longer line up; one report per table is enough
    finally:
        if a is not a_path:
            a.close()
        b.close()
    return found


def dump_tables(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every projected table, in primary-key order (for comparing two ledgers)."""
    conn = connect_ro(db_path)
    try:
        return {
            t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")]
            for t in projections.PROJECTED_TABLES
        }
    finally:
        conn.close()


__all__ = ["Discrepancy", "RebuildReport", "VerifyReport", "compare_tables", "dump_tables",
           "moment", "rebuild", "verify"]
