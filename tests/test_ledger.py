from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from atlasops.errors import Conflict, DatabaseCorrupt, InputError, JournalCorrupt, StorageError
from atlasops.ledger import GENESIS_HASH, Ledger, NewEvent, dump_tables, rebuild, verify
from atlasops.workspace import Workspace


def lead(email: str) -> NewEvent:
    return NewEvent("lead.created", "t", {"email": email, "name": "N", "status": "new"})


def test_ids_start_at_one_and_chain(ledger: Ledger) -> None:
    a = ledger.append("note.added", "t", {"n": 1})
    b, c = ledger.append_many([NewEvent("note.added", "t", {"n": 2}),
                               NewEvent("note.added", "t", {"n": 3}, subject="s")])
    assert (a.id, b.id, c.id) == (1, 2, 3)
    assert a.prev_hash == GENESIS_HASH and b.prev_hash == a.hash and c.prev_hash == b.hash
    assert all(e.hash_ok() for e in (a, b, c))
    assert a.ts.endswith("Z")
    assert [e.id for e in ledger.events()] == [1, 2, 3]
    assert verify(ledger.db_path, ledger.journal).ok


def test_batch_is_one_transaction_and_one_journal_write(ledger: Ledger) -> None:
    size_before = sum(s.stat().st_size for s in ledger.journal.segments())
    with pytest.raises(Conflict, match="nothing|not recorded"):
        # the second lead repeats the first address (case-insensitively): the batch fails whole
        ledger.append_many([lead("a@x.example"), lead("A@x.example")])
    assert ledger.events() == []
    assert sum(s.stat().st_size for s in ledger.journal.segments()) == size_before
    ledger.append_many([lead("a@x.example"), lead("b@x.example")])
    assert ledger.count("leads") == 2


def test_invalid_event_kind_rejected_before_anything_is_written(ledger: Ledger) -> None:
    with pytest.raises(InputError, match="noun.verb"):
        ledger.append_many([NewEvent("note.added", "t"), NewEvent("BAD KIND", "t")])
    assert ledger.events() == []
    assert ledger.journal.tail().last_id == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (NewEvent("lead.created", "t", {}), "lacks the key 'email'"),
        (NewEvent("lead.updated", "t", {"id": 1, "changes": {}}), "no lead field to change"),
        (NewEvent("lead.updated", "t", {"id": 99999, "changes": {"name": "X"}}),
         "no lead with id 99999"),
        (NewEvent("receipt.recorded", "t", {"kind": "x", "actor": "t", "started_at": "a",
                                            "finished_at": "b", "outcome": "ok",
                                            "summary": "s"}), "lacks the key 'effects'"),
        (NewEvent("receipt.recorded", "t", {"kind": "x", "actor": "t", "started_at": "a",
                                            "finished_at": "b", "outcome": "ok", "summary": "s",
                                            "effects": {"emails_sent": 0}}),
         "must count emails_sent"),
    ],
)
def test_payload_a_projection_cannot_apply_is_bad_input(ledger: Ledger, bad: NewEvent,
                                                         message: str) -> None:
    ledger.append("note.added", "t", {})
    with pytest.raises(InputError, match=message):
        ledger.append_many([NewEvent("note.added", "t"), bad])
    assert [e.id for e in ledger.events()] == [1]
    assert ledger.journal.tail().last_id == 1


