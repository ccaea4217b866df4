"""The chronicle, from fixture days built through Atlas's own API (never by writing
tables), real git repositories with agent and human commits, and each source
removed in turn. Faults (a damaged page, a bad receipt) are injected into the real
SQLite file after the day is built, and their ground truth is read with SQLite
itself, not with the chronicle's code."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from atlasops.auth import Principal, authenticate
from atlasops.chronicle import timeline as timeline_module
from atlasops.chronicle.check import check_post
from atlasops.chronicle.compose import compose
from atlasops.chronicle.render import render
from atlasops.demo import DemoResult, run_demo
from atlasops.durability import recover, take_backup
from atlasops.durability.detect import record_detection
from atlasops.errors import DatabaseCorrupt
from atlasops.gates import drafts, lanes, outbox
from atlasops.gates.effects import Capabilities
from atlasops.leads import import_csv
from atlasops.ledger import Ledger, NewEvent
from atlasops.ops.records import add_content, record_deploy
from atlasops.receipts import Effects, Receipt, list_receipts, record
from atlasops.workspace import Workspace
from tests.conftest import gate_workspace, owner_token, write_csv
from tests.smtp_servers import DroppingServer

TODAY = datetime.now(UTC).date()
AGENT = ("Outreach Agent", "agent@bots.example")
HUMAN = ("Matt", "matt@wimper.example")
TS = "%Y-%m-%dT%H:%M:%S.%fZ"


def git(repo: Path, *args: str, who: tuple[str, str] | None = None,
        env: dict[str, str] | None = None) -> str:
    cmd = ["git", "-C", str(repo)]
    if who:
        cmd += ["-c", f"user.name={who[0]}", "-c", f"user.email={who[1]}"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def make_repo(path: Path, commits: list[tuple[tuple[str, str], str]]) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for n, (who, msg) in enumerate(commits):
        (path / f"f{n}.txt").write_text(msg)
        git(path, "add", ".")
        git(path, "commit", "-q", "-m", msg, who=who)
    return path


def configure(ws: Workspace, text: str) -> Workspace:
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(text)
    return Workspace.open(ws.home)


def repos_toml(*repos: tuple[Path, str]) -> str:
    return ", ".join(f'{{ path = "{p}", name = "{n}" }}' for p, n in repos)


def corrupt(ws: Workspace) -> None:
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)
    with open(ws.db_path, "r+b") as fh:
        fh.seek(4096 * 3)
        fh.write(b"\0" * 4096 * 3)


@pytest.fixture
def day(ws: Workspace, tmp_path: Path) -> Workspace:
    """A day with known facts: 3 leads, 1 validated backup, an incident recovered with no
    loss, 1 content draft, 1 deploy, 0 emails; 3 commits (1 by an agent, 2 by Matt)."""
    make_repo(tmp_path / "repo", [(HUMAN, "Build the releases page"),
                                  (AGENT, "Refresh radar snapshots"),
                                  (HUMAN, "Fix partner copy")])
    (tmp_path / "STATUS.md").write_text("# Status\n\nAll good.\n")
    (tmp_path / "worklog.md").write_text(f"{TODAY.isoformat()}: shipped the packet\n"
                                         "2001-01-01: old entry\n")
    ws = configure(ws, f"""
