"""Detection without false alarms, and recovery from one without a rebuild.

A ``db.corruption.detected`` stops every write until `atlas recover`, so a false
one costs the whole workspace. These tests run the real thing: writer processes
beside `atlas db check`, a real exclusive lock held by another process, real
damage. Ground truth is computed independently of the code under test: the ids
and hashes each writer acknowledged, the journal's text, the file's bytes and
inode, plain sqlite3 reads.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atlasops.durability import checks as ck
from atlasops.durability import db_check, record_detection, recover
from atlasops.errors import DatabaseCorrupt
from atlasops.ledger import Ledger
from atlasops.ledger.store import is_corruption
from atlasops.workspace import Workspace
from tests.test_recovery import append, assert_exact, drop_wal, five_parts, ledger_rows

DETECTED_TEXT = '"kind":"db.corruption.detected"'

# Appends 20-event batches until the stop file exists. Every third batch it closes the
# ledger and opens it again: the last connection to close checkpoints the WAL into
# leads.db, which is what tore reads of a file opened as immutable. Prints "ready", then,
# at the end, every (id, hash) it was acknowledged. Exit 3 if a detection refused it.
WRITER = """
import sys, time
from pathlib import Path
from atlasops.errors import DatabaseCorrupt
from atlasops.ledger import Ledger, NewEvent
from atlasops.workspace import Workspace
ws, stop = Workspace.open(sys.argv[1]), Path(sys.argv[2])
acked, n, code = [], 0, 0
try:
    while not stop.exists():
        with Ledger.for_workspace(ws) as led:
            for _ in range(3):
                acked += [(e.id, e.hash) for e in led.append_many(
                    [NewEvent('note.added', 'w', {'n': n + k, 'pad': 'p' * 200})
                     for k in range(20)])]
                n += 20
                if n == 60:
                    print('ready', flush=True)
        time.sleep(0.003)
except DatabaseCorrupt:
    code = 3
print(repr(acked), flush=True)
sys.exit(code)
"""


def start_writer(ws: Workspace, stop: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ws.home), str(stop)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_writer(proc: subprocess.Popen[str], stop: Path | None) -> tuple[int, dict[int, str]]:
    """Tell the writer to stop (None: wait for it to stop by itself); its exit code and
    what it was acknowledged."""
    if stop is not None:
        stop.touch()
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, dict(eval(out.strip().splitlines()[-1]))  # noqa: S307 - ours


def journal_text(ws: Workspace) -> str:
    return "".join(p.read_text() for p in ws.journal_dir.glob("*.journal"))


def max_id(ws: Workspace) -> int:
    """Read-only: a read-write connection closing last would checkpoint the WAL away."""
    conn = sqlite3.connect(f"file:{ws.db_path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT max(id) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_db_check_beside_a_live_writer_records_no_false_detection(ws: Workspace,
                                                                  tmp_path: Path) -> None:
    """The reviewer's race: a check that read the ledger and then the journal saw a
    write in flight as "ledger != journal". Both sides are now read as of one moment."""
    append(ws, 200)
    stop = tmp_path / "stop"
    proc = start_writer(ws, stop)
    before = max_id(ws)
    results = [db_check(ws) for _ in range(30)]
    during = max_id(ws) - before
    code, acked = stop_writer(proc, stop)
    assert during > 0  # the writer really wrote while the checks ran
    assert [r.symptom for r in results if not r.ok] == []
    assert code == 0 and DETECTED_TEXT not in journal_text(ws)
    rows = ledger_rows(ws.db_path)
    assert {i: rows.get(i) for i in acked} == acked


def test_real_damage_beside_a_live_writer_is_detected_and_stops_it(ws: Workspace,
                                                                   tmp_path: Path) -> None:
    """A ledger row changed behind Atlas's back (quick_check cannot see it) while a
    writer runs: the check still finds it, records it once, and the writer is refused."""
    append(ws, 200)
    stop = tmp_path / "stop"
    proc = start_writer(ws, stop)
    conn = sqlite3.connect(ws.db_path, timeout=30)
    conn.execute("UPDATE events SET payload = '{\"tampered\":true}' WHERE id = 7")
    conn.commit()
    conn.close()
    result = db_check(ws)
    code, acked = stop_writer(proc, None)  # its next write is refused
    assert not result.ok and result.event_id is not None
    assert result.symptom is not None and "event 7" in result.symptom["summary"]
    assert code == 3  # the writer was refused once the detection was on record
    assert journal_text(ws).count(DETECTED_TEXT) == 1
    rows = ledger_rows(ws.db_path)  # everything acknowledged before that is in the ledger
    assert {i: rows.get(i) for i in acked} == acked


def test_a_live_check_sees_other_writers_instead_of_a_torn_file(ws: Workspace) -> None:
    """Checks of the live file open it with SQLite's locks, not as immutable: an
    immutable connection does not see another process write and checkpoint, and then
    reads a mix of old and new pages (quick_check lists "invalid page number" on a
    healthy file). No -wal exists when it opens, as after every writer has closed."""
    append(ws, 300)
    drop_wal(ws)
    conn = ck.open_ro(ws.db_path)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 300
    append(ws, 300, start=300)  # opens, writes, closes: checkpointed into leads.db
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 600
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        conn.close()


HOLD_EXCLUSIVE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('PRAGMA locking_mode=EXCLUSIVE')
conn.execute('BEGIN EXCLUSIVE')
print('held', flush=True)
time.sleep(120)
"""


