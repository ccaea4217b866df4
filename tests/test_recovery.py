"""Fault injection over real database files: damage the ledger, recover, and check
that the receipt's `loss` is exactly the difference between the events that were
acknowledged and the events in the recovered ledger.

Ground truth is computed independently of the code under test: the ids and
hashes returned by each acknowledged append, and the recovered ledger read
back with plain sqlite3.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from atlasops.durability import recover, take_backup
from atlasops.durability.recovery import RecoveryFailed
from atlasops.ledger import Ledger, NewEvent
from atlasops.workspace import Workspace

PAGE = 4096


def append(ws: Workspace, n: int, start: int = 0) -> dict[int, str]:
    """Append n events (some leads, some padded notes); return {id: hash} acknowledged."""
    acked: dict[int, str] = {}
    with Ledger.for_workspace(ws) as led:
        for chunk in range(0, n, 50):
            news = []
            for i in range(start + chunk, start + min(chunk + 50, n)):
                if i % 3 == 0:
                    news.append(NewEvent("lead.created", "t", {
                        "email": f"lead{i}@firm{i % 7}.example", "name": f"Lead {i}",
                        "status": "new"}))
                else:
                    news.append(NewEvent("note.added", "t", {"i": i, "pad": "x" * 300}))
            for e in led.append_many(news):
                acked[e.id] = e.hash
    return acked


def backup(ws: Workspace, label: str = "hourly") -> tuple[str, dict[int, str]]:
    """Take a backup; also return the backup receipt's own event (it is acknowledged too)."""
    with Ledger.for_workspace(ws) as led:
        info, rid = take_backup(ws, led, actor="t", label=label)
        receipt = led.events(after=rid - 1, limit=1)[0]
    assert info.validated
    return info.name, {receipt.id: receipt.hash}


def ledger_rows(db: Path) -> dict[int, str]:
    conn = sqlite3.connect(db)
    try:
        return {int(i): str(h) for i, h in conn.execute("SELECT id, hash FROM events")}
    finally:
        conn.close()


def expand(ranges: list[list[int]]) -> set[int]:
    return {i for a, b in ranges for i in range(a, b + 1)}


def assert_exact(result: dict[str, Any], acked: dict[int, str], db: Path) -> set[int]:
    """The receipt names precisely the acknowledged events absent from the ledger."""
    rows = ledger_rows(db)
    truly_lost = {i for i, h in acked.items() if rows.get(i) != h}
    loss = result["loss"]
    named = expand(loss["lost_event_ranges"])
    if loss["unknown_after"]:
        named |= {i for i in acked if i > loss["unknown_after"]["id"]}
    assert named & set(acked) == truly_lost
    # "none" is proven exactly when every acknowledged event is back and the journal
    # shows where history ends (computed here from the ledger, not from the receipt)
    assert loss["none"] == (set(acked) <= {i for i, h in rows.items() if acked.get(i) == h}
                            and loss["unknown_after"] is None)
    # and nothing the ledger holds is named as lost
    assert not (expand(loss["lost_event_ranges"]) & set(rows))
    return truly_lost


def five_parts(result: dict[str, Any]) -> None:
    for key in ("symptom", "backup", "skipped_backups", "actions", "checks", "loss"):
        assert key in result, key
    assert {"none", "lost_event_ranges", "unknown_after", "salvaged_unmerged",
            "statement"} <= set(result["loss"])
    for c in result["checks"]:
        assert {"name", "passed", "detail", "ms"} <= set(c)
    names = {c["name"] for c in result["checks"]}
    assert {"quick_check", "integrity_check", "foreign_key_check", "ledger == journal",
            "hash_chain"} <= names
    assert all(c["passed"] for c in result["checks"])


def drop_wal(ws: Workspace) -> None:
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)


def zero_pages(db: Path, first: int, count: int, *, random_bytes: bool = False) -> None:
    rng = random.Random(first)
    with open(db, "r+b") as fh:
        fh.seek(PAGE * first)
        data = (bytes(rng.randrange(256) for _ in range(PAGE * count)) if random_bytes
                else b"\0" * PAGE * count)
        fh.write(data)