[chronicle]
repos = [{repos_toml((tmp_path / 'repo', 'site'))}]
agent_authors = ["agent@bots.example"]
status_files = ["{tmp_path / 'STATUS.md'}"]
worklog_file = "{tmp_path / 'worklog.md'}"
""")
    rows = [[f"p{i}@firm.example", f"P{i}", "", "cpa", "wimper"] for i in range(3)]
    article = tmp_path / "a.md"
    article.write_text("An article.")
    with Ledger.for_workspace(ws) as led:
        import_csv(led, ws.config, write_csv(tmp_path / "l.csv", rows), actor="t")
        take_backup(ws, led, actor="t", label="hourly")
        add_content(led, ws.config, business="bbh", title="Retail sellers", path=article,
                    actor="agent:content")
        record_deploy(led, site="bbh", provider="cloudflare", url="https://bbh.example",
                      actor="agent:deploy")
        led.append("worklog.added", "t", {"date": TODAY.isoformat(), "text": "recovered db"})
    corrupt(ws)
    assert recover(ws, actor="t").exit_code == 0
    return ws


def numbers(c: dict[str, Any]) -> dict[str, Any]:
    return {n["key"]: n["value"] for n in c["numbers"]}


def number(c: dict[str, Any], key: str) -> dict[str, Any]:
    return next(n for n in c["numbers"] if n["key"] == key)


def source(c: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in c["sources"] if s["name"] == name)


# -- a known day, and each source removed in turn -------------------------------------

def test_a_known_day(day: Workspace) -> None:
    c = compose(day, TODAY)
    n = numbers(c)
    assert (n["commits_total"], n["commits_agent"], n["commits_human"]) == (3, 1, 2)
    assert n["prospects_added"] == 3 and n["emails_sent"] == 0 and n["social_posts"] == 0
    assert n["content_or_deploys"] == 1 and n["content_drafts"] == 1
    assert n["backups_validated"] == 1
    assert c["confidence"]["overall"] == "high" and c["confidence"]["missing"] == []
    assert c["headline"]["rule"] == "recovered incident"
    assert "hourly-" in c["headline"]["text"] and "nothing was lost" in c["headline"]["text"]
    (incident,) = [b for b in c["broke"]["incidents"] if b["kind"] == "recovery"]
    assert incident["backup"].startswith("hourly-") and "Nothing was lost" in incident["boundary"]
    assert "quick_check" in incident["verified"] and "integrity_check" in incident["verified"]
    assert c["gate"]["known"] and c["gate"]["lines"][0]["text"] == "0 emails were sent."
    built = " ".join(b["text"] for b in c["built"])
    assert "shipped the packet" in built.lower() and "recovered db" in built.lower()
    assert "old entry" not in built
    # every number names its source, and its footnote points at that source
    for x in c["numbers"]:
        assert x["how"] and x["refs"], x
        assert all(c["sources"][r - 1]["name"].split(":")[0] == x["source"] for r in x["refs"])


def test_each_missing_source_lowers_confidence_and_turns_numbers_unknown(
        day: Workspace, tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "repo")
    c = compose(day, TODAY)
    n = {x["key"]: x for x in c["numbers"]}
    assert n["commits_total"]["value"] is None
    assert n["commits_total"]["display"].startswith("unknown (source unavailable: ")
    assert "does not exist" in n["commits_total"]["display"]
    assert n["emails_sent"]["value"] == 0  # the ledger still answers
    assert c["confidence"]["sections"]["The Numbers"]["level"] == "medium"
    assert c["confidence"]["overall"] == "medium"
    (tmp_path / "worklog.md").unlink()
    c = compose(day, TODAY)
    assert c["confidence"]["sections"]["What Got Built"]["level"] == "low"
    assert any("worklog unavailable: file not found" in m for m in c["confidence"]["missing"])
    (tmp_path / "STATUS.md").unlink()
    c = compose(day, TODAY)
    assert c["confidence"]["sections"]["What's Next"]["level"] == "medium"


def test_not_a_git_repository(day: Workspace, tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "repo" / ".git")
    c = compose(day, TODAY)
    git_src = source(c, "git:site")
    assert git_src["available"] is False and "not a git repository" in git_src["reason"]
    assert numbers(c)["commits_total"] is None


def test_a_folder_inside_a_repository_is_not_that_repository(day: Workspace,
                                                             tmp_path: Path) -> None:
    (tmp_path / "repo" / "notes").mkdir()
    ws = configure(day, "")
    ws.config_path.write_text(ws.config_path.read_text().replace(
        str(tmp_path / "repo"), str(tmp_path / "repo" / "notes")))
    c = compose(Workspace.open(day.home), TODAY)
    src = source(c, "git:site")
    top = os.path.realpath(tmp_path / "repo")
    assert src["available"] is False
    assert src["reason"] == f"not a git repository (inside {top})"
    assert numbers(c)["commits_total"] is None


def test_git_reads_only_the_configured_repository_whatever_the_environment(
        day: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_repo(tmp_path / "other", [(HUMAN, f"other {i}") for i in range(5)])
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    c = compose(day, TODAY)
    assert source(c, "git:site")["available"] is True
    assert sorted(x["subject"] for x in c["commits"]) == [
        "Build the releases page", "Fix partner copy", "Refresh radar snapshots"]


def test_a_bare_repository_is_read(day: Workspace, tmp_path: Path) -> None:
    bare = tmp_path / "site.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "repo"), str(bare)],
                   check=True, capture_output=True)
    text = day.config_path.read_text()
    day.config_path.write_text(text.replace(str(tmp_path / "repo"), str(bare)))
    c = compose(Workspace.open(day.home), TODAY)
    assert source(c, "git:site")["available"] is True
    assert (numbers(c)["commits_total"], numbers(c)["commits_agent"]) == (3, 1)
    # a folder inside a bare repository is not that repository
    day.config_path.write_text(text.replace(str(tmp_path / "repo"), str(bare / "refs")))
    src = source(compose(Workspace.open(day.home), TODAY), "git:site")
    assert src["available"] is False
    assert src["reason"] == f"not a git repository (inside {os.path.realpath(bare)})"


def test_one_broken_repository_keeps_the_commits_of_the_others(day: Workspace,
                                                               tmp_path: Path) -> None:
    text = day.config_path.read_text().replace(
        repos_toml((tmp_path / "repo", "site")),
        repos_toml((tmp_path / "repo", "site"), (tmp_path / "gone", "gone")))
    day.config_path.write_text(text)
    c = compose(Workspace.open(day.home), TODAY)
    total = number(c, "commits_total")
    assert total["value"] == 3 and total["at_least"] is True
    assert total["display"] == "at least 3 (git:gone unavailable: the path does not exist)"
    assert c["confidence"]["sections"]["The Numbers"]["level"] == "medium"
    md = render(day, c, "md")
    assert "Commits: **at least 3 (git:gone unavailable" in md
    # a post can say no fewer commits than were read, but cannot prove the total
    (low,) = check_post("2 commits landed.", c)
    (same,) = check_post("3 commits landed.", c)
    assert (low.status, same.status) == ("contradicted", "unsupported")
    # ... and it can say "at least" as many as were read, in prose or as a label
    said = [(x.claimed, x.status) for x in check_post(
        "At least 3 commits landed. At least two commits landed. Commits: at least 4.", c)]
    assert said == [("at least 3", "supported"), ("at least 2", "supported"),
                    ("at least 4", "unsupported")]


def test_stashes_are_not_commits_and_a_commit_is_counted_once(day: Workspace,
                                                              tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "f0.txt").write_text("work in progress")
    git(repo, "stash", "-q", who=HUMAN)
    assert git(repo, "stash", "list").strip()  # a stash exists: WIP and index commits
    text = day.config_path.read_text().replace(
        repos_toml((repo, "site")), repos_toml((repo, "site"), (repo, "again")))
    day.config_path.write_text(text)
    c = compose(Workspace.open(day.home), TODAY)
    shas = git(repo, "rev-list", "main").split()
    assert numbers(c)["commits_total"] == len(shas) == 3
    assert sorted(x["sha"] for x in c["commits"]) == sorted(shas)


def test_a_commit_belongs_to_its_committer_date_even_when_clocks_run_backwards(
        ws: Workspace, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", [])
    noon = f"{TODAY.isoformat()}T12:00:00Z"
    skewed = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT12:00:00Z")
    (repo / "a").write_text("a")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "landed today", who=HUMAN,
        env={"GIT_COMMITTER_DATE": noon, "GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z"})
    for i in range(7):  # later commits from a machine whose clock is two days behind
        (repo / "b").write_text(str(i))
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", f"skewed {i}", who=HUMAN,
            env={"GIT_COMMITTER_DATE": skewed, "GIT_AUTHOR_DATE": skewed})
    ws = configure(ws, f"\n[chronicle]\nrepos = [{repos_toml((repo, 'r'))}]\n")
    c = compose(ws, TODAY)
    assert [x["subject"] for x in c["commits"]] == ["landed today"]


def test_a_day_before_atlas_existed_is_unknown_not_empty(
        ws: Workspace, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Atlas starts three days ago: the store's clock is set back for its first event
    # (a past day cannot otherwise be made in a test).
    started = datetime.now(UTC) - timedelta(days=3)
    with monkeypatch.context() as m:
        m.setattr("atlasops.ledger.store.utc_now", lambda: started.strftime(TS))
        with Ledger.for_workspace(ws) as led:
            led.append("note.added", "t", {"text": "the first day"})
    before = (started - timedelta(days=1)).date()
    c = compose(ws, before)
    assert source(c, "ledger")["reason"] == f"no record before {started.strftime(TS)}"
    assert number(c, "emails_sent")["value"] is None
    assert c["confidence"]["overall"] == "low"
    assert "Nothing happened" not in render(ws, c, "md")
    assert c["headline"]["text"] == ("Atlas has no record of this day: the ledger starts on "
                                     f"{started.date().isoformat()}.")
    # a day after Atlas started, with no event, is a known empty day
    empty = (started + timedelta(days=1)).date()
    assert cli("chronicle", "--date", empty.isoformat()).exit_code == 0
    text = (ws.chronicle_dir / f"{empty}.md").read_text()
    assert "Nothing happened" in text and "0 emails were sent." in text


def test_bad_data_in_the_ledger_is_a_reason_not_a_traceback(day: Workspace, cli: Any) -> None:
    conn = sqlite3.connect(day.db_path)
    with conn:
        assert conn.execute("UPDATE receipts SET finished_at = 'yesterday' WHERE kind = "
                            "'backup'").rowcount == 1
    conn.close()
    r = cli("chronicle", "--format", "md", home=day.home)
    assert r.exit_code == 0 and "Traceback" not in r.stderr
    text = (day.chronicle_dir / f"{TODAY}.md").read_text()
    assert "ledger unavailable: ValueError" in text
    assert "Confidence overall: **low**" in text
    assert "Commits: **3**" in text  # git still answers


@pytest.mark.parametrize("kind", ["deploy", "backup"])  # a receipt read whole; a routine one
def test_one_bad_receipt_is_left_out_and_named_not_the_whole_ledger(
        day: Workspace, cli: Any, kind: str) -> None:
    conn = sqlite3.connect(day.db_path)
    with conn:
        (bad,) = conn.execute("SELECT id FROM receipts WHERE kind = ?", (kind,)).fetchone()
        conn.execute("UPDATE receipts SET body = '{not json' WHERE id = ?", (bad,))
        deploys = conn.execute("SELECT count(*) FROM receipts WHERE kind = 'deploy' AND "
                               "json_valid(body)").fetchone()[0]
    conn.close()
    r = cli("chronicle", "--format", "md", home=day.home)
    assert r.exit_code == 0 and "Traceback" not in r.stderr
    c = compose(day, TODAY)
    ledger = source(c, "ledger")
    assert ledger["available"] is True and ledger["degraded"] is True
    assert f"receipt #{bad}" in ledger["reason"] and "left out" in ledger["reason"]
    assert c["confidence"]["overall"] == "low"
    n = numbers(c)
    assert n["emails_sent"] == 0 and n["prospects_added"] == 3
    assert n["content_or_deploys"] == deploys  # the bad deploy is not counted


def test_a_worklog_note_without_text_is_skipped(day: Workspace) -> None:
    with Ledger.for_workspace(day) as led:
        led.append("worklog.added", "t", {"date": TODAY.isoformat()})
    c = compose(day, TODAY)
    assert source(c, "ledger")["available"] is True


def test_corrupted_ledger_still_reports_other_sources_at_low_confidence(
        day: Workspace) -> None:
    for s in ("-wal", "-shm"):
        Path(str(day.db_path) + s).unlink(missing_ok=True)
    day.db_path.write_bytes(b"garbage" * 1000)
    c = compose(day, TODAY)
    assert c["confidence"]["overall"] == "low"
    ledger = source(c, "ledger")
    assert ledger["available"] is False and ledger["reason"]
    n = {x["key"]: x for x in c["numbers"]}
    assert n["emails_sent"]["value"] is None and "unknown" in n["emails_sent"]["display"]
    assert n["commits_total"]["value"] == 3
    assert "ledger could not be read" in c["headline"]["text"]
    md = render(day, c, "md")
    broke = md.split("## What Broke (And How It Was Fixed)")[1].split("## The Gate")[0]
    assert "Unknown: the ledger could not be read (" in broke
    assert "Nothing broke" not in md


def test_a_partly_damaged_ledger_is_not_reported_healthy(day: Workspace) -> None:
    with Ledger.for_workspace(day) as led:
        for i in range(0, 3000, 1000):
            rows = [[f"x{j}@firm.example", f"X{j}", "", "cpa", "wimper"]
                    for j in range(i, i + 1000)]
            import_csv(led, day.config, write_csv(day.home / f"x{i}.csv", rows), actor="t")
    conn = sqlite3.connect(day.db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'leads'").fetchone()[0]
    conn.close()
    with open(day.db_path, "r+b") as fh:  # overwrite the root page of the leads table
        fh.seek((root - 1) * page)
        fh.write(b"\xff" * page)
    check = sqlite3.connect(f"file:{day.db_path}?mode=ro", uri=True)
    try:
        verdict = [r[0] for r in check.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        verdict = [str(exc)]
    check.close()
    assert verdict != ["ok"]  # the ground truth, from SQLite itself
    c = compose(day, TODAY)
    ledger = source(c, "ledger")
    assert ledger["available"] is True and ledger["degraded"] is True
    assert "quick_check fails for leads" in ledger["reason"]
    assert c["confidence"]["sections"]["The Numbers"]["level"] == "low"
    assert c["headline"]["rule"] == "open incident"
    assert any(i["kind"] == "detection" for i in c["broke"]["incidents"])


def test_a_detection_nobody_recovered_from_lowers_confidence(day: Workspace) -> None:
    event, why = record_detection(day, {"summary": "quick_check: database disk image is "
                                                    "malformed"})
    assert event is not None, why
    c = compose(day, TODAY)  # the detection is in the journal only
    reason = source(c, "ledger")["reason"]
    assert f"the journal holds events {event.id}..{event.id}" in reason
    assert f"(event {event.id}, in the journal) and has not been recovered" in reason
    assert c["confidence"]["overall"] == "low" and c["headline"]["rule"] == "open incident"
    with pytest.raises(DatabaseCorrupt, match="has not been recovered since"):
        Ledger.for_workspace(day).open()  # a database found damaged is not written to
    assert "in the journal) and has not been recovered" in source(
        compose(day, TODAY), "ledger")["reason"]
    assert recover(day, actor="t").exit_code == 0  # recovery brings the detection in
    c = compose(day, TODAY)
    assert source(c, "ledger")["degraded"] is False and c["confidence"]["overall"] == "high"


def test_a_detection_belongs_to_its_day_and_closes_with_the_next_recovery(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atlas starts three days ago; corruption is detected two days ago and recovered
    today. Only the day of the detection headlines it; the day after notes it (it was
    still open at that day's end); the day before never mentions it."""
    now = datetime.now(UTC)
    started, detected = now - timedelta(days=3), now - timedelta(days=2)
    with monkeypatch.context() as m:  # a past day cannot otherwise be made in a test
        m.setattr("atlasops.ledger.store.utc_now", lambda: started.strftime(TS))
        with Ledger.for_workspace(ws) as led:
            led.append("note.added", "t", {"text": "the first day"})
    with monkeypatch.context() as m:
        m.setattr("atlasops.durability.detect.utc_now", lambda: detected.strftime(TS))
        event, why = record_detection(ws, {"summary": "quick_check: malformed"})
    assert event is not None, why
    first, middle, after = started.date(), detected.date(), (now - timedelta(days=1)).date()

    def day(d: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        c = compose(ws, d)
        return c, source(c, "ledger")

    for d in (first, after, TODAY):  # the detection waits in the journal
        c, ledger = day(d)
        assert not [i for i in c["broke"]["incidents"] if i["kind"] == "detection"], d
        assert c["headline"]["rule"] != "open incident", d
    c, ledger = day(first)
    assert ledger["degraded"] is False and "corruption" not in ledger["reason"]
    c, ledger = day(middle)
    (incident,) = c["broke"]["incidents"]
    assert c["headline"]["rule"] == "open incident" and incident["outcome"] == "open"
    assert ledger["degraded"] is True
    assert f"(event {event.id}, in the journal) and has not been recovered" in ledger["reason"]
    c, ledger = day(after)
    assert ledger["degraded"] is True and "was still open at the end of this day" in ledger[
        "reason"]

    # `atlas recover` on a healthy database with a detection waiting: the file passes every
    # check, so it is kept; the detection is brought in and closed by a not_broken receipt
    result = recover(ws, actor="t")
    assert (result.outcome, result.exit_code) == ("not_broken", 0) and result.receipt_id
    c, ledger = day(middle)
    (incident,) = c["broke"]["incidents"]
    assert incident["outcome"] == "recovered_later" and c["headline"]["rule"] == "open incident"
    assert f"receipt #{result.receipt_id}" in c["headline"]["text"]
    assert "was not recovered that day" in c["headline"]["text"]
    assert f"(event {event.id}, in the ledger)" in ledger["reason"]
    c, ledger = day(after)
    assert c["broke"]["incidents"] == [] and c["headline"]["rule"] != "open incident"
    assert "still open at the end of this day" in ledger["reason"]
    assert f"receipt #{result.receipt_id}" in ledger["reason"]
    c, ledger = day(TODAY)
    (closed,) = c["broke"]["incidents"]
    assert (closed["kind"], closed["outcome"], closed["rule"]) == ("recovery", "not_broken",
                                                                   "false alarm")
    assert f"event {event.id}" in closed["headline"] and "kept in place" in closed[
        "recovery_point"]
    assert ledger["degraded"] is False and c["confidence"]["overall"] != "low"
    c, ledger = day(first)
    assert ledger["degraded"] is False and c["broke"]["incidents"] == []


WRITER = """
import sys
from pathlib import Path
from atlasops.ledger import Ledger, NewEvent
from atlasops.workspace import Workspace
home, stop = Path(sys.argv[1]), Path(sys.argv[2])
with Ledger.for_workspace(Workspace.open(home)) as led:
    while not stop.exists():
        led.append_many([NewEvent("note.added", "writer", {"i": i}) for i in range(50)])
"""


def ledger_max(ws: Workspace) -> int:
    conn = sqlite3.connect(ws.db_path)
    try:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_a_concurrent_writer_does_not_make_the_ledger_look_damaged(
        ws: Workspace, tmp_path: Path) -> None:
    """Every write reaches the journal before its commit: a chronicle read while another
    process writes must not report those events as a gap."""
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {"text": "before the writer"})
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ws.home), str(stop)])
    try:
        start = ledger_max(ws)
        while ledger_max(ws) < start + 500:  # the writer is under way
            assert writer.poll() is None, "the writer process died"
        before = ledger_max(ws)
        reports = [source(compose(ws, TODAY), "ledger") for _ in range(5)]
        assert ledger_max(ws) > before  # it kept writing while the chronicles were read
    finally:
        stop.touch()
        assert writer.wait(timeout=60) == 0
    assert [(r["available"], r["degraded"], r["reason"]) for r in reports] == [
        (True, False, "")] * 5