def test_a_check_that_cannot_run_records_nothing(cli: Any, ws: Workspace,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program holds the database exclusively: quick_check fails with "database
    is locked". That says nothing about the file, so nothing is recorded (before, it
    was recorded as corruption and every write stopped)."""
    append(ws, 50)
    monkeypatch.setattr(ck, "BUSY_TIMEOUT", 0.2, raising=False)  # wait less than 30 s
    holder = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(ws.db_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = cli("db", "check")
    finally:
        holder.kill()
        holder.communicate()
    assert r.exit_code == 5
    assert "database is locked" in r.stderr and "nothing was recorded" in r.stderr
    assert DETECTED_TEXT not in journal_text(ws)
    assert cli("status").exit_code == 0  # writes were never stopped


def test_corruption_is_sqlites_verdict_not_a_word_in_the_message(ws: Workspace) -> None:
    append(ws, 50)
    drop_wal(ws)
    errors: dict[str, sqlite3.Error] = {}
    mem = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.Error) as json_error:
        mem.execute("SELECT json_extract('{x', '$.a')").fetchone()
    errors["malformed JSON"] = json_error.value
    damaged = ws.db_path.parent / "damaged.db"
    data = bytearray(ws.db_path.read_bytes())
    data[4096 * 2:4096 * 4] = b"\xff" * 8192
    damaged.write_bytes(bytes(data))
    with pytest.raises(sqlite3.Error) as corrupt:
        sqlite3.connect(damaged).execute("SELECT sum(length(payload)) FROM events").fetchone()
    errors["corrupt"] = corrupt.value
    (ws.db_path.parent / "junk.db").write_bytes(b"not a database" * 300)
    with pytest.raises(sqlite3.Error) as notadb:
        sqlite3.connect(ws.db_path.parent / "junk.db").execute("SELECT 1 FROM sqlite_master")
    errors["not a database"] = notadb.value
    holder = sqlite3.connect(ws.db_path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.Error) as locked:
        sqlite3.connect(ws.db_path, timeout=0).execute("SELECT 1 FROM events").fetchone()
    holder.close()
    errors["locked"] = locked.value
    assert "malformed" in str(errors["malformed JSON"]) and "locked" in str(errors["locked"])
    assert {k: is_corruption(e) for k, e in errors.items()} == {
        "malformed JSON": False, "corrupt": True, "not a database": True, "locked": False}


CRASH_BEFORE_COMMIT = """
import os, sys
from atlasops.ledger import Ledger, NewEvent
from atlasops.ledger.journal import Journal
from atlasops.workspace import Workspace
real = Journal.append
def append_then_die(self, events, tail):
    real(self, events, tail)
    os._exit(9)  # after the journal's fsync, before the commit