def damage_middle(db: Path, count: int = 12, *, random_bytes: bool = False) -> None:
    """Zero (or randomise) ``count`` pages of the events table's rows, from the page
    holding the event a third of the way in: damage in the middle of the file that
    spares the schema (whose pages move when a migration adds a table)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        top = int(conn.execute("SELECT max(id) FROM events").fetchone()[0])
        row = conn.execute("SELECT hash FROM events WHERE id >= ? ORDER BY id LIMIT 1",
                           (top // 3,)).fetchone()
    finally:
        conn.close()
    zero_pages(db, event_page(db, str(row[0])), count, random_bytes=random_bytes)


def root_page(db: Path, name: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?",
                                (name,)).fetchone()[0])
    finally:
        conn.close()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def scenario(ws: Workspace) -> tuple[Workspace, dict[int, str], str]:
    """600 events, a validated backup, then 400 more events after it."""
    acked = append(ws, 600)
    name, receipt = backup(ws)
    acked |= receipt
    acked |= append(ws, 400, start=600)
    drop_wal(ws)  # every Ledger was closed: the WAL was checkpointed
    return ws, acked, name


def run(ws: Workspace, **kw: Any) -> dict[str, Any]:
    return recover(ws, actor="t", **kw).to_dict()


@pytest.mark.parametrize("random_bytes", [False, True])
def test_pages_damaged_in_the_middle(scenario: Any, random_bytes: bool) -> None:
    ws, acked, name = scenario
    damage_middle(ws.db_path, random_bytes=random_bytes)
    r = run(ws)
    five_parts(r)
    assert r["outcome"] == "recovered" and r["exit_code"] == 0
    assert r["backup"]["name"] == name
    assert r["backup"]["hwm_event_id"] == 600
    assert assert_exact(r, acked, ws.db_path) == set()
    assert r["loss"]["none"] is True
    assert "Nothing was lost" in r["loss"]["statement"]
    # the damaged files are quarantined with their hashes, never deleted
    q = Path(r["evidence"]["quarantine"]["path"])
    assert (q / "leads.db").exists()
    assert sha(q / "leads.db") == r["evidence"]["quarantine"]["files"]["leads.db"]["sha256"]
    # the receipt is in the recovered ledger, and the ledger verifies
    with Ledger.for_workspace(ws) as led:
        stored = led.query("SELECT body FROM receipts WHERE id=?", (r["receipt_id"],))
    assert json.loads(stored[0]["body"])["loss"]["none"] is True


def test_header_overwritten(scenario: Any) -> None:
    ws, acked, _ = scenario
    with open(ws.db_path, "r+b") as fh:
        fh.write(b"garbage!" * 12)
    r = run(ws)
    five_parts(r)
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()


def test_file_truncated(scenario: Any) -> None:
    """Every event is back, but the file's newest pages are gone: it is the one witness
    of records the journal might have lost at its end, so "none" is not claimed."""
    ws, acked, _ = scenario
    size = ws.db_path.stat().st_size
    with open(ws.db_path, "r+b") as fh:
        fh.truncate(size // 2)
    r = run(ws)
    assert assert_exact(r, acked, ws.db_path) == set()
    assert r["loss"]["unknown_after"]["id"] == max(acked) and r["exit_code"] == 3
    assert f"cannot be read beyond the journal's end ({max(acked)})" in r["loss"][
        "unknown_after"]["why"]


def test_file_deleted(scenario: Any) -> None:
    ws, acked, _ = scenario
    ws.db_path.unlink()
    r = run(ws)
    five_parts(r)
    assert "missing" in r["symptom"]["summary"]
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()


def test_wal_damaged_silently_drops_frames(ws: Workspace) -> None:
    """SQLite drops WAL frames after a bad checksum; integrity_check still passes;
    only ledger == journal notices, and recovery replays the missing events."""
    acked = append(ws, 300)
    backup(ws)
    code = (
        "import sys, os\n"
        "from atlasops.workspace import Workspace\n"
        "from atlasops.ledger import Ledger, NewEvent\n"
        "ws = Workspace.open(sys.argv[1])\n"
        "led = Ledger.for_workspace(ws).open()\n"
        "ids = []\n"
        "for i in range(40):\n"
        "    ids += [(e.id, e.hash) for e in led.append_many(\n"
        "        [NewEvent('note.added', 'w', {'i': i, 'pad': 'y' * 500})])]\n"
        "print(repr(ids), flush=True)\n"
        "os._exit(0)  # die without closing: the WAL is not checkpointed\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ws.home)], capture_output=True,
                         text=True, check=True).stdout
    acked |= dict(eval(out))  # noqa: S307 - our own child's repr output
    wal = Path(str(ws.db_path) + "-wal")
    assert wal.stat().st_size > 10 * PAGE
    with open(wal, "r+b") as fh:  # damage a frame in the middle of the WAL
        fh.seek(wal.stat().st_size // 2)
        fh.write(b"\xff" * 64)
    conn = sqlite3.connect(ws.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    r = run(ws)
    assert "ledger != journal" in r["symptom"]["summary"]
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()


def test_newest_backup_damaged_falls_back_and_names_it(scenario: Any) -> None:
    ws, acked, older = scenario
    newer, receipt = backup(ws, "daily")
    acked |= receipt
    acked |= append(ws, 50, start=2000)
    drop_wal(ws)
    zero_pages(ws.backups_dir / newer / "leads.db", 5, 3)
    damage_middle(ws.db_path)
    r = run(ws)
    five_parts(r)
    assert r["backup"]["name"] == older
    assert [s["name"] for s in r["skipped_backups"]] == [newer]
    assert "sha256 drift" in r["skipped_backups"][0]["why"]
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()


def test_no_backup_recovers_from_a_complete_journal(ws: Workspace) -> None:
    acked = append(ws, 500)
    drop_wal(ws)
    damage_middle(ws.db_path, 10)
    r = run(ws)
    five_parts(r)
    assert r["backup"] is None
    assert "journal alone" in r["loss"]["statement"]
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()


def test_no_backup_and_incomplete_journal_changes_nothing(ws: Workspace) -> None:
    append(ws, 300)
    drop_wal(ws)
    damage_middle(ws.db_path, 10)
    first = sorted(ws.journal_dir.glob("*.journal"))[0]
    lines = first.read_bytes().split(b"\n")
    lines[0] = lines[0][:20] + b"X" + lines[0][21:]
    first.write_bytes(b"\n".join(lines))
    before = sha(ws.db_path)
    listing = sorted(p.name for p in ws.db_dir.iterdir())
    with pytest.raises(RecoveryFailed) as info:
        run(ws)
    assert info.value.exit_code == 2
    assert sha(ws.db_path) == before
    assert sorted(p.name for p in ws.db_dir.iterdir()) == listing


def damage_journal_record(ws: Workspace, event_id: int) -> None:
    for seg in ws.journal_dir.glob("*.journal"):
        data = seg.read_bytes().split(b"\n")
        for n, line in enumerate(data):
            if f'"id":{event_id},'.encode() in line:
                data[n] = line.replace(b'"kind":"', b'"kind":"X', 1)
                seg.write_bytes(b"\n".join(data))
                return
    raise AssertionError(f"event {event_id} not found")


def test_journal_record_in_window_damaged_is_salvaged_from_the_file(scenario: Any) -> None:
    ws, acked, _ = scenario
    damage_journal_record(ws, 800)
    zero_pages(ws.db_path, root_page(ws.db_path, "leads_segment") - 1, 1)  # not the events
    r = run(ws)
    five_parts(r)
    assert 800 in r["evidence"]["merged_from_salvage"]
    assert assert_exact(r, acked, ws.db_path) == set()
    assert r["loss"]["none"] is True and r["exit_code"] == 0


def test_journal_record_damaged_and_file_gone_is_an_exact_stated_loss(scenario: Any) -> None:
    ws, acked, _ = scenario
    damage_journal_record(ws, 800)
    ws.db_path.unlink()
    r = run(ws)
    five_parts(r)
    assert r["exit_code"] == 3 and r["outcome"] == "recovered_with_loss"
    assert r["loss"]["lost_event_ranges"] == [[800, 800]]
    assert assert_exact(r, acked, ws.db_path) == {800}
    assert "800..800" in r["loss"]["statement"]
    # the declared gap keeps the ledger verifiable, and new events still append
    with Ledger.for_workspace(ws) as led:
        e = led.append("note.added", "t", {"after": "recovery"})
        assert e.id == r["receipt_id"] + 1
    from atlasops.ledger import Journal, verify

    assert verify(ws.db_path, Journal(ws.journal_dir, 1 << 26)).ok


def test_newest_journal_segment_missing(ws: Workspace) -> None:
    ws.config_path.write_text(ws.config_path.read_text().replace(
        "segment_bytes = 67108864", "segment_bytes = 65536"))
    ws = Workspace.open(ws.home)
    acked = append(ws, 600)
    backup(ws)
    acked |= append(ws, 400, start=600)
    drop_wal(ws)
    segments = sorted(ws.journal_dir.glob("*.journal"))
    assert len(segments) > 3
    newest = segments[-1]
    first_missing = int(newest.name.split(".")[0])
    newest.unlink()
    zero_pages(ws.db_path, root_page(ws.db_path, "leads_segment") - 1, 1)
    r = run(ws)
    five_parts(r)
    assert set(r["evidence"]["merged_from_salvage"]) >= set(range(first_missing, 1001))
    assert assert_exact(r, acked, ws.db_path) == set()
    # the journal could not prove where history ends: honest, not "none"
    assert r["loss"]["unknown_after"]["id"] == max(acked)
    assert r["loss"]["none"] is False and r["exit_code"] == 3


def test_dry_run_changes_nothing(scenario: Any) -> None:
    ws, _acked, name = scenario
    damage_middle(ws.db_path)
    before = sha(ws.db_path)
    r = run(ws, dry_run=True)
    assert r["plan"]["backup"] == name
    assert r["plan"]["events_to_replay"] >= 400
    assert sha(ws.db_path) == before
    assert list(ws.quarantine_dir.iterdir()) == []


def test_healthy_ledger_is_not_broken(ws: Workspace) -> None:
    append(ws, 10)
    r = run(ws)
    assert r["outcome"] == "not_broken" and r["exit_code"] == 0
    assert list(ws.quarantine_dir.iterdir()) == []


def test_sigkill_during_backup_never_counts_as_validated(ws: Workspace) -> None:
    append(ws, 2000)
    code = (
        "import sys\n"
        "from atlasops.workspace import Workspace\n"
        "from atlasops.ledger import Ledger\n"
        "from atlasops.durability import take_backup\n"
        "ws = Workspace.open(sys.argv[1])\n"
        "with Ledger.for_workspace(ws) as led:\n"
        "    while True:\n"
        "        take_backup(ws, led, actor='k', label='loop')\n"
    )
    from atlasops.durability import list_backups

    def half_written() -> set[str]:
        return {p.name for p in ws.backups_dir.glob(".tmp-*")}

    for n in range(3):
        before = half_written()
        proc = subprocess.Popen([sys.executable, "-c", code, str(ws.home)])
        try:
            # kill the moment a new backup is under way (its .tmp- directory exists)
            while proc.poll() is None and not half_written() - before:
                pass
            proc.kill()
        finally:
            proc.wait()
        assert len(half_written()) == n + 1  # the kill landed while it was half-written
    infos = list_backups(ws)
    assert sum(i.status == "incomplete" for i in infos) == 3
    for info in infos:
        if info.validated:
            # every backup that claims to be validated really is, by an independent check
            conn = sqlite3.connect(f"file:{info.db_path}?mode=ro", uri=True)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
            assert sha(info.db_path) == info.sha256
        else:
            assert info.status in ("incomplete", "failed")


def test_sigkill_during_recover_then_rerun_finishes(scenario: Any) -> None:
    ws, acked, _ = scenario
    damage_middle(ws.db_path)
    code = (
        "import sys, os, signal\n"
        "from atlasops.workspace import Workspace\n"
        "import atlasops.durability.recovery as rec\n"
        "real = rec._finish_pending\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "rec._finish_pending = die\n"
        "rec.recover(Workspace.open(sys.argv[1]), actor='k')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ws.home)])
    assert proc.returncode == -9
    assert (ws.db_dir / "recovery-pending.json").exists()
    quarantined = list(ws.quarantine_dir.glob("*/leads.db"))
    assert quarantined
    r = run(ws)
    assert r["exit_code"] == 0
    assert assert_exact(r, acked, ws.db_path) == set()
    assert all(q.exists() for q in quarantined)
    assert not (ws.db_dir / "recovery-pending.json").exists()
    assert list(ws.db_dir.glob(".recovering-*")) == []


def test_random_kills_during_recover_always_converge(scenario: Any) -> None:
    """SIGKILL at a random moment; rerunning recover always ends verified and exact."""
    ws, acked, _ = scenario
    damage_middle(ws.db_path)
    code = (
        "import sys\n"
        "from atlasops.workspace import Workspace\n"
        "from atlasops.durability import recover\n"
        "recover(Workspace.open(sys.argv[1]), actor='k')\n"
    )
    rng = random.Random(7)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code, str(ws.home)])
        try:
            proc.wait(timeout=rng.uniform(0.2, 0.8))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    r = run(ws)
    if r["outcome"] == "not_broken":
        from atlasops.ledger import Journal, verify

        assert verify(ws.db_path, Journal(ws.journal_dir, 1 << 26)).ok
        rows = ledger_rows(ws.db_path)
        assert all(rows.get(i) == h for i, h in acked.items())
    else:
        assert assert_exact(r, acked, ws.db_path) == set()
    assert os.listdir(ws.quarantine_dir)


# -- the fast paths prove exactly what the slow ones do ------------------------------

TRICKY_PAYLOADS: list[dict[str, Any]] = [
    {},
    {"text": "héllo wörld ✓ 日本語 \U0001f600", "emoji": "\u2028\u2029"},
    {"nested": {"b": [1, 2, {"z": None, "a": True}], "a": {"y": 1.5, "x": -0.0}}},
    {"quote": 'say "hi"', "backslash": "a\\b", "ctrl": "\x00\x1f\n\t", "slash": "</"},
    {"keys": {"prev_hash": "x", "hash": "y", "id": 3}, "a,\"hash\":\"": ",\"ts\":\""},
    {"big": 2**70, "neg": -12, "float": 1e-300, "list": [], "empty": ""},
]


@pytest.mark.parametrize("payload", TRICKY_PAYLOADS)
@pytest.mark.parametrize("subject", [None, "lead:ä@x.example", 'a","hash":"'])
def test_stored_hash_equals_the_slow_hash(payload: dict[str, Any], subject: str | None
                                          ) -> None:
    from atlasops.ledger.events import (
        Event,
        NewEvent,
        StoredEvent,
        canonical_json,
        hash_from_stored,
    )
    from atlasops.ledger.journal import decode_record, decode_stored, encode_record

    for actor in ("t", 'ac"tor\\', "ünï"):
        e = Event.seal(NewEvent("note.added", actor, payload, subject), 42,
                       "2026-01-01T00:00:00.000000Z", "ab" * 32)
        text = canonical_json(e.payload)
        # sealing splices the payload text in: the slow, whole-dict spelling must agree
        assert e.hash == Event.compute_hash(e.id, e.ts, e.kind, e.actor, e.subject, e.payload,
                                            e.prev_hash)
        slow_body = canonical_json(e.to_dict()).encode()
        assert encode_record(e) == b"%08x " % zlib.crc32(slow_body) + slow_body + b"\n"
        assert hash_from_stored(e.id, e.ts, e.kind, e.actor, e.subject, text,
                                e.prev_hash) == e.hash
        stored = StoredEvent(e.id, e.ts, e.kind, e.actor, e.subject, text, e.prev_hash,
                             e.hash)
        assert stored.hash_ok() and stored.event() == e
        line = encode_record(e)[:-1]
        from_journal = decode_stored(line)
        assert from_journal.fields() == stored.fields() and from_journal.hash_ok()
        assert from_journal.event() == decode_record(line)
        fresh = StoredEvent(*stored.fields())
        assert fresh.matches_record(line[9:]) and fresh.verified
        assert not fresh.matches_record(line[9:].replace(b'"id":42', b'"id":43'))
        # a changed payload fails both ways
        bad = StoredEvent(e.id, e.ts, e.kind, e.actor, e.subject, text[:-1] + ',"x":1}'
                          if text != "{}" else '{"x":1}', e.prev_hash, e.hash)
        assert not bad.hash_ok() and not bad.event().hash_ok()


def test_non_canonical_records_fall_back_to_the_slow_path() -> None:
    """Same content spelled differently (spaces): the fast path cannot prove it, the
    slow path decides, exactly as before."""
    import zlib

    from atlasops.ledger.events import Event, NewEvent, StoredEvent
    from atlasops.ledger.journal import decode_record, decode_stored

    e = Event.seal(NewEvent("note.added", "t", {"b": 1, "a": [1, 2]}), 7,
                   "2026-01-01T00:00:00.000000Z", "0" * 64)
    body = json.dumps(e.to_dict(), indent=1).encode()  # valid JSON, not canonical
    line = b"%08x " % zlib.crc32(body) + body.replace(b"\n", b" ")
    line = b"%08x " % zlib.crc32(line[9:]) + line[9:]
    got = decode_stored(line)
    assert not got.verified and got.hash_ok() and got.event() == decode_record(line)
    spaced = StoredEvent(e.id, e.ts, e.kind, e.actor, e.subject, '{"a": [1, 2], "b": 1}',
                         e.prev_hash, e.hash)
    assert spaced.hash_ok()  # the slow path's verdict, as before
    assert spaced.same_as(StoredEvent.from_event(e))


def test_chain_check_split_over_processes_equals_one_pass(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from atlasops.durability import checks as ck

    append(ws, 400)
    drop_wal(ws)
    monkeypatch.setattr(ck, "SPLIT_MIN_EVENTS", 10)
    one = ck.chain_check(ws.db_path, [], immutable=True).check
    two = ck.chain_check(ws.db_path, [], immutable=True, processes=2).check
    assert one.passed and two.passed and one.detail == two.detail == "400 events chain"
    for bad in (150, 201, 202, 390):  # either side of the seam, and on it
        conn = sqlite3.connect(ws.db_path)
        conn.execute("UPDATE events SET ts = ts || 'x' WHERE id = ?", (bad,))
        conn.commit()
        conn.close()
        one = ck.chain_check(ws.db_path, [], immutable=True).check
        two = ck.chain_check(ws.db_path, [], immutable=True, processes=2).check
        assert not one.passed and one.detail == two.detail
        assert one.detail.startswith(f"event {min(bad, 150)}:")


def test_every_recovery_step_is_timed_and_salvage_is_skipped_when_not_needed(
        scenario: Any) -> None:
    ws, acked, name = scenario
    damage_middle(ws.db_path)
    r = run(ws)
    five_parts(r)
    steps = {a["name"]: a for a in r["actions"]}
    for step in ("diagnose", "choose backup", "read journal", "quarantine", "restore",
                 "reindex", "probe damaged file", "replay", "verify", "atomic swap"):
        assert step in steps, step
        assert steps[step]["ms"] > 0, step
    assert "salvage" not in steps and "nothing to salvage" in steps["probe damaged file"][
        "result"]
    assert "byte-identical" in r["backup"]["checks"][0]["detail"]
    assert {c["name"] for c in r["backup"]["validated_with"]} >= {"integrity_check",
                                                                 "hash_chain"}
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()


def test_journal_damaged_before_the_backup_is_rewritten(ws: Workspace) -> None:
    """Recovery reads only the segments after the backup's high-water mark; damage in
    older ones is found by the final ledger == journal pass, and the journal is then
    rewritten from the recovered ledger, as before."""
    ws.config_path.write_text(ws.config_path.read_text().replace(
        "segment_bytes = 67108864", "segment_bytes = 65536"))
    ws = Workspace.open(ws.home)
    acked = append(ws, 600)
    _name, receipt = backup(ws)
    acked |= receipt
    acked |= append(ws, 100, start=600)
    drop_wal(ws)
    assert len(sorted(ws.journal_dir.glob("*.journal"))) > 3
    damage_journal_record(ws, 5)
    damage_middle(ws.db_path, 4)
    r = run(ws)
    five_parts(r)
    assert any("where recovery did not need it" in a["result"] for a in r["actions"]
               if a["name"] == "rewrite journal")
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()
    from atlasops.ledger import Journal, verify

    assert verify(ws.db_path, Journal(ws.journal_dir, 65536)).ok


def test_backup_and_recovery_run_quick_check_for_real(scenario: Any) -> None:
    """quick_check is run on its own (not inferred from integrity_check) in backup
    validation and in recovery verification, with its own duration."""
    ws, _acked, name = scenario
    manifest = json.loads((ws.backups_dir / name / "manifest.json").read_text())
    quick = next(c for c in manifest["checks"] if c["name"] == "quick_check")
    assert quick["passed"] and quick["detail"] == "ok" and quick["ms"] > 0
    damage_middle(ws.db_path)
    r = run(ws)
    quick = next(c for c in r["checks"] if c["name"] == "quick_check")
    assert quick["passed"] and quick["detail"] == "ok" and quick["ms"] > 0


# -- the journal's end, manifests, other processes, interrupted swaps ---------------

def small_segments(ws: Workspace) -> Workspace:
    ws.config_path.write_text(ws.config_path.read_text().replace(
        "segment_bytes = 67108864", "segment_bytes = 65536"))
    return Workspace.open(ws.home)


def test_journal_ending_before_the_backups_mark_is_unknown_not_none(ws: Workspace) -> None:
    """The newest segment (events after 600) is missing and leads.db is gone: the
    journal ends before the backup's high-water mark (620), and every backup records
    its receipt as the next event, so the journal's tail is provably missing."""
    ws = small_segments(ws)
    acked = append(ws, 620)
    _name, receipt = backup(ws)
    acked |= receipt
    acked |= append(ws, 10, start=700)
    drop_wal(ws)
    newest = sorted(ws.journal_dir.glob("*.journal"))[-1]
    assert int(newest.name.split(".")[0]) <= 620  # it holds the mark and what follows
    newest.unlink()
    ws.db_path.unlink()
    r = run(ws)
    five_parts(r)
    assert r["exit_code"] == 3 and r["loss"]["none"] is False
    assert r["loss"]["unknown_after"]["id"] == 620
    assert "at or before backup" in r["loss"]["unknown_after"]["why"]
    assert assert_exact(r, acked, ws.db_path) == set(range(621, 632))
    assert not any("did not need it" in a["result"] for a in r["actions"])
    from atlasops.ledger import Journal, verify

    assert verify(ws.db_path, Journal(ws.journal_dir, 65536)).ok


