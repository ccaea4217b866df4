"""Salvage: read what can still be read from a damaged ledger file, in Python.

No Python package exposes SQLite's recovery API, this Python cannot load
extensions, and Debian's ``sqlite3 .recover`` needs ``sqlite_dbpage``, which
its library lacks. So salvage works through plain SQL on a scratch copy:

* the copy is zero-padded back to the page count its header states (a
  truncated file), and a header that is not SQLite's is replaced by the
  header of a healthy file of the same schema, when one is given;
* events are read by rowid ranges (``id BETWEEN a AND b``); a range whose
  pages raise is bisected until the readable ids are separated from the
  unreadable ones, so one bad page costs only the rows it holds;
* every row read is checked against its own hash; rows that fail are kept
  for review, never trusted.

The damaged original is never opened for writing: all work happens on the copy.

A ``sqlite3`` command whose ``.recover`` works would be an alternative;
:func:`sqlite_recover_probe` looks for one and tries it on a healthy file, and
recovery records its verdict. It is not used for salvage even when it passes.
"""

from __future__ import annotations

import functools
import json
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.chain import Gap, gaps_in
from ..ledger.events import Event

HEADER = b"SQLite format 3\x00"
PROBE_WINDOW = 4096
MAX_EMPTY_WINDOWS = 4
MAX_PROBE_IDS = 50_000_000


@dataclass
class Salvage:
    events: dict[int, Event] = field(default_factory=dict)
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    max_id_seen: int = 0
    tried: bool = False  # a damaged file was there to read
    readable: bool = False
    notes: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)  # the file's ledger_gaps, when readable

    def _unreadable(self, a: int, b: int) -> None:
        if self.unreadable and self.unreadable[-1][1] == a - 1:
            self.unreadable[-1] = (self.unreadable[-1][0], b)
        else:
            self.unreadable.append((a, b))


PROBE_ROWS = 100


