"""The Timeline: what happened when, readable on a day of a hundred thousand receipts.

Incidents and decisions (recoveries, repairs, lane changes, approvals) are always
one row each. Any other kind of receipt is one row each while the day has at most
``SINGLE_MAX`` of it; past that, the kind is one row that counts its outcomes and
points at the first failure ("09:00–17:00 96 route checks: 94 passed, 2 failed
(first failure at 10:12, receipt #123)"). Commits are one row each up to
``COMMITS_MAX``, then one row per repository.
"""

from __future__ import annotations

import re
from typing import Any

from .gitlog import Commit
from .prose import clock, count, join, plurals, sentence, who
from .sources import DayReceipt, LedgerDay

ALWAYS_SINGLE = ("recovery", "repair", "lane.change", "approval", "approval.voided")
SINGLE_MAX = 5
COMMITS_MAX = 20
OK = ("ok", "fixed", "recovered", "not_broken")
NOUNS = {"route.check": "route check", "job.run": "job run", "backup": "backup",
         "ledger.verify": "ledger verification", "ledger.replay_check": "replay check",
         "outbox.run": "outbox run", "effect.refused": "refused side effect",
         "content.add": "content draft", "deploy": "deploy", "leads.import": "lead import",
         "packet.review": "packet review", "backup.prune": "backup prune", "send": "send"}
PASSED = ("route.check", "ledger.verify", "ledger.replay_check")


def timeline(ledger: LedgerDay | None, commits: list[Commit] | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    by_kind: dict[str, list[DayReceipt]] = {}
    for r in ledger.receipts if ledger else []:
        by_kind.setdefault(r.kind, []).append(r)
    for kind, receipts in by_kind.items():
        if kind in ALWAYS_SINGLE or len(receipts) <= SINGLE_MAX:
            rows += [_row(r.ts, None, phrase(r), "ledger", [r.id], 1) for r in receipts]
        else:
            rows.append(_grouped(kind, receipts))
    rows += _commit_rows(commits or [])
    rows.sort(key=lambda x: (x["sort"], x["receipts"][:1]))
    return rows


def phrase(r: DayReceipt) -> str:
    """A receipt as a Timeline row: its own summary, said in plain words for the kinds
    whose summaries are terse (job runs, route checks, approvals, lane changes)."""
    say = {"job.run": _job, "route.check": _route_check, "lane.change": lane_change,
           "approval": _approval, "outbox.run": _outbox}.get(r.kind)
    said = say(r) if say else None
    return sentence(plurals(said)) if said else plurals(r.summary)


def lane_change(r: DayReceipt) -> str:
    """Who opened or closed which lane, and why."""
    ev = r.body.get("evidence", {})
    verb = "closed" if ev.get("was_open") else "opened"
    return (f"{who(str(r.body.get('actor', '')))} {verb} lane {ev.get('lane')}: "
            f"“{ev.get('reason', '')}”.")


def _approval(r: DayReceipt) -> str | None:
    actor = str(r.body.get("actor", ""))
    return r.summary.replace(f"approved by {actor},", f"approved by {who(actor)},")


def _outbox(r: DayReceipt) -> str | None:
    """An outbox run that left a send ambiguous does not know that no email was sent."""
    ev = r.body.get("evidence", {})
    unsure = bool(ev.get("ambiguous") or ev.get("found_ambiguous"))
    none = "No email was sent"
    if not unsure or not r.summary.startswith(none):
        return None
    return "No email is known to have been sent" + r.summary.removeprefix(none)


def _job(r: DayReceipt) -> str | None:
    ev = r.body.get("evidence", {})
    name, ms, code = ev.get("job"), ev.get("ms"), ev.get("exit_code")
    if not name or ms is None:
        return None
    took = f"{float(ms) / 1000:.1f} s"
    if r.outcome == "ok":
        text = f"The {name} job ran for {took}"
    elif code not in (None, 0) and not ev.get("timed_out") and not ev.get("interrupted"):
        text = f"The {name} job failed (exit code {code}) after {took}"
    else:
        return None  # a timeout or an interruption: the summary says which
    caused = [f"{v} {k.replace('_', ' ')}" for k, v in r.body.get("effects", {}).items() if v]
    return text + (f", causing {join(caused)}" if caused else ", with no side effect")


def _route_check(r: DayReceipt) -> str | None:
    """``GET /x returns 200 ...: it does NOT (status: 500 (expected 200)).``"""
    promise, _, rest = r.summary.partition(": it does")
    if not rest:
        return None
    if rest.startswith("."):
        return f"Route check passed: {promise}"
    status = re.fullmatch(r" NOT \(status: (\d+) \(expected (\d+)\)\)\.?", rest)
    if status:
        return (f"Route check failed: {promise.partition(' returns ')[0]} answered "
                f"{status[1]} instead of {status[2]}")
    return f"Route check failed: {promise}, but it did not{rest.removeprefix(' NOT')}"


def _row(ts: str, until: str | None, what: str, source: str, receipts: list[int],
         n: int) -> dict[str, Any]:
    return {"at": clock(ts), "until": clock(until) if until and clock(until) != clock(ts)
            else None, "sort": ts, "what": what, "source": source, "receipts": receipts,
            "count": n}


def _grouped(kind: str, receipts: list[DayReceipt]) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for r in receipts:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    words = [f"{n} {'passed' if o == 'ok' and kind in PASSED else o.replace('_', ' ')}"
             for o, n in sorted(outcomes.items(), key=lambda x: (-x[1], x[0]))]
    text = f"{count(len(receipts), NOUNS.get(kind, kind.replace('.', ' ')))}: {join(words)}"
    bad = next((r for r in receipts if r.outcome not in OK), None)
    if bad is not None:
        text += f" (first failure at {clock(bad.ts)}, receipt #{bad.id})"
    row = _row(receipts[0].ts, receipts[-1].ts, text + ".", "ledger",
               [receipts[0].id, receipts[-1].id], len(receipts))
    row["outcomes"] = outcomes
    row["first_failure"] = bad.id if bad is not None else None
    return row


def _commit_rows(commits: list[Commit]) -> list[dict[str, Any]]:
    if len(commits) <= COMMITS_MAX:
        return [_row(c.when, None, f"{c.author}{' (agent)' if c.agent else ''} committed "
                     f"“{c.subject}” to {c.repo} ({c.sha[:8]}).", f"git:{c.repo}", [], 1)
                for c in commits]
    by_repo: dict[str, list[Commit]] = {}
    for c in commits:
        by_repo.setdefault(c.repo, []).append(c)
    rows = []
    for repo, cs in by_repo.items():
        authors = sorted({c.author for c in cs})
        who = join(authors[:3] + ([f"{len(authors) - 3} more"] if len(authors) > 3 else []))
        rows.append(_row(cs[0].when, cs[-1].when, f"{count(len(cs), 'commit')} to {repo}, "
                         f"by {who}.", f"git:{repo}", [], len(cs)))
    return rows


__all__ = ["SINGLE_MAX", "lane_change", "phrase", "timeline"]