def test_journal_ending_before_a_skipped_backups_mark_is_unknown_not_none(
        ws: Workspace) -> None:
    """The newest backup is damaged (skipped), so an older one is restored; the journal
    lost its newest segment with the database, and now ends between the two marks.
    The skipped backup's mark still shows that history went further."""
    ws = small_segments(ws)
    acked = append(ws, 300)
    _older, receipt = backup(ws)
    acked |= receipt
    acked |= append(ws, 400, start=300)
    newer, receipt = backup(ws, "daily")
    acked |= receipt
    acked |= append(ws, 10, start=900)
    drop_wal(ws)
    newest = sorted(ws.journal_dir.glob("*.journal"))[-1]
    newest.unlink()
    journal_end = max(i for i in acked if i < int(newest.name.split(".")[0]))
    assert 302 < journal_end <= 702  # between the two marks (301 and 702)
    zero_pages(ws.backups_dir / newer / "leads.db", 5, 3)
    ws.db_path.unlink()
    r = run(ws)
    assert [s["name"] for s in r["skipped_backups"]] == [newer]
    assert r["exit_code"] == 3 and r["loss"]["none"] is False
    assert newer in r["loss"]["unknown_after"]["why"]
    assert assert_exact(r, acked, ws.db_path) == set(range(journal_end + 1, max(acked) + 1))


