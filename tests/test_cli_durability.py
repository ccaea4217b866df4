"""`atlas backup`, `atlas backups ...`, `atlas db check`, `atlas recover` through the CLI."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atlasops.config import BackupSettings
from atlasops.durability.backup import BackupInfo, plan_prune
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace


def fill(ledger: Ledger, n: int = 200) -> None:
    for i in range(0, n, 50):
        ledger.append_many([])  # no-op batches are allowed and write nothing
        from atlasops.ledger import NewEvent

        ledger.append_many([NewEvent("note.added", "t", {"i": j, "pad": "p" * 200})
                            for j in range(i, i + 50)])


def test_backup_list_verify(cli: Any, ledger: Ledger, ws: Workspace) -> None:
    fill(ledger)
    r = cli("backup", "--label", "hourly", "--json")
    assert r.exit_code == 0, r.stderr
    b = r.json()
    assert b["validated"] is True and b["hwm_event_id"] == ledger.last_event().id - 1
    names = {c["name"] for c in b["checks"]}
    assert {"quick_check", "integrity_check", "foreign_key_check", "sha256", "facts",
            "hash_chain", "online_backup"} <= names
    manifest = json.loads((Path(b["path"]) / "manifest.json").read_text())
    assert manifest["row_counts"]["events"] == b["hwm_event_id"]
    assert {"page_size", "page_count", "schema_version", "hwm_ts"} <= set(manifest)
    assert Path(b["path"]).name.startswith("hourly-")
    listed = cli("backups", "list", "--json").json()
    assert [x["name"] for x in listed] == [b["name"]]
    assert "validated" in cli("backups", "list").stdout
    r = cli("backups", "verify", b["name"], "--json")
    assert r.exit_code == 0 and r.json()[0]["ok"] is True
    # drift: damage the copy
    with open(Path(b["path"]) / "leads.db", "r+b") as fh:
        fh.seek(8192)
        fh.write(b"\xff" * 512)
    r = cli("backups", "verify", "--all")
    assert r.exit_code == 1 and "sha256 drift" in r.stderr
    r = cli("backups", "verify", "nope")
    assert r.exit_code == 6
    r = cli("backups", "verify")
    assert r.exit_code == 2


def test_backup_rejects_bad_label(cli: Any) -> None:
    r = cli("backup", "--label", "Bad Label")
    assert r.exit_code == 2


def test_incomplete_backup_is_listed_as_incomplete(cli: Any, ws: Workspace) -> None:
    (ws.backups_dir / ".tmp-hourly-20260101T000000Z").mkdir()
    listed = cli("backups", "list", "--json").json()
    assert listed[0]["status"] == "incomplete" and listed[0]["validated"] is False


def test_prune_dry_run_then_prune(cli: Any, ledger: Ledger, ws: Workspace) -> None:
    fill(ledger, 50)
    for _ in range(3):
        assert cli("backup").exit_code == 0
    failed = ws.backups_dir / "manual-20200101T000000Z"
    failed.mkdir()
    (failed / "manifest.json").write_text(json.dumps({"validated": False, "checks": [],
                                                      "created_at": "2020-01-01T00:00:00.0Z"}))
    r = cli("backups", "prune", "--dry-run", "--json")
    plan = r.json()
    newest = cli("backups", "list", "--json").json()[0]["name"]
    # three backups in the same hour: one per hourly bucket is kept, plus nothing failed
    assert [k["name"] for k in plan["keep"]] == [newest]
    assert failed.name in [d["name"] for d in plan["delete"]]
    assert len(plan["delete"]) == 3
    assert failed.exists()
    r = cli("backups", "prune")
    assert r.exit_code == 0 and not failed.exists()
    assert [b["name"] for b in cli("backups", "list", "--json").json()] == [newest]
    assert cli("receipts", "list", "--kind", "backup.prune", "--json").json()


def info(name: str, created: datetime, status: str = "validated") -> BackupInfo:
    return BackupInfo(name=name, path=Path("/nonexistent") / name, status=status,
                      created_at=created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def test_retention_plan_keeps_hourly_daily_weekly_and_the_newest() -> None:
    now = datetime(2026, 6, 27, 12, 0, tzinfo=UTC)
    backups = [info(f"b{h}", now - timedelta(hours=h)) for h in range(0, 24 * 30, 6)]
    plan = plan_prune(backups, BackupSettings(keep_hourly=2, keep_daily=3, keep_weekly=2),
                      now=now)
    kept = dict(plan.keep)
    assert "b0" in kept
    assert kept["b0"] == "newest validated backup"
    # 2 hourly buckets (b0, b6), 3 daily (b0, b12? no: newest per day), 2 weekly
    days = {(now - timedelta(hours=int(n[1:]))).date() for n in kept}
    assert len(days) <= 4
    assert len(kept) < len(backups)
    assert {n for n, _ in plan.delete} | set(kept) == {b.name for b in backups}
    # the newest validated backup survives even when every limit is zero
    zero = plan_prune(backups, BackupSettings(keep_hourly=0, keep_daily=0, keep_weekly=0),
                      now=now)
    assert [n for n, _ in zero.keep] == ["b0"]


def test_prune_never_deletes_the_newest_validated_even_if_old() -> None:
    now = datetime(2026, 6, 27, tzinfo=UTC)
    backups = [info("old-valid", now - timedelta(days=400)),
               info("new-failed", now, status="failed")]
    plan = plan_prune(backups, BackupSettings(keep_hourly=0, keep_daily=0, keep_weekly=0),
                      now=now)
    assert [n for n, _ in plan.keep] == ["old-valid"]
    assert [n for n, _ in plan.delete] == ["new-failed"]


def test_db_check_ok_then_corrupt(cli: Any, ledger: Ledger, ws: Workspace) -> None:
    fill(ledger, 400)
    r = cli("db", "check", "--full", "--json")
    assert r.exit_code == 0 and r.json()["ok"] is True
    ledger.close()
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)
    with open(ws.db_path, "r+b") as fh:
        fh.seek(4096 * 5)
        fh.write(b"\0" * 4096 * 4)
    r = cli("db", "check", "--json")
    assert r.exit_code == 1
    data = r.json()
    assert data["ok"] is False and data["event_id"] is not None
    assert "quick_check" in data["symptom"]["summary"]
    # the symptom is in the journal even though the database cannot be written
    text = "".join(p.read_text() for p in ws.journal_dir.glob("*.journal"))
    assert '"kind":"db.corruption.detected"' in text
    r = cli("db", "check")
    assert r.exit_code == 1 and "atlas recover" in r.stderr
    # recover: exit 0, no loss, and the detection event is in the recovered ledger
    r = cli("recover", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    rec = r.json()
    assert rec["loss"]["none"] is True and rec["backup"] is None
    events = cli("events", "list", "--kind", "db.corruption.detected", "--json").json()
    assert [e["id"] for e in events] == [data["event_id"]]
    assert cli("db", "check").exit_code == 0
    assert cli("ledger", "verify").exit_code == 0


def test_recover_cli_human_output_and_exit_codes(cli: Any, ledger: Ledger,
                                                 ws: Workspace) -> None:
    fill(ledger, 300)
    assert cli("backup").exit_code == 0
    fill(ledger, 100)
    ledger.close()
    r = cli("recover")
    assert r.exit_code == 0 and "healthy" in r.stdout
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)
    ws.db_path.unlink()
    r = cli("recover", "--dry-run")
    assert r.exit_code == 0
    assert "Recovery plan (dry run" in r.stdout and not ws.db_path.exists()
    r = cli("recover")
    assert r.exit_code == 0
    for part in ("1. Symptom", "2. Backup", "3. Actions", "4. Verification", "5. Loss"):
        assert part in r.stdout
    assert "Nothing was lost" in r.stdout


def test_recover_exit_2_when_impossible(cli: Any, ledger: Ledger, ws: Workspace) -> None:
    fill(ledger, 100)
    ledger.close()
    ws.db_path.unlink()
    first = sorted(ws.journal_dir.glob("*.journal"))[0]
    first.unlink()
    r = cli("recover")
    assert r.exit_code == 2
    assert "nothing was changed" in r.stderr
    r = cli("recover", "--backup", "nope")
    assert r.exit_code == 2 and "no backup named 'nope'" in r.stderr


def drop_wal(ws: Workspace) -> None:
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)


def zero(ws: Workspace, page: int, count: int) -> None:
    with open(ws.db_path, "r+b") as fh:
        fh.seek(4096 * page)
        fh.write(b"\0" * 4096 * count)


def root_page(ws: Workspace, name: str) -> int:
    conn = sqlite3.connect(f"file:{ws.db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                                (name,)).fetchone()[0])
    finally:
        conn.close()


def test_missing_journal_directory_points_to_recover(cli: Any, ledger: Ledger,
                                                     ws: Workspace) -> None:
    import shutil

    fill(ledger, 300)
    assert cli("backup").exit_code == 0
    fill(ledger, 100)
    ledger.close()
    drop_wal(ws)
    shutil.rmtree(ws.journal_dir)
    r = cli("status")
    assert r.exit_code == 4 and "data/journal is missing" in r.stderr
    assert "atlas recover" in r.stderr  # not `atlas init`, which would hide the loss
    r = cli("recover", "--dry-run")
    assert r.exit_code == 3 and "Would rewrite the journal" in r.stdout
    assert not ws.journal_dir.exists()
    r = cli("recover", "--json")
    assert r.exit_code == 3, r.stderr
    rec = r.json()
    # the file still held every event, and each one links forward from the backup; but
    # with no journal nothing proves where history ends
    assert rec["loss"]["lost_event_ranges"] == []
    assert rec["loss"]["unknown_after"]["id"] == 401
    assert "journal directory was missing" in rec["loss"]["unknown_after"]["why"]
    assert ws.journal_dir.is_dir()
    assert cli("ledger", "verify").exit_code == 0 and cli("status").exit_code == 0


def test_a_detected_corruption_blocks_writes_until_recovered(cli: Any, ledger: Ledger,
                                                             ws: Workspace) -> None:
    fill(ledger, 400)
    ledger.close()
    drop_wal(ws)
    # an index no note touches: the file opens and a replay of notes would succeed
    zero(ws, root_page(ws, "leads_segment") - 1, 1)
    before = ws.db_path.read_bytes()
    r = cli("db", "check", "--json")
    assert r.exit_code == 1
    event_id = r.json()["event_id"]
    r = cli("suppress", "someone@else.example")  # a command that writes
    assert r.exit_code == 5 and f"event {event_id}" in r.stderr
    assert "atlas recover" in r.stderr
    r = cli("status")  # a command that reads: the ledger as it stands, and why
    assert r.exit_code == 0 and "as it stands" in r.stderr and f"event {event_id}" in r.stderr
    assert ws.db_path.read_bytes() == before  # nothing was replayed into the damaged file
    assert cli("recover").exit_code == 0
    r = cli("status")
    assert r.exit_code == 0 and "as it stands" not in r.stderr


def test_db_check_records_its_richer_symptom_after_a_passing_detection(
        cli: Any, ledger: Ledger, ws: Workspace) -> None:
    from atlasops.durability import record_detection

    fill(ledger, 400)
    ledger.close()
    drop_wal(ws)
    root = root_page(ws, "events_kind")
    zero(ws, root - 1, 1)
    passing, _ = record_detection(ws, {"summary": "database disk image is malformed",
                                       "detected_by": "reading the ledger"})
    assert passing is not None
    r = cli("db", "check", "--json")
    data = r.json()
    assert r.exit_code == 1 and data["event_id"] == passing.id + 1
    assert f"Page {root}:" in data["symptom"]["summary"]  # quick_check names the page
    r = cli("db", "check", "--json")
    assert r.json()["event_id"] == passing.id + 1  # the same check is recorded once


def test_db_check_describes_damage_when_quick_check_raises(cli: Any, ledger: Ledger,
                                                           ws: Workspace) -> None:
    fill(ledger, 400)
    ledger.close()
    drop_wal(ws)
    size = ws.db_path.stat().st_size
    with open(ws.db_path, "r+b") as fh:
        fh.truncate(size // 2)
    data = cli("db", "check", "--json").json()
    damage = " ".join(data["symptom"].get("damage", []))
    assert f"the file has {size // 2} bytes" in damage and "are missing" in damage
    with open(ws.db_path, "r+b") as fh:
        fh.write(b"garbage!" * 4)
    assert "header is not SQLite's" in " ".join(cli("db", "check", "--json").json()[
        "symptom"]["damage"])


def test_backup_of_a_damaged_live_database_says_recover(cli: Any, ledger: Ledger,
                                                        ws: Workspace) -> None:
    fill(ledger, 400)
    ledger.close()
    drop_wal(ws)
    zero(ws, 5, 4)
    r = cli("backup", "--json")
    assert r.exit_code == 5 and "atlas recover" in r.stderr and "marked failed" in r.stderr
    listed = cli("backups", "list", "--json").json()
    assert [b["status"] for b in listed] == ["failed"]
    text = "".join(p.read_text() for p in ws.journal_dir.glob("*.journal"))
    assert text.count('"kind":"db.corruption.detected"') == 1
    assert '"detected_by":"atlas backup' in text


def test_a_missing_database_rebuilt_on_open_is_recorded(cli: Any, ledger: Ledger,
                                                        ws: Workspace) -> None:
    fill(ledger, 100)
    ledger.close()
    drop_wal(ws)
    ws.db_path.write_bytes(b"")
    assert cli("status").exit_code == 0
    events = cli("events", "list", "--kind", "ledger.rebuilt", "--json").json()
    assert len(events) == 1
    assert events[0]["payload"] == {"reason": "leads.db was empty (0 bytes)",
                                    "replayed": 100, "source": "journal"}


def test_backups_list_and_verify_name_what_is_wrong(cli: Any, ledger: Ledger,
                                                    ws: Workspace) -> None:
    fill(ledger, 100)
    first = cli("backup", "--json").json()
    second = cli("backup", "--json").json()
    (Path(first["path"]) / "leads.db").unlink()
    manifest = Path(second["path"]) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["hwm_hash"] = "0" * 64
    manifest.write_text(json.dumps(data))
    listed = {b["name"]: b for b in cli("backups", "list", "--json").json()}
    assert listed[first["name"]]["status"] == "failed"
    assert listed[first["name"]]["problem"] == "leads.db is missing"
    r = cli("backups", "verify", second["name"])
    assert r.exit_code == 1 and f"high-water mark hash drift: manifest {'0' * 64}" in r.stderr


def test_recover_dry_run_prints_a_plan(cli: Any, ledger: Ledger, ws: Workspace) -> None:
    fill(ledger, 300)
    name = cli("backup", "--json").json()["name"]
    fill(ledger, 100)
    ledger.close()
    drop_wal(ws)
    zero(ws, 30, 4)
    r = cli("recover", "--dry-run")
    assert r.exit_code == 0, r.stderr
    for line in ("Would quarantine: leads.db (", f"Would restore: backup {name}",
                 "Would replay: ", "Expected loss: Nothing was lost"):
        assert line in r.stdout, line
    assert "applied" not in r.stdout and "copied" not in r.stdout
    assert list(ws.quarantine_dir.iterdir()) == []


def test_malformed_and_unfinished_newer_backups_are_named_never_a_traceback(
        cli: Any, ledger: Ledger, ws: Workspace) -> None:
    """Newer backups whose manifest has the wrong shape (a number for a time, a JSON
    list), cannot be parsed, or that never finished: every command lists them as failed
    or incomplete with the reason; recovery uses the older good one and names each
    newer one it skipped, in order (by the time in their names)."""
    import shutil

    fill(ledger, 300)
    good = cli("backup", "--label", "hourly", "--json").json()["name"]
    fill(ledger, 100)
    ledger.close()
    drop_wal(ws)
    taken = datetime.strptime(good.split("-", 1)[1], "%Y%m%dT%H%M%SZ")
    later = [f"{label}-{(taken + timedelta(minutes=m)).strftime('%Y%m%dT%H%M%SZ')}"
             for m, label in ((1, "daily"), (2, "daily"), (3, "weekly"), (4, ".tmp-hourly"))]
    for name in later:
        shutil.copytree(ws.backups_dir / good, ws.backups_dir / name)
    wrong_type, a_list, unparsable, unfinished = later
    manifest = json.loads((ws.backups_dir / good / "manifest.json").read_text())
    (ws.backups_dir / wrong_type / "manifest.json").write_text(
        json.dumps({**manifest, "created_at": 5}))
    (ws.backups_dir / a_list / "manifest.json").write_text(json.dumps([manifest]))
    (ws.backups_dir / unparsable / "manifest.json").write_text("{not json")
    r = cli("backups", "list", "--json")
    assert r.exit_code == 0
    listed = r.json()
    assert [b["name"] for b in listed] == [unfinished, unparsable, a_list, wrong_type, good]
    by_name = {b["name"]: b for b in listed}
    assert by_name[wrong_type]["status"] == "failed"
    assert by_name[wrong_type]["problem"].startswith("manifest.json is malformed (created_at:")
    assert by_name[a_list]["status"] == "failed"
    assert "malformed (the top level" in by_name[a_list]["problem"]
    assert {by_name[unparsable]["status"], by_name[unfinished]["status"]} == {"incomplete"}
    assert "backup(s)" in cli("backups", "list").stdout
    r = cli("backups", "verify", "--all")
    assert r.exit_code == 1 and all(n in r.stderr for n in later)
    assert cli("backups", "prune", "--dry-run").exit_code == 0
    status = cli("status", "--json")
    assert status.exit_code == 0 and status.json()["latest_backup"]["name"] == good
    zero(ws, root_page(ws, "leads_segment") - 1, 1)
    r = cli("recover", "--json")
    assert r.exit_code == 0, r.stderr
    rec = r.json()
    assert rec["backup"]["name"] == good
    assert [s["name"] for s in rec["skipped_backups"]] == [unfinished, unparsable, a_list,
                                                           wrong_type]
    assert "malformed" in rec["skipped_backups"][3]["why"]