def test_a_stale_status_file_lowers_confidence(day: Workspace, tmp_path: Path) -> None:
    old = datetime.now(UTC).timestamp() - 30 * 86400
    os.utime(tmp_path / "STATUS.md", (old, old))
    c = compose(day, TODAY)
    section = c["confidence"]["sections"]["What's Next"]
    assert section["level"] == "medium" and "stale" in section["missing"][0]


def test_non_utf8_status_and_worklog_files_are_noted(day: Workspace, tmp_path: Path) -> None:
    (tmp_path / "STATUS.md").write_bytes("Statut: réparé\n".encode("latin-1"))
    (tmp_path / "worklog.md").write_bytes(f"{TODAY}: déployé\n".encode("latin-1"))
    c = compose(day, TODAY)
    (status,) = c["status_files"]
    assert "not UTF-8" in status["notes"][0] and "r\ufffdpar" in status["excerpt"]
    assert "not UTF-8" in source(c, "worklog")["reason"]
    assert any("d\ufffdploy" in b["text"] for b in c["built"])


def test_dates_are_strict(cli: Any, ws: Workspace) -> None:
    assert cli("status").exit_code == 0
    for bad in ("27/06/2026", "2026W481", "20261130", "2026-1-5", "tomorrow"):
        r = cli("chronicle", "--date", bad)
        assert r.exit_code == 2 and "YYYY-MM-DD" in r.stderr, bad
    r = cli("chronicle", "--date", (TODAY + timedelta(days=1)).isoformat())
    assert r.exit_code == 2 and "future" in r.stderr
    for good in ("today", "yesterday"):
        assert cli("chronicle", "--date", good, "--format", "json").exit_code == 0
    assert (ws.chronicle_dir / f"{TODAY - timedelta(days=1)}.json").exists()