def test_missing_database_is_rebuilt_from_the_journal(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        led.append_many([lead(f"p{i}@x.example") for i in range(20)])
        before = dump_tables(ws.db_path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(ws.db_path) + suffix).unlink(missing_ok=True)
    with Ledger.for_workspace(ws) as led:
        assert led.report.caught_up == 20
    after = dump_tables(ws.db_path)
    notice = after["events"].pop()  # the rebuild is recorded, as one more event
    assert notice[2] == "ledger.rebuilt" and '"replayed":20' in notice[5]
    assert after == before


def journal_only(ws: Workspace, new: NewEvent) -> int:
    """Write one event to the journal and not to the ledger, as a crash between the fsync
    and the commit leaves it; returns its id."""
    from atlasops.ledger import Event, Journal, utc_now
    from atlasops.ledger.chain import Chain, read_gaps
    from atlasops.ledger.lock import WriterLock

    journal = Journal(ws.journal_dir, ws.config.journal.segment_bytes)
    with WriterLock(ws.lock_path):
        tail = journal.tail()
        chain = Chain(read_gaps(ws.journal_dir)).start_after(tail.last_id, tail.last_hash)
        event = Event.seal(new, chain.next_id, utc_now(), chain.prev)
        journal.append([event], tail)
    return event.id


def test_a_journal_record_the_ledger_cannot_apply_is_named(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {})
    bad = journal_only(ws, NewEvent("lead.created", "t", {"name": "no email"}))
    with pytest.raises(JournalCorrupt, match=rf"event {bad} at \S+\.journal line 2 cannot be "
                       "applied to the ledger: .*lacks the key 'email'"):
        Ledger.for_workspace(ws).open()


def test_a_recovered_detection_does_not_block_rebuilding_a_deleted_database(
        ws: Workspace) -> None:
    from atlasops.durability import recover
    from atlasops.durability.detect import record_detection

    with Ledger.for_workspace(ws) as led:
        led.append_many([lead(f"p{i}@x.example") for i in range(5)])
    detection, _why = record_detection(ws, {"summary": "a false alarm"})
    assert detection is not None
    with pytest.raises(DatabaseCorrupt):  # a pending detection blocks writes...
        Ledger.for_workspace(ws).open()
    assert recover(ws, actor="t").exit_code == 0  # ...until a recovery closes it
    for suffix in ("", "-wal", "-shm"):
        Path(str(ws.db_path) + suffix).unlink(missing_ok=True)
    with Ledger.for_workspace(ws) as led:  # the journal replays the detection and its close
        kinds = [e.kind for e in led.events()]
    assert kinds.count("db.corruption.detected") == 1 and kinds[-1] == "ledger.rebuilt"
    assert kinds.count("lead.created") == 5


def test_a_database_deleted_under_a_running_process_is_rebuilt_and_recorded(
        ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        led.append_many([lead(f"p{i}@x.example") for i in range(5)])
        for suffix in ("", "-wal", "-shm"):
            Path(str(ws.db_path) + suffix).unlink(missing_ok=True)
        led.append("note.added", "t", {"after": "the file died"})
        kinds = [e.kind for e in led.events()]
    assert kinds == ["lead.created"] * 5 + ["ledger.rebuilt", "note.added"]


def test_a_follower_reads_the_new_file_after_a_recovery(ws: Workspace) -> None:
    """A long-lived reader (`atlas events tail --follow`) keeps up when `atlas recover`
    swaps a new file into place: it must not go on reading the old inode."""
    from atlasops.durability import recover

    with Ledger.for_workspace(ws) as writer:
        writer.append_many([lead(f"p{i}@x.example") for i in range(300)])
    reader = Ledger.for_workspace(ws).open()
    before = reader.last_event()
    assert before is not None
    with open(ws.db_path, "r+b") as fh:  # damage pages in the middle
        fh.seek(4096 * 10)
        fh.write(b"\0" * 4096 * 4)
    assert recover(ws, actor="t").exit_code == 0
    with Ledger.for_workspace(ws) as writer:
        writer.append("note.added", "t", {"after": "the recovery"})
    reader.follow()
    kinds = [e.kind for e in reader.events(after=before.id)]
    assert kinds[-1] == "note.added" and "receipt.recorded" in kinds
    reader.close()


def test_event_journaled_but_not_committed_is_applied_on_open(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {"n": 1})
    # Simulate a crash between the journal fsync and the SQLite commit:
    # a second process appends, then we roll the database back to its earlier copy.
    backup = ws.db_path.with_suffix(".copy")
    src = sqlite3.connect(ws.db_path)
    dst = sqlite3.connect(backup)
    src.backup(dst)
    src.close()
    dst.close()
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {"n": 2})
    for suffix in ("-wal", "-shm"):
        Path(str(ws.db_path) + suffix).unlink(missing_ok=True)
    os.replace(backup, ws.db_path)
    with Ledger.for_workspace(ws) as led:
        assert led.report.caught_up == 1
        assert [e.payload["n"] for e in led.events()] == [1, 2]
    assert verify(ws.db_path, Ledger.for_workspace(ws).journal).ok


def test_ledger_ahead_of_journal_refuses_to_write(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        led.append_many([NewEvent("note.added", "t", {"n": i}) for i in range(3)])
    for seg in ws.journal_dir.glob("*.journal"):
        seg.unlink()
    with pytest.raises(JournalCorrupt, match="journal records are missing"):
        Ledger.for_workspace(ws).open()


def test_malformed_database_says_what_to_do(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {})
    for suffix in ("-wal", "-shm"):
        Path(str(ws.db_path) + suffix).unlink(missing_ok=True)
    ws.db_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseCorrupt) as info:
        Ledger.for_workspace(ws).open()
    assert "atlas recover" in info.value.hint


def test_read_only_database_gives_storage_error(ws: Workspace) -> None:
    if os.geteuid() == 0:
        # root ignores file modes; make the directory unusable another way
        with Ledger.for_workspace(ws) as led:
            led.append("note.added", "t", {})
        ws.db_path.unlink()
        ws.db_path.mkdir()
        with pytest.raises(StorageError):
            Ledger.for_workspace(ws).open()
        return
    ws.db_dir.chmod(0o500)
    try:
        with pytest.raises(StorageError):
            Ledger.for_workspace(ws).open()
    finally:
        ws.db_dir.chmod(0o700)


def test_verify_finds_a_tampered_ledger_row(ledger: Ledger) -> None:
    for i in range(4):
        ledger.append("note.added", "t", {"n": i})
    ledger.conn.execute("UPDATE events SET payload='{\"n\":99}' WHERE id=3")
    report = verify(ledger.db_path, ledger.journal)
    assert not report.ok
    assert report.discrepancies[0].event_id == 3
    assert "hash does not match" in report.discrepancies[0].problem


def test_verify_finds_an_event_missing_from_the_ledger(ledger: Ledger) -> None:
    for i in range(4):
        ledger.append("note.added", "t", {"n": i})
    ledger.conn.execute("DELETE FROM events WHERE id=4")
    report = verify(ledger.db_path, ledger.journal)
    assert not report.ok
    assert any(d.event_id == 4 and "missing from the ledger" in d.problem
               for d in report.discrepancies)


def test_rebuild_reproduces_tables_and_never_overwrites(ledger: Ledger, tmp_path: Path) -> None:
    ledger.append_many([lead(f"r{i}@x.example") for i in range(10)])
    ledger.append("lead.updated", "t", {"id": 1, "changes": {"status": "contacted"}})
    result = rebuild(ledger.journal, tmp_path / "new.db")
    assert result.events == 11
    assert dump_tables(tmp_path / "new.db") == dump_tables(ledger.db_path)
    with pytest.raises(Conflict, match="never overwrites"):
        rebuild(ledger.journal, tmp_path / "new.db")


def test_two_processes_share_the_writer_lock(ws: Workspace) -> None:
    code = (
        "import sys\n"
        "from atlasops.workspace import Workspace\n"
        "from atlasops.ledger import Ledger\n"
        "ws = Workspace.open(sys.argv[1])\n"
        "with Ledger.for_workspace(ws) as led:\n"
        "    for i in range(100):\n"
        "        led.append('note.added', sys.argv[2], {'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ws.home), f"w{n}"])
             for n in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Ledger.for_workspace(ws) as led:
        events = led.events()
        assert [e.id for e in events] == list(range(1, 201))
        assert sorted(e.actor for e in events).count("w0") == 100
    assert verify(ws.db_path, Ledger.for_workspace(ws).journal).ok
