"""Compose the day's chronicle from its sources, deterministically.

Every number carries its source (a footnote into the Sources list, and a JSON
field); a number whose source is unavailable is ``unknown (source unavailable:
why)``. Confidence is stated per section and overall, and drops with each source
a section needs that could not be read, or was read but may not be whole.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..errors import InputError
from ..workspace import Workspace
from .files import read_status_files, read_worklog_file
from .gitlog import read_git
from .incidents import incidents
from .numbers import Number, git_numbers, held_numbers, is_builtin, ledger_numbers, waiting_numbers
from .prose import Line, age, are, clock, count, join, sentence, were
from .sources import NO_RECORD, LedgerDay, SourceInfo, read_ledger
from .timeline import NOUNS, lane_change, timeline

SECTION_SOURCES = {
    "What Got Built": ("ledger", "git", "worklog"),
    "What Broke (And How It Was Fixed)": ("ledger",),
    "The Gate": ("ledger",),
    "Timeline": ("ledger", "git"),
    "The Numbers": ("ledger", "git"),
    "What's Next": ("ledger", "status"),
}
LEVELS = ("low", "medium", "high")
GROUP_OVER = 5  # more receipts of one kind than this are one line in What Got Built
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_day(value: str | None) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC); never in the future."""
    today = datetime.now(UTC).date()
    if value is None or value == "today":
        return today
    if value == "yesterday":
        return today - timedelta(days=1)
    try:
        if not DAY.fullmatch(value):
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"--date {value!r} is not a date: use YYYY-MM-DD, 'today' or "
                         "'yesterday'") from exc
    if day > today:
        raise InputError(f"{day} is in the future: there is nothing to chronicle yet")
    return day


# -- confidence -----------------------------------------------------------------

def _group(infos: list[SourceInfo]) -> dict[str, list[SourceInfo]]:
    out: dict[str, list[SourceInfo]] = {}
    for i in infos:
        key = {"status file": "status", "work log": "worklog"}.get(i.kind, i.kind)
        out.setdefault(key, []).append(i)
    return out


def _confidence(needed: tuple[str, ...], groups: dict[str, list[SourceInfo]]
                ) -> tuple[str, list[str]]:
    missing = []
    for name in needed:
        for info in groups.get(name, []):
            if not info.available:
                missing.append(f"{info.name} unavailable: {info.reason}")
            elif info.degraded:  # read, but it may not be whole or current
                missing.append(f"{info.name}: {info.reason}")
    level = 2 - min(2, len(missing))
    if "ledger" in needed and any(not i.available or i.degraded
                                  for i in groups.get("ledger", [])):
        level = 0
    return LEVELS[level], missing


# -- the headline and the opening lines -----------------------------------------

def _headline(ledger: LedgerDay | None, found: list[dict[str, Any]],
              numbers: dict[str, Number], info: SourceInfo) -> dict[str, str]:
    if ledger is None:
        if info.reason.startswith(NO_RECORD):
            return {"text": f"Atlas has no record of this day: the ledger starts on "
                            f"{info.reason.removeprefix(NO_RECORD)[:10]}.",
                    "rule": "before the ledger"}
        return {"text": f"The ledger could not be read ({info.reason}), so the day's "
                        "record is incomplete.", "rule": "ledger unavailable"}
    if found:  # incidents come ranked by the headline rules
        return {"text": found[0]["headline"], "rule": found[0]["rule"]}
    deploys = ledger.of_kind("deploy")
    if deploys:
        sites = sorted({d.subject.removeprefix("site:") for d in deploys})
        return {"text": f"{count(len(deploys), 'deploy')} landed: {join(sites[:5])}.",
                "rule": "deploy"}
    sent, commits = numbers["emails_sent"], numbers["commits_total"]
    if ledger.emails_sent or ledger.emails_ambiguous:
        return {"text": sentence(f"{_counted(sent, 'email')} {were(ledger.emails_sent)} sent"
                                 + (f", and {_may_have(ledger.emails_ambiguous)}"
                                    if ledger.emails_ambiguous else "")), "rule": "sends"}
    if commits.value:
        return {"text": sentence(f"{_counted(commits, 'commit')} landed"), "rule": "commits"}
    if ledger.events_total == 0:
        return {"text": "Nothing happened: no event was recorded on this day.",
                "rule": "empty day"}
    return {"text": f"A quiet day: {count(ledger.events_total, 'event')} "
                    f"{were(ledger.events_total)} recorded and nothing broke.",
            "rule": "quiet day"}