def test_newest_segment_lost_with_the_database_after_the_mark_is_unknown(
        ws: Workspace) -> None:
    """The journal ends after the backup's mark, but its newest surviving segment is
    full: the journal would have gone on in a new segment, so its end proves nothing."""
    ws = small_segments(ws)
    acked = append(ws, 520)
    _name, receipt = backup(ws)
    acked |= receipt
    acked |= append(ws, 150, start=600)
    drop_wal(ws)
    newest = sorted(ws.journal_dir.glob("*.journal"))[-1]
    journal_end = int(newest.name.split(".")[0]) - 1
    assert journal_end > 521  # after the backup's mark and its receipt
    newest.unlink()
    ws.db_path.unlink()
    r = run(ws)
    assert r["exit_code"] == 3 and r["loss"]["none"] is False
    assert r["loss"]["unknown_after"]["id"] == journal_end
    assert "newest segment is full" in r["loss"]["unknown_after"]["why"]
    assert assert_exact(r, acked, ws.db_path) == set(range(journal_end + 1, max(acked) + 1))


def test_empty_journal_directory_with_the_database_gone(scenario: Any) -> None:
    ws, acked, _name = scenario
    for seg in ws.journal_dir.glob("*.journal"):
        seg.unlink()
    ws.db_path.unlink()
    r = run(ws)
    five_parts(r)
    assert r["exit_code"] == 3 and r["loss"]["unknown_after"]["id"] == 600
    assert assert_exact(r, acked, ws.db_path) == set(range(601, 1002))


