"""The `atlas` CLI: every command, its JSON, and its error paths and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer.main

from atlasops.cli import app
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import write_csv

ROOT = Path(__file__).resolve().parents[1]


def all_commands() -> list[list[str]]:
    group = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append(path)

    walk(group, [])
    return out


def test_every_command_has_help_and_is_documented(cli: Any) -> None:
    readme = (ROOT / "README.md").read_text()
    commands = all_commands()
    assert len(commands) >= 11
    for path in commands:
        r = cli(*path, "--help", home=None)
        assert r.exit_code == 0, path
        assert "--home" in r.stdout, path
        assert f"atlas {' '.join(path)}" in readme, f"README does not document {path}"


def test_init_requires_owner_for_a_new_workspace(cli: Any, tmp_path: Path) -> None:
    r = cli("init", home=tmp_path / "new")
    assert r.exit_code == 2
    assert "--owner" in r.stderr
    r = cli("init", "--owner", "me@mine.example", home=tmp_path / "new")
    assert r.exit_code == 0, r.stderr
    assert Workspace.open(tmp_path / "new").config.owner.email == "me@mine.example"


def test_init_rejects_a_bad_owner_and_leaves_nothing_behind(cli: Any, tmp_path: Path) -> None:
    r = cli("init", "--owner", "nope", home=tmp_path / "bad")
    assert r.exit_code == 2
    assert "owner.email" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_init_again_with_another_owner_is_a_conflict(cli: Any, ws: Workspace) -> None:
    r = cli("init", "--owner", ws.config.owner.email.upper())
    assert r.exit_code == 0, r.stderr  # the same owner, spelled differently: fine
    r = cli("init", "--owner", "someone@else.example")
    assert r.exit_code == 7
    assert "already names the owner" in r.stderr and "edit [owner] email" in r.stderr
    assert Workspace.open(ws.home).config.owner.email == ws.config.owner.email


def test_missing_workspace_is_exit_4_with_next_step(cli: Any, tmp_path: Path) -> None:
    for cmd in (["status"], ["leads", "list"], ["events", "list"], ["ledger", "verify"]):
        r = cli(*cmd, home=tmp_path / "nowhere")
        assert r.exit_code == 4, cmd
        assert "does not exist" in r.stderr and "atlas init" in r.stderr


def test_home_from_environment(cli: Any, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_HOME", str(ws.home))
    r = cli("status", "--json", home=None)
    assert r.exit_code == 0
    assert r.json()["home"] == str(ws.home)


def test_invalid_config_is_exit_4_naming_the_key(cli: Any, ws: Workspace) -> None:
    ws.config_path.write_text("[owner]\nemail = 'x@y.example'\n[businesses.a]\nsites = 3\n")
    r = cli("status")
    assert r.exit_code == 4
    assert "businesses.a" in r.stderr


def test_status_json(cli: Any, tmp_path: Path) -> None:
    cli("leads", "import", str(write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "", ""]])))
    r = cli("status", "--json")
    assert r.exit_code == 0
    data = r.json()
    assert data["counts"]["leads"] == 1
    assert data["counts"]["businesses"] == 2
    assert data["last_event"]["kind"] == "receipt.recorded"
    assert data["journal"]["ok"] is True
    assert data["latest_backup"] is None
    r = cli("status")
    assert "journal" in r.stdout and "ok" in r.stdout


def test_leads_import_and_list(cli: Any, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "l.csv", [["a@b.example", "A", "Co", "cpa", ""],
                                          ["c@d.example", "C", "", "broker", ""]])
    r = cli("leads", "import", str(path), "--business", "wimper", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["created"] == 2
    r = cli("leads", "import", str(path))
    assert r.exit_code == 0 and "0 created" in r.stdout and "2 unchanged" in r.stdout
    r = cli("leads", "list", "--segment", "cpa", "--json")
    assert [x["email"] for x in r.json()] == ["a@b.example"]
    r = cli("leads", "list")
    assert "c@d.example" in r.stdout


def test_leads_import_bad_rows_exit_2_and_nothing_written(cli: Any, tmp_path: Path,
                                                         ws: Workspace) -> None:
    path = write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "", ""],
                                          ["broken", "B", "", "", ""]])
    r = cli("leads", "import", str(path))
    assert r.exit_code == 2
    assert "Rejected rows" in r.stderr and "broken" in r.stderr
    assert "--skip-invalid" in r.stderr
    r = cli("leads", "import", str(path), "--json")
    assert r.exit_code == 2
    assert r.json()["details"]["errors"][0]["row"] == 3
    assert cli("leads", "list", "--json").json() == []
    r = cli("leads", "import", str(path), "--skip-invalid")
    assert r.exit_code == 0
    assert "1 created" in r.stdout and "Skipped rows" in r.stderr


def test_leads_import_missing_file(cli: Any, tmp_path: Path) -> None:
    r = cli("leads", "import", str(tmp_path / "none.csv"))
    assert r.exit_code == 2
    assert "no such file" in r.stderr


def test_events_list_json_fields_and_filters(cli: Any, tmp_path: Path) -> None:
    cli("leads", "import", str(write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "", ""]])))
    events = cli("events", "list", "--json").json()
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert {"id", "ts", "kind", "actor", "subject", "payload", "hash"} <= set(e)
    leads = cli("events", "list", "--kind", "lead.created", "--json").json()
    assert [e["kind"] for e in leads] == ["lead.created"]
    assert leads[0]["actor"] == "test:cli"
    after = cli("events", "list", "--after", "2", "--limit", "1", "--json").json()
    assert [e["id"] for e in after] == [3]
    prefix = cli("events", "list", "--kind", "business.*", "--json").json()
    assert len(prefix) == 2
    r = cli("events", "list", "--limit", "2", "--json")
    assert [e["id"] for e in r.json()] == [1, 2]
    assert "there are more: continue with --after 2" in r.stderr
    r = cli("events", "list", "--after", str(len(events) - 1), "--limit", "1")
    assert "there are more" not in r.stderr
    assert "lead.created" in cli("events", "list").stdout


def test_events_tail(cli: Any, ledger: Ledger) -> None:
    for i in range(15):
        ledger.append("note.added", "t", {"i": i})
    r = cli("events", "tail", "-n", "3", "--json")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["id"] for e in lines] == [13, 14, 15]
    assert "#15" in cli("events", "tail").stdout


def test_events_tail_follow_sees_new_events(ws: Workspace) -> None:
    env = {**os.environ, "ATLAS_HOME": str(ws.home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlasops", "events", "tail", "--follow", "--json",
         "--interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        text=True)
    try:
        time.sleep(0.5)
        with Ledger.for_workspace(ws) as led:
            led.append("note.added", "follower", {"hello": 1})
        assert proc.stdout is not None
        line = proc.stdout.readline()
        event = json.loads(line)
        assert event["kind"] == "note.added" and event["actor"] == "follower"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_receipts_list_and_show(cli: Any, tmp_path: Path) -> None:
    cli("leads", "import", str(write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "", ""]])))
    rows = cli("receipts", "list", "--json").json()
    assert rows[0]["kind"] == "leads.import"
    rid = rows[0]["id"]
    r = cli("receipts", "show", str(rid), "--json")
    body = r.json()
    assert body["effects"] == {"emails_sent": 0, "public_posts": 0, "cta_changes": 0,
                               "spend_cents": 0}
    assert {"kind", "actor", "started_at", "finished_at", "outcome", "summary"} <= set(body)
    r = cli("receipts", "show", str(rid))
    assert "emails_sent=0" in r.stdout
    assert "leads.import" in cli("receipts", "list").stdout
    r = cli("receipts", "show", "999")
    assert r.exit_code == 6 and "no receipt with id 999" in r.stderr


def test_ledger_verify_ok_then_tampered(cli: Any, ledger: Ledger) -> None:
    for i in range(3):
        ledger.append("note.added", "t", {"i": i})
    r = cli("ledger", "verify", "--json")
    assert r.exit_code == 0
    assert r.json()["ok"] is True and r.json()["receipt_id"] == 4
    ledger.conn.execute("UPDATE events SET actor='mallory' WHERE id=2")
    r = cli("ledger", "verify")
    assert r.exit_code == 1
    assert "event 2" in r.stderr
    r = cli("ledger", "verify", "--json", "--no-receipt")
    assert r.exit_code == 1
    assert r.json()["first_discrepancy"].startswith("[ledger] event 2")


def test_ledger_verify_tables_finds_a_row_changed_behind_atlas(cli: Any, ledger: Ledger,
                                                               tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "cpa", ""],
                                              ["c@d.example", "C", "", "cpa", ""]])
    assert cli("leads", "import", str(csv_path)).exit_code == 0
    r = cli("ledger", "verify", "--tables", "--json")
    assert r.exit_code == 0, r.stdout
    # A row changed directly in SQLite, not through an event: the events still verify...
    ledger.conn.execute("UPDATE leads SET status='won', name='Tampered' WHERE email='c@d.example'")
    assert cli("ledger", "verify", "--no-receipt").exit_code == 0
    # ...but replaying the journal does not reproduce the table.
    r = cli("ledger", "verify", "--tables", "--no-receipt", "--json")
    assert r.exit_code == 1
    first = r.json()["first_discrepancy"]
    assert first.startswith("[tables]") and "table leads" in first and "Tampered" in first


def test_ledger_rebuild(cli: Any, ledger: Ledger, tmp_path: Path) -> None:
    ledger.append("note.added", "t", {})
    target = tmp_path / "rebuilt.db"
    r = cli("ledger", "rebuild", "--into", str(target), "--json")
    assert r.exit_code == 0 and r.json()["events"] == 1
    r = cli("ledger", "rebuild", "--into", str(target))
    assert r.exit_code == 7 and "never overwrites" in r.stderr
    r = cli("ledger", "rebuild", "--into", str(tmp_path / "no-such-dir" / "x.db"))
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_corrupt_database_is_exit_5_with_next_step_not_a_traceback(cli: Any, ws: Workspace,
                                                                   ledger: Ledger) -> None:
    ledger.append("note.added", "t", {})
    ledger.close()
    for suffix in ("-wal", "-shm"):
        Path(str(ws.db_path) + suffix).unlink(missing_ok=True)
    with open(ws.db_path, "r+b") as fh:
        fh.write(b"garbage" * 20)
    r = cli("status")
    assert r.exit_code == 5
    assert "damaged" in r.stderr and "atlas recover" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``atlas ARGS`` so that file permissions apply: as root (CI), drop the capabilities
    that override them (util-linux ``setpriv``); as another user, run it as it is."""
    cmd = [str(Path(sys.executable).parent / "atlas"), *args]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "ATLAS_HOME"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_unreadable_workspace_is_exit_4_not_a_usage_error(ws: Workspace) -> None:
    os.chmod(ws.home, 0)
    try:
        r = unprivileged("status", "--home", str(ws.home), "--json")
    finally:
        os.chmod(ws.home, 0o700)
    assert r.returncode == 4, r.stderr
    assert "not readable by this user" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(r.stdout)["error"]