def _may_have(n: int) -> str:
    they, them = ("it", "it") if n == 1 else ("they", "them")
    return (f"{count(n, 'more send')} may have gone out: {they} {are(n)} ambiguous until "
            f"someone resolves {them}")


def _counted(n: Number, one: str) -> str:
    """``"4 commits"``, or ``"at least 4 commits"`` when the number is a lower bound."""
    return f"{n.amount} {one if n.value == 1 else one + 's'}"


def _lede(numbers: dict[str, Number]) -> list[Line]:
    out = []
    total, agent, human = (numbers[k] for k in ("commits_total", "commits_agent",
                                                "commits_human"))
    if total.value is None:
        out.append(Line(sentence(f"Commits: {total.display}"), total.refs))
    else:
        unsure = f" ({total.reason})" if total.at_least else ""
        out.append(Line(sentence(f"{_counted(total, 'commit')} landed{unsure}: "
                                 f"{agent.amount} by agents and {human.amount} by people"),
                        total.refs))
    sent = numbers["emails_sent"]
    if sent.value is None:
        out.append(Line(sentence(f"Emails sent: {sent.display}"), sent.refs))
    else:
        out.append(Line(sentence(f"{_counted(sent, 'email')} {were(sent.value)} sent"
                                 + (f" ({sent.reason})" if sent.at_least else "")), sent.refs))
    return out


# -- the sections -----------------------------------------------------------------

def _built(ledger: LedgerDay | None, worklog_file: list[str] | None,
           ref: dict[str, list[int]]) -> list[Line]:
    items: list[Line] = []
    if ledger is not None:
        items += _imports(ledger, ref["ledger"])
        for kind in ("packet.review", "content.add", "deploy"):
            receipts = ledger.of_kind(kind)
            if len(receipts) > GROUP_OVER:
                items.append(Line(f"{count(len(receipts), NOUNS[kind])} (receipts "
                                  f"#{receipts[0].id} to #{receipts[-1].id})."))
            else:
                items += [Line(r.summary, [], [r.id]) for r in receipts]
        items += [Line(f"Route {r.subject.removeprefix('route:')} came back: "
                       f"{r.summary.removeprefix('Fixed: ')}", [], [r.id])
                  for r in ledger.of_kind("repair") if r.outcome == "fixed"]
        items += _agent_jobs(ledger)
        snaps = ledger.counts.get("snapshot.recorded", 0)
        if snaps:
            items.append(Line(f"{count(snaps, 'snapshot')} {were(snaps)} refreshed, each "
                              "with its job run and hash.", ref["ledger"]))
        items += [Line(sentence(w["text"]), ref["ledger"], events=[w["id"]])
                  for w in ledger.worklog]
    items += [Line(sentence(entry), ref.get("worklog", [])) for entry in worklog_file or []]
    return items


def _imports(ledger: LedgerDay, refs: list[int]) -> list[Line]:
    imports = ledger.of_kind("leads.import")
    if not imports:
        return []
    created = ledger.counts.get("lead.created", 0)
    updated = ledger.counts.get("lead.updated", 0)
    files = sorted({r.subject for r in imports if r.subject})
    return [Line(f"Lead imports ({join(files[:5])}) brought in {count(created, 'new lead')} "
                 f"and updated {updated} existing {'one' if updated == 1 else 'ones'}.",
                 refs, [r.id for r in imports][:GROUP_OVER])]


