"""The chronicle, from fixture days built through Atlas's own API (never by writing
tables), real git repositories with agent and human commits, and each source
removed in turn."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from atlasops.chronicle.check import check_post
from atlasops.chronicle.compose import compose
from atlasops.durability import recover, take_backup
from atlasops.leads import import_csv
from atlasops.ledger import Ledger, NewEvent
from atlasops.ops.records import add_content, record_deploy
from atlasops.workspace import Workspace
from tests.conftest import write_csv

TODAY = datetime.now(UTC).date()
AGENT = ("Outreach Agent", "agent@bots.example")
HUMAN = ("Matt", "matt@wimper.example")


def git(repo: Path, *args: str, who: tuple[str, str] | None = None) -> None:
    cmd = ["git", "-C", str(repo)]
    if who:
        cmd += ["-c", f"user.name={who[0]}", "-c", f"user.email={who[1]}"]
    subprocess.run([*cmd, *args], check=True, capture_output=True)


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


@pytest.fixture
def day(ws: Workspace, tmp_path: Path) -> Workspace:
    """A day with known facts: 3 leads, 1 validated backup, an incident recovered with no
    loss, 1 content draft, 1 deploy, 0 emails; 3 commits (1 by an agent, 2 by a person)."""
    make_repo(tmp_path / "repo", [(HUMAN, "Build the releases page"),
                                  (AGENT, "Refresh radar snapshots"),
                                  (HUMAN, "Fix partner copy")])
    (tmp_path / "STATUS.md").write_text("# Status\n\nAll good.\n")
    (tmp_path / "worklog.md").write_text(f"{TODAY.isoformat()}: shipped the packet\n"
                                         "2001-01-01: old entry\n")
    ws = configure(ws, f"""
[chronicle]
repos = [{{ path = "{tmp_path / 'repo'}", name = "site" }}]
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
    for s in ("-wal", "-shm"):
        Path(str(ws.db_path) + s).unlink(missing_ok=True)
    with open(ws.db_path, "r+b") as fh:
        fh.seek(4096 * 3)
        fh.write(b"\0" * 4096 * 3)
    assert recover(ws, actor="t").exit_code == 0
    return ws


def numbers(c: dict[str, Any]) -> dict[str, Any]:
    return {n["key"]: n["value"] for n in c["numbers"]}


def test_a_known_day(day: Workspace) -> None:
    c = compose(day, TODAY)
    n = numbers(c)
    assert (n["commits_total"], n["commits_agent"], n["commits_human"]) == (3, 1, 2)
    assert n["prospects_added"] == 3 and n["emails_sent"] == 0 and n["social_posts"] == 0
    assert n["content_or_deploys"] == 1 and n["content_drafts"] == 1
    assert n["backups_validated"] == 1
    assert c["confidence"]["overall"] == "high" and c["confidence"]["missing"] == []
    assert c["headline"]["rule"] == "recovered incident"
    assert "hourly-" in c["headline"]["text"] and "Nothing was lost" in c["headline"]["text"]
    (incident,) = [b for b in c["broke"] if b["kind"] == "recovery"]
    assert incident["backup"].startswith("hourly-") and "Nothing was lost" in incident["boundary"]
    assert {"quick_check: pass", "integrity_check: pass"} <= set(incident["checks"])
    assert c["gate"]["emails_sent"] == 0
    built = " ".join(b["text"] for b in c["built"])
    assert "shipped the packet" in built and "recovered db" in built
    assert "old entry" not in built
    assert all(n["source"] for n in c["numbers"])


def test_each_missing_source_lowers_confidence_and_turns_numbers_unknown(
        day: Workspace, tmp_path: Path) -> None:
    subprocess.run(["rm", "-rf", str(tmp_path / "repo")], check=True)
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
    subprocess.run(["rm", "-rf", str(tmp_path / "repo" / ".git")], check=True)
    c = compose(day, TODAY)
    git_src = next(s for s in c["sources"] if s["name"] == "git:site")
    assert git_src["available"] is False and "not a git repository" in git_src["reason"]
    assert numbers(c)["commits_total"] is None