def test_formats_out_dir_and_custom_templates(cli: Any, day: Workspace,
                                              tmp_path: Path) -> None:
    r = cli("chronicle", "--out", str(tmp_path / "out"), "--format", "json", home=day.home)
    assert r.exit_code == 0
    data = json.loads((tmp_path / "out" / f"{TODAY}.json").read_text())
    assert data["date"] == TODAY.isoformat()
    assert cli("chronicle", home=day.home).exit_code == 0
    html_text = (day.chronicle_dir / f"{TODAY}.html").read_text()
    assert "<h2>The Numbers</h2>" in html_text
    md = (day.chronicle_dir / f"{TODAY}.md").read_text()
    for heading in ("## What Got Built", "## What Broke (And How It Was Fixed)",
                    "## The Gate", "## Timeline", "## The Numbers", "## What's Next",
                    "## Sources"):
        assert heading in md
    assert "Confidence: high" in md
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "chronicle.md.j2").write_text("CUSTOM {{ c.date }} {{ c.headline.text }}\n")
    text = day.config_path.read_text().replace(
        "[chronicle]\n", f'[chronicle]\ntemplates = "{templates}"\n')
    day.config_path.write_text(text)
    assert cli("chronicle", "--format", "md", home=day.home).exit_code == 0
    assert (day.chronicle_dir / f"{TODAY}.md").read_text().startswith(f"CUSTOM {TODAY}")


def test_worklog_add(cli: Any, ws: Workspace) -> None:
    assert cli("worklog", "add", "Shipped the packet").exit_code == 0
    assert cli("worklog", "add", "  ").exit_code == 2
    c = compose(Workspace.open(ws.home), TODAY)
    assert any("Shipped the packet" in b["text"] for b in c["built"])


def test_a_worklog_note_names_its_event_not_a_receipt(cli: Any, ws: Workspace) -> None:
    assert cli("worklog", "add", "Called 12 partner firms").exit_code == 0
    with Ledger.for_workspace(ws) as led:
        (note,) = led.events(kind="worklog.added")
    c = compose(ws, TODAY)
    (line,) = [b for b in c["built"] if "12 partner firms" in b["text"]]
    assert (line["events"], line["receipts"]) == ([note.id], [])
    md, page = render(ws, c, "md"), render(ws, c, "html")
    assert f"Called 12 partner firms. [1] (event #{note.id})" in md
    assert f"(receipt #{note.id})" not in md and f"(receipt #{note.id})" not in page
    assert f"(event #{note.id})" in page
    # the id it names is the note's: `atlas events list` shows it
    r = cli("events", "list", "--after", str(note.id - 1), "--limit", "1", "--json")
    assert r.json()[0]["payload"]["text"] == "Called 12 partner firms"
    assert cli("receipts", "show", str(note.id)).exit_code != 0
    # a post may repeat the note's count; the check says where it was stated
    (claim,) = check_post("We called 12 partner firms.", c)
    assert (claim.status, claim.why) == ("supported", f"event #{note.id} (a work-log note) "
                                                      "states it")


def test_html_is_escaped(cli: Any, day: Workspace) -> None:
    assert cli("worklog", "add", "<script>alert(1)</script>", home=day.home).exit_code == 0
    assert cli("chronicle", "--format", "html", home=day.home).exit_code == 0
    text = (day.chronicle_dir / f"{TODAY}.html").read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text


# -- big days --------------------------------------------------------------------------