Journal.append = append_then_die
led = Ledger.for_workspace(Workspace.open(sys.argv[1])).open()
led.append_many([NewEvent('note.added', 'w', {'k': k, 'pad': 'q' * 300}) for k in range(5)])
"""


def crash_before_commit(ws: Workspace) -> None:
    """A writer killed between its journal write and its commit (its WAL left behind)."""
    before = max_id(ws)
    done = subprocess.run([sys.executable, "-c", CRASH_BEFORE_COMMIT, str(ws.home)])
    assert done.returncode == 9 and max_id(ws) == before


def test_a_damaged_file_is_recorded_however_its_comparison_fails(cli: Any,
                                                                 ws: Workspace) -> None:
    """The events table's schema entry is gone: quick_check lists its pages as never
    used, and the comparison fails with "no such table" (SQLITE_ERROR, not a verdict of
    damage). The file is damaged all the same: recorded, not "could not be checked"."""
    append(ws, 300)
    conn = sqlite3.connect(ws.db_path)
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("DELETE FROM sqlite_master WHERE tbl_name = 'events'")
    conn.commit()
    conn.close()
    r = cli("db", "check", "--json")
    assert r.exit_code == 1 and r.json()["event_id"] == 301
    assert "is never used" in r.json()["symptom"]["summary"]
    assert "no such table" in r.json()["symptom"]["summary"]
    assert journal_text(ws).count(DETECTED_TEXT) == 1


def test_events_the_ledger_has_not_applied_yet_are_no_damage(cli: Any, ws: Workspace) -> None:
    """A write killed between its journal fsync and its commit leaves events in the
    journal only; the next open applies them. A check meanwhile says so and records
    nothing (before, it recorded a detection, and the next open refused to apply them)."""
    append(ws, 100)
    crash_before_commit(ws)
    r = cli("db", "check", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    data = r.json()
    assert data["ok"] is True and data["event_id"] is None
    assert any("101..105" in c["detail"] for c in data["checks"])
    assert any("next command that opens the ledger applies them" in n for n in data["notes"])
    assert DETECTED_TEXT not in journal_text(ws)
    assert cli("status").exit_code == 0 and max_id(ws) == 105


def test_a_torn_journal_tail_is_no_damage(cli: Any, ws: Workspace) -> None:
    append(ws, 30)
    segment = sorted(ws.journal_dir.glob("*.journal"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b'0badc0de {"actor":"w","hash":')  # a write that never completed
    r = cli("db", "check", "--json")
    assert r.exit_code == 0 and r.json()["ok"] is True
    assert any("torn" in n for n in r.json()["notes"])
    assert DETECTED_TEXT not in journal_text(ws)


def test_met_in_passing_damage_is_recorded_only_when_sqlite_confirms_it(
        cli: Any, ws: Workspace) -> None:
    append(ws, 50)
    drop_wal(ws)
    with open(ws.db_path, "r+b") as fh:  # the schema page: nothing can be read
        fh.seek(0)
        fh.write(b"\0" * 4096)
    r = cli("status")
    assert r.exit_code == 5 and "recorded as event 51" in r.stderr
    assert '"confirmed_by":"quick_check: ' in journal_text(ws)


def test_a_corruption_error_that_sqlite_does_not_confirm_is_not_recorded(
        cli: Any, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faked here: SQLite raising "malformed" once on a healthy file (a torn read, a
    passing fault) cannot be produced on demand. The fresh checks pass, so nothing is
    recorded and writes go on; the message says how to look again."""
    append(ws, 50)
    real_open = Ledger.open
    calls = {"n": 0}

    def malformed_once(self: Ledger) -> Ledger:
        calls["n"] += 1
        if calls["n"] == 1:
            raise DatabaseCorrupt(f"the ledger database {self.db_path} is damaged: database "
                                  "disk image is malformed", path=str(self.db_path))
        return real_open(self)

    monkeypatch.setattr(Ledger, "open", malformed_once)
    r = cli("status")
    assert r.exit_code == 5 and "not recorded as a detection" in r.stderr
    assert "atlas db check --full" in r.stderr
    assert DETECTED_TEXT not in journal_text(ws)
    assert cli("status").exit_code == 0