def tamper_manifest(ws: Workspace, name: str, **fields: Any) -> None:
    path = ws.backups_dir / name / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("field", ["hwm_hash", "hwm_event_id"])
def test_manifest_drift_is_skipped_and_named(scenario: Any, field: str) -> None:
    """sha256 covers leads.db, not manifest.json: what recovery takes from the manifest
    is checked against the file, and a backup whose manifest lies is skipped."""
    ws, acked, name = scenario
    manifest = json.loads((ws.backups_dir / name / "manifest.json").read_text())
    tamper_manifest(ws, name, **{field: 517 if field == "hwm_event_id" else "0" * 64})
    damage_middle(ws.db_path)
    listing = {p.name for p in ws.quarantine_dir.iterdir()}
    r = run(ws)
    five_parts(r)
    assert r["backup"] is None  # the journal is complete from event 1
    assert [s["name"] for s in r["skipped_backups"]] == [name]
    why = r["skipped_backups"][0]["why"]
    assert why.startswith("manifest drift") and str(manifest[field]) in why
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()
    assert len({p.name for p in ws.quarantine_dir.iterdir()} - listing) == 1


def test_forced_backup_that_cannot_be_used_stops_without_falling_back(scenario: Any
                                                                      ) -> None:
    ws, _acked, name = scenario
    tamper_manifest(ws, name, hwm_hash="0" * 64)
    damage_middle(ws.db_path)
    before = sha(ws.db_path)
    with pytest.raises(RecoveryFailed) as info:
        run(ws, backup_name=name)
    assert info.value.exit_code == 2 and "manifest drift" in info.value.message
    assert sha(ws.db_path) == before and list(ws.quarantine_dir.iterdir()) == []


def test_no_validated_backup_when_failed_and_incomplete_backups_exist(ws: Workspace
                                                                      ) -> None:
    acked = append(ws, 300)
    failed = ws.backups_dir / "hourly-20260101T000000Z"
    failed.mkdir()
    (failed / "manifest.json").write_text(json.dumps({
        "validated": False, "checks": [{"name": "integrity_check", "passed": False}],
        "created_at": "2026-01-01T00:00:00.000000Z"}))
    (ws.backups_dir / ".tmp-hourly-20260102T000000Z").mkdir()
    drop_wal(ws)
    damage_middle(ws.db_path, 10)
    r = run(ws)
    assert r["backup"] is None and "journal alone" in r["loss"]["statement"]
    assert {s["name"]: s["why"] for s in r["skipped_backups"]} == {
        failed.name: "manifest says validation failed",
        ".tmp-hourly-20260102T000000Z": "the backup never finished (killed or crashed mid-way)"}
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()
    # and when the journal is not complete from event 1 either: exit 2, nothing changed
    damage_journal_record(ws, 1)
    damage_middle(ws.db_path, 10)
    before, listing = sha(ws.db_path), sorted(p.name for p in ws.db_dir.rglob("*"))
    with pytest.raises(RecoveryFailed) as info:
        run(ws)
    assert info.value.exit_code == 2 and "no validated backup" in info.value.message
    assert {s["name"] for s in info.value.details["skipped"]} == {
        failed.name, ".tmp-hourly-20260102T000000Z"}
    assert sha(ws.db_path) == before
    assert sorted(p.name for p in ws.db_dir.rglob("*")) == listing


def test_dry_run_reports_a_failing_verification_with_exit_2(scenario: Any) -> None:
    """A backup rewritten behind Atlas's back, manifest and all (so its sha256 and facts
    agree): the rebuilt ledger fails its hash chain. The dry run says so, exit 2, and
    the real run refuses and changes nothing."""
    ws, _acked, name = scenario
    db = ws.backups_dir / name / "leads.db"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE events SET payload = '{\"i\":-1}' WHERE id = 5")
    conn.commit()
    conn.close()
    tamper_manifest(ws, name, sha256=sha(db), size=db.stat().st_size)
    damage_middle(ws.db_path)
    before = sha(ws.db_path)
    r = run(ws, dry_run=True)
    assert r["outcome"] == "failed" and r["exit_code"] == 2
    assert "hash_chain" in r["plan"]["would_fail"] or "ledger == journal" in r["plan"][
        "would_fail"]
    with pytest.raises(RecoveryFailed) as info:
        run(ws)
    assert info.value.exit_code == 2
    assert sha(ws.db_path) == before
    assert list(ws.quarantine_dir.iterdir()) == []
    assert list(ws.db_dir.glob(".recovering-*")) == []


def event_page(db: Path, event_hash: str) -> int:
    """The page of the events table that holds this hash (as a row's hash or the next
    row's prev_hash: the same page or its neighbour)."""
    return db.read_bytes().find(event_hash.encode()) // PAGE


def test_salvaged_rows_after_a_gap_are_not_merged_unless_anchored(ws: Workspace) -> None:
    """Journal records 602..1001 are missing (the newest segment). The file's page that
    holds event 922 is zeroed: rows before it link forward from the journal and are
    merged; rows after it cannot be linked to anything the ledger holds, so they are
    kept for review and their ids are named as lost."""
    ws = small_segments(ws)
    acked = append(ws, 600)
    _name, receipt = backup(ws)
    acked |= receipt
    acked |= append(ws, 400, start=600)
    drop_wal(ws)
    newest = sorted(ws.journal_dir.glob("*.journal"))[-1]
    first_missing = int(newest.name.split(".")[0])
    newest.unlink()
    zero_pages(ws.db_path, event_page(ws.db_path, acked[first_missing + 20]), 1)
    r = run(ws)
    lost = assert_exact(r, acked, ws.db_path)
    assert lost and min(lost) > first_missing and max(lost) == 1001
    merged = set(r["evidence"]["merged_from_salvage"])
    assert merged and max(merged) < min(lost)  # nothing after the gap was merged
    review = Path(r["loss"]["salvaged_unmerged"]["path"])
    conn = sqlite3.connect(review)
    kept = {int(i) for (i,) in conn.execute("SELECT id FROM salvaged_events")}
    conn.close()
    assert kept and kept <= lost and max(kept) == 1001
    assert r["loss"]["salvaged_unmerged"]["count"] == len(kept)
    assert r["loss"]["unknown_after"]["id"] == 1001 and r["exit_code"] == 3