def test_a_big_day_is_summarised_not_listed(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        for start in range(0, 20_000, 5000):
            led.append_many([NewEvent("note.added", "t", {"i": i})
                             for i in range(start, start + 5000)])
    c = compose(ws, TODAY)
    assert numbers(c)["events"] == 20_000
    assert len(c["timeline"]) == 0  # notes are counted, not listed one by one


def test_routine_receipts_are_one_timeline_row_per_kind(ws: Workspace) -> None:
    now = datetime.now(UTC).strftime(TS)
    failing = {17, 400, 999}  # which of the 1,000 route checks fail
    with Ledger.for_workspace(ws) as led:
        events = led.append_many([Receipt(
            kind="route.check", subject=f"route:r{i % 7}", actor="t", started_at=now,
            finished_at=now, outcome="failed" if i in failing else "ok",
            summary=f"route r{i % 7} checked").as_event() for i in range(1000)])
        lane = record(led, Receipt(kind="lane.change", subject="lane:outbound.prospect",
                                   actor="owner:o", started_at=now, finished_at=now,
                                   outcome="ok", summary="Lane outbound.prospect is now "
                                   "closed (was open): pause"))
    first_failure = events[min(failing)]
    c = compose(ws, TODAY)
    (row,) = [t for t in c["timeline"] if t["count"] > 1]
    assert row["count"] == 1000 and row["outcomes"] == {"ok": 997, "failed": 3}
    assert row["first_failure"] == first_failure.id
    assert (f"1000 route checks: 997 passed and 3 failed (first failure at "
            f"{first_failure.ts[11:16]}, receipt #{first_failure.id})") in row["what"]
    assert [t["receipts"] for t in c["timeline"] if t["count"] == 1] == [[lane.id]]
    md = render(ws, c, "md")
    assert len(md) < 20_000 and md.count("route r") == 0
    n = numbers(c)
    assert (n["checks_run"], n["checks_failed"]) == (1000, 3)


def test_few_receipts_of_a_kind_stay_single_rows(ws: Workspace) -> None:
    now = datetime.now(UTC).strftime(TS)
    with Ledger.for_workspace(ws) as led:
        led.append_many([Receipt(kind="route.check", subject="route:a", actor="t",
                                 started_at=now, finished_at=now, outcome="ok",
                                 summary=f"check {i}").as_event()
                         for i in range(timeline_module.SINGLE_MAX)])
    c = compose(ws, TODAY)
    assert [t["what"] for t in c["timeline"]] == [f"check {i}" for i in
                                                   range(timeline_module.SINGLE_MAX)]


# -- jobs ------------------------------------------------------------------------------

def test_jobs_run_split_into_agent_and_built_in(ws: Workspace) -> None:
    now = datetime.now(UTC).strftime(TS)

    def job(name: str, builtin: bool | None) -> NewEvent:
        evidence: dict[str, Any] = {"job": name, "run_id": f"{name}-1"}
        if builtin is not None:
            evidence["builtin"] = builtin
        return Receipt(kind="job.run", subject=f"job:{name}", actor="t", started_at=now,
                       finished_at=now, outcome="ok", summary=f"Job {name} finished.",
                       evidence=evidence).as_event()

    with Ledger.for_workspace(ws) as led:
        # two built-in (one says so, one recorded before receipts said so), one agent job
        led.append_many([job("backup", True), job("route-checks", None),
                         job("revenue-radar", False)])
    c = compose(ws, TODAY)
    n = numbers(c)
    assert (n["jobs_run"], n["jobs_agent"], n["jobs_builtin"]) == (3, 1, 2)
    assert "- Jobs run: **3** (1 agent, 2 built-in) [1]" in render(ws, c, "md")
    claims = check_post("Agent jobs run: 1. Jobs run: 3 (1 agent, 2 built-in). "
                        "We ran 3 agent jobs.", c)
    assert [(x.fact, x.status) for x in claims] == [
        ("jobs_agent", "supported"), ("jobs_run", "supported"), ("jobs_agent", "supported"),
        ("jobs_builtin", "supported"), ("jobs_agent", "contradicted")]


def test_side_effect_counters_are_summed_from_receipts(ws: Workspace) -> None:
    now = datetime.now(UTC).strftime(TS)

    def receipt(kind: str, **effects: int) -> NewEvent:
        return Receipt(kind=kind, actor="t", started_at=now, finished_at=now, outcome="ok",
                       summary=f"{kind} done.", effects=Effects(**effects)).as_event()

    with Ledger.for_workspace(ws) as led:
        led.append_many([receipt("route.check"), receipt("social.post", public_posts=2),
                         receipt("cta.change", cta_changes=1),
                         # a job run adds up the receipts it caused: not counted twice
                         receipt("job.run", public_posts=2, cta_changes=1)])
    n = numbers(compose(ws, TODAY))
    assert (n["social_posts"], n["cta_changes"]) == (2, 1)


# -- recoveries and their claims ---------------------------------------------------

def test_a_recovery_from_the_journal_alone(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        for start in range(0, 10_000, 2000):
            led.append_many([NewEvent("note.added", "t", {"i": j})
                             for j in range(start, start + 2000)])
    corrupt(ws)
    result = recover(ws, actor="t")
    assert result.exit_code == 0 and result.receipt["backup"] is None
    c = compose(ws, TODAY)
    (incident,) = [i for i in c["broke"]["incidents"] if i["kind"] == "recovery"]
    assert incident["backup"] is None and "journal alone" in incident["recovery_point"]
    assert "the journal alone" in c["headline"]["text"]
    ok = check_post("The ledger was recovered by replaying the journal; nothing was lost.", c)
    assert [x.status for x in ok] == ["supported"]
    vague = check_post("The ledger was recovered. Nothing was lost.", c)
    assert [x.status for x in vague] == ["unsupported"]
    assert "its source (the journal" in vague[0].why
    unbounded = check_post("The ledger was recovered from the journal.", c)
    assert "the loss boundary" in unbounded[0].why


def test_the_headline_of_a_failed_recovery_says_it_failed(ws: Workspace) -> None:
    now = datetime.now(UTC).strftime(TS)
    with Ledger.for_workspace(ws) as led:
        record(led, Receipt(kind="recovery", subject="ledger", actor="t", started_at=now,
                            finished_at=now, outcome="failed", summary="Recovery could not "
                            "verify the rebuilt ledger; nothing was changed."))
    c = compose(ws, TODAY)
    assert c["headline"]["rule"] == "failed recovery"
    assert "failed" in c["headline"]["text"] and "recovered" not in c["headline"]["text"]


def test_the_headline_of_a_lossy_recovery_states_its_boundary(ws: Workspace) -> None:
    """The journal's directory is lost after a backup: recovery keeps every event the
    file holds but cannot prove where history ends. The headline says where, not "the
    loss is stated in What Broke"."""
    with Ledger.for_workspace(ws) as led:
        led.append_many([NewEvent("note.added", "t", {"i": i}) for i in range(300)])
        take_backup(ws, led, actor="t", label="hourly")
        led.append_many([NewEvent("note.added", "t", {"i": i}) for i in range(100)])
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)
    conn = sqlite3.connect(ws.db_path)
    last = conn.execute("SELECT max(id) FROM events").fetchone()[0]  # ground truth
    conn.close()
    shutil.rmtree(ws.journal_dir)
    result = recover(ws, actor="t")
    assert result.receipt["outcome"] == "recovered_with_loss"
    c = compose(ws, TODAY)
    headline = c["headline"]
    assert headline["rule"] == "incident with loss"
    assert headline["text"].endswith(f", but nothing after event {last} can be known.")
    assert "What Broke" not in headline["text"]
    md = render(ws, c, "md")
    bad = [(x.text, x.status, x.why) for x in check_post(md, c) if x.status != "supported"]
    assert not bad


# -- the demo day: readable, sourced, and checkable ----------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoResult, dict[str, Any]]]:
    result = run_demo(tmp_path_factory.mktemp("demo") / "atlas-demo", actor="test:demo")
    yield result, compose(result.workspace, TODAY)


def test_the_demo_day_reads_like_an_engineering_log(
        demo: tuple[DemoResult, dict[str, Any]]) -> None:
    result, c = demo
    ws = result.workspace
    md = render(ws, c, "md")
    headline = c["headline"]["text"]
    assert headline.count(":") <= 1 and headline.endswith(".") and len(headline) < 200
    assert result.recovery is not None
    assert result.recovery.receipt["backup"]["name"] in headline
    # no raw receipt kinds, and the database path only in the Sources list
    assert not re.search(r"— [a-z]+\.[a-z_]+:", md)
    assert md.count(str(ws.db_path)) == 1
    # the recovery tells its five parts, its steps a short numbered list
    broke = md.split("## What Broke")[1].split("## The Gate")[0]
    for part in ("**Symptom.**", "**Recovery point.**", "**What was done.**",
                 "**Verified by.**", "**Loss boundary.**"):
        assert part in broke
    steps = re.findall(r"^\d+\. (.*)$", broke, re.M)
    assert 2 <= len(steps) <= 12 and all(len(s) < 200 for s in steps)
    assert not any("hard-linked" in s or "in threads" in s for s in steps)
    # the gate and what's next, as sentences with footnotes
    gates = result.gates
    assert gates is not None and gates.emails_sent == 0
    assert "0 emails were sent. [1]" in md
    assert (f"{gates.approved_held} approved drafts are held because lane "
            "outbound.prospect is closed. [1]") in md
    assert f"{gates.touches_due} touches are due. [1]" in md
    assert f"{gates.drafts - gates.approved_held} drafts are send-ready" in md
    nxt = md.split("## What's Next")[1].split("### Status files")[0]
    assert all(line.endswith((".", "]", ")")) for line in nxt.splitlines()
               if line and not line.startswith("*"))
    assert (f"{gates.drafts - gates.approved_held} drafts are send-ready in lane "
            "outbound.prospect: they can be reviewed, but the gate does not allow approval "
            "while the lane is closed.") in nxt
    # plain words, not receipt shorthand
    assert "GET /wimper/releases answered 500 instead of 200 (the page said: “" in broke
    assert "but it did not" not in broke
    who = result.workspace.config.owner.email
    assert f"the owner ({who}, token demo-owner) closed lane" in md
    timeline = md.split("## Timeline")[1].split("## The Numbers")[0]
    for raw in ("(s)", "it does NOT", "exited 1", "spend cents", "(was closed)"):
        assert raw not in timeline, raw
    # incidents are told in the order the headline ranks them
    assert [i["rule"] for i in c["broke"]["incidents"]] == ["recovered incident", "repair"]
    assert c["broke"]["incidents"][0]["headline"] == headline


def test_the_chronicle_passes_its_own_check(
        demo: tuple[DemoResult, dict[str, Any]], ws: Workspace, tmp_path: Path) -> None:
    """Atlas's own chronicle, as written, is a post whose every claim the day's facts
    support: the demo day, a fresh workspace before its ledger exists (every ledger
    number unknown), its first, almost empty, day, and that day again with one of its
    two repositories unreadable (every commit count a lower bound)."""
    result, c = demo
    before = compose(ws, TODAY)
    assert source(before, "ledger")["available"] is False
    with Ledger.for_workspace(ws) as led:
        led.append("note.added", "t", {"text": "the first note"})
    fresh = compose(ws, TODAY)
    assert fresh["headline"]["rule"] == "quiet day"
    make_repo(tmp_path / "repo", [(HUMAN, "one"), (AGENT, "two"), (HUMAN, "three")])
    partly = configure(ws, f"""
[chronicle]
repos = [{repos_toml((tmp_path / 'repo', 'site'), (tmp_path / 'gone', 'gone'))}]
agent_authors = ["{AGENT[1]}"]
""")
    unsure = compose(partly, TODAY)
    assert number(unsure, "commits_total")["at_least"] is True
    assert unsure["headline"]["text"] == "At least 3 commits landed."
    assert unsure["lede"][0]["text"].startswith("At least 3 commits landed (git:gone ")
    assert unsure["lede"][0]["text"].endswith(": at least 1 by agents and at least 2 by "
                                              "people.")
    assert "(at least 1 by agents, at least 2 by people)" in render(partly, unsure, "md")
    for workspace, chronicle in ((result.workspace, c), (ws, before), (ws, fresh),
                                 (partly, unsure)):
        claims = check_post(render(workspace, chronicle, "md"), chronicle)
        bad = [(x.text, x.fact, x.status, x.why) for x in claims if x.status != "supported"]
        assert not bad
    assert len(check_post(render(ws, fresh, "md"), fresh)) > 10  # "0 emails were sent", ...
    claimed = {(x.fact, x.claimed) for x in check_post(render(partly, unsure, "md"), unsure)}
    assert {("commits_total", "at least 3"), ("commits_agent", "at least 1"),
            ("commits_human", "at least 2")} <= claimed
    kinds = {x.kind for x in check_post(render(result.workspace, c, "md"), c)}
    assert {"number", "emails", "fixed", "restored"} <= kinds


def test_an_ambiguous_send_is_a_lower_bound_the_chronicle_and_its_check_agree_on(
        ws: Workspace) -> None:
    """A real SMTP server that takes the message and drops the connection: the send is
    ambiguous, so the day's count is "at least", said so everywhere, and checkable."""
    server = DroppingServer().start()
    try:
        gws = gate_workspace(ws, server.port)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            lanes.record_posture(led, gws.config, owner, "outbound.prospect",
                                 {"spf": "pass", "dkim": "pass", "dmarc": "pass"})
            lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=True,
                           reason="test window")
            d = drafts.create(led, gws.config, Principal("agent", "outreach"),
                              to="cpa@firm.example", subject="Partner intro",
                              body="Hello.\n\nReply STOP to opt out.")
            drafts.approve(led, gws.config, owner, [d["id"]])
            report = outbox.run_once(gws, led, actor="agent:outbox", caps=Capabilities(),
                                     env={})
        assert report.ambiguous == [d["id"]] and len(server.messages) == 1
    finally:
        server.stop()
    c = compose(gws, TODAY)
    sent = number(c, "emails_sent")
    assert (sent["value"], sent["at_least"]) == (0, True)
    md = render(gws, c, "md")
    assert "At least 0 emails were sent (1 more may have been sent: ambiguous" in md
    claims = check_post(md, c)
    assert not [(x.text, x.status, x.why) for x in claims if x.status != "supported"]
    assert ("emails_sent", "at least 0") in {(x.fact, x.claimed) for x in claims}
    assert c["headline"]["text"] == ("At least 0 emails were sent, and 1 more send may have "
                                     "gone out: it is ambiguous until someone resolves it.")
    assert "1 ambiguous send needs a human (`atlas outbox resolve`)." in md
    # a post that says none went out cannot be proven; one that says one did, neither
    for post in ("No emails were sent.", "1 email was sent."):
        assert [x.status for x in check_post(post, c)] == ["unsupported"], post