# -- recovering from a detection the file does not confirm ------------------------------


def test_recover_closes_a_false_detection_without_rebuilding(cli: Any, ws: Workspace) -> None:
    acked = append(ws, 300)
    drop_wal(ws)
    event, _ = record_detection(ws, {"summary": "ledger != journal: [ledger] event 54271: "
                                     "in the journal but missing from the ledger",
                                     "detected_by": "atlas db check"})
    assert event is not None
    acked[event.id] = event.hash
    inode, data = ws.db_path.stat().st_ino, ws.db_path.read_bytes()
    assert cli("suppress", "x@y.example").exit_code == 5  # the detection stops every write
    r = cli("recover", "--dry-run", "--json")
    assert r.exit_code == 0 and r.json()["plan"]["in_place"] is True
    assert ws.db_path.read_bytes() == data
    r = cli("recover", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    rec = r.json()
    five_parts(rec)
    assert rec["outcome"] == "not_broken" and rec["receipt_id"] == event.id + 1
    assert rec["evidence"]["closed_detections"] == [event.id]
    assert rec["backup"] is None and assert_exact(rec, acked, ws.db_path) == set()
    assert ws.db_path.stat().st_ino == inode  # kept, not swapped
    assert list(ws.quarantine_dir.iterdir()) == []  # nothing quarantined
    assert not [p for p in ws.db_dir.iterdir() if p.name.startswith(".recovering")]
    assert cli("status").exit_code == 0 and cli("db", "check").exit_code == 0
    r = cli("receipts", "list", "--kind", "recovery", "--json")
    assert [x["outcome"] for x in r.json()] == ["not_broken"]


def test_recover_in_place_applies_what_the_ledger_lacked(ws: Workspace) -> None:
    acked = append(ws, 200)
    acked |= append_journal_only(ws, 4)
    event, _ = record_detection(ws, {"summary": "x", "detected_by": "atlas db check"})
    assert event is not None
    acked[event.id] = event.hash
    r = recover(ws, actor="t").to_dict()
    five_parts(r)
    assert r["outcome"] == "recovered" and r["exit_code"] == 0
    assert r["evidence"]["applied"] == [201, event.id]
    assert "201..204" in r["loss"]["statement"]
    assert assert_exact(r, acked, ws.db_path) == set()


LEAVE_WAL = """
import os, sys
from atlasops.ledger import Ledger, NewEvent
from atlasops.workspace import Workspace
led = Ledger.for_workspace(Workspace.open(sys.argv[1])).open()
ids = []
for i in range(40):
    ids += [(e.id, e.hash) for e in led.append_many(
        [NewEvent('note.added', 'w', {'i': i, 'pad': 'y' * 500})])]
print(repr(ids), flush=True)
os._exit(0)  # without closing: the WAL is not checkpointed
"""


def test_recover_in_place_keeps_the_wal_it_is_about_to_reuse(ws: Workspace) -> None:
    """A damaged -wal: SQLite drops the frames after the bad one, the file still passes
    every check, and the ledger lacks committed events the journal holds. They are
    applied in place, and the WAL (which the next write reuses) is quarantined first."""
    acked = append(ws, 100)
    out = subprocess.run([sys.executable, "-c", LEAVE_WAL, str(ws.home)], check=True,
                         capture_output=True, text=True).stdout
    acked |= dict(eval(out))  # noqa: S307 - our own child's repr output
    wal = Path(str(ws.db_path) + "-wal")
    with open(wal, "r+b") as fh:
        fh.seek(wal.stat().st_size // 2)
        fh.write(b"\xff" * 64)
    digest = hashlib.sha256(wal.read_bytes()).hexdigest()
    r = recover(ws, actor="t").to_dict()
    five_parts(r)
    assert r["outcome"] == "recovered" and r["evidence"]["in_place"] is True
    kept = r["evidence"]["quarantine"]["files"]["leads.db-wal"]
    assert kept["sha256"] == digest
    assert hashlib.sha256(Path(kept["path"]).read_bytes()).hexdigest() == digest
    assert any(a["name"] == "quarantine" for a in r["actions"])
    assert assert_exact(r, acked, ws.db_path) == set()


def append_journal_only(ws: Workspace, n: int) -> dict[int, str]:
    """n events in the journal that the ledger lacks (as after a crash before the
    commit, or a WAL tail SQLite dropped): appended, then the ledger rolled back."""
    copy = ws.db_path.with_name("before.db")
    src, dst = sqlite3.connect(ws.db_path), sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    acked = append(ws, n, start=10_000)
    drop_wal(ws)
    os.replace(copy, ws.db_path)
    return acked


def test_recover_after_an_in_place_run_killed_before_its_receipt(ws: Workspace) -> None:
    """Killed after applying the detection but before recording the receipt: the
    detection is in the ledger with no recovery after it. A rerun records the receipt."""
    append(ws, 50)
    event, _ = record_detection(ws, {"summary": "x", "detected_by": "atlas db check"})
    assert event is not None
    with Ledger.for_workspace(ws, recovering=True) as led:  # what the killed run did
        assert led.report.caught_up == 1
    r = recover(ws, actor="t").to_dict()
    assert r["outcome"] == "not_broken" and r["receipt_id"] == event.id + 1
    assert r["evidence"]["closed_detections"] == [event.id]
    assert recover(ws, actor="t").receipt_id is None  # now healthy: nothing to record


def test_a_file_that_fails_a_fuller_check_is_rebuilt_not_kept(ws: Workspace) -> None:
    """quick_check and ledger == journal pass, foreign_key_check does not: the in-place
    path refuses, and the full recovery rebuilds the tables from the events."""
    acked = append(ws, 120)
    conn = sqlite3.connect(ws.db_path)
    conn.execute("UPDATE leads SET business = 'nobody' WHERE id = 1")
    conn.commit()
    conn.close()
    drop_wal(ws)
    event, _ = record_detection(ws, {"summary": "x", "detected_by": "atlas db check"})
    assert event is not None
    acked[event.id] = event.hash
    inode = ws.db_path.stat().st_ino
    r = recover(ws, actor="t").to_dict()
    five_parts(r)
    assert r["outcome"] == "recovered" and "foreign_key_check" in r["symptom"]["summary"]
    assert ws.db_path.stat().st_ino != inode and list(ws.quarantine_dir.iterdir())
    assert assert_exact(r, acked, ws.db_path) == set()
    conn = sqlite3.connect(ws.db_path)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_evidence_about_a_file_that_was_replaced_meanwhile_is_not_recorded(
        ws: Workspace) -> None:
    """A check looked at one file; by the time it holds the writer lock to record, a
    recovery has swapped another one in (rename over the live name, as the swap does).
    The evidence is about a file that is gone: nothing is recorded."""
    from atlasops.durability.detect import file_id

    append(ws, 20)
    drop_wal(ws)
    seen = file_id(ws)
    swapped = ws.db_path.with_name("swapped.db")
    swapped.write_bytes(ws.db_path.read_bytes())
    os.replace(swapped, ws.db_path)
    event, why = record_detection(ws, {"summary": "quick_check: page 5"}, seen=seen)
    assert event is None and why is not None and "replaced" in why
    assert DETECTED_TEXT not in journal_text(ws)
    event, _ = record_detection(ws, {"summary": "quick_check: page 5"}, seen=file_id(ws))
    assert event is not None  # the file in place now is the one looked at: recorded


def test_ledger_verify_beside_a_live_writer_reports_no_false_mismatch(
        ws: Workspace, tmp_path: Path) -> None:
    """`atlas ledger verify` (and `--tables`) compare the two sides as of one moment, as
    `db check` does: a write in flight between reading them is no discrepancy."""
    from atlasops.integrity import verify_workspace

    append(ws, 200)
    stop = tmp_path / "stop"
    proc = start_writer(ws, stop)
    before = max_id(ws)
    results = [verify_workspace(ws, "t", tables=(i % 3 == 0)) for i in range(15)]
    during = max_id(ws) - before
    code, _acked = stop_writer(proc, stop)
    assert during > 0  # the writer really wrote while the checks ran
    assert [r.report.discrepancies[0].describe() for r in results if not r.report.ok] == []
    assert code == 0