def _agent_jobs(ledger: LedgerDay) -> list[Line]:
    by_name: dict[str, list[Any]] = {}
    for r in ledger.of_kind("job.run"):
        if not is_builtin(r):
            name = r.body.get("evidence", {}).get("job") or r.subject.removeprefix("job:")
            by_name.setdefault(str(name or "(unnamed)"), []).append(r)
    out = []
    for name, runs in sorted(by_name.items()):
        ok = sum(r.outcome == "ok" for r in runs)
        effects: dict[str, int] = {}
        for r in runs:
            for k, v in r.body.get("effects", {}).items():
                effects[k] = effects.get(k, 0) + int(v)
        caused = [f"{v} {k.replace('_', ' ')}" for k, v in effects.items() if v]
        out.append(Line(f"The agent job {name} ran {count(len(runs), 'time')} ({ok} ok), "
                        + (f"causing {join(caused)}." if caused else
                           "with no side effect: 0 emails, 0 public posts, 0 CTA changes, "
                           "0 spend."), [], [r.id for r in runs][:GROUP_OVER]))
    return out


def _broke(ledger: LedgerDay | None, found: list[dict[str, Any]],
           info: SourceInfo) -> dict[str, Any]:
    if ledger is None:
        return {"known": False, "reason": info.reason, "incidents": []}
    return {"known": True, "reason": "", "incidents": found}


def _gate(ledger: LedgerDay | None, info: SourceInfo, sent: Number,
          refs: list[int]) -> dict[str, Any]:
    if ledger is None:
        return {"known": False, "reason": info.reason, "lines": [], "numbers": []}
    lines = [Line(sentence(f"{_counted(sent, 'email')} {were(sent.value or 0)} sent"), refs)]
    if ledger.emails_ambiguous:
        lines.append(Line(sentence(_may_have(ledger.emails_ambiguous)
                                   + " (`atlas outbox resolve`)"), refs))
    held, run = held_numbers(ledger)
    for number, why in held:
        number.refs = refs
        lines.append(Line(f"{count(number.value or 0, 'approved draft')} "
                          f"{are(number.value or 0)} held because {why}.", refs,
                          [run] if run else []))
    for r in ledger.of_kind("lane.change"):
        lines.append(Line(f"At {clock(r.ts)}, {lane_change(r)}", [], [r.id]))
    refused = ledger.of_kind("effect.refused")
    if refused:
        lines.append(Line(f"{count(len(refused), 'side effect')} {were(len(refused))} "
                          f"refused, {'with its' if len(refused) == 1 else 'each with a'} "
                          "receipt.", refs,
                          [r.id for r in refused][:GROUP_OVER]))
    return {"known": True, "reason": "", "lines": [x.to_dict() for x in lines],
            "numbers": [sent.to_dict(), *(n.to_dict() for n, _ in held)]}


def _next(ledger: LedgerDay | None, info: SourceInfo, stale_hours: float,
          refs: list[int]) -> dict[str, Any]:
    if ledger is None:
        return {"known": False, "reason": info.reason, "numbers": [], "lines": [
            Line("Recover the ledger (`atlas db check`, then `atlas recover`): nothing "
                 "else can be planned without it.").to_dict()]}
    numbers = waiting_numbers(ledger)
    for n in numbers:
        n.refs = refs
    v = {n.key: n.value or 0 for n in numbers}
    said = {
        "approved_waiting": f"{count(v['approved_waiting'], 'approved draft')} "
                            f"{are(v['approved_waiting'])} waiting; they go out only through "
                            "an open lane and the outbox.",
        "ambiguous_sends": f"{count(v['ambiguous_sends'], 'ambiguous send')} "
                           f"{'needs' if v['ambiguous_sends'] == 1 else 'need'} a human "
                           "(`atlas outbox resolve`).",
        "touches_due": f"{count(v['touches_due'], 'touch', 'touches')} "
                       f"{are(v['touches_due'])} due.",
    }
    lines: list[Line] = []
    for n in numbers:  # send-ready drafts are told per lane
        if n.value:
            lines += [Line(said[n.key], refs)] if n.key in said else _send_ready(ledger, refs)
    lines += [Line(f"Route {route} is failing its last check.", [], [rid])
              for route, rid in ledger.waiting.failing_routes]
    newest = ledger.waiting.newest_backup
    if newest is None:
        lines.append(Line("No validated backup has been taken yet: take one (`atlas backup`).",
                          refs))
    elif newest[1] > stale_hours:
        lines.append(Line(f"Backups are stale: the newest validated one, {newest[0]}, is "
                          f"{age(newest[1])} old (the limit is {stale_hours:g} hours).", refs))
    if not lines:
        lines.append(Line("Nothing is waiting: no draft to approve or send, no due touch, "
                          "no failing route, and the backups are fresh.", refs))
    return {"known": True, "reason": "", "numbers": [n.to_dict() for n in numbers],
            "lines": [x.to_dict() for x in lines]}