def test_every_number_of_the_gate_and_whats_next_has_a_source(
        demo: tuple[DemoResult, dict[str, Any]]) -> None:
    result, c = demo
    gates = result.gates
    assert gates is not None
    held = [n for n in c["gate"]["numbers"] if n["key"] == "drafts_held"]
    assert [n["value"] for n in held] == [gates.approved_held]
    waiting = {n["key"]: n for n in c["next"]["numbers"]}
    assert waiting["touches_due"]["value"] == gates.touches_due
    assert waiting["approved_waiting"]["value"] == gates.approved_held
    for n in [*c["gate"]["numbers"], *c["next"]["numbers"]]:
        assert n["source"] == "ledger" and n["how"] and n["refs"] == [1], n
    for line in [*c["gate"]["lines"], *c["next"]["lines"]]:
        assert line["refs"] or line["receipts"], line


def test_checks_run_count_route_checks_ledger_checks_and_readbacks(
        demo: tuple[DemoResult, dict[str, Any]]) -> None:
    result, c = demo
    ops = result.ops
    assert ops is not None
    # the demo: one failing route check, a replay check, a ledger verify, and the
    # readback of the repair
    assert ops.check_before["status"] == 500
    n = numbers(c)
    assert (n["checks_run"], n["checks_failed"]) == (4, 1)
    assert (n["repairs"], n["repairs_fixed"]) == (1, 1)


def test_html_carries_the_same_content_as_markdown(
        demo: tuple[DemoResult, dict[str, Any]]) -> None:
    result, c = demo
    raw = render(result.workspace, c, "html")
    page = html.unescape(re.sub(r"<[^>]+>", "", raw))
    # Markdown's `code` is HTML's <code>, not literal backticks
    assert "`" not in raw and "<code>atlas recover</code>" in raw
    texts = [c["headline"]["text"], *(x["text"] for x in c["lede"]),
             *(x["text"] for x in c["built"]), *(x["text"] for x in c["gate"]["lines"]),
             *(x["text"] for x in c["next"]["lines"]), *(t["what"] for t in c["timeline"])]
    for i in c["broke"]["incidents"]:
        texts += [i["symptom"], i["verified"], i["boundary"], *i["steps"]]
        texts += [i["recovery_point"]] if i["recovery_point"] else []
    texts += [s["path"] for s in c["status_files"]]
    texts += [f"[{s['ref']}] {s['name']}" for s in c["sources"]]
    texts += [f"{n['label']}: {n['display']}" for n in c["numbers"] if not n["part_of"]]
    missing = [t for t in texts if t.replace("`", "") not in page]
    assert not missing


def seedlike_post(result: DemoResult) -> str:
    """An accurate post about the demo day in the seed's style; every fact in it is
    known from the demo's own definition (its CSV, its scenes) or its receipts, not
    from the chronicle."""
    assert result.recovery is not None and result.gates is not None
    backup = result.recovery.receipt["backup"]["name"]
    gates = result.gates
    with Ledger.for_workspace(result.workspace) as led:
        backups = [r for r in list_receipts(led, kind="backup", limit=1000)
                   if r["outcome"] == "ok"]
        failing = [r for k in ("route.check", "ledger.verify", "ledger.replay_check")
                   for r in list_receipts(led, kind=k, limit=1000) if r["outcome"] != "ok"]
    return f"""# Week 48: The Ledger Broke, And The Recovery Point Was Named

Three commits landed today. Two came from Matt, and one from the agent.

## What Got Built

- The lead database was restored from backup {backup}. Nothing was lost: the journal
  replayed every event after the backup, and quick_check and integrity_check passed.
- The WIMPER releases page came back online after the runbook rebuilt and restarted it.
- The partner packet ({gates.packet['contacts']} contacts) was emailed to Matt for review.
  It did not send prospect emails.
- Two deploys landed, for businessbrokerhawaii and selllifeinsurancepolicyflorida.

## What Broke (And How It Was Fixed)

The live lead database was malformed. Atlas restored it from {backup}, the latest
validated backup, and verified the repaired database; nothing was lost.

The /wimper/releases route was failing with a 500. It was fixed: an authenticated
readback returned HTTP 200 twice in a row.

Outbound stayed closed. It had {gates.touches_due} active touches due and
{gates.approved_held} approved drafts held behind the gate, and it still sent 0 emails.
We will send the partner emails once Matt approves the packet. The right report is not
“database fixed.”

## The Numbers

- Commits: 3 total (1 agent, 2 Matt)
- Agent jobs run: 1
- Prospects added: {result.imported.created}
- Emails sent: 0
- Social posts: 0
- Content published or deployed receipts: 2
- Backups validated: {len(backups)}
- Failing checks: {len(failing)}
"""


