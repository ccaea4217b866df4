"""The ledger: the journal-first write path and the SQLite projection.

Every append, from any process, follows one order under one file lock::

    lock -> bring the ledger level with the journal -> BEGIN IMMEDIATE
         -> assign ids, seal the hash chain -> insert + project (uncommitted)
         -> append to the journal, fdatasync -> COMMIT -> unlock

The rows are applied *before* the journal write so that an event a projection
would reject never reaches the journal; they are committed only *after* the
journal is on disk, so a committed row always has its journal record. A crash
between the fsync and the commit leaves an event in the journal only; the next
open applies it. SQLite therefore runs with ``synchronous=NORMAL``: durability
comes from the journal, and the ledger is caught up from it.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Conflict, DatabaseCorrupt, InputError, JournalCorrupt, StorageError
from ..workspace import RECOVERY_PENDING
from . import projections
from .chain import Chain, Gap, Replayer, gaps_in, merge_gaps, read_gaps
from .events import GENESIS_HASH, Event, NewEvent, StoredEvent, utc_now
from .journal import Journal, Located, Tail
from .lock import WriterLock
from .migrations import migrate

KIND_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# SQLite's own verdicts that a file is damaged (primary result codes): SQLITE_CORRUPT and
# SQLITE_NOTADB. Only these count as corruption. The text of an error does not ("malformed
# JSON" is SQLITE_ERROR), and neither does a transient failure: "database is locked"
# (SQLITE_BUSY), an I/O error, a file that cannot be opened.
CORRUPT_CODES = (11, 26)
SYSTEM_ACTOR = "atlas"
# Recorded (in the journal only) when the database is found damaged; while one waits in
# the journal beyond the ledger's head, the database is not written to.
DETECTED = "db.corruption.detected"
# Recorded when a missing or empty database file was rebuilt from the journal on open.
REBUILT = "ledger.rebuilt"


def is_corruption(exc: BaseException | None) -> bool:
    """Is this SQLite saying the file is damaged (not busy, not an I/O error)?"""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and (
        code & 0xFF) in CORRUPT_CODES


def storage_error(exc: sqlite3.Error, path: Path) -> StorageError:
    """Translate a sqlite3 error into Atlas's tree, with the next step."""
    if is_corruption(exc):
        return DatabaseCorrupt(f"the ledger database {path} is damaged: {exc}", path=str(path))
    return StorageError(
        f"the ledger database {path} cannot be used: {exc}",
        hint="Check free disk space and the permissions of data/db/.",
    )


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open a ledger database with Atlas's settings (WAL, foreign keys, autocommit)."""
    if not create and not path.exists():
        raise StorageError(f"no ledger database at {path}")
    try:
        if create and not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise storage_error(exc, path) from exc
    except OSError as exc:
        raise StorageError(f"cannot open the ledger database {path}: {exc}") from exc
    return conn


def ro_uri(path: Path, *, immutable: bool = False) -> str:
    """The URI of a read-only connection to ``path``.

    ``immutable`` only for a file nothing else can write (a backup, a quarantined copy,
    a scratch file): an immutable connection takes no locks and trusts the file not to
    change, so on a live ledger another process's checkpoint (every last connection to
    close runs one) can rewrite pages under it, and it reads a torn file ("database disk
    image is malformed" from a healthy database). A live ledger is read with the normal
    locks: the read sees one commit, whatever writers do meanwhile. It may create the
    -wal and -shm files when they are missing (SQLite's WAL needs them even to read)."""
    return f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")


