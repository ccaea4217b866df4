"""SQLite-level checks on a database file, each timed and turned into a receipt check.

Checks open their own read-only connection, so several can run at once on
separate threads (sqlite3 releases the GIL while it works): a backup's
``quick_check``, ``integrity_check``, sha256 and row counts run in parallel.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.chain import Chain, Gap
from ..ledger.projections import PROJECTED_TABLES
from ..ledger.store import is_corruption, ro_uri, stored_events
from ..receipts import Check

HASH_CHUNK = 4 * 1024 * 1024
BUSY_TIMEOUT = 30.0  # seconds a check waits on a lock another connection holds


@dataclass
class Outcome:
    check: Check
    value: Any = None
    error: BaseException | None = None  # what the check raised, if it raised

    @property
    def corrupt(self) -> bool:
        """(Of :func:`sqlite_check`.) Failed with SQLite's verdict that the file is
        damaged: problems listed, or
        SQLITE_CORRUPT / SQLITE_NOTADB raised. Not a check that could not run (busy,
        locked, unreadable): that proves nothing about the file."""
        if self.check.passed:
            return False
        return self.value is not None if self.error is None else is_corruption(self.error)


def open_ro(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    """A read-only connection that never changes ``path``. ``immutable`` only for a file
    nothing else writes (a backup, a copy): see :func:`atlasops.ledger.store.ro_uri`."""
    return sqlite3.connect(ro_uri(path, immutable=immutable), uri=True, isolation_level=None,
                           timeout=BUSY_TIMEOUT, check_same_thread=False)


def live_immutable(path: Path) -> bool:
    """May a caller that holds the writer lock for the whole read open the live ledger as
    immutable (leaving no -wal/-shm behind)? Only when no -wal is beside it: then no
    connection has the file open in WAL mode, and no Atlas process can open it to write
    meanwhile (every writer takes the lock before connecting), so nothing checkpoints
    into it while it is read."""
    return not Path(str(path) + "-wal").exists()


def timed(name: str, fn: Callable[[], tuple[bool, str, Any]]) -> Outcome:
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        passed, detail, value = fn()
    except sqlite3.Error as exc:
        passed, detail, value, error = False, f"{type(exc).__name__}: {exc}", None, exc
    except OSError as exc:
        passed, detail, value, error = False, f"cannot read: {exc.strerror or exc}", None, exc
    ms = round((time.perf_counter() - t0) * 1000, 3)
    return Outcome(Check(name=name, passed=passed, detail=detail, ms=ms), value, error)


def _pragma_rows(path: Path, pragma: str, immutable: bool) -> list[str]:
    conn = open_ro(path, immutable=immutable)
    try:
        return [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}")]
    finally:
        conn.close()


def sqlite_check(path: Path, pragma: str, *, immutable: bool = False,
                 max_errors: int = 100) -> Outcome:
    """``quick_check`` or ``integrity_check``: passes only on a single 'ok'."""
    def run() -> tuple[bool, str, Any]:
        rows = _pragma_rows(path, f"{pragma}({max_errors})", immutable)
        ok = rows == ["ok"]
        return ok, "ok" if ok else "; ".join(rows[:10]), rows
    return timed(pragma, run)


def describe_damage(path: Path, *, immutable: bool = False) -> list[str]:
    """What can be said about a file whose checks raise instead of listing problems:
    its header, its length against the page count the header states, and which tables
    can still be read. Facts only; nothing is guessed."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
        size = path.stat().st_size
    except OSError as exc:
        return [f"cannot read {path.name}: {exc.strerror or exc}"]
    if not header.startswith(b"SQLite format 3\x00"):
        return [f"page 1: the header is not SQLite's (first bytes {header[:16]!r})"]
    raw = int.from_bytes(header[16:18], "big")
    page = 65536 if raw == 1 else raw
    stated = int.from_bytes(header[28:32], "big")
    out = []
    if page and size < stated * page:
        out.append(f"truncated: the header states {stated} pages of {page} bytes "
                   f"({stated * page} bytes), the file has {size} bytes "
                   f"(pages {size // page + 1}..{stated} are missing)")
    try:
        conn = open_ro(path, immutable=immutable)
        try:
            tables = [(str(r[0]), r[1]) for r in conn.execute(
                "SELECT name, rootpage FROM sqlite_master WHERE type='table' ORDER BY name")]
            for t, root in tables:
                try:
                    conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()
                except sqlite3.DatabaseError as exc:
                    out.append(f"table {t} (root page {root}): unreadable ({exc})")
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        out.append(f"the schema (page 1) cannot be read: {exc}")
    return out


def foreign_key_check(path: Path, *, immutable: bool = False) -> Outcome:
    def run() -> tuple[bool, str, Any]:
        conn = open_ro(path, immutable=immutable)
        try:
            rows = conn.execute("PRAGMA foreign_key_check").fetchall()
        finally:
            conn.close()
        detail = "ok" if not rows else "; ".join(
            f"{r[0]} rowid {r[1]} -> {r[2]}" for r in rows[:10])
        return not rows, detail, rows
    return timed("foreign_key_check", run)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_check(path: Path, expected: str | None = None) -> Outcome:
    def run() -> tuple[bool, str, Any]:
        digest = sha256_file(path)
        if expected is None:
            return True, digest, digest
        ok = digest == expected
        return ok, digest if ok else f"drift: manifest {expected}, file {digest}", digest
    return timed("sha256", run)