@functools.cache
def sqlite_recover_probe() -> tuple[bool, str]:
    """Whether a ``sqlite3`` on PATH can ``.recover`` a healthy file: tried once per
    process on a small temporary database whose rows are known; the verdict is cached.
    Returns (works, what happened)."""
    exe = shutil.which("sqlite3")
    if exe is None:
        return False, "unavailable: no sqlite3 on PATH"
    with tempfile.TemporaryDirectory(prefix="atlas-recover-probe-") as tmp:
        src, dst = Path(tmp) / "healthy.db", Path(tmp) / "recovered.db"
        want = [(i, f"row {i}") for i in range(1, PROBE_ROWS + 1)]
        conn = sqlite3.connect(src)
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", want)
        conn.commit()
        conn.close()
        try:
            proc = subprocess.run([exe, str(src), ".recover"], capture_output=True, text=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"unavailable: {exe} did not run: {exc}"
        if proc.returncode != 0 or "error" in proc.stderr.lower():
            lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
            return False, f"unavailable: {lines[0]}"
        out = sqlite3.connect(dst)
        try:
            out.executescript(proc.stdout)
            got = out.execute("SELECT id, v FROM t ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            return False, f"unavailable: its output does not load: {exc}"
        finally:
            out.close()
    if got != want:
        return False, f"unavailable: it recovered {len(got)} of {PROBE_ROWS} rows of a healthy file"
    return True, f"available ({exe}): it recovered a healthy test file exactly"


def _page_size(header: bytes) -> int:
    raw = int.from_bytes(header[16:18], "big")
    return 65536 if raw == 1 else raw


def prepare_copy(damaged: Path, scratch: Path, *, header_donor: Path | None) -> list[str]:
    """Copy ``damaged`` (and its -wal) to ``scratch``; repair the header and length."""
    notes: list[str] = []
    shutil.copyfile(damaged, scratch)
    wal = Path(str(damaged) + "-wal")
    if wal.exists():
        shutil.copyfile(wal, Path(str(scratch) + "-wal"))
    with open(scratch, "r+b") as fh:
        header = fh.read(100)
        if not header.startswith(HEADER) and header_donor is not None and header_donor.exists():
            donor = header_donor.read_bytes()[:100]
            fh.seek(0)
            fh.write(donor)
            header = donor
            notes.append("the header was not SQLite's; replaced it with a healthy file's header")
        if not header.startswith(HEADER):
            return [*notes, "no SQLite header and no donor header: nothing can be read"]
        size = fh.seek(0, 2)
        page = _page_size(header)
        pages_in_header = int.from_bytes(header[28:32], "big")
        want = max(pages_in_header * page, -(-size // page) * page)
        if want > size:
            fh.truncate(want)
            notes.append(f"zero-padded a truncated file from {size} to {want} bytes "
                         f"({pages_in_header} pages of {page})")
        if header_donor is not None and pages_in_header * page < want:
            fh.seek(28)
            fh.write((want // page).to_bytes(4, "big"))
    return notes


def _row_to_event(row: sqlite3.Row) -> Event:
    return Event(id=int(row["id"]), ts=str(row["ts"]), kind=str(row["kind"]),
                 actor=str(row["actor"]),
                 subject=None if row["subject"] is None else str(row["subject"]),
                 payload=json.loads(row["payload"]), prev_hash=str(row["prev_hash"]),
                 hash=str(row["hash"]))


class _Reader:
    def __init__(self, conn: sqlite3.Connection, out: Salvage) -> None:
        self.conn, self.out = conn, out

    def take(self, rows: list[sqlite3.Row]) -> int:
        for row in rows:
            try:
                rid = int(row["id"])
            except (TypeError, ValueError):
                continue
            self.out.max_id_seen = max(self.out.max_id_seen, rid)
            try:
                event = _row_to_event(row)
            except (ValueError, TypeError, KeyError) as exc:
                self.out.bad_rows.append({"id": rid, "reason": f"unparsable: {exc}",
                                          "row": {k: str(row[k]) for k in row.keys()}})
                continue
            if event.id != rid or not event.hash_ok():
                self.out.bad_rows.append({"id": rid, "reason": "hash does not match contents",
                                          "row": event.to_dict()})
                continue
            self.out.events[rid] = event
        return len(rows)

    def read(self, a: int, b: int) -> int:
        """Rows with a <= id <= b; bisect around ranges that raise. Returns rows found."""
        try:
            cur = self.conn.execute("SELECT * FROM events WHERE id BETWEEN ? AND ?", (a, b))
            cur.row_factory = sqlite3.Row
            return self.take(cur.fetchall())
        except sqlite3.DatabaseError:
            if a == b:
                self.out._unreadable(a, b)
                return 0
            mid = (a + b) // 2
            return self.read(a, mid) + self.read(mid + 1, b)


def salvage_events(damaged: Path, scratch_dir: Path, ranges: list[tuple[int, int | None]],
                   *, header_donor: Path | None = None) -> Salvage:
    """Read the events with ids in ``ranges`` (``(a, None)`` = from ``a`` to the end)."""
    out = Salvage()
    if not damaged.exists():
        out.notes.append(f"{damaged.name} does not exist: nothing to salvage")
        return out
    out.tried = True
    scratch = scratch_dir / "salvage-scratch.db"
    out.notes += prepare_copy(damaged, scratch, header_donor=header_donor)
    try:
        conn = sqlite3.connect(scratch, isolation_level=None)
    except sqlite3.Error as exc:
        out.notes.append(f"cannot open the copy: {exc}")
        return out
    try:
        try:
            conn.execute("PRAGMA query_only=1")
            conn.execute("SELECT 1 FROM events LIMIT 0").fetchall()
        except sqlite3.DatabaseError as exc:
            out.notes.append(f"the events table cannot be found in the damaged file: {exc}")
            return out
        out.readable = True
        try:  # the gaps earlier recoveries declared: they link runs across those gaps
            out.gaps = gaps_in(conn)
        except sqlite3.DatabaseError as exc:
            out.notes.append(f"the declared gaps (ledger_gaps) cannot be read: {exc}")
        reader = _Reader(conn, out)
        for a, b in ranges:
            if b is not None:
                if b >= a:
                    reader.read(a, b)
                continue
            _read_open_ended(conn, reader, a)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(scratch) + suffix).unlink(missing_ok=True)
    return out


def _read_open_ended(conn: sqlite3.Connection, reader: _Reader, start: int) -> None:
    try:
        top = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    except sqlite3.DatabaseError:
        top = None
    if top is not None:
        reader.read(start, int(top))
        return
    # max() itself raised: walk forward in windows until several windows come back empty.
    lo, empty = start, 0
    while empty < MAX_EMPTY_WINDOWS and lo - start < MAX_PROBE_IDS:
        before = len(reader.out.unreadable)
        found = reader.read(lo, lo + PROBE_WINDOW - 1)
        empty = 0 if found or len(reader.out.unreadable) > before else empty + 1
        lo += PROBE_WINDOW
    reader.out.notes.append(f"max(id) unreadable; probed ids {start}..{lo - 1}")


__all__ = ["Salvage", "prepare_copy", "salvage_events", "sqlite_recover_probe"]