def connect_ro(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    """A read-only connection (see :func:`ro_uri`); the file must exist."""
    if not path.exists():
        raise StorageError(f"no ledger database at {path}")
    try:
        return sqlite3.connect(ro_uri(path, immutable=immutable), uri=True,
                               isolation_level=None, timeout=30, check_same_thread=False)
    except sqlite3.Error as exc:
        raise storage_error(exc, path) from exc


@dataclass
class OpenReport:
    """What opening the ledger had to do to bring it level with the journal."""

    caught_up: int = 0
    set_aside: list[str] = field(default_factory=list)
    migrations_applied: list[int] = field(default_factory=list)
    # events after a declared gap the catch-up recorded but could not apply
    unapplied: list[dict[str, Any]] = field(default_factory=list)


class Ledger:
    """One workspace's ledger. Safe to share between processes; one per thread."""

    def __init__(self, db_path: Path, journal_dir: Path, lock_path: Path,
                 segment_bytes: int, *, lock_timeout: float = 60.0,
                 recovering: bool = False) -> None:
        self.db_path = Path(db_path)
        # plain strings for the checks every append makes (os.stat of a str, no pathlib)
        self._db_str = str(self.db_path)
        self._pending_str = str(self.db_path.parent / RECOVERY_PENDING)
        self._journal_str = os.path.join(journal_dir, "")
        # `atlas recover`: recording its receipt mid-swap, or applying a detection in place
        self._recovering = recovering
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._fresh: str | None = None  # why the file was created on open, if it was
        self.journal = Journal(journal_dir, segment_bytes)
        self.lock_path = Path(lock_path)
        self._lock = WriterLock(lock_path, timeout=lock_timeout)
        self._conn: sqlite3.Connection | None = None
        self._tail: Tail | None = None
        self._notices: list[NewEvent] = []
        self._next_id = 1
        self._read_only = False
        self.report = OpenReport()

    @classmethod
    def for_workspace(cls, ws: Any, *, recovering: bool = False,
                      lock_timeout: float = 60.0) -> Ledger:
        return cls(ws.db_path, ws.journal_dir, ws.lock_path, ws.config.journal.segment_bytes,
                   recovering=recovering, lock_timeout=lock_timeout)

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> Ledger:
        """Open the database (creating it from the journal if it is missing) and catch up.

        The writer lock is taken *before* connecting: a recovery holds it while it swaps
        the file, so a connection never points at a file that is being replaced."""
        with self._locked():
            self._connect_locked()
            self._level_locked()
        return self

    def _level_locked(self) -> None:
        """Under the lock: bring the ledger level with the journal. A file that was
        created on connecting (it was missing or empty) and filled from the journal is
        recorded by a ``ledger.rebuilt`` notice, whether that happened on open or in a
        long-lived process that found the file gone."""
        before, skipped = self.report.caught_up, len(self.report.unapplied)
        self._sync()
        if self._fresh is not None and self.report.caught_up > before:
            unapplied = [u["id"] for u in self.report.unapplied[skipped:]]
            self._notices.append(NewEvent(REBUILT, SYSTEM_ACTOR, {
                "reason": f"{self.db_path.name} was {self._fresh}",
                "replayed": self.report.caught_up - before, "source": "journal",
                **({"unapplied": unapplied} if unapplied else {})}))
        self._fresh = None
        if self._notices:  # recorded at once, in a transaction of their own: a write
            self._append_locked(lambda _c: [])  # refused next cannot take them along
    def follow(self) -> None:
        """For a long-lived reader (``atlas events tail --follow``): if the file at
        ``db_path`` is no longer the one this connection reads (a recovery swapped it),
        connect to the new one, level with the journal. Cheap when nothing changed."""
        if self._read_only:
            return
        if self._file_identity() != self._identity:
            with self._locked():
                self._reconnect_if_replaced()
                self._level_locked()

    def open_as_it_stands(self) -> Ledger:
        """Open for reading only: no lock, no catch-up, no migration, nothing written: the
        ledger as it stands. For showing a workspace Atlas may not write just now (a
        detection waiting for `atlas recover`, the writer lock held by a long recovery);
        events only the journal holds are not shown. Appends raise."""
        self._conn = connect_ro(self.db_path)
        self._read_only = True
        return self

    def _connect_locked(self) -> None:
        """Under the lock: connect to the file that is at ``db_path`` now, and migrate it."""
        self._refuse_if_recovery_pending()
        try:
            size: int | None = self.db_path.stat().st_size
        except FileNotFoundError:
            size = None
        conn = connect(self.db_path)
        try:
            self.report.migrations_applied = migrate(conn)
            st = os.stat(self.db_path)
        except sqlite3.Error as exc:
            conn.close()
            raise storage_error(exc, self.db_path) from exc
        self._conn, self._identity, self._tail = conn, (st.st_dev, st.st_ino), None
        self._fresh = None if size else ("missing" if size is None else "empty (0 bytes)")

    def _refuse_if_recovery_pending(self) -> None:
        if not self._recovering and os.path.exists(self._pending_str):
            raise StorageError(
                f"a recovery of {self.db_path} was interrupted before it finished; nothing "
                "is written until it is done", hint="Run `atlas recover`: it finishes the "
                "swap it had verified.")

    def _reconnect_if_replaced(self) -> None:
        """Under the lock: if the file at ``db_path`` is no longer the one this
        connection holds (a recovery swapped it), connect to the new one. Writing to the
        old inode would put events where no one will ever read them."""
        self._refuse_if_recovery_pending()
        if self._file_identity() != self._identity:
            self.close()
            self._connect_locked()

    def _file_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the file at ``db_path`` now; None when there is none."""
        try:
            st = os.stat(self._db_str)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Ledger:
        return self.open() if self._conn is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("the ledger is not open")
        return self._conn

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            yield

    # -- writing -----------------------------------------------------------

    def append(self, kind: str, actor: str, payload: dict[str, Any] | None = None,
               subject: str | None = None) -> Event:
        return self.append_many([NewEvent(kind, actor, payload or {}, subject)])[0]

    def append_many(self, news: list[NewEvent]) -> list[Event]:
        """Append a batch: one lock, one fsync, one transaction."""
        return self.transact(lambda _conn: news)

    def transact(self, build: Callable[[sqlite3.Connection], list[NewEvent]]) -> list[Event]:
        """Run ``build`` under the writer lock, inside the write transaction, and append
        the events it returns. ``build`` reads the current state through the connection
        it is given, so decisions (is this lead new?) cannot race another writer."""
        if self._read_only:
            raise StorageError("this ledger was opened as it stands, for reading only; "
                               "nothing can be written through it")
        with self._locked():
            self._reconnect_if_replaced()
            self._level_locked()
            return self._append_locked(build)

    def _append_locked(self, build: Callable[[sqlite3.Connection], list[NewEvent]]
                       ) -> list[Event]:
        conn = self.conn
        assert self._tail is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(exc, self.db_path) from exc
        try:
            news = self._notices + build(conn)
            for new in news:
                _validate(new)
            prev = self._tail.last_hash or GENESIS_HASH
            next_id = self._next_id
            ts = utc_now()
            events: list[Event] = []
            for offset, new in enumerate(news):
                event = Event.seal(new, next_id + offset, ts, prev)
                projections.apply(conn, event)
                events.append(event)
                prev = event.hash
            if events:
                self._tail = self.journal.append(events, self._tail)
                self._next_id = events[-1].id + 1
            self._notices = []
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            raise Conflict(f"the change conflicts with the ledger and was not recorded: {exc}",
                           hint="Nothing was written; check the input against the current "
                           "state.") from exc
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise storage_error(exc, self.db_path) from exc
        except UnicodeEncodeError as exc:  # text that came in as bytes that are not UTF-8
            conn.execute("ROLLBACK")
            raise InputError(
                f"the event holds text that is not valid UTF-8 ({exc.object[exc.start:exc.end]!r}"
                " in a file name, a variable or an argument) and was not recorded",
                hint="Nothing was written; rename the file or fix the text, then try again.",
            ) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._tail = None  # re-read on the next append, which will catch up
            raise StorageError(
                f"the events are safe in the journal but the ledger could not commit: {exc}",
                hint="The next Atlas command applies them from the journal.",
            ) from exc
        return events

    # -- keeping the ledger level with the journal ---------------------------

    def _journal_unchanged(self) -> bool:
        """Whether the journal is exactly as this process last left it (no other writer
        appended or rotated since): then the ledger is level with it and nothing needs
        reading. Two stats of plain strings: this runs on every append."""
        tail = self._tail
        if tail is None or tail.segment is None:
            return False
        rotated = self._journal_str + self.journal.segment_name(tail.last_id + 1)
        try:
            size = os.stat(tail.segment).st_size
        except FileNotFoundError:
            return False
        return size == tail.size and not os.path.exists(rotated)

    def _ledger_head(self) -> tuple[int, str | None]:
        try:
            row = self.conn.execute(
                "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise storage_error(exc, self.db_path) from exc
        return (0, None) if row is None else (int(row[0]), str(row[1]))

    def _sync(self) -> None:
        """Under the lock: make sure the ledger holds exactly what the journal holds."""
        if self._journal_unchanged():
            return
        tail = self.journal.tail()
        head_id, head_hash = self._ledger_head()
        if tail.problem is not None:
            if head_id > tail.last_id:
                raise JournalCorrupt(
                    f"the journal is damaged after event {tail.last_id} "
                    f"({tail.problem.describe()}) but the ledger holds events up to {head_id}",
                )
            saved = self.journal.set_aside_tail(tail)
            self.report.set_aside.append(str(saved))
            self._notices.append(NewEvent(
                "journal.tail_set_aside", SYSTEM_ACTOR,
                {"segment": tail.problem.segment, "offset": tail.valid_size,
                 "bytes": tail.size - tail.valid_size, "reason": tail.problem.reason,
                 "saved_to": str(saved)},
            ))
            tail = self.journal.tail()
        if head_id > tail.last_id:
            raise JournalCorrupt(
                f"the ledger holds events up to {head_id} but the journal ends at "
                f"{tail.last_id}: journal records are missing",
                hint="Run `atlas recover --dry-run`, then `atlas recover`: it rewrites the "
                     "journal from the ledger and states what can no longer be known.",
            )
        if head_id < tail.last_id:
            self._catch_up(head_id, head_hash)
        else:
            if head_hash is not None and head_hash != tail.last_hash:
                raise JournalCorrupt(
                    f"event {head_id} differs between the ledger and the journal")
        self._tail = tail
        chain = Chain(self._gaps()).start_after(tail.last_id, tail.last_hash)
        self._next_id = chain.next_id

    def _gaps(self) -> list[Gap]:
        """The declared gaps: the journal's file and the ledger's own table."""
        try:
            return merge_gaps(read_gaps(self.journal.directory), gaps_in(self.conn))
        except sqlite3.Error as exc:
            raise storage_error(exc, self.db_path) from exc

    def _catch_up(self, head_id: int, head_hash: str | None) -> None:
        """Apply the journal records after the ledger's head, in one transaction: all of
        them or none (after a declared gap, an event that depends on a lost one is
        recorded without being applied: :class:`~atlasops.ledger.chain.Replayer`). A
        ``db.corruption.detected`` among them that no later recovery receipt closes means
        this database was found damaged and not yet recovered: nothing is written to it,
        unless this is `atlas recover` applying it in place (the file passed every check).
        A detection a recovery closed (a rebuild from the journal after the database file
        was deleted replays both) is history, not a block."""
        conn = self.conn
        gaps = self._gaps()
        chain, replayer = Chain(gaps).start_after(head_id, head_hash), Replayer(gaps)
        count = 0
        pending: Event | None = None  # a detection not (yet) closed by a recovery receipt
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for item in self.journal.scan(after_id=head_id):
                    if not isinstance(item, Located):
                        raise JournalCorrupt(f"cannot replay the journal: {item.describe()}")
                    event = item.event
                    if event.kind == DETECTED:
                        pending = pending or event
                    elif pending is not None and _closes_detections(event):
                        pending = None
                    problem = chain.accept(event)
                    if problem is not None:
                        raise JournalCorrupt(
                            f"journal record for event {event.id} at {item.segment} line "
                            f"{item.line} does not continue the hash chain: {problem}")
                    try:
                        replayer.apply(conn, event)
                    except InputError as exc:  # the journal holds what Atlas would refuse
                        raise JournalCorrupt(
                            f"journal record for event {event.id} at {item.segment} line "
                            f"{item.line} cannot be applied to the ledger: {exc.message}",
                            hint="Run `atlas ledger verify` to see the record; `atlas recover "
                            "--dry-run` shows what recovery would do with it.") from exc
                    count += 1
                if pending is not None and not self._recovering:
                    raise DatabaseCorrupt(
                        f"{self.db_path} was found damaged (event {pending.id}, {DETECTED}: "
                        f"{pending.payload.get('summary', 'no summary')}) and has not been "
                        "recovered since; Atlas does not write to it",
                        path=str(self.db_path), detection=pending.id)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise storage_error(exc, self.db_path) from exc
        self.report.caught_up += count
        self.report.unapplied += [u.to_dict() for u in replayer.unapplied]

    # -- reading -----------------------------------------------------------

    def last_event(self) -> Event | None:
        row = self._query_one("SELECT * FROM events ORDER BY id DESC LIMIT 1")
        return None if row is None else event_from_row(row)

    def events(self, *, after: int = 0, kind: str | None = None,
               limit: int | None = None, newest: bool = False) -> list[Event]:
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after]
        if kind:
            if kind.endswith(".*"):
                sql += " AND kind LIKE ?"
                args.append(kind[:-1] + "%")
            else:
                sql += " AND kind = ?"
                args.append(kind)
        sql += " ORDER BY id DESC" if newest else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._query(sql, args)
        out = [event_from_row(r) for r in rows]
        return list(reversed(out)) if newest else out

    def _query(self, sql: str, args: Any = ()) -> list[sqlite3.Row]:
        try:
            cur = self.conn.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())
        except sqlite3.Error as exc:
            raise storage_error(exc, self.db_path) from exc

    def _query_one(self, sql: str, args: Any = ()) -> sqlite3.Row | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    def query(self, sql: str, args: Any = ()) -> list[sqlite3.Row]:
        """Run a read query against the ledger (library use; faces call named functions)."""
        return self._query(sql, args)

    def count(self, table: str) -> int:
        if table not in projections.PROJECTED_TABLES:
            raise InputError(f"unknown table {table!r}")
        row = self._query_one(f"SELECT count(*) AS n FROM {table}")
        return int(row["n"]) if row is not None else 0


def _closes_detections(event: Event) -> bool:
    """A recovery receipt that did not fail: it verified the ledger after the detections
    before it (and replayed them into the recovered ledger)."""
    p = event.payload
    return (event.kind == "receipt.recorded" and p.get("kind") == "recovery"
            and p.get("outcome") != "failed")


EVENT_COLUMNS = "id, ts, kind, actor, subject, payload, prev_hash, hash"


def stored_events(conn: sqlite3.Connection, where: str = "", args: Any = ()
                  ) -> Iterator[StoredEvent]:
    """``SELECT`` the events (``where`` is appended, e.g. ``WHERE id > ?``) in id order,
    as :class:`StoredEvent` (payload left as its stored JSON text, for verification)."""
    cur = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events {where} ORDER BY id", args)
    cur.arraysize = 1000
    while rows := cur.fetchmany():
        for row in rows:
            yield StoredEvent(*row)


def event_from_row(row: sqlite3.Row) -> Event:
    import json

    return Event(
        id=row["id"], ts=row["ts"], kind=row["kind"], actor=row["actor"],
        subject=row["subject"], payload=json.loads(row["payload"]),
        prev_hash=row["prev_hash"], hash=row["hash"],
    )


def _validate(new: NewEvent) -> None:
    if not KIND_RE.match(new.kind):
        raise InputError(f"event kind {new.kind!r} must look like 'noun.verb'")
    if not new.actor:
        raise InputError("every event needs an actor")
    if not isinstance(new.payload, dict):
        raise InputError("an event payload must be a JSON object")


__all__ = ["DETECTED", "EVENT_COLUMNS", "REBUILT", "Ledger", "OpenReport", "connect",
           "connect_ro", "event_from_row", "is_corruption", "ro_uri", "storage_error",
           "stored_events"]