def _send_ready(ledger: LedgerDay, refs: list[int]) -> list[Line]:
    """Send-ready drafts, per lane: whether the owner may approve them is the gate's call,
    and a closed lane is the one reason known without asking it."""
    out = []
    for lane, (n, open_) in ledger.waiting.send_ready.items():
        they, them = ("it", "it") if n == 1 else ("they", "them")
        out.append(Line(f"{count(n, 'draft')} {are(n)} send-ready in lane {lane}: " + (
            f"`atlas gate status` says whether the owner can approve {them} now." if open_
            else f"{they} can be reviewed, but the gate does not allow approval while the "
                 "lane is closed."), refs))
    return out


def _sources(infos: list[SourceInfo], numbers: list[Number]) -> tuple[
        list[dict[str, Any]], dict[str, list[int]]]:
    """The Sources list (numbered from 1), and the footnotes of each source name and kind."""
    listed: list[dict[str, Any]] = []
    ref: dict[str, list[int]] = {}
    for n, info in enumerate(infos, 1):
        listed.append({"ref": n, **info.to_dict(), "counts": []})
        ref.setdefault(info.name, []).append(n)
        if info.name != info.kind:
            ref.setdefault(info.kind, []).append(n)
    ref.setdefault("worklog", [])
    hows: dict[tuple[int, str], list[str]] = {}
    for number in numbers:
        number.refs = ref.get(number.source, [])
        for r in number.refs:
            hows.setdefault((r, number.how), []).append(number.label.lower())
    for (r, how), labels in hows.items():
        listed[r - 1]["counts"].append(f"{join(labels)}: {how}")
    return listed, ref


def compose(ws: Workspace, day: date) -> dict[str, Any]:
    settings = ws.config.chronicle
    ledger, ledger_info = read_ledger(ws, day)
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
    overall = LEVELS[min(LEVELS.index(s["level"]) for s in sections.values())]
    overall_missing = [f"{i.name} unavailable: {i.reason}" if not i.available
                       else f"{i.name}: {i.reason}" for i in infos
                       if not i.available or i.degraded]
    numbers = git_numbers(commits, git_infos) + ledger_numbers(ledger, ledger_info)
    listed, ref = _sources(infos, numbers)
    by_key = {n.key: n for n in numbers}
    found = incidents(ledger) if ledger is not None else []
    return {
        "date": day.isoformat(),
        "workspace": str(ws.home),
        "owner": {"name": ws.config.owner.name},
        "headline": _headline(ledger, found, by_key, ledger_info),
        "lede": [x.to_dict() for x in _lede(by_key)],
        "confidence": {"overall": overall, "missing": overall_missing,
                       "sections": sections},
        "sources": listed,
        "built": [x.to_dict() for x in _built(ledger, worklog_file, ref)],
        "commits": [c.__dict__ for c in commits or []],
        "broke": _broke(ledger, found, ledger_info),
        "gate": _gate(ledger, ledger_info, by_key["emails_sent"], ref["ledger"]),
        "timeline": timeline(ledger, commits),
        "numbers": [x.to_dict() for x in numbers],
        "next": _next(ledger, ledger_info, settings.stale_backup_hours, ref["ledger"]),
        "status_files": [{"path": s.path, "excerpt": "\n".join(s.text.splitlines()[:15]),
                          "notes": s.notes} for s in status],
    }


__all__ = ["Number", "compose", "parse_day"]