def test_salvaged_rows_after_a_gap_anchored_by_the_journal_are_merged(scenario: Any
                                                                      ) -> None:
    """Journal records 830..870 are damaged and the file's page holding event 850 is
    zeroed. Rows after that page link to each other and the journal record 871 names
    the last one's hash as its prev_hash: the chain anchors them, so they are merged."""
    ws, acked, _ = scenario
    for i in range(830, 871):
        damage_journal_record(ws, i)
    zero_pages(ws.db_path, event_page(ws.db_path, acked[850]), 1)
    r = run(ws)
    lost = assert_exact(r, acked, ws.db_path)
    assert lost and min(lost) > 830 and max(lost) < 870
    merged = set(r["evidence"]["merged_from_salvage"])
    assert {i for i in merged if i > max(lost)}  # the anchored run after the gap
    assert r["loss"]["salvaged_unmerged"]["count"] == 0
    assert r["loss"]["unknown_after"] is None and r["exit_code"] == 3


def test_another_atlas_process_during_recover(scenario: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that opened the ledger before the recovery, and one that tries to open
    it while the recovery runs, both write into the recovered file afterwards; the
    quarantined copy never changes."""
    import threading

    import atlasops.durability.recovery as rec

    ws, acked, _ = scenario
    zero_pages(ws.db_path, root_page(ws.db_path, "leads_segment") - 1, 1)
    go = ws.home / "go"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from atlasops.workspace import Workspace\n"
        "from atlasops.ledger import Ledger, NewEvent\n"
        "ws = Workspace.open(sys.argv[1])\n"
        "print('opening', flush=True)\n"
        "led = Ledger.for_workspace(ws).open()\n"
        "print('opened', flush=True)\n"
        "while not Path(sys.argv[2]).exists():\n"
        "    time.sleep(0.01)\n"
        "ids = [(e.id, e.hash) for e in led.append_many(\n"
        "    [NewEvent('note.added', sys.argv[3], {'i': i}) for i in range(5)])]\n"
        "led.close()\n"
        "print(repr(ids), flush=True)\n"
    )

    def writer(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", code, str(ws.home), str(go), name],
                                stdout=subprocess.PIPE, text=True)

    early = writer("early")
    assert early.stdout is not None
    assert early.stdout.readline() == "opening\n" and early.stdout.readline() == "opened\n"
    building, release = threading.Event(), threading.Event()
    real = rec.build_ledger

    def paused(*a: Any, **k: Any) -> Any:
        building.set()
        release.wait()
        return real(*a, **k)

    monkeypatch.setattr(rec, "build_ledger", paused)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(run(ws)))
    t.start()
    assert building.wait(60)
    late = writer("late")
    assert late.stdout is not None and late.stdout.readline() == "opening\n"
    release.set()  # (whether or not `late` has reached the lock yet, it must wait for it)
    t.join()
    assert late.stdout.readline() == "opened\n"
    go.touch()
    for proc in (early, late):
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        acked |= dict(eval(out))  # noqa: S307 - our own child's repr output
    assert assert_exact(result, acked, ws.db_path) == set()  # plain sqlite3, right away
    q = result["evidence"]["quarantine"]["files"]["leads.db"]
    assert sha(Path(q["path"])) == q["sha256"]
    assert os.stat(q["path"]).st_nlink == 1  # a copy, linked nowhere else
    from atlasops.ledger import Journal, verify

    assert verify(ws.db_path, Journal(ws.journal_dir, 1 << 26)).ok


KILL_AT_SWAP = (
    "import sys, os, signal\n"
    "from pathlib import Path\n"
    "from atlasops.workspace import Workspace\n"
    "import atlasops.durability.swap as swap\n"
    "real_rename, real_exchange = os.rename, swap.exchange\n"
    "def die():\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "def rename(a, b):\n"
    "    if sys.argv[2] == 'between-renames' and str(b).endswith('data/journal'):\n"
    "        die()  # the old journal went to quarantine; the new one is not in place\n"
    "    return real_rename(a, b)\n"
    "def exchange(a, b):\n"
    "    if sys.argv[2] == 'between-renames':\n"
    "        return False  # as on a file system without renameat2\n"
    "    real_exchange(a, b)\n"
    "    die()  # exchanged; the old journal is not in quarantine yet\n"
    "swap.os.rename, swap.exchange = rename, exchange\n"
    "from atlasops.durability import recover\n"
    "recover(Workspace.open(sys.argv[1]), actor='k')\n"
)


@pytest.mark.parametrize("where", ["between-renames", "after-exchange"])
def test_sigkill_during_the_journal_swap_then_rerun_finishes(
        scenario: Any, where: str, cli: Any) -> None:
    ws, acked, _ = scenario
    damage_journal_record(ws, 800)  # the journal must be rewritten, so it is swapped
    ws.db_path.unlink()
    proc = subprocess.run([sys.executable, "-c", KILL_AT_SWAP, str(ws.home), where])
    assert proc.returncode == -9
    assert ws.recovery_pending_path.exists()
    assert ws.journal_dir.exists() == (where == "after-exchange")
    # every other command says what to do, and nothing writes meanwhile
    r = cli("status")
    assert r.exit_code == 5 and "interrupted" in r.stderr and "atlas recover" in r.stderr
    from atlasops.errors import StorageError

    with pytest.raises(StorageError, match="interrupted"):
        Ledger.for_workspace(ws).open()
    r = cli("recover", "--dry-run")
    assert r.exit_code == 3 and "would swap it in" in r.stdout
    assert ws.recovery_pending_path.exists()
    r = cli("recover", "--json")
    assert r.exit_code == 3, r.stderr
    result = r.json()
    assert assert_exact(result, acked, ws.db_path) == {800}
    assert not ws.recovery_pending_path.exists()
    q = Path(result["evidence"]["quarantine"]["path"] or
             next(ws.quarantine_dir.iterdir()))
    assert (ws.quarantine_dir / q.name / "journal").is_dir()  # the old journal is kept
    assert not any(p.name == "journal" for p in ws.db_dir.glob(".recovering-*/*"))
    with Ledger.for_workspace(ws) as led:
        recoveries = led.query("SELECT id FROM receipts WHERE kind = 'recovery'")
    assert len(recoveries) == 1
    assert cli("ledger", "verify").exit_code == 0


def test_a_live_file_changed_during_recovery_is_kept_beside_the_quarantine(
        scenario: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Something outside Atlas (it ignores the writer lock) writes to leads.db after it
    was copied into quarantine: the copy keeps its recorded bytes, and the changed file
    is copied beside it at the swap, with its hash, instead of being lost."""
    import atlasops.durability.recovery as rec

    ws, acked, _ = scenario
    damage_middle(ws.db_path)
    real = rec._verify

    def outsider_writes(*a: Any, **k: Any) -> Any:
        # during verification: the quarantine copy (which runs alongside choosing,
        # reading and building) has been joined by then
        with open(ws.db_path, "r+b") as fh:
            fh.seek(PAGE * 31)
            fh.write(b"outsider" * 16)
        return real(*a, **k)

    monkeypatch.setattr(rec, "_verify", outsider_writes)
    damaged_then = ws.db_path.read_bytes()
    r = run(ws)
    assert r["exit_code"] == 0 and assert_exact(r, acked, ws.db_path) == set()
    q = Path(r["evidence"]["quarantine"]["path"])
    assert sha(q / "leads.db") == r["evidence"]["quarantine"]["files"]["leads.db"]["sha256"]
    kept = (q / "leads.db.at-swap").read_bytes()
    assert kept != (q / "leads.db").read_bytes() and kept[PAGE * 31:PAGE * 31 + 8] == b"outsider"
    assert len(kept) == len(damaged_then)
    swap_action = next(a for a in r["actions"] if a["name"] == "atomic swap")
    assert hashlib.sha256(kept).hexdigest() in swap_action["result"]
    assert "as recorded" in next(a for a in r["actions"] if a["name"] == "seal quarantine")[
        "result"]


FAKE_SQLITE3 = """#!/bin/sh
# stands in for a .recover-capable sqlite3, which this machine does not have
cat <<'SQL'
CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
SQL
i=1
while [ $i -le {rows} ]; do echo "INSERT INTO t VALUES ($i, 'row $i');"; i=$((i+1)); done
"""


@pytest.mark.parametrize("rows", [100, 99])
def test_sqlite_recover_probe_accepts_only_a_tool_that_proves_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """The real sqlite3 here fails `.recover` on a healthy file; a `.recover` that works
    cannot exist here, so a script stands in for one. The probe trusts it only when it
    recovers every row of the healthy test file."""
    from atlasops.durability.salvage import sqlite_recover_probe

    real = sqlite_recover_probe()
    assert not real[0] and real[1].startswith("unavailable")  # this machine's sqlite3
    fake = tmp_path / "sqlite3"
    fake.write_text(FAKE_SQLITE3.replace("{rows}", str(rows)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sqlite_recover_probe.cache_clear()
    try:
        works, what = sqlite_recover_probe()
    finally:
        sqlite_recover_probe.cache_clear()
    assert works == (rows == 100)
    assert (str(fake) in what) if works else ("99 of 100" in what)


def test_the_sqlite3_recover_probe_is_recorded_when_salvage_runs(scenario: Any) -> None:
    from atlasops.durability.salvage import sqlite_recover_probe

    ws, acked, _ = scenario
    damage_journal_record(ws, 800)
    zero_pages(ws.db_path, root_page(ws.db_path, "leads_segment") - 1, 1)
    r = run(ws)
    probe = next(a for a in r["actions"] if a["name"] == "probe sqlite3 .recover")
    assert probe["result"].startswith(sqlite_recover_probe()[1])
    assert "salvage reads rowid ranges in Python" in probe["result"]
    assert assert_exact(r, acked, ws.db_path) == set()


# -- after a declared loss: dependent events, gaps kept in the ledger ---------------

def read_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but the events (plain sqlite3): the projections, for comparing."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [str(r[0]) for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT IN "
            "('events', 'schema_migrations') ORDER BY name")]
        return {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")]
                for t in names}
    finally:
        conn.close()


def lose_a_lead_with_dependents(ws: Workspace) -> tuple[dict[int, str], int, dict[str, int]]:
    """After the scenario: a lead X, a lead W, then events that depend on them:
    ``lead.updated`` and ``touch.created`` of X, ``touch.done`` of that touch (it then
    updates nothing), and a ``lead.updated`` of W. Returns (acknowledged {id: hash},
    X, {name: id} of the dependent events)."""
    acked: dict[int, str] = {}
    with Ledger.for_workspace(ws) as led:
        x, w = led.append_many([
            NewEvent("lead.created", "t", {"email": "lost@dep.example", "name": "Lost"}),
            NewEvent("lead.created", "t", {"email": "kept@dep.example", "name": "Kept"})])
        acked |= {x.id: x.hash, w.id: w.hash}
        ids: dict[str, int] = {}
        for name, new in (
                ("update_x", NewEvent("lead.updated", "t", {"id": x.id, "changes": {
                    "status": "contacted"}})),
                ("touch_x", NewEvent("touch.created", "t", {
                    "lead_id": x.id, "sequence": "s", "step": 1,
                    "due_at": "2026-12-01T00:00:00Z", "lane": "outbound.prospect"})),
                ("update_w", NewEvent("lead.updated", "t", {"id": w.id, "changes": {
                    "status": "won"}}))):
            e = led.append_many([new, NewEvent("note.added", "t", {"after": name})])
            ids[name] = e[0].id
            acked |= {ev.id: ev.hash for ev in e}
        done = led.append("touch.done", "t", {"id": ids["touch_x"], "status": "done"})
        ids["touch_done"] = done.id
        acked[done.id] = done.hash
    return acked, x.id, ids


def test_events_that_depend_on_a_lost_event_are_recorded_not_applied(
        scenario: Any, cli: Any, tmp_path: Path) -> None:
    """The journal record of lead X is damaged and the database deleted: X is lost.
    The events that name X (its lead.updated, a touch.created for it) cannot be applied;
    they are recorded (ledger == journal), not applied, and named in the receipt. The
    workspace goes on: every command works, a rebuild from the journal reproduces the
    same tables, and so does the next open after leads.db is deleted again."""
    ws, acked, _ = scenario
    more, x, ids = lose_a_lead_with_dependents(ws)
    acked |= more
    damage_journal_record(ws, x)
    ws.db_path.unlink()
    r = run(ws)
    five_parts(r)
    assert r["exit_code"] == 3 and r["loss"]["lost_event_ranges"] == [[x, x]]
    assert assert_exact(r, acked, ws.db_path) == {x}
    unapplied = {u["id"]: u for u in r["loss"]["unapplied"]}
    assert set(unapplied) == {ids["update_x"], ids["touch_x"]}
    assert all(u["refers_to"] == [x] for u in unapplied.values())
    assert f"refer to lost event(s) {x} and were recorded but not applied" in r["loss"][
        "statement"]
    # the tables, read with plain sqlite3: X and its touch are absent, W was updated
    tables = read_tables(ws.db_path)
    leads = {row[0]: row for row in tables["leads"]}
    assert x not in leads and leads[x + 1][8] == "won"
    assert [row for row in tables["touches"] if row[1] == x] == []
    # the workspace is usable, and replaying the journal gives the same tables
    from atlasops.integrity import replay_differences

    assert replay_differences(ws)[1] == []
    rebuilt = cli("ledger", "rebuild", "--into", str(tmp_path / "a.db"), "--json")
    assert [u["id"] for u in rebuilt.json()["unapplied"]] == sorted(unapplied)
    rebuilt = cli("ledger", "rebuild", "--into", str(tmp_path / "b.db"))
    assert f"after a declared gap: event(s) {ids['update_x']} (lead.updated)" in rebuilt.stderr
    assert read_tables(tmp_path / "a.db") == read_tables(tmp_path / "b.db")
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {"after": "recovery"})
    before = read_tables(ws.db_path)
    ws.db_path.unlink()
    with Ledger.for_workspace(ws) as led:
        notice = led.events(kind="ledger.rebuilt")[-1]
    assert notice.payload["unapplied"] == sorted(unapplied)
    assert read_tables(ws.db_path) == before