@dataclass
class Facts:
    """What a database file says about itself."""

    size: int = 0
    page_size: int = 0
    page_count: int = 0
    schema_version: int = 0
    row_counts: dict[str, int] = field(default_factory=dict)
    hwm_event_id: int = 0
    hwm_ts: str | None = None
    hwm_hash: str | None = None


def facts_check(path: Path, *, immutable: bool = False, counts: bool = True) -> Outcome:
    """Page size and count, schema version, row counts (unless ``counts`` is false: they
    cost a scan of every table), and the high-water mark."""
    def run() -> tuple[bool, str, Any]:
        conn = open_ro(path, immutable=immutable)
        try:
            f = Facts(size=path.stat().st_size)
            f.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            f.page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            f.schema_version = int(row[0] or 0)
            # the tables the file has: one taken before a migration lacks the newer ones
            present = {str(r[0]) for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            for t in PROJECTED_TABLES if counts else ():
                if t in present:
                    f.row_counts[t] = int(conn.execute(f"SELECT count(*) FROM {t}"
                                                       ).fetchone()[0])
            last = conn.execute("SELECT id, ts, hash FROM events ORDER BY id DESC LIMIT 1"
                                ).fetchone()
            if last is not None:
                f.hwm_event_id, f.hwm_ts, f.hwm_hash = int(last[0]), str(last[1]), str(last[2])
        finally:
            conn.close()
        return True, f"high-water mark: event {f.hwm_event_id} at {f.hwm_ts}", f
    return timed("facts", run)


def _chain_range(path: str, gaps: list[Gap], immutable: bool, first: int | None,
                 last: int | None) -> tuple[str | None, int | None, int]:
    """Check events ``first <= id <= last`` (None: unbounded), starting the chain as it
    stands after the last event before ``first``. Returns (problem, event id, count)."""
    conn = open_ro(Path(path), immutable=immutable)
    chain = Chain(gaps)
    try:
        where, args = "WHERE id >= ? AND id <= ?", (first or 0, last if last is not None
                                                     else 2**63 - 1)
        if first is not None:
            before = conn.execute("SELECT id, hash FROM events WHERE id < ? ORDER BY id DESC "
                                  "LIMIT 1", (first,)).fetchone()
            if before is not None:
                chain.start_after(int(before[0]), str(before[1]))
        n = 0
        for e in stored_events(conn, where, args):
            problem = chain.accept(e)
            if problem is not None:
                return f"event {e.id}: {problem}", e.id, n
            n += 1
    finally:
        conn.close()
    return None, None, n


# A process pool is worth its start-up cost only on a large ledger (and on a 2-CPU
# machine, where SQLite's checks run alongside, not at all: backups use one process).
SPLIT_MIN_EVENTS = 200_000


def _split_points(path: Path, immutable: bool, parts: int) -> list[int] | None:
    conn = open_ro(path, immutable=immutable)
    try:
        lo, hi, n = conn.execute("SELECT min(id), max(id), count(*) FROM events").fetchone()
    finally:
        conn.close()
    if parts < 2 or n is None or int(n) < SPLIT_MIN_EVENTS:
        return None
    lo, hi = int(lo), int(hi)
    return [lo + (hi - lo + 1) * k // parts for k in range(1, parts)]


def chain_check(path: Path, gaps: list[Gap], *, immutable: bool = False,
                processes: int = 1) -> Outcome:
    """Every event's hash, and the links between them (declared gaps allowed).

    Hashes are computed from the stored payload text (:class:`StoredEvent`). With
    ``processes > 1`` on a large ledger the id range is split and checked in that many
    processes: each range starts from the stored hash of the event before it, and that
    event's own hash and link are checked by the range that holds it, so the ranges
    together check exactly what one pass does, and the first problem is the same."""
    def run() -> tuple[bool, str, Any]:
        cuts = _split_points(path, immutable, processes) if processes > 1 else None
        if cuts is None:
            problem, where, n = _chain_range(str(path), gaps, immutable, None, None)
        else:
            bounds = list(zip([None, *cuts], [*(c - 1 for c in cuts), None], strict=True))
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
            try:
                with ProcessPoolExecutor(max_workers=len(bounds), mp_context=ctx) as pool:
                    futures = [pool.submit(_chain_range, str(path), gaps, immutable, a, b)
                               for a, b in bounds]
                    results = [f.result() for f in futures]
            except BrokenProcessPool:  # no usable worker processes: one pass here
                results = [_chain_range(str(path), gaps, immutable, None, None)]
            n = sum(r[2] for r in results)
            first_bad = next((r for r in results if r[0] is not None), None)
            problem, where = (first_bad[0], first_bad[1]) if first_bad else (None, None)
        if problem is not None:
            return False, problem, where
        return True, f"{n} events chain", n
    return timed("hash_chain", run)


def run_parallel(tasks: list[Callable[[], Outcome]]) -> list[Outcome]:
    with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
        return [f.result() for f in [pool.submit(t) for t in tasks]]


__all__ = ["Facts", "Outcome", "chain_check", "describe_damage", "facts_check",
           "foreign_key_check", "live_immutable", "open_ro",
           "run_parallel", "sha256_check", "sha256_file", "sqlite_check", "timed"]
