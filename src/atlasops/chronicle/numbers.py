"""The day's numbers, each with its source and how it was counted.

A number whose source could not be read is ``unknown (source unavailable: why)``;
a number read from only some of its sources (one git repository of two) is
``at least N (why)``. ``chronicle check`` reads the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ops.jobs import BUILTINS
from .gitlog import Commit
from .sources import DayReceipt, LedgerDay, SourceInfo

CHECK_KINDS = ("route.check", "ledger.verify", "ledger.replay_check")


@dataclass
class Number:
    key: str
    label: str
    value: int | None
    source: str  # the source's name ("ledger"), or its kind ("git") for several
    how: str  # how it is counted
    reason: str = ""  # why it is unknown, or why it is only a lower bound
    at_least: bool = False
    part_of: str | None = None  # shown inside another number's line: "(1 agent, 2 Matt)"
    short: str = ""  # the words used inside that line
    refs: list[int] = field(default_factory=list)  # footnotes into the Sources list

    @property
    def amount(self) -> str:
        """The value as a sentence says it: "4", or "at least 4" for a lower bound."""
        if self.value is None:
            return "unknown"
        return ("at least " if self.at_least else "") + str(self.value)

    @property
    def display(self) -> str:
        if self.value is None:
            return f"unknown (source unavailable: {self.reason})"
        if self.at_least:
            return f"at least {self.value} ({self.reason})"
        return str(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "value": self.value,
                "display": self.display, "amount": self.amount, "source": self.source,
                "how": self.how, "reason": self.reason or None, "at_least": self.at_least,
                "part_of": self.part_of, "short": self.short, "refs": self.refs}


def is_builtin(r: DayReceipt) -> bool:
    """A job.run receipt says whether its job is built in; one recorded before it said so
    is built in when its job has a built-in's name."""
    ev = r.body.get("evidence", {})
    flag = ev.get("builtin")
    return bool(flag) if flag is not None else ev.get("job") in BUILTINS


def git_numbers(commits: list[Commit] | None, infos: list[SourceInfo]) -> list[Number]:
    down = [i for i in infos if not i.available]
    reason = "; ".join(f"{i.name}{' unavailable' if commits is not None else ''}: {i.reason}"
                       for i in down)
    how = "commits whose committer date falls on the day (UTC), on any branch, tag or remote"
    out = []
    for key, label, short, part_of, pick in (
            ("commits_total", "Commits", "", None, lambda c: True),
            ("commits_agent", "Commits by agents", "by agents", "commits_total",
             lambda c: c.agent),
            ("commits_human", "Commits by people", "by people", "commits_total",
             lambda c: not c.agent)):
        value = None if commits is None else sum(1 for c in commits if pick(c))
        out.append(Number(key, label, value, "git", how, reason,
                          at_least=commits is not None and bool(down), part_of=part_of,
                          short=short))
    return out