def test_a_dependent_event_fails_the_replay_when_no_gap_explains_it(ws: Workspace) -> None:
    """Without a declared gap before it, an event the journal holds that cannot be
    applied is not skipped: opening the ledger says so (exit 5 in the CLI)."""
    from atlasops.errors import JournalCorrupt
    from atlasops.ledger.journal import encode_record

    with Ledger.for_workspace(ws) as led:
        lead = led.append("lead.created", "t", {"email": "a@b.example"})
        tail = led.journal.tail()
    bogus = sealed("lead.updated", {"id": 999, "changes": {"status": "won"}},
                       lead.id + 1, lead.hash)
    with open(tail.segment or "", "ab") as fh:
        fh.write(encode_record(bogus))
    ws.db_path.unlink()
    with pytest.raises(JournalCorrupt, match="cannot be applied"):
        Ledger.for_workspace(ws).open()


def sealed(kind: str, payload: dict[str, Any], event_id: int, prev: str) -> Any:
    from atlasops.ledger import Event

    return Event.seal(NewEvent(kind, "t", payload), event_id, "2026-01-01T00:00:00Z", prev)


def lose_event_800(ws: Workspace) -> None:
    """A first, lossy recovery: event 800's journal record is damaged and the database
    deleted, so 800 is declared lost (a gap)."""
    damage_journal_record(ws, 800)
    ws.db_path.unlink()
    assert run(ws)["loss"]["lost_event_ranges"] == [[800, 800]]