@pytest.mark.parametrize("target", ["journal", "database"])
def test_unwritable_journal_or_database_is_exit_5_and_nothing_is_written(
        ws: Workspace, ledger: Ledger, tmp_path: Path, target: str) -> None:
    ledger.append("note.added", "t", {})
    ledger.close()
    before = ledger.journal.tail().last_id
    if target == "journal":
        paths = [*ws.journal_dir.glob("*.journal"), ws.journal_dir]
    else:
        paths = [ws.db_path, ws.db_dir]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        os.chmod(p, 0o500 if p.is_dir() else 0o400)
    try:
        csv_path = write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "", ""]])
        r = unprivileged("leads", "import", str(csv_path), "--home", str(ws.home))
    finally:
        for p, m in modes.items():
            os.chmod(p, m)
    assert r.returncode == 5, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    expected = ("cannot open the journal segment" if target == "journal"
                else "attempt to write a readonly database")
    assert expected in r.stderr and "next:" in r.stderr
    with Ledger.for_workspace(ws) as again:
        assert again.journal.tail().last_id == before
        assert again.count("leads") == 0


def test_demo_builds_and_resets_only_demo_workspaces(cli: Any, tmp_path: Path) -> None:
    home = tmp_path / "demo"
    r = cli("demo", "--json", home=home)
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["status"]["counts"]["leads"] == 300
    assert data["status"]["counts"]["businesses"] == 4
    assert {x["kind"] for x in data["receipts"]} == {
        "leads.import", "ledger.replay_check", "ledger.verify", "backup", "recovery",
        "lane.change", "outbox.run", "packet.review", "route.check", "repair", "job.run",
        "deploy"}
    assert all(x["outcome"] in ("ok", "recovered", "held", "fixed", "failed")
               for x in data["receipts"])
    # the route check before the repair failed, and so did the built-in job that ran it
    assert sorted(x["kind"] for x in data["receipts"] if x["outcome"] == "failed") == [
        "job.run", "route.check"]
    # scheduled work runs as built-in jobs, so the day's job count is honest
    assert sorted((x["evidence"]["job"], x["evidence"]["builtin"]) for x in data["receipts"]
                  if x["kind"] == "job.run") == [
        ("backup", True), ("revenue-radar", False), ("route-checks", True)]
    gates = data["gates"]
    assert gates["emails_sent"] == 0 and gates["approved_held"] == 40
    assert gates["outbox_summary"] == [
        "40 approved draft(s) held: lane outbound.prospect is closed"]
    assert gates["packet"]["contacts"] == 10
    ops = data["ops"]
    assert ops["check_before"]["status"] == 500
    assert ops["repair"]["outcome"] == "fixed"
    assert ops["repair"]["readback"]["readings"][-1]["status"] == 200
    assert ops["radar"]["outcome"] == "ok" and ops["radar"]["evidence"]["violation"] is False
    assert len(ops["content"]) == 2 and len(ops["deploys"]) == 2
    md = next(p for p in data["chronicle"] if p.endswith(".md"))
    text = Path(md).read_text()
    assert "Commits: **3**" in text and "Emails sent: **0**" in text
    assert "worklog unavailable: file not found" in text
    assert len(list((home / "data/maildir/owner/new").iterdir())) == 1
    rec = data["recovery"]
    assert rec["outcome"] == "recovered" and rec["loss"]["none"] is True
    assert rec["backup"]["name"].startswith("scheduled-")  # taken by the built-in backup job
    assert "malformed" in rec["symptom"]["summary"]
    r = cli("demo", "--reset", home=home)
    assert r.exit_code == 0 and "Atlas demo" in r.stdout
    real = tmp_path / "real"
    cli("init", "--owner", "o@o.example", home=real)
    r = cli("demo", "--reset", home=real)
    assert r.exit_code == 7 and "not a demo workspace" in r.stderr
    assert (real / "atlas.toml").exists()


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "atlas"
    r = subprocess.run([str(exe), "status", "--home", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    assert "Traceback" not in r.stderr


def test_data_that_looks_like_markup_prints_as_it_is(cli: Any, tmp_path: Path) -> None:
    # Rich would read "[/x]" as a closing tag and crash, or swallow "[bold]" silently.
    csv_path = write_csv(tmp_path / "m.csv", [["m@l.example", "[/x]", "[bold]", "cpa",
                                               "wimper"]])
    r = cli("leads", "import", str(csv_path))
    assert r.exit_code == 0, r.stderr
    for cmd in (["leads", "list"], ["events", "list"], ["events", "tail"]):
        r = cli(*cmd)
        assert r.exit_code == 0, (cmd, r.stderr)
        if cmd != ["events", "tail"]:
            assert "[/x]" in r.stdout and "[bold]" in r.stdout, cmd
    r = cli("leads", "import", str(csv_path), "--business", "[/nope]")
    assert r.exit_code == 2
    assert "[/nope]" in r.stderr


def test_read_commands_show_the_ledger_as_it_stands_while_atlas_may_not_write(
        cli: Any, ws: Workspace, ledger: Ledger, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from atlasops.cli import common
    from atlasops.durability.detect import record_detection

    ledger.append("note.added", "t", {"n": 1})
    ledger.close()
    # 1. a detection waits for `atlas recover`: writes stop, reads go on, and say so
    detection, _why = record_detection(ws, {"summary": "quick_check: malformed (test)"})
    assert detection is not None
    csv_path = write_csv(tmp_path / "l.csv", [["a@b.example", "A", "", "", ""]])
    assert cli("leads", "import", str(csv_path)).exit_code == 5
    for cmd in (["status", "--json"], ["events", "list", "--json"], ["receipts", "list"],
                ["leads", "list"], ["gate", "status"]):
        r = cli(*cmd)
        assert r.exit_code == 0, (cmd, r.stderr)
        assert "showing the ledger as it stands" in r.stderr and "has not been recovered" in \
            r.stderr, cmd
    status = cli("status", "--json").json()
    assert status["last_event"]["kind"] == "note.added"  # the detection is in the journal only
    assert status["journal"]["last_id"] == detection.id and not status["journal"]["ok"]
    # 2. the writer lock is held (a long recovery, say): reads do not wait a minute
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from atlasops.ledger.lock import WriterLock\n"
        "with WriterLock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"), str(ws.lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(common, "READ_LOCK_WAIT", 0.2)
        r = cli("events", "list", "--json")
        assert r.exit_code == 0 and "writer lock" in r.stderr
        assert [e["kind"] for e in r.json()][-1] == "note.added"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_init_never_takes_over_a_folder_that_holds_other_files(cli: Any, tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir(mode=0o755)
    (home / "notes.txt").write_text("someone else's")
    r = cli("init", "--owner", "o@o.example", home=home)
    assert r.exit_code == 7 and "not an Atlas workspace" in r.stderr
    assert oct(home.stat().st_mode & 0o777) == oct(0o755)  # its mode is left alone
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_reimport_keeps_the_status_work_gave_a_lead_unless_asked(cli: Any, ledger: Ledger,
                                                                 tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", [["a@b.example", "A", "", "cpa", ""]])
    assert cli("leads", "import", str(first)).exit_code == 0
    lead = cli("leads", "list", "--json").json()[0]
    ledger.append("lead.updated", "agent:outreach", {"id": lead["id"],
                                                     "changes": {"status": "contacted"}})
    again = write_csv(tmp_path / "b.csv", [["a@b.example", "A2", "", "cpa", "", "", "new"]],
                      header=["email", "name", "company", "segment", "business", "source",
                              "status"])
    r = cli("leads", "import", str(again), "--json")
    assert r.exit_code == 0 and r.json()["updated"] == 1 and r.json()["status_kept"] == [
        lead["id"]]
    row = cli("leads", "list", "--json").json()[0]
    assert (row["name"], row["status"]) == ("A2", "contacted")  # the name changes; not the work
    r = cli("leads", "import", str(again), "--update-status", "--json")
    assert r.exit_code == 0 and r.json()["updated"] == 1
    assert cli("leads", "list", "--json").json()[0]["status"] == "new"


def test_text_that_is_not_utf8_is_recorded_escaped_or_refused(cli: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    name = os.fsdecode(b"bad\xffname.csv")  # a file name a Linux file system allows
    path = write_csv(tmp_path / name, [["a@b.example", "A", "", "", ""]])
    r = cli("leads", "import", str(path), "--json")
    assert r.exit_code == 0, r.stderr
    receipt = cli("receipts", "show", str(r.json()["receipt_id"]), "--json").json()
    assert receipt["subject"] == "bad\\xffname.csv"
    monkeypatch.setenv("ATLAS_ACTOR", os.fsdecode(b"agent\xff"))
    r = cli("leads", "import", str(write_csv(tmp_path / "c.csv", [["c@b.example", "C", "",
                                                                   "", ""]])))
    assert r.exit_code == 2 and "ATLAS_ACTOR is not valid UTF-8" in r.stderr