def ledger_numbers(ledger: LedgerDay | None, info: SourceInfo) -> list[Number]:
    def n(key: str, label: str, value: Callable[[LedgerDay], int], how: str,
          part_of: str | None = None, short: str = "") -> Number:
        return Number(key, label, None if ledger is None else value(ledger), "ledger", how,
                      info.reason if ledger is None else "", part_of=part_of, short=short)

    def kind(k: str, outcome: str | None = None) -> Callable[[LedgerDay], int]:
        return lambda d: sum(1 for r in d.of_kind(k) if outcome in (None, r.outcome))

    out = [
        n("jobs_run", "Jobs run", kind("job.run"), "job.run receipts"),
        n("jobs_agent", "Agent jobs run", lambda d: sum(
            not is_builtin(r) for r in d.of_kind("job.run")),
          "job.run receipts of configured (agent) jobs", "jobs_run", "agent"),
        n("jobs_builtin", "Built-in jobs run", lambda d: sum(
            is_builtin(r) for r in d.of_kind("job.run")),
          "job.run receipts of built-in jobs (backup, db check, route checks, ...)",
          "jobs_run", "built-in"),
        n("prospects_added", "Prospects added", lambda d: d.counts.get("lead.created", 0),
          "lead.created events"),
        n("emails_sent", "Emails sent", lambda d: d.emails_sent,
          "draft.sent and resolved-as-sent events outside outbound.review"),
        n("social_posts", "Social posts", lambda d: d.public_posts,
          "public_posts counters of receipts"),
        n("cta_changes", "CTA changes", lambda d: d.cta_changes,
          "cta_changes counters of receipts"),
        n("content_or_deploys", "Content published or deployed receipts",
          lambda d: len(d.of_kind("deploy")) + d.published,
          "deploy receipts and content set to published"),
        n("content_drafts", "Content drafts added", lambda d: d.counts.get("content.added", 0),
          "content.added events"),
        n("backups_validated", "Backups validated", kind("backup", "ok"),
          "backup receipts with outcome ok"),
        n("checks_run", "Checks run", lambda d: len(_checks(d)),
          "route.check, ledger.verify and ledger.replay_check receipts, and the HTTP "
          "readback of each repair that ran its runbook"),
        n("checks_failed", "Checks failed", lambda d: sum(not ok for ok in _checks(d)),
          "the same, outcome not ok (a readback: not passed)", "checks_run", "failed"),
        n("snapshots", "Snapshots recorded", lambda d: d.counts.get("snapshot.recorded", 0),
          "snapshot.recorded events"),
        n("repairs", "Repairs", kind("repair"), "repair receipts"),
        n("repairs_fixed", "Repairs fixed", kind("repair", "fixed"),
          "repair receipts with outcome fixed (a readback passed)", "repairs", "fixed"),
        n("packet_contacts", "Packet contacts sent for review", lambda d: sum(
            int(r.body.get("evidence", {}).get("contacts") or 0)
            for r in d.of_kind("packet.review")), "contacts of packet.review receipts"),
        n("events", "Events recorded", lambda d: d.events_total, "events of the day"),
    ]
    if ledger is not None and ledger.emails_ambiguous:
        # a send whose outcome nobody knows yet: the count is not a fact
        sent = next(x for x in out if x.key == "emails_sent")
        sent.at_least, sent.reason = True, (
            f"{ledger.emails_ambiguous} more may have been sent: ambiguous until resolved "
            "(`atlas outbox resolve`)")
    return out


def _checks(d: LedgerDay) -> list[bool]:
    """One verdict per check: a check receipt, or a repair's readback."""
    verdicts = [r.outcome == "ok" for r in d.of_kind(*CHECK_KINDS)]
    verdicts += [bool(r.body.get("readback", {}).get("passed")) for r in d.of_kind("repair")
                 if r.body.get("readback")]
    return verdicts


def held_numbers(ledger: LedgerDay) -> tuple[list[tuple[Number, str]], int | None]:
    """What the day's last outbox run held, and why: (number, reason) pairs, and the
    receipt. An outbox that did not run that day held nothing."""
    runs = ledger.of_kind("outbox.run")
    if not runs:
        return [], None
    last = runs[-1]
    held = last.body.get("evidence", {}).get("held", {})
    how = f"the drafts held by the day's last outbox run (receipt #{last.id})"
    return [(Number("drafts_held", "Approved drafts held", len(ids), "ledger", how), why)
            for why, ids in held.items()], last.id


def waiting_numbers(ledger: LedgerDay) -> list[Number]:
    w = ledger.waiting
    now = "(the state now, not at the end of the day)"
    return [
        Number("approved_waiting", "Approved drafts waiting", w.approved, "ledger",
               f"drafts in state approved {now}"),
        Number("send_ready", "Send-ready drafts", sum(n for n, _ in w.send_ready.values()),
               "ledger", f"drafts in state send_ready {now}"),
        Number("ambiguous_sends", "Ambiguous sends", w.ambiguous, "ledger",
               f"drafts in state ambiguous {now}"),
        Number("touches_due", "Touches due", w.touches_due, "ledger",
               f"touches with status due and a due time already passed {now}"),
    ]


__all__ = ["CHECK_KINDS", "Number", "git_numbers", "held_numbers", "is_builtin",
           "ledger_numbers", "waiting_numbers"]
