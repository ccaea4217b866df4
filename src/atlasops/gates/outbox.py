"""The outbox: the one path by which an approved draft becomes a sent email.

For each approved draft, at the moment of sending, it re-checks the approval
hash, the expiry, the suppression list, the lane (still open?), the channel,
the cap and the cooldown. It records the intent (``draft.sending``, with a
deterministic Message-ID derived from the approval) *before* talking to the
channel, and the outcome after. A draft found in ``sending`` when an outbox
starts was interrupted between the two: it becomes ``ambiguous`` and is never
re-sent without a human (``atlas outbox resolve``). Only one outbox runs at a
time (its own lock), so an in-flight send is never mistaken for a dead one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from ..auth import Principal
from ..config import Config
from ..errors import Conflict, InputError
from ..ledger import Ledger, NewEvent, utc_now
from ..ledger.lock import WriterLock
from ..receipts import Effects, Outcome, Receipt
from ..workspace import Workspace
from .channels import (
    AmbiguousFailure,
    ChannelUnavailable,
    PermanentFailure,
    TemporaryFailure,
    sender_for,
)
from .conditions import Condition, describe, failing
from .drafts import approval_hash, content_hash, get_draft, ready_conditions
from .effects import Capabilities, Effect, EffectRefused, perform
from .lanes import fmt_ts, parse_ts

MAX_ATTEMPTS = 5
BACKOFF_SECONDS = 60


@dataclass
class OutboxReport:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    ambiguous: list[int] = field(default_factory=list)
    voided: list[int] = field(default_factory=list)
    held: dict[str, list[int]] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)
    emails_sent: int = 0
    receipt_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hold_lines(self) -> list[str]:
        return [f"{len(ids)} approved draft(s) held: {why}" for why, ids in self.held.items()]


def message_id(draft: dict[str, Any], from_address: str) -> str:
    """Deterministic: the same approval always yields the same Message-ID."""
    domain = from_address.rsplit("@", 1)[-1]
    return f"<atlas.{draft['id']}.{str(draft['approval_hash'])[:24]}@{domain}>"


def build_message(draft: dict[str, Any], from_address: str, msg_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = draft["to_addr"]
    msg["Subject"] = draft["subject"]
    msg["Message-ID"] = msg_id
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["X-Atlas-Draft"] = str(draft["id"])
    msg.set_content(draft["body"])
    return msg


def send_time_conditions(ledger: Ledger, config: Config, d: dict[str, Any],
                         now: datetime) -> list[Condition]:
    ok = d["approval_hash"] == approval_hash(config, d)
    conds = [Condition("approval_matches_content", ok, "matches" if ok else
                       "the content or the lane policy changed since approval")]
    expired = parse_ts(d["expires_at"]) <= now
    conds.append(Condition("approval_unexpired", not expired, f"expires {d['expires_at']}"))
    return conds + ready_conditions(ledger, config, d, now)


def _from_address(config: Config, channel: str) -> str:
    ch = config.all_channels()[channel]
    return ch.from_address or config.owner.email


def _mark_interrupted(ledger: Ledger, actor: str, report: OutboxReport) -> None:
    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        events = []
        for row in conn.execute("SELECT id, state FROM drafts WHERE state IN "
                                "('sending','queued')"):
            if row[1] == "sending":
                report.ambiguous.append(int(row[0]))
                events.append(NewEvent("draft.ambiguous", actor, {
                    "id": row[0], "reason": "an outbox stopped between recording the intent "
                    "and recording the outcome: the server may or may not have the message"},
                    subject=f"draft:{row[0]}"))
            else:  # queued but the intent was never recorded: nothing was sent
                events.append(NewEvent("draft.retry", actor, {
                    "id": row[0], "attempts": 0, "next_attempt_at": utc_now(),
                    "reason": "requeued: an outbox stopped before sending"},
                    subject=f"draft:{row[0]}"))
        return events
    ledger.transact(build)


def run_once(ws: Workspace, ledger: Ledger, *, actor: str, caps: Capabilities,
             env: Mapping[str, str], now: datetime | None = None) -> OutboxReport:
    """One pass over the approved drafts. Holds the outbox lock for the whole pass."""
    config = ws.config
    report = OutboxReport()
    started = utc_now()
    lock = WriterLock(ws.data_dir / "outbox.lock", timeout=0)
    with lock:
        _mark_interrupted(ledger, actor, report)
        fixed_now = now
        start = fixed_now or datetime.now(UTC)
        rows = ledger.query("SELECT id FROM drafts WHERE state='approved' AND "
                            "(next_attempt_at IS NULL OR next_attempt_at <= ?) "
                            "ORDER BY approved_at, id", (fmt_ts(start),))
        unavailable: dict[str, str] = {}
        for row in rows:
            now = fixed_now or datetime.now(UTC)  # each send is judged at its own moment
            d = get_draft(ledger, int(row["id"]))
            conds = send_time_conditions(ledger, config, d, now)
            bad = failing(conds)
            if bad:
                _handle_unsendable(ledger, actor, d, bad, report)
                continue
            channel = str(d["channel"])
            if channel not in unavailable:
                try:
                    sender_for(channel, config.all_channels()[channel], ws.home, env).check()
                except ChannelUnavailable as exc:
                    unavailable[channel] = exc.reason
            if channel in unavailable:
                report.held.setdefault(unavailable[channel], []).append(d["id"])
                continue
            _send_one(ws, ledger, actor, caps, env, d, report, now)
        report.receipt_id = _run_receipt(ledger, actor, started, report, caps.job_run)
    return report


def _handle_unsendable(ledger: Ledger, actor: str, d: dict[str, Any], bad: list[Condition],
                       report: OutboxReport) -> None:
    names = {c.name for c in bad}
    if names & {"approval_matches_content", "approval_unexpired"}:
        why = describe([c for c in bad if c.name in ("approval_matches_content",
                                                     "approval_unexpired")])
        ledger.append("draft.approval_voided", actor, {"id": d["id"], "reason": why,
                                                       "state": "send_ready"},
                      subject=f"draft:{d['id']}")
        report.voided.append(d["id"])
    elif "not_suppressed" in names:
        ledger.append("draft.failed", actor, {"id": d["id"], "reason": "the recipient was "
                      "suppressed after approval"}, subject=f"draft:{d['id']}")
        report.failed.append(d["id"])
    else:
        first = bad[0]
        key = (f"lane {d['lane']} is closed" if first.name == "lane_open"
               else f"{first.name}: {first.why}")
        report.held.setdefault(key, []).append(d["id"])


def _send_one(ws: Workspace, ledger: Ledger, actor: str, caps: Capabilities,
              env: Mapping[str, str], d: dict[str, Any], report: OutboxReport,
              now: datetime) -> None:
    config = ws.config
    from_address = _from_address(config, str(d["channel"]))
    msg_id = message_id(d, from_address)
    attempt = int(d["attempts"]) + 1
    try:  # build the message before recording any intent: a bad header is not a send
        message = build_message(d, from_address, msg_id)
    except (ValueError, TypeError) as exc:
        ledger.append("draft.failed", actor, {"id": d["id"], "reason": f"the message cannot "
                      f"be built: {exc}"}, subject=f"draft:{d['id']}")
        report.failed.append(d["id"])
        return

    def claim(conn: sqlite3.Connection) -> list[NewEvent]:
        current = get_draft(ledger, d["id"])
        if current["state"] != "approved" or current["approval_hash"] != d["approval_hash"]:
            return []
        return [NewEvent("draft.queued", actor, {"id": d["id"]}, subject=f"draft:{d['id']}"),
                NewEvent("draft.sending", actor, {"id": d["id"], "message_id": msg_id,
                                                  "attempt": attempt},
                         subject=f"draft:{d['id']}")]

    if not ledger.transact(claim):
        return
    effect = Effect("email", d["lane"], f"send draft {d['id']} to {d['to_addr']}",
                    message=message, detail={"draft": d["id"], "message_id": msg_id})
    started = utc_now()

    def mark(kind: str, bucket: list[int], **payload: Any) -> None:
        ledger.append(f"draft.{kind}", actor, {"id": d["id"], **payload},
                      subject=f"draft:{d['id']}")
        bucket.append(d["id"])

    try:
        reply, counters = perform(ledger, config, ws.home, actor=actor, caps=caps,
                                  effect=effect, env=env)
    except ChannelUnavailable as exc:  # nothing was sent: hold it for the next pass
        mark("retry", report.held.setdefault(exc.reason, []), attempts=attempt - 1,
             next_attempt_at=fmt_ts(now), reason=exc.reason)
        return
    except EffectRefused as exc:  # refused before the channel: not an attempt
        mark("retry", report.refused, attempts=attempt - 1, next_attempt_at=fmt_ts(now),
             reason=f"refused: {exc.message}")
        return
    except AmbiguousFailure as exc:
        mark("ambiguous", report.ambiguous, reason=exc.reason)
        return
    except TemporaryFailure as exc:
        if attempt >= MAX_ATTEMPTS:
            mark("failed", report.failed,
                 reason=f"gave up after {attempt} attempts: {exc.reason}")
        else:
            delay = timedelta(seconds=BACKOFF_SECONDS * 2 ** (attempt - 1))
            mark("retry", report.retrying, attempts=attempt,
                 next_attempt_at=fmt_ts(now + delay), reason=exc.reason)
        return
    except PermanentFailure as exc:
        mark("failed", report.failed, reason=exc.reason)
        return
    digest = content_hash(d["to_addr"], d["subject"], d["body"])
    receipt = Receipt(
        kind="send", subject=f"draft:{d['id']}", actor=actor, started_at=started,
        finished_at=utc_now(), outcome="ok",
        summary=f"Draft {d['id']} was accepted by channel {d['channel']} for {d['to_addr']}.",
        effects=counters,
        evidence={"message_id": msg_id, "reply": reply, "content_sha256": digest,
                  "approval_hash": d["approval_hash"], "lane": d["lane"],
                  "job_run": caps.job_run},
    )
    ledger.append_many([
        NewEvent("draft.sent", actor, {"id": d["id"], "message_id": msg_id, "reply": reply,
                                       "content_sha256": digest}, subject=f"draft:{d['id']}"),
        receipt.as_event(),
    ])
    report.sent.append(d["id"])
    report.emails_sent += counters.emails_sent


def _run_receipt(ledger: Ledger, actor: str, started: str, report: OutboxReport,
                 job_run: str | None) -> int:
    emails = report.emails_sent
    parts = [f"{len(report.sent)} email(s) sent"]
    parts += report.hold_lines()
    for label, ids in (("failed", report.failed), ("retrying", report.retrying),
                       ("ambiguous", report.ambiguous), ("approval voided", report.voided),
                       ("refused", report.refused)):
        if ids:
            parts.append(f"{len(ids)} {label}")
    outcome: Outcome = "ok" if not report.held or report.sent else "held"
    receipt = Receipt(
        kind="outbox.run", subject="outbox", actor=actor, started_at=started,
        finished_at=utc_now(), outcome=outcome, summary="; ".join(parts) + ".",
        effects=Effects(emails_sent=emails),
        evidence={**{k: v for k, v in report.to_dict().items() if k != "receipt_id"},
                  "job_run": job_run},
    )
    return ledger.append_many([receipt.as_event()])[0].id


def run(ws: Workspace, ledger: Ledger, *, actor: str, caps: Capabilities,
        env: Mapping[str, str], once: bool = True, interval: float = 30.0,
        should_stop: Any = None) -> list[OutboxReport]:
    """Run once, or keep running (a worker) until ``should_stop()`` says so."""
    reports = [run_once(ws, ledger, actor=actor, caps=caps, env=env)]
    while not once and not (should_stop and should_stop()):
        time.sleep(interval)
        reports.append(run_once(ws, ledger, actor=actor, caps=caps, env=env))
    return reports


def resolve(ledger: Ledger, principal: Principal, draft_id: int, *, sent: bool,
            note: str = "") -> None:
    """A human decides what happened to an ambiguous send (owner only)."""
    principal.require_owner("resolve an ambiguous send")

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        d = get_draft(ledger, draft_id)
        if d["state"] != "ambiguous":
            raise Conflict(f"draft {draft_id} is {d['state']}, not ambiguous")
        payload: dict[str, Any] = {"id": draft_id, "sent": sent, "note": note}
        if sent:
            payload["content_sha256"] = content_hash(d["to_addr"], d["subject"], d["body"])
        return [NewEvent("draft.resolved", principal.actor, payload,
                         subject=f"draft:{draft_id}")]
    if not isinstance(sent, bool):
        raise InputError("say --sent or --not-sent")
    ledger.transact(build)


__all__ = ["OutboxReport", "build_message", "message_id", "resolve", "run", "run_once",
           "send_time_conditions"]