def gaps_in_file(db: Path) -> list[tuple[int, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(int(a), int(b)) for a, b in conn.execute(
            "SELECT first, last FROM ledger_gaps ORDER BY first")]
    finally:
        conn.close()


def verifies(ws: Workspace) -> bool:
    from atlasops.ledger import Journal, verify

    return verify(ws.db_path, Journal(ws.journal_dir, 1 << 26)).ok


def test_journal_missing_after_an_earlier_lossy_recovery_loses_nothing_more(
        scenario: Any) -> None:
    """The gap an earlier recovery declared is kept in the ledger, so with data/journal/
    gone the events after it, salvaged from the healthy file, link through the gap's
    recorded hashes and are merged: nothing more is lost (and nothing goes to review)."""
    ws, _acked, _ = scenario
    lose_event_800(ws)
    assert gaps_in_file(ws.db_path) == [(800, 800)]
    append(ws, 50, start=5000)
    drop_wal(ws)
    truth = ledger_rows(ws.db_path)  # plain sqlite3, before the damage
    shutil.rmtree(ws.journal_dir)
    r = run(ws)
    five_parts(r)
    assert assert_exact(r, truth, ws.db_path) == set()
    assert r["loss"]["lost_event_ranges"] == [] and r["loss"]["earlier_gaps"] == [[800, 800]]
    assert r["loss"]["salvaged_unmerged"]["count"] == 0
    assert r["loss"]["unknown_after"]["id"] == max(truth) and r["exit_code"] == 3
    assert verifies(ws)


def test_a_backup_taken_after_a_declared_gap_restores_without_the_journal(
        scenario: Any) -> None:
    """A backup holds the gaps declared before it (in its own file): with the journal
    gone and the database damaged, recovery restores it and the chain still verifies."""
    ws, _acked, _ = scenario
    lose_event_800(ws)
    append(ws, 50, start=5000)
    daily, _ = backup(ws, "daily")
    assert gaps_in_file(ws.backups_dir / daily / "leads.db") == [(800, 800)]
    append(ws, 20, start=6000)
    drop_wal(ws)
    truth = ledger_rows(ws.db_path)
    shutil.rmtree(ws.journal_dir)
    damage_middle(ws.db_path, 2)
    r = run(ws)
    five_parts(r)
    assert r["backup"]["name"] == daily
    assert assert_exact(r, truth, ws.db_path) == set()
    assert r["loss"]["lost_event_ranges"] == [] and r["loss"]["earlier_gaps"] == [[800, 800]]
    assert verifies(ws)


def test_a_later_recovery_names_an_earlier_gap_apart_from_its_own_loss(
        scenario: Any) -> None:
    """A recovery from a backup taken before an earlier declared gap crosses that gap
    again: it is named in ``earlier_gaps``, not as this recovery's loss (exit 0 when
    nothing new was lost); a loss of its own is named on its own."""
    ws, _acked, _ = scenario
    lose_event_800(ws)
    append(ws, 50, start=5000)
    drop_wal(ws)
    truth = ledger_rows(ws.db_path)
    damage_middle(ws.db_path)
    r = run(ws)
    five_parts(r)
    assert assert_exact(r, truth, ws.db_path) == set()
    assert r["exit_code"] == 0 and r["outcome"] == "recovered" and r["loss"]["none"]
    assert r["loss"]["lost_event_ranges"] == [] and r["loss"]["earlier_gaps"] == [[800, 800]]
    assert r["loss"]["statement"].startswith("Nothing new was lost")
    truth = ledger_rows(ws.db_path)
    damage_journal_record(ws, 900)
    ws.db_path.unlink()
    r = run(ws)
    assert assert_exact(r, truth, ws.db_path) == {900}
    assert r["exit_code"] == 3 and r["loss"]["lost_event_ranges"] == [[900, 900]]
    assert r["loss"]["earlier_gaps"] == [[800, 800]] and verifies(ws)


def cut_journal_records(ws: Workspace, count: int) -> None:
    """Cut the newest segment's last ``count`` records at a record boundary: the
    journal then looks as if it simply ended there."""
    newest = sorted(ws.journal_dir.glob("*.journal"))[-1]
    lines = newest.read_bytes().split(b"\n")
    newest.write_bytes(b"\n".join(lines[:-1 - count]) + b"\n")


@pytest.mark.parametrize("where", ["their pages", "the schema page"])
def test_a_file_unreadable_beyond_the_journals_end_is_unknown_not_none(
        scenario: Any, where: str) -> None:
    """The journal lost its last 30 records at a record boundary, and the database file,
    the one witness of them, cannot be read there: "nothing lost" is never claimed."""
    ws, acked, _ = scenario
    cut_journal_records(ws, 30)
    end = max(acked) - 30
    if where == "their pages":
        pages = {event_page(ws.db_path, acked[i]) for i in range(end + 1, max(acked) + 1)}
        for page in pages:
            zero_pages(ws.db_path, page, 1)
    else:
        zero_pages(ws.db_path, 0, 1)  # page 1: the header and the schema's root
    r = run(ws)
    assert assert_exact(r, acked, ws.db_path) == set(range(end + 1, max(acked) + 1))
    assert r["loss"]["unknown_after"]["id"] == end and r["exit_code"] == 3
    assert "cannot be read" in r["loss"]["unknown_after"]["why"]


def test_a_damaged_last_journal_record_is_described_as_it_is(scenario: Any) -> None:
    """Only the journal's last record is damaged; the database is healthy and holds it.
    The statement says so (not "a journal segment is missing")."""
    ws, acked, _ = scenario
    damage_journal_record(ws, max(acked))
    r = run(ws)
    assert assert_exact(r, acked, ws.db_path) == set()
    why = r["loss"]["unknown_after"]["why"]
    assert why.startswith(f"the journal's tail is damaged after event {max(acked) - 1}, "
                          f"and the database file holds events up to {max(acked)}")
    assert "segment" not in why and "damaged database" not in why