def test_corrupted_ledger_still_reports_other_sources_at_low_confidence(
        day: Workspace) -> None:
    for s in ("-wal", "-shm"):
        Path(str(day.db_path) + s).unlink(missing_ok=True)
    day.db_path.write_bytes(b"garbage" * 1000)
    c = compose(day, TODAY)
    assert c["confidence"]["overall"] == "low"
    ledger = next(s for s in c["sources"] if s["name"] == "ledger")
    assert ledger["available"] is False and ledger["reason"]
    n = {x["key"]: x for x in c["numbers"]}
    assert n["emails_sent"]["value"] is None and "unknown" in n["emails_sent"]["display"]
    assert n["commits_total"]["value"] == 3
    assert "ledger could not be read" in c["headline"]["text"]


def test_a_stale_status_file_lowers_confidence(day: Workspace, tmp_path: Path) -> None:
    import os

    old = datetime.now(UTC).timestamp() - 30 * 86400
    os.utime(tmp_path / "STATUS.md", (old, old))
    c = compose(day, TODAY)
    section = c["confidence"]["sections"]["What's Next"]
    assert section["level"] == "medium" and "stale" in section["missing"][0]


def test_non_utf8_status_file(day: Workspace, tmp_path: Path) -> None:
    (tmp_path / "STATUS.md").write_bytes("Statut: réparé\n".encode("latin-1"))
    c = compose(day, TODAY)
    (status,) = c["status_files"]
    assert "not UTF-8" in status["notes"][0] and "r\ufffdpar" in status["excerpt"]


def test_empty_day_and_future_date(cli: Any, ws: Workspace) -> None:
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    assert cli("status").exit_code == 0  # the ledger exists, and yesterday holds nothing
    r = cli("chronicle", "--date", yesterday, "--json")
    assert r.exit_code == 0, r.stderr
    text = (ws.chronicle_dir / f"{yesterday}.md").read_text()
    assert "Nothing happened" in text and "0 email(s) were sent" in text
    r = cli("chronicle", "--date", (TODAY + timedelta(days=1)).isoformat())
    assert r.exit_code == 2 and "future" in r.stderr
    assert cli("chronicle", "--date", "27/06/2026").exit_code == 2


def test_formats_out_dir_and_custom_templates(cli: Any, day: Workspace,
                                              tmp_path: Path) -> None:
    r = cli("chronicle", "--out", str(tmp_path / "out"), "--format", "json", home=day.home)
    assert r.exit_code == 0
    data = json.loads((tmp_path / "out" / f"{TODAY}.json").read_text())
    assert data["date"] == TODAY.isoformat()
    r = cli("chronicle", home=day.home)
    html = (day.chronicle_dir / f"{TODAY}.html").read_text()
    assert "<h2>The Numbers</h2>" in html
    md = (day.chronicle_dir / f"{TODAY}.md").read_text()
    for heading in ("## What Got Built", "## What Broke (And How It Was Fixed)",
                    "## The Gate", "## Timeline", "## The Numbers", "## What's Next"):
        assert heading in md
    assert "Confidence: high" in md
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "chronicle.md.j2").write_text("CUSTOM {{ c.date }} {{ c.headline.text }}\n")
    configure(day, '\n[chronicle.extra]\n' if False else "")
    text = day.config_path.read_text().replace(
        "[chronicle]\n", f'[chronicle]\ntemplates = "{templates}"\n')
    day.config_path.write_text(text)
    assert cli("chronicle", "--format", "md", home=day.home).exit_code == 0
    assert (day.chronicle_dir / f"{TODAY}.md").read_text().startswith(f"CUSTOM {TODAY}")


ACCURATE = """
The live lead database became malformed. Atlas restored it from backup {backup}
and verified it; nothing was lost, and the recovery point is named in the receipt.

The Numbers
- Commits: 3 total (1 agent, 2 Matt)
- Prospects added: 3
- Emails sent: 0
- Content published or deployed receipts: 1

It did not send prospect emails.
"""


