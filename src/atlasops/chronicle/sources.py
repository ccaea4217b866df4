"""Sources of the chronicle. Each returns facts with provenance, or says why it cannot.

A source that errors, is missing or is stale is reported with the reason; its
numbers become "unknown". Nothing is guessed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import ChronicleSettings
from ..ledger.store import connect_ro
from ..workspace import Workspace

COUNTED_OUT = ("outbox.run", "job.run")  # aggregates: their effects are counted elsewhere


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Unavailable:
    source: str
    reason: str


@dataclass
class SourceInfo:
    name: str
    kind: str
    location: str
    available: bool
    reason: str = ""
    read_at: str = field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def day_bounds(day: date) -> tuple[str, str]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return start.strftime(fmt), end.strftime(fmt)


# -- the ledger ---------------------------------------------------------------

@dataclass
class LedgerDay:
    events_total: int
    counts: dict[str, int]
    receipts: list[dict[str, Any]]
    emails_sent: int
    emails_ambiguous: int
    public_posts: int
    cta_changes: int
    spend_cents: int
    worklog: list[dict[str, Any]]
    next: dict[str, Any]


def read_ledger(ws: Workspace, day: date, settings: ChronicleSettings
                ) -> tuple[LedgerDay | None, SourceInfo]:
    info = SourceInfo("ledger", "ledger", str(ws.db_path), True)
    try:
        conn = connect_ro(ws.db_path)
    except Exception as exc:  # the chronicle reports any failure as unavailability
        info.available, info.reason = False, _why(exc)
        return None, info
    try:
        conn.row_factory = sqlite3.Row
        return _read_day(conn, ws, day, settings), info
    except sqlite3.Error as exc:
        info.available, info.reason = False, _why(exc)
        return None, info
    finally:
        conn.close()


def _why(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return text.replace("\n", " ")[:300]


def _read_day(conn: sqlite3.Connection, ws: Workspace, day: date,
              settings: ChronicleSettings) -> LedgerDay:
    start, end = day_bounds(day)
    # A loose index scan: walk the distinct kinds, count each inside its own (kind, ts)
    # range. Grouping a million rows by kind would sort them all first.
    counts = {str(r["k"]): int(r["n"]) for r in conn.execute(
        "WITH RECURSIVE kinds(k) AS (SELECT min(kind) FROM events UNION ALL "
        "SELECT (SELECT min(kind) FROM events WHERE kind > k) FROM kinds WHERE k IS NOT NULL) "
        "SELECT k, (SELECT count(*) FROM events WHERE kind = k AND ts >= ? AND ts < ?) AS n "
        "FROM kinds WHERE k IS NOT NULL", (start, end)) if r["n"]}
    receipts = []
    for r in conn.execute(
            "SELECT e.id, e.ts, r.kind, r.outcome, r.summary, r.body FROM events e "
            "JOIN receipts r ON r.id = e.id WHERE e.kind = 'receipt.recorded' "
            "AND e.ts >= ? AND e.ts < ? ORDER BY e.id", (start, end)):
        receipts.append({"id": r["id"], "ts": r["ts"], "kind": r["kind"],
                         "outcome": r["outcome"], "summary": r["summary"],
                         "body": json.loads(r["body"])})
    effects = {"emails_sent": 0, "public_posts": 0, "cta_changes": 0, "spend_cents": 0}
    for rec in receipts:
        if rec["kind"] in COUNTED_OUT:
            continue
        for key in effects:
            effects[key] += int(rec["body"].get("effects", {}).get(key, 0))
    # sent = accepted by the server, or settled as sent by a human afterwards
    emails = int(conn.execute(
        "SELECT count(*) FROM events e JOIN drafts d ON d.id = json_extract(e.payload, '$.id')"
        " WHERE e.ts >= ? AND e.ts < ? AND d.lane != 'outbound.review' AND (e.kind = "
        "'draft.sent' OR (e.kind = 'draft.resolved' AND json_extract(e.payload, '$.sent')))",
        (start, end)).fetchone()[0])
    ambiguous = int(conn.execute(
        "SELECT count(*) FROM events e JOIN drafts d ON d.id = json_extract(e.payload, '$.id')"
        " WHERE e.kind = 'draft.ambiguous' AND e.ts >= ? AND e.ts < ? AND d.state = "
        "'ambiguous' AND d.lane != 'outbound.review'", (start, end)).fetchone()[0])
    worklog = [{"id": r["id"], "ts": r["ts"], "actor": r["actor"],
                "text": json.loads(r["payload"])["text"]} for r in conn.execute(
        "SELECT id, ts, actor, payload FROM events WHERE kind = 'worklog.added' AND "
        "json_extract(payload, '$.date') = ? ORDER BY id", (day.isoformat(),))]
    return LedgerDay(
        events_total=sum(counts.values()), counts=counts, receipts=receipts,
        emails_sent=emails, emails_ambiguous=ambiguous, public_posts=effects["public_posts"],
        cta_changes=effects["cta_changes"], spend_cents=effects["spend_cents"],
        worklog=worklog, next=_whats_next(conn, ws, settings))


def _whats_next(conn: sqlite3.Connection, ws: Workspace, settings: ChronicleSettings
                ) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    approved = int(conn.execute("SELECT count(*) FROM drafts WHERE state='approved'"
                                ).fetchone()[0])
    ambiguous = int(conn.execute("SELECT count(*) FROM drafts WHERE state='ambiguous'"
                                 ).fetchone()[0])
    touches = int(conn.execute("SELECT count(*) FROM touches WHERE status='due' AND "
                               "due_at <= ?", (now,)).fetchone()[0])
    # the newest word on each route: a check, or a repair's readback
    failing = [str(r["subject"]).removeprefix("route:") for r in conn.execute(
        "SELECT subject, outcome FROM receipts WHERE id IN (SELECT max(id) FROM receipts "
        "WHERE kind IN ('route.check', 'repair') GROUP BY subject)")
        if r["outcome"] not in ("ok", "fixed", "not_broken")]
    backup = conn.execute("SELECT finished_at, subject FROM receipts WHERE kind='backup' "
                          "AND outcome='ok' ORDER BY id DESC LIMIT 1").fetchone()
    stale = None
    if backup is None:
        stale = "no validated backup has been taken"
    else:
        age = datetime.now(UTC) - datetime.strptime(
            str(backup["finished_at"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        if age > timedelta(hours=settings.stale_backup_hours):
            stale = (f"the newest validated backup ({backup['subject']}) is "
                     f"{age.total_seconds() / 3600:.0f} h old")
    return {"approved_waiting": approved, "ambiguous_sends": ambiguous,
            "touches_due": touches, "failing_routes": failing, "stale_backup": stale}


# -- git ----------------------------------------------------------------------

@dataclass
class Commit:
    repo: str
    sha: str
    author: str
    email: str
    when: str
    subject: str
    agent: bool


def read_git(ws: Workspace, day: date, settings: ChronicleSettings
             ) -> tuple[list[Commit] | None, list[SourceInfo]]:
    if not settings.repos:
        return None, [SourceInfo("git", "git", "-", False,
                                 "no git repositories are configured ([chronicle] repos)")]
    start, end = day_bounds(day)
    agents = {a.casefold() for a in settings.agent_authors}
    commits: list[Commit] = []
    infos: list[SourceInfo] = []
    ok = True
    for repo in settings.repos:
        path = Path(repo.path)
        if not path.is_absolute():
            path = ws.home / path
        name = repo.name or path.name
        info = SourceInfo(f"git:{name}", "git", str(path), True)
        infos.append(info)
        if not path.exists():
            info.available, info.reason = False, "the path does not exist"
            ok = False
            continue
        try:
            out = subprocess.run(
                ["git", "-C", str(path), "log", "--all", f"--since={start}",
                 f"--until={end}", "--format=%H%x1f%an%x1f%ae%x1f%cI%x1f%s"],
                capture_output=True, text=True, timeout=60, errors="replace")
        except (OSError, subprocess.TimeoutExpired) as exc:
            info.available, info.reason = False, f"git could not run: {exc}"
            ok = False
            continue
        if out.returncode != 0:
            info.available = False
            info.reason = (out.stderr.strip().splitlines() or ["git failed"])[0][:200]
            ok = False
            continue
        for line in out.stdout.splitlines():
            sha, author, email, when, subject = (line.split("\x1f") + [""] * 5)[:5]
            is_agent = author.casefold() in agents or email.casefold() in agents
            commits.append(Commit(name, sha, author, email, when, subject, is_agent))
    return (commits if ok else None), infos


# -- status files and the work log ----------------------------------------------

@dataclass
class StatusFile:
    path: str
    text: str
    notes: list[str]


def read_status_files(ws: Workspace, settings: ChronicleSettings
                      ) -> tuple[list[StatusFile], list[SourceInfo]]:
    files, infos = [], []
    for raw in settings.status_files:
        path = Path(raw) if Path(raw).is_absolute() else ws.home / raw
        info = SourceInfo(f"status:{path.name}", "status file", str(path), True)
        infos.append(info)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            info.available, info.reason = False, "file not found"
            continue
        except OSError as exc:
            info.available, info.reason = False, f"cannot be read: {exc.strerror}"
            continue
        notes = []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            notes.append("not UTF-8: undecodable bytes shown as \ufffd")
            info.reason = notes[-1]
        age = datetime.now(UTC).timestamp() - path.stat().st_mtime
        if age > 7 * 86400:
            notes.append(f"stale: last changed {age / 86400:.0f} days ago")
            info.reason = "; ".join(notes)
        files.append(StatusFile(str(path), text, notes))
    return files, infos


def read_worklog_file(ws: Workspace, day: date, settings: ChronicleSettings
                      ) -> tuple[list[str] | None, SourceInfo | None]:
    """Lines of the external work log that start with the day's date."""
    if settings.worklog_file is None:
        return None, None
    path = Path(settings.worklog_file)
    path = path if path.is_absolute() else ws.home / path
    info = SourceInfo("worklog", "work log", str(path), True)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        info.available, info.reason = False, "file not found"
        return None, info
    except OSError as exc:
        info.available, info.reason = False, f"cannot be read: {exc.strerror}"
        return None, info
    prefix = day.isoformat()
    entries = [ln[len(prefix):].strip(" :-\t") for ln in text.splitlines()
               if ln.startswith(prefix)]
    return entries, info


__all__ = ["Commit", "LedgerDay", "SourceInfo", "StatusFile", "Unavailable", "day_bounds",
           "read_git", "read_ledger", "read_status_files", "read_worklog_file"]