def test_an_accurate_seedlike_post_passes_check(
        demo: tuple[DemoResult, dict[str, Any]], tmp_path: Path, cli: Any) -> None:
    result, c = demo
    claims = check_post(seedlike_post(result), c)
    bad = [(x.text, x.fact, x.status, x.why) for x in claims if x.status != "supported"]
    assert not bad
    facts = {x.fact for x in claims}
    assert {"commits_total", "commits_agent", "commits_by:matt", "jobs_agent",
            "prospects_added", "emails_sent", "touches_due", "drafts_held",
            "content_or_deploys", "backups_validated", "checks_failed", "packet_contacts",
            "recovery", "repair"} <= facts
    post = tmp_path / "post.md"
    post.write_text(seedlike_post(result))
    r = cli("chronicle", "check", str(post), "--json", home=result.workspace.home)
    assert r.exit_code == 0 and r.json()["problems"] == 0


# -- chronicle check: one sentence at a time ------------------------------------------

def chronicle_of(values: dict[str, int], *, incidents: list[dict[str, Any]] | None = None,
                 commits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A chronicle with these facts (the shape `compose` returns), to test reading."""
    def n(key: str, value: int) -> dict[str, Any]:
        return {"key": key, "label": key.replace("_", " ").capitalize(), "value": value,
                "display": str(value), "source": "ledger", "how": "test", "reason": None,
                "at_least": False}
    return {"numbers": [n(k, v) for k, v in values.items()], "gate": {"numbers": []},
            "next": {"numbers": []}, "commits": commits or [], "owner": {"name": "Matt"},
            "broke": {"known": True, "incidents": incidents or []}}


REPAIR = {"kind": "repair", "title": "Route wimper-releases was failing and was fixed",
          "outcome": "fixed", "receipt": 480, "route": "wimper-releases",
          "symptom": "GET /wimper/releases returns 200, but it did not: status 500.",
          "boundary": "Users can open the WIMPER releases page.", "backup": None}


def recovery(outcome: str, backup: str | None = "hourly-20260624T225204Z") -> dict[str, Any]:
    boundary = ("Nothing was lost." if outcome == "recovered"
                else "Restored up to event 900; events 800..800 could not be recovered.")
    return {"kind": "recovery", "title": "The ledger database was damaged",
            "outcome": outcome, "receipt": 7, "backup": backup, "route": None,
            "symptom": "malformed", "boundary": boundary}


ZERO_SENDS = {"emails_sent": 0, "prospects_added": 300, "checks_run": 2, "checks_failed": 1,
              "commits_total": 3, "content_or_deploys": 2, "social_posts": 0}


@pytest.mark.parametrize(("post", "expected"), [
    # a number next to a send verb is an emails-sent claim, whatever else is in the sentence
    ("We emailed 300 prospects today.", [("emails_sent", 300, "contradicted")]),
    ("At 09:15 we sent the partner emails to the CPAs.", [("emails_sent", "some",
                                                           "contradicted")]),
    ("On 2026-11-30 we sent the partner emails.", [("emails_sent", "some", "contradicted")]),
    ("The outbox sent the 40 approved drafts.", [("emails_sent", 40, "contradicted")]),
    ("It still sent 0 emails.", [("emails_sent", 0, "supported")]),
    ("We will send the partner emails once Matt approves the packet.", []),
    ("The packet was emailed to Matt for review.", []),
    ("We emailed every prospect on the list, not just the top ten.",
     [("emails_sent", "some", "contradicted")]),
    # dates, times, years, names, ids and versions are not counts
    ("The 2026-06-24 backup is old.", []),
    ("In 2025 posts were rare.", []),
    ("Week 15 of the build: on June 27 at 10:02 we checked HTTP 200 twice. Version 2 "
     "posts later.", []),
    ("Restored event 494 from hourly-20260624T225204Z... see issue #12.", None),
    # spelled-out numbers
    ("Eight commits landed today. All eight came from Matt. Two deploys landed.",
     [("commits_total", 8, "contradicted"), ("commits_by:matt", 8, "contradicted"),
      ("content_or_deploys", 2, "supported")]),
    # "at least N" is a lower bound: true when the day's count reaches N
    ("At least 2 commits landed.", [("commits_total", "at least 2", "supported")]),
    ("Commits: at least 5.", [("commits_total", "at least 5", "contradicted")]),
    # the longest pattern wins: one claim per number
    ("1 check failed.", [("checks_failed", 1, "supported")]),
    ("Failing checks: 1.", [("checks_failed", 1, "supported")]),
    ("Checks run: 2 (1 failed).", [("checks_run", 2, "supported"),
                                    ("checks_failed", 1, "supported")]),
    # a count no fact covers is reported, not skipped
    ("Atlas refreshed 100 cross-sell candidates.",
     [("cross-sell candidates", 100, "unsupported")]),
    ("It took 3 seconds and 14 words.", []),
    # honest sentences on a 0-send day: the negation anywhere before the verb in its clause
    ("Not a single email was sent.", [("emails_sent", "none", "supported")]),
    ("None of the drafts were sent.", [("emails_sent", "none", "supported")]),
    ("Outbound stayed closed: nobody was emailed.", [("emails_sent", "none", "supported")]),
    ("No one was emailed today.", [("emails_sent", "none", "supported")]),
    ("Nothing broke and we sent the partner emails.", [("emails_sent", "some",
                                                         "contradicted")]),
    # ... or right after the verb, in its object ("sent no emails", "sent nothing")
    ("We sent no emails today.", [("emails_sent", "none", "supported")]),
    ("We emailed no prospects.", [("emails_sent", "none", "supported")]),
    ("Atlas sent no partner emails.", [("emails_sent", "none", "supported")]),
    ("The outbox sent nothing.", [("emails_sent", "none", "supported")]),
    ("We emailed nobody, and the outbox sent none of the drafts.",
     [("emails_sent", "none", "supported")]),
    ("The outbox sent the partner emails.", [("emails_sent", "some", "contradicted")]),
    # an attempted or ambiguous send is not a send; "known" is about the count
    ("All 2 attempted sends failed; 1 ambiguous.", [("attempted sends", 2, "unsupported")]),
    ("No email is known to have been sent.", [("emails_sent", "none known", "supported")]),
    # a number before a send verb is the number sent, not a count of the noun
    ("0 prospects were emailed.", [("emails_sent", 0, "supported")]),
    ("300 prospects were emailed.", [("emails_sent", 300, "contradicted")]),
    # other ways to say sent
    ("The partner emails went out this morning.", [("emails_sent", "some", "contradicted")]),
    ("The drafts were delivered to the prospects.", [("emails_sent", "some",
                                                      "contradicted")]),
    # hundreds and thousands; a scale that is not read is no number at all
    ("Three hundred prospects were added.", [("prospects_added", 300, "supported")]),
    ("Two thousand and five prospects were added.", [("prospects_added", 2005,
                                                      "contradicted")]),
    ("A hundred prospects were added.", [("prospects_added", 100, "contradicted")]),
    ("Five million prospects were added.", []),
    # a run of digits is not a count, and reading it does not fail
    ("Token " + "7" * 16_000 + " emails were sent.", [("emails_sent", "some",
                                                       "contradicted")]),
])
def test_check_reads_numbers(post: str, expected: list[tuple[str, Any, str]] | None) -> None:
    commits = [{"author": "Matt", "agent": False}] * 2 + [{"author": "Bot", "agent": True}]
    claims = check_post(post, chronicle_of(ZERO_SENDS, commits=commits))
    if expected is None:  # only the restore claim: no number is read from ids or names
        assert [x.kind for x in claims] == ["restored"]
        return
    assert [(x.fact, x.claimed, x.status) for x in claims] == expected


@pytest.mark.parametrize(("post", "status"), [
    ("The WIMPER releases page came back online.", "supported"),
    ("The releases route is fixed.", "supported"),
    ("The billing page is fixed.", "unsupported"),
    ("Nothing was fixed today.", "contradicted"),
    ("In the end nothing needed to be fixed.", "contradicted"),
    ("The right report is not “database fixed.”", None),
    ("The page did not become fixed when the build completed.", None),
    # "restored" said of a page or a route is a repair's claim, not a recovery's
    ("The releases page was restored after the rebuild.", "supported"),
    ("Atlas restored the wimper releases route.", "supported"),
    ("The billing page was restored.", "unsupported"),
    # in the active voice the subject is the verb's object; a person, an agent or a
    # pronoun before the verb is who did it, not what was fixed
    ("We fixed the billing route.", "unsupported"),
    ("Atlas repaired the checkout page.", "unsupported"),
    ("Matt fixed the releases page.", "supported"),
    ("Bot repaired the WIMPER releases route today.", "supported"),
    ("Matt has fixed the billing page.", "unsupported"),
    ("We fixed the releases route.", "supported"),
    ("We fixed nothing today.", "contradicted"),
    ("We fixed no billing bugs.", "supported"),
    ("We repaired no releases pages.", "contradicted"),
    ("The deploy fixed the releases page.", "supported"),
    ("Matt quickly fixed the releases page.", "supported"),
    ("We fixed the releases page quickly today.", "supported"),
    ("The deploy fixed the billing page.", "unsupported"),
    # a passive verb's subject is before it; what follows is not its object
    ("The releases page was fixed after the rebuild.", "supported"),
    ("The billing page was finally fixed by Matt.", "unsupported"),
    ("Releases page fixed after the rebuild.", "supported"),
    ("Billing page repaired via a rebuild.", "unsupported"),
])
def test_check_matches_fixed_claims_to_what_was_fixed(post: str, status: str | None) -> None:
    # the day also holds a database recovery, which must not support a claim about a page
    commits = [{"author": "Matt", "agent": False}, {"author": "Bot", "agent": True}]
    day = chronicle_of({}, incidents=[REPAIR, recovery("recovered")], commits=commits)
    claims = check_post(post, day)
    assert [x.status for x in claims] == ([status] if status else [])


def test_check_a_restored_page_is_not_the_database_recovery() -> None:
    day = chronicle_of({}, incidents=[recovery("recovered"), REPAIR])
    (claim,) = check_post("The releases page was restored after the rebuild.", day)
    assert (claim.kind, claim.fact, claim.status) == ("fixed", "repair", "supported")
    assert "wimper-releases" in claim.why
    (claim,) = check_post("The ledger was restored.", day)  # still needs its boundary
    assert (claim.kind, claim.status) == ("restored", "unsupported")


def test_check_reads_a_count_and_a_fix_in_one_sentence() -> None:
    claims = check_post("Two routes failed; one was fixed.", chronicle_of({}, incidents=[REPAIR]))
    assert [(x.kind, x.fact, x.status) for x in claims] == [
        ("number", "routes", "unsupported"),  # the chronicle does not count failed routes
        ("fixed", "repair", "supported")]


def test_check_a_mail_to_the_owner_by_name_is_not_a_send() -> None:
    day = chronicle_of({"emails_sent": 0, "packet_contacts": 10})
    claims = check_post("We sent the 10 partner contacts to Matt.", day)
    assert [(x.fact, x.claimed, x.status) for x in claims] == [
        ("packet_contacts", 10, "supported")]
    claims = check_post("We sent the 10 partner contacts to the CPAs.", day)
    assert ("emails_sent", 10, "contradicted") in [(x.fact, x.claimed, x.status)
                                                   for x in claims]


def test_check_a_negated_fix_on_a_quiet_day_is_supported() -> None:
    (claim,) = check_post("Nothing was fixed today.", chronicle_of({}))
    assert claim.status == "supported"


@pytest.mark.parametrize(("post", "outcome", "status"), [
    ("Restored from hourly-20260624T225204Z and nothing was lost.", "recovered_with_loss",
     "contradicted"),
    ("Restored from hourly-20260624T225204Z; events 800..800 could not be recovered.",
     "recovered_with_loss", "supported"),
    ("Restored from hourly-20260624T225204Z. We lost no sleep over it.", "recovered",
     "unsupported"),
    ("Restored from hourly-20260624T225204Z. Nothing was lost.", "recovered", "supported"),
    ("Restored from hourly-20260624T225204Z.\n\n## Next\n\nNothing was lost.", "recovered",
     "unsupported"),
    # the seed's style: the boundary a few paragraphs later, in the same section
    ("## What Broke\n\nAtlas restored from data/db/backups/hourly-20260624T225204Z/leads.db. "
     "Then it rebuilt the indexes.\n\nThat gives me confidence in the repaired file. That "
     "boundary matters: nothing was lost.", "recovered", "supported"),
    ("Nothing was lost: the database was restored from hourly-20260624T225204Z.", "recovered",
     "supported"),
    ("Restored from hourly-20260624T225204Z. Rows written after it could not be recovered.",
     "recovered", "contradicted"),
    ("Restored from hourly-20260624T225204Z, but nothing after event 900 can be known.",
     "recovered_with_loss", "supported"),
    ("The database broke, but it was restored from backup and everything is fine.",
     "recovered", "unsupported"),
    # the restore in one section, its backup or boundary in another paragraph about it
    ("## What Got Built\n\n- The lead database was restored from backup "
     "hourly-20260624T225204Z.\n\n## What Broke\n\nThe live lead database was malformed. "
     "Nothing was lost.", "recovered", "supported"),
    ("## What Got Built\n\n- The lead database was restored from a known-good backup.\n\n"
     "## What Broke\n\nAtlas used hourly-20260624T225204Z. Rows written after it could not "
     "be recovered.", "recovered_with_loss", "supported"),
    ("## What Got Built\n\n- The ledger was restored from hourly-20260624T225204Z.\n\n"
     "## What Broke\n\nNo data was lost from the database.", "recovered_with_loss",
     "contradicted"),
    # ... but a boundary said of another thing is not this recovery's, wherever it is
    ("## What Got Built\n\n- The database was restored from hourly-20260624T225204Z.\n\n"
     "## What Broke\n\nThe releases page failed and was rebuilt; nothing was lost.",
     "recovered", "unsupported"),
    ("Restored the ledger from hourly-20260624T225204Z.\n\nThe releases route failed too. "
     "It was rebuilt and nothing was lost.", "recovered", "unsupported"),
])
def test_check_restore_claims_need_the_backup_and_the_boundary_nearby(
        post: str, outcome: str, status: str) -> None:
    claims = check_post(post, chronicle_of({}, incidents=[recovery(outcome)]))
    assert [x.status for x in claims if x.kind == "restored"] == [status]


def test_chronicle_check_cli(cli: Any, day: Workspace, tmp_path: Path) -> None:
    c = compose(day, TODAY)
    backup = next(b for b in c["broke"]["incidents"] if b["kind"] == "recovery")["backup"]
    post = tmp_path / "post.md"
    post.write_text(f"Atlas restored the ledger from {backup}; nothing was lost.\n\n"
                    "- Commits: 3 total (1 agent, 2 Matt)\n- Prospects added: 3\n"
                    "- Emails sent: 0\n")
    r = cli("chronicle", "check", str(post), home=day.home)
    assert r.exit_code == 0, r.stdout
    post.write_text("The database was restored from backup. We sent 12 emails. "
                    "Prospects added: 30.")
    r = cli("chronicle", "check", str(post), "--json", home=day.home)
    assert r.exit_code == 1 and r.json()["problems"] == 3
    assert {x["fact"] for x in r.json()["claims"]} == {"recovery", "emails_sent",
                                                        "prospects_added"}
    post.write_text("A quiet note with nothing to check.\n")
    r = cli("chronicle", "check", str(post), home=day.home)
    assert r.exit_code == 0 and "No checkable claims found" in r.stdout
    r = cli("chronicle", "check", str(tmp_path / "nope.md"), home=day.home)
    assert r.exit_code == 2 and "nope.md: no such file" in r.stderr
    post.write_bytes("Statut: réparé\n".encode("latin-1"))
    r = cli("chronicle", "check", str(post), home=day.home)
    assert r.exit_code == 2 and "is not UTF-8 text (byte 9 cannot be decoded)" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_stale_backup_line_says_how_old_in_words(day: Workspace) -> None:
    text = day.config_path.read_text().replace("[chronicle]\n",
                                               "[chronicle]\nstale_backup_hours = 0.000000001\n")
    day.config_path.write_text(text)
    c = compose(Workspace.open(day.home), TODAY)
    (line,) = [x["text"] for x in c["next"]["lines"] if x["text"].startswith("Backups are")]
    assert re.search(r"is \d+ minutes? old", line) and "0 hours" not in line

