"""Compose the day's chronicle from its sources, deterministically.

Every number carries its source; a number whose source is unavailable is
``unknown (source unavailable: why)``. Confidence is stated per section and
overall, and drops with each source a section needs that could not be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ..errors import InputError
from ..workspace import Workspace
from .sources import (
    Commit,
    LedgerDay,
    SourceInfo,
    read_git,
    read_ledger,
    read_status_files,
    read_worklog_file,
)

SECTION_SOURCES = {
    "What Got Built": ("ledger", "git", "worklog"),
    "What Broke (And How It Was Fixed)": ("ledger",),
    "The Gate": ("ledger",),
    "Timeline": ("ledger", "git"),
    "The Numbers": ("ledger", "git"),
    "What's Next": ("ledger", "status"),
}
LEVELS = ("low", "medium", "high")


@dataclass
class Number:
    key: str
    label: str
    value: int | None
    source: str
    reason: str = ""

    @property
    def display(self) -> str:
        if self.value is None:
            return f"unknown (source unavailable: {self.reason})"
        return str(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "value": self.value,
                "display": self.display, "source": self.source, "reason": self.reason or None}


def parse_day(value: str | None) -> date:
    today = datetime.now(UTC).date()
    if value is None:
        return today
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"--date {value!r} is not a date (YYYY-MM-DD)") from exc
    if day > today:
        raise InputError(f"{day} is in the future: there is nothing to chronicle yet")
    return day


def _group(infos: list[SourceInfo]) -> dict[str, list[SourceInfo]]:
    out: dict[str, list[SourceInfo]] = {}
    for i in infos:
        key = {"git": "git", "status file": "status", "work log": "worklog"}.get(i.kind, i.kind)
        out.setdefault(key, []).append(i)
    return out


def _confidence(needed: tuple[str, ...], groups: dict[str, list[SourceInfo]]
                ) -> tuple[str, list[str]]:
    missing = []
    for name in needed:
        for info in groups.get(name, []):
            if not info.available:
                missing.append(f"{info.name} unavailable: {info.reason}")
            elif "stale" in info.reason:  # read, but it may no longer describe today
                missing.append(f"{info.name} {info.reason}")
    ledger_missing = any(not i.available for i in groups.get("ledger", []))
    level = 2 - min(2, len(missing))
    if ledger_missing and "ledger" in needed:
        level = 0
    return LEVELS[level], missing


def _headline(ledger: LedgerDay | None, commits: list[Commit] | None) -> dict[str, str]:
    if ledger is None:
        return {"text": "The ledger could not be read, so today's record is incomplete.",
                "rule": "ledger unavailable"}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in ledger.receipts:
        by_kind.setdefault(r["kind"], []).append(r)
    for r in by_kind.get("recovery", []):
        if r["outcome"] in ("recovered_with_loss", "failed"):
            return {"text": f"The ledger failed and was recovered with a stated loss: "
                            f"{r['body']['loss']['statement']}", "rule": "incident with loss"}
    for r in by_kind.get("recovery", []):
        if r["outcome"] == "recovered":
            b = r["body"].get("backup") or {}
            return {"text": f"The live database became malformed and was recovered from "
                            f"{b.get('name') or 'the journal'}, with the recovery point and "
                            f"loss boundary named: {r['body']['loss']['statement']}",
                    "rule": "recovered incident"}
    if ledger.counts.get("db.corruption.detected"):
        return {"text": "Database corruption was detected and has not been recovered yet.",
                "rule": "open incident"}
    repairs = by_kind.get("repair", [])
    for r in repairs:
        if r["outcome"] == "not_fixed":
            return {"text": r["summary"], "rule": "failed repair"}
    for r in repairs:
        if r["outcome"] == "fixed":
            return {"text": r["summary"], "rule": "repair"}
    if by_kind.get("deploy"):
        n = len(by_kind["deploy"])
        return {"text": f"{n} deploy receipt(s) landed.", "rule": "deploy"}
    if ledger.emails_sent:
        return {"text": f"{ledger.emails_sent} email(s) were sent.", "rule": "sends"}
    if commits:
        return {"text": f"{len(commits)} commit(s) landed.", "rule": "commits"}
    if ledger.events_total == 0:
        return {"text": "Nothing happened: no event was recorded on this day.",
                "rule": "empty day"}
    return {"text": f"A quiet day: {ledger.events_total} event(s) recorded, no incident.",
            "rule": "quiet day"}


def _numbers(ledger: LedgerDay | None, ledger_info: SourceInfo,
             commits: list[Commit] | None, git_infos: list[SourceInfo]) -> list[Number]:
    git_reason = "; ".join(f"{i.name}: {i.reason}" for i in git_infos if not i.available)
    git_src = ", ".join(i.location for i in git_infos)
    out = []
    for key, label, fn in (
            ("commits_total", "Commits", lambda c: len(c)),
            ("commits_agent", "Commits by agents", lambda c: sum(x.agent for x in c)),
            ("commits_human", "Commits by people", lambda c: sum(not x.agent for x in c))):
        out.append(Number(key, label, None if commits is None else fn(commits),
                          f"git log ({git_src})", git_reason))
    reason = ledger_info.reason
    src = f"ledger ({ledger_info.location})"

    def n(key: str, label: str, value: Any, how: str) -> Number:
        return Number(key, label, None if ledger is None else int(value(ledger)),
                      f"{src}: {how}", reason)

    ambiguous = ledger.emails_ambiguous if ledger is not None else 0

    def receipts(kind: str, outcome: str | None = None) -> Any:
        return lambda d: sum(1 for r in d.receipts if r["kind"] == kind
                             and (outcome is None or r["outcome"] == outcome))

    out += [
        n("jobs_run", "Agent jobs run", receipts("job.run"), "job.run receipts"),
        n("prospects_added", "Prospects added", lambda d: d.counts.get("lead.created", 0),
          "lead.created events"),
        n("emails_sent", "Emails sent", lambda d: d.emails_sent,
          "draft.sent and resolved-as-sent events outside outbound.review"),
        n("social_posts", "Social posts", lambda d: d.public_posts,
          "public_posts counters of receipts"),
        n("content_or_deploys", "Content published or deployed receipts",
          lambda d: receipts("deploy")(d) + sum(
              1 for r in d.receipts if r["kind"] == "content.publish"),
          "deploy and content.publish receipts"),
        n("content_drafts", "Content drafts added", lambda d: d.counts.get("content.added", 0),
          "content.added events"),
        n("backups_validated", "Backups validated", receipts("backup", "ok"),
          "backup receipts with outcome ok"),
        n("checks_run", "Checks run", lambda d: sum(
            1 for r in d.receipts if r["kind"] in ("route.check", "ledger.verify")),
          "route.check and ledger.verify receipts"),
        n("checks_failed", "Checks failed", lambda d: sum(
            1 for r in d.receipts if r["kind"] in ("route.check", "ledger.verify")
            and r["outcome"] != "ok"), "the same receipts, outcome not ok"),
        n("events", "Events recorded", lambda d: d.events_total, "events of the day"),
    ]
    if ambiguous:  # a send whose outcome nobody knows yet: the count is not a fact
        for x in out:
            if x.key == "emails_sent":
                x.reason = (f"{ambiguous} send(s) are ambiguous until resolved "
                            f"(`atlas outbox resolve`); at least {x.value} sent")
                x.value = None
    return out


def _built(ledger: LedgerDay | None, commits: list[Commit] | None,
           worklog_file: list[str] | None) -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    if ledger is not None:
        for r in ledger.receipts:
            if r["kind"] in ("content.add", "deploy", "packet.review", "leads.import"):
                items.append({"text": r["summary"], "source": f"receipt #{r['id']}"})
            elif r["kind"] == "job.run" and r["body"].get("evidence", {}).get("capabilities") \
                    == "read_only" and r["outcome"] == "ok":
                items.append({"text": r["summary"], "source": f"receipt #{r['id']}"})
            elif r["kind"] == "repair" and r["outcome"] == "fixed":
                items.append({"text": r["summary"], "source": f"receipt #{r['id']}"})
        snaps = ledger.counts.get("snapshot.recorded", 0)
        if snaps:
            items.append({"text": f"{snaps} snapshot(s) refreshed, each with its job run and "
                                  "hash.", "source": "snapshot.recorded events"})
        for w in ledger.worklog:
            items.append({"text": w["text"], "source": f"work log (event #{w['id']})"})
    for entry in worklog_file or []:
        items.append({"text": entry, "source": "work-log file"})
    for c in (commits or [])[:20]:
        who = "agent" if c.agent else c.author
        items.append({"text": f"{c.subject} ({who}, {c.repo} {c.sha[:8]})", "source": "git"})
    return items


def _broke(ledger: LedgerDay | None) -> list[dict[str, Any]]:
    if ledger is None:
        return []
    out = []
    for r in ledger.receipts:
        b = r["body"]
        if r["kind"] == "recovery" and r["outcome"] != "not_broken":
            backup = b.get("backup") or {}
            out.append({
                "kind": "recovery", "source": f"receipt #{r['id']}", "outcome": r["outcome"],
                "symptom": (b.get("symptom") or {}).get("summary", ""),
                "backup": backup.get("name") or "none (rebuilt from the journal)",
                "backup_hwm": backup.get("hwm_event_id"),
                "actions": [f"{a['name']}: {a['result']}" for a in b.get("actions", [])],
                "checks": [f"{c['name']}: {'pass' if c['passed'] else 'FAIL'}"
                           for c in b.get("checks", [])],
                "boundary": b.get("loss", {}).get("statement", "")})
        elif r["kind"] == "repair" and r["outcome"] in ("fixed", "not_fixed"):
            rb = (b.get("readback") or {})
            out.append({
                "kind": "repair", "source": f"receipt #{r['id']}", "outcome": r["outcome"],
                "symptom": (b.get("symptom") or {}).get("summary", ""),
                "actions": [f"{a['name']}: {a['result']}" for a in b.get("actions", [])],
                "checks": [f"readback {'passed' if rb.get('passed') else 'failed'}"],
                "boundary": r["summary"]})
    if ledger.counts.get("db.corruption.detected") and not any(
            x["kind"] == "recovery" for x in out):
        out.append({"kind": "detection", "source": "db.corruption.detected events",
                    "outcome": "open", "symptom": "database corruption detected",
                    "actions": [], "checks": [], "boundary": "not recovered yet"})
    return out


def _gate(ledger: LedgerDay | None) -> dict[str, Any]:
    if ledger is None:
        return {"known": False}
    runs = [r for r in ledger.receipts if r["kind"] == "outbox.run"]
    held = []
    if runs:
        ev = runs[-1]["body"].get("evidence", {})
        held = [f"{len(ids)} approved draft(s) held: {why}"
                for why, ids in ev.get("held", {}).items()]
    refusals = sum(1 for r in ledger.receipts if r["kind"] == "effect.refused")
    return {"known": True, "emails_sent": ledger.emails_sent,
            "emails_ambiguous": ledger.emails_ambiguous, "held": held,
            "outbox_runs": len(runs), "refusals": refusals,
            "lane_changes": [r["summary"] for r in ledger.receipts
                             if r["kind"] == "lane.change"]}


def _timeline(ledger: LedgerDay | None, commits: list[Commit] | None) -> list[dict[str, str]]:
    rows = []
    for r in (ledger.receipts if ledger else []):
        rows.append({"at": r["ts"][11:16], "sort": r["ts"], "what": f"{r['kind']}: "
                     f"{r['summary']}", "source": f"receipt #{r['id']}"})
    for c in commits or []:
        when = datetime.fromisoformat(c.when).astimezone(UTC)
        rows.append({"at": when.strftime("%H:%M"), "sort": when.strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"), "what": f"commit {c.sha[:8]} by "
            f"{'agent ' if c.agent else ''}{c.author}: {c.subject}", "source": f"git:{c.repo}"})
    rows.sort(key=lambda x: x["sort"])
    return rows


def _next(ledger: LedgerDay | None) -> list[str]:
    if ledger is None:
        return ["Recover the ledger (`atlas recover`): nothing else can be planned from it."]
    n = ledger.next
    out = []
    if n["approved_waiting"]:
        out.append(f"{n['approved_waiting']} approved draft(s) are waiting to be sent or held.")
    if n["ambiguous_sends"]:
        out.append(f"{n['ambiguous_sends']} ambiguous send(s) need a human "
                   "(`atlas outbox resolve`).")
    if n["touches_due"]:
        out.append(f"{n['touches_due']} touch(es) are due.")
    for route in n["failing_routes"]:
        out.append(f"Route {route} is failing its last check.")
    if n["stale_backup"]:
        out.append(f"Backups are stale: {n['stale_backup']}.")
    return out or ["Nothing is waiting."]


def compose(ws: Workspace, day: date) -> dict[str, Any]:
    settings = ws.config.chronicle
    ledger, ledger_info = read_ledger(ws, day, settings)
    commits, git_infos = read_git(ws, day, settings)
    status, status_infos = read_status_files(ws, settings)
    worklog_file, worklog_info = read_worklog_file(ws, day, settings)
    infos = [ledger_info, *git_infos, *status_infos]
    if worklog_info is not None:
        infos.append(worklog_info)
    groups = _group(infos)
    sections = {}
    for section, needed in SECTION_SOURCES.items():
        level, missing = _confidence(needed, groups)
        sections[section] = {"level": level, "missing": missing}
    levels = [LEVELS.index(s["level"]) for s in sections.values()]
    overall_missing = [f"{i.name} unavailable: {i.reason}" for i in infos if not i.available]
    overall = LEVELS[min(levels)] if levels else "high"
    numbers = _numbers(ledger, ledger_info, commits, git_infos)
    return {
        "date": day.isoformat(),
        "workspace": str(ws.home),
        "headline": _headline(ledger, commits),
        "confidence": {"overall": overall, "missing": overall_missing,
                       "sections": sections},
        "sources": [i.to_dict() for i in infos],
        "built": _built(ledger, commits, worklog_file),
        "broke": _broke(ledger),
        "gate": _gate(ledger),
        "timeline": _timeline(ledger, commits),
        "numbers": [x.to_dict() for x in numbers],
        "next": _next(ledger),
        "status_files": [{"path": s.path, "excerpt": "\n".join(s.text.splitlines()[:15]),
                          "notes": s.notes} for s in status],
    }


__all__ = ["Number", "compose", "parse_day"]