def test_chronicle_check(cli: Any, day: Workspace, tmp_path: Path) -> None:
    c = compose(day, TODAY)
    backup = next(b for b in c["broke"] if b["kind"] == "recovery")["backup"]
    good = ACCURATE.format(backup=backup)
    claims = check_post(good, c)
    assert claims and all(x.status == "supported" for x in claims), [
        (x.text, x.status, x.why) for x in claims if x.status != "supported"]
    post = tmp_path / "post.md"
    post.write_text(good)
    assert cli("chronicle", "check", str(post), home=day.home).exit_code == 0
    inflated = check_post(good.replace("Prospects added: 3", "Prospects added: 30"), c)
    bad = [x for x in inflated if x.status != "supported"]
    assert [(x.fact, x.status) for x in bad] == [("prospects_added", "contradicted")]
    sends = check_post("We sent the partner emails to prospects today.", c)
    assert [x.status for x in sends] == ["contradicted"]
    vague = check_post("The database broke, but it was restored from backup.", c)
    assert [x.status for x in vague] == ["unsupported"]
    assert "without naming the backup or the loss boundary" in vague[0].why
    post.write_text("The database was restored from backup. We sent 12 emails.")
    r = cli("chronicle", "check", str(post), "--json", home=day.home)
    assert r.exit_code == 1 and r.json()["problems"] == 2


def test_worklog_add(cli: Any, ws: Workspace) -> None:
    assert cli("worklog", "add", "Shipped the packet").exit_code == 0
    assert cli("worklog", "add", "  ").exit_code == 2
    c = compose(Workspace.open(ws.home), TODAY)
    assert any("Shipped the packet" in b["text"] for b in c["built"])


def test_a_big_day_is_summarised_not_listed(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as led:
        for start in range(0, 20_000, 5000):
            led.append_many([NewEvent("note.added", "t", {"i": i})
                             for i in range(start, start + 5000)])
    c = compose(ws, TODAY)
    assert numbers(c)["events"] == 20_000
    assert len(c["timeline"]) == 0  # notes are counted, not listed one by one


def test_html_is_escaped(cli: Any, day: Workspace) -> None:
    assert cli("worklog", "add", "<script>alert(1)</script>", home=day.home).exit_code == 0
    assert cli("chronicle", "--format", "html", home=day.home).exit_code == 0
    html = (day.chronicle_dir / f"{TODAY}.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def synthetic(emails: int, recovery_outcome: str | None = None) -> dict[str, Any]:
    broke = []
    if recovery_outcome:
        broke.append({"kind": "recovery", "outcome": recovery_outcome,
                      "backup": "hourly-20260624T225204Z",
                      "boundary": "events 800..800 could not be recovered"})
    return {"numbers": [{"key": "emails_sent", "label": "Emails sent", "value": emails,
                         "display": str(emails), "source": "ledger"}], "broke": broke}


@pytest.mark.parametrize(("post", "status"), [
    ("We emailed every prospect on the list, not just the top ten.", "contradicted"),
    ("It did not send prospect emails.", "supported"),
    ("No prospect emails were sent.", "supported"),
    ("We emailed the packet to Matt for review, and sent the partner emails to prospects.",
     "contradicted"),
    ("The packet was emailed to Matt for review.", None),
])
def test_check_reads_negation_and_review_clauses(post: str, status: str | None) -> None:
    claims = check_post(post, synthetic(0))
    assert [c.status for c in claims] == ([status] if status else [])


def test_check_contradicts_no_loss_on_a_lossy_recovery() -> None:
    post = "Restored from hourly-20260624T225204Z and nothing was lost."
    (claim,) = check_post(post, synthetic(0, "recovered_with_loss"))
    assert claim.status == "contradicted" and "800..800" in claim.why
    (ok,) = check_post("Restored from hourly-20260624T225204Z; events 800..800 could not "
                       "be recovered.", synthetic(0, "recovered_with_loss"))
    assert ok.status == "supported"
