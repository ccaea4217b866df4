"""The outbox: the one path by which an approved draft becomes a sent email.

Every pass reads atlas.toml afresh (and sends nothing if it cannot). For each
approved draft, at the moment of sending and under the writer lock, in the
transaction that records the intent, it re-checks the approval hash, the
expiry, the suppression list, the lane (still open?), the channel, the cap, the
cooldown and the work's capabilities. It records the intent (``draft.sending``,
with a deterministic, opaque Message-ID derived from the approval) *before*
talking to the channel, and the outcome after; one draft's failure never stops
the pass. A draft found in ``sending`` when an outbox
starts was interrupted between the two: if the attempt its claim led to was
recorded (and may have happened) it becomes ``ambiguous`` and is never re-sent
without a human (``atlas outbox resolve``); if no attempt was recorded, nothing
can have been sent and it is requeued. Only one outbox runs at a time (its own
lock), so an in-flight send is never mistaken for a dead one.

Work whose capabilities do not include a lane is refused once per lane per pass
(one ``effect.refused`` receipt); the lane's other drafts are held by that
refusal. Under :func:`~atlasops.ops.process.stop_signals_interrupt` a stop signal
ends the pass after the send in progress (one cut short before the message was
handed over is a known not-sent, retried on the next pass); the pass still writes
its receipt.
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from ..auth import Principal
from ..config import Config, load_config
from ..errors import AtlasError, ConfigError, Conflict, InputError
from ..ledger import Ledger, NewEvent, utc_now
from ..ledger.lock import WriterLock
from ..ops.process import Interrupted, interruptible, stop_requested
from ..receipts import Effects, Outcome, Receipt
from ..workspace import Workspace
from .channels import (
    AmbiguousFailure,
    ChannelUnavailable,
    PermanentFailure,
    SendInterrupted,
    TemporaryFailure,
    sender_for,
)
from .conditions import Condition, describe, failing, hold_reason
from .drafts import content_hash, draft_channel, get_draft, send_time_conditions
from .effects import (
    AttemptStatus,
    Capabilities,
    Effect,
    EffectRefused,
    UnknownJobRun,
    attempt_status,
    capability_check,
    known_not_happened,
    only_to_owner,
    perform,
    refusal_event,
)
from .lanes import fmt_ts
from .packets import touch_done_events
from .suppression import wire_address

MAX_ATTEMPTS = 5
BACKOFF_SECONDS = 60


@dataclass
class OutboxReport:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    ambiguous: list[int] = field(default_factory=list)
    # found `sending` when the pass began: an earlier outbox stopped mid-send (not this
    # pass's attempt, so not one of its failures)
    found_ambiguous: list[int] = field(default_factory=list)
    # found claimed by an earlier outbox that stopped before anything could be sent
    requeued: list[int] = field(default_factory=list)
    voided: list[int] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)  # approval voided: not attempted
    held: dict[str, list[int]] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)  # cut short before handing it over
    reasons: dict[int, str] = field(default_factory=dict)  # draft -> why (all but sent)
    touches_done: list[int] = field(default_factory=list)
    emails_sent: int = 0
    review_emails: int = 0
    config_error: str | None = None
    interrupted: str | None = None  # the stop signal that ended the pass
    job_run: str | None = None  # the job run, verified against the ledger
    outcome: Outcome = "ok"
    receipt_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hold_lines(self) -> list[str]:
        return [f"{len(ids)} approved draft(s) held: {why}" for why, ids in self.held.items()]

    def reason_lines(self) -> list[str]:
        """One line per bucket and reason: what was not sent, and why."""
        lines = []
        for label, ids in (("failed", self.failed), ("retrying", self.retrying),
                           ("ambiguous (check, then `atlas outbox resolve`)", self.ambiguous),
                           ("ambiguous, left by an earlier outbox that stopped mid-send "
                            "(check, then `atlas outbox resolve`)", self.found_ambiguous),
                           ("approval(s) voided", self.voided),
                           ("approval(s) voided, recipient suppressed", self.suppressed),
                           ("refused", self.refused),
                           ("not sent (stopped before handing over; next pass)",
                            self.stopped)):
            groups: dict[str, list[int]] = {}
            for i in ids:
                groups.setdefault(self.reasons.get(i, ""), []).append(i)
            lines += [f"{len(g)} {label}: {why} (draft(s) {', '.join(map(str, g))})"
                      for why, g in groups.items()]
        return lines

    def failures(self) -> int:
        """Sends attempted this pass that did not (knowingly) reach the server."""
        return len(self.failed) + len(self.retrying) + len(self.ambiguous)

    def judge(self) -> Outcome:
        """``failed`` (atlas.toml unreadable, interrupted, or every attempted send failed),
        ``refused`` (every draft it tried was refused), ``held`` (nothing sent, something
        held), else ``ok``."""
        if self.config_error is not None or self.interrupted is not None:
            return "failed"
        if self.sent:
            return "ok"
        if self.failures():
            return "failed"
        if self.refused:
            return "refused"
        return "held" if self.held else "ok"


def message_id(draft: dict[str, Any], from_address: str) -> str:
    """Deterministic (the same approval always yields the same Message-ID) and opaque: it
    reveals neither the draft's id nor how many drafts exist."""
    domain = from_address.rsplit("@", 1)[-1]
    digest = hashlib.sha256(f"{draft['id']}:{draft['approval_hash']}".encode()).hexdigest()
    return f"<atlas.{digest[:32]}@{domain}>"


def build_message(draft: dict[str, Any], from_address: str, msg_id: str, *,
                  unsubscribe: bool) -> EmailMessage:
    """The email as it is sent; ``unsubscribe`` adds a List-Unsubscribe header (prospect
    lanes) that mails the channel's from address with the subject 'unsubscribe'."""
    to = wire_address(draft["to_addr"])
    if to is None:
        raise ValueError(f"{draft['to_addr']} has a non-ASCII local part, which plain-ASCII "
                         "SMTP cannot carry")
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = to
    msg["Subject"] = draft["subject"]
    msg["Message-ID"] = msg_id
    msg["Date"] = format_datetime(datetime.now(UTC))
    if unsubscribe:
        msg["List-Unsubscribe"] = f"<mailto:{from_address}?subject=unsubscribe>"
    msg.set_content(draft["body"])
    _check_headers(msg, to, msg_id, unsubscribe=unsubscribe)
    return msg


# The headers an Atlas email has, each once: nothing else may reach the wire.
HEADERS = frozenset({"From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                     "Content-Type", "Content-Transfer-Encoding"})


def _check_headers(msg: EmailMessage, to: str, msg_id: str, *, unsubscribe: bool) -> None:
    """Read the serialized message back as a receiving server would and raise ValueError
    unless its headers are exactly the expected ones, each once, with the recipient and
    Message-ID intact and a subject on one line: the last guard against header injection
    (e.g. an encoded-word that the email library decodes into extra header lines)."""
    head = BytesHeaderParser(policy=email.policy.default).parsebytes(
        msg.as_bytes(policy=email.policy.SMTP))
    names = list(head.keys())
    expected = HEADERS | ({"List-Unsubscribe"} if unsubscribe else set())
    if sorted(names) != sorted(expected):
        raise ValueError(f"header injection: the message would carry the headers "
                         f"{', '.join(names)}, not exactly {', '.join(sorted(expected))}")
    if str(head["To"]) != to or str(head["Message-ID"]) != msg_id:
        raise ValueError("header injection: the message's To or Message-ID would not read "
                         "as approved")
    if any(ch in str(head["Subject"]) for ch in "\r\n"):
        raise ValueError("header injection: the subject would span more than one line")


def _summary(d: dict[str, Any]) -> str:
    """What a draft's send is called in its effect records."""
    return f"send draft {d['id']} to {d['to_addr']}"


def _from_address(config: Config, channel: str) -> str:
    ch = config.all_channels()[channel]
    return ch.from_address or config.owner.email


SUPPRESSED_AFTER_APPROVAL = ("the recipient was suppressed after approval: nothing was "
                             "attempted and the approval is void")
AMBIGUOUS_AFTER_STOP = ("an outbox stopped between recording the intent and recording the "
                       "outcome: the server may or may not have the message")


def claim_attempts(conn: sqlite3.Connection,
                   draft_id: int) -> list[tuple[int, dict[str, Any], AttemptStatus]]:
    """The attempts (``effect.attempting``) made for the draft's latest claim (its latest
    ``draft.sending``), with what their outcomes say. One recorded before attempts named
    their draft is known by its summary (:func:`_summary`)."""
    claim = conn.execute("SELECT max(id) FROM events WHERE kind = 'draft.sending' AND "
                         "json_extract(payload, '$.id') = ?", (draft_id,)).fetchone()[0]
    if claim is None:
        return []
    rows = conn.execute(
        "SELECT id, payload FROM events WHERE kind = 'effect.attempting' AND id > ? AND "
        "(json_extract(payload, '$.detail.draft') = ? OR (json_extract(payload, "
        "'$.detail') IS NULL AND json_extract(payload, '$.summary') LIKE ?))",
        (claim, draft_id, f"send draft {draft_id} to %")).fetchall()
    return [(int(r[0]), json.loads(r[1]), attempt_status(conn, int(r[0]))) for r in rows]


def _mark_interrupted(ledger: Ledger, actor: str, report: OutboxReport) -> None:
    """Settle drafts an earlier outbox left mid-way (it was killed): a claim with no
    attempt, or only attempts known not to have happened, is requeued (nothing can have
    been sent); one with an attempt that did or may have happened becomes ambiguous."""
    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        events = []
        for row in conn.execute("SELECT id, state, attempts FROM drafts WHERE state IN "
                                "('sending','queued')").fetchall():
            draft_id = int(row[0])
            attempts = claim_attempts(conn, draft_id) if row[1] == "sending" else []
            if any(status != "did not happen" for _a, _p, status in attempts):
                report.found_ambiguous.append(draft_id)
                report.reasons[draft_id] = AMBIGUOUS_AFTER_STOP
                events.append(NewEvent("draft.ambiguous", actor, {
                    "id": draft_id, "reason": AMBIGUOUS_AFTER_STOP},
                    subject=f"draft:{draft_id}"))
                continue
            report.requeued.append(draft_id)  # sent (or retried) later in this pass
            # a claim that reached no attempt leaves the retry budget untouched
            unattempted = row[1] == "sending" and not attempts
            events.append(NewEvent("draft.retry", actor, {
                "id": draft_id, "attempts": int(row[2]) - 1 if unattempted else int(row[2]),
                "next_attempt_at": utc_now(),
                "reason": "requeued: an earlier outbox stopped before "
                          + ("sending" if not attempts else "recording a known not-sent")},
                subject=f"draft:{draft_id}"))
        return events
    ledger.transact(build)


def _outbox_lock(ws: Workspace) -> WriterLock:
    """The outbox's own lock, taken at once or refused naming it."""
    lock = WriterLock(ws.data_dir / "outbox.lock", timeout=0)
    try:
        lock.acquire()
    except Conflict as exc:
        raise Conflict("another outbox is running (only one runs at a time)",
                       hint=f"Wait for it to finish, or stop it; its lock is {lock.path}."
                       ) from exc
    return lock


def _verified_run(ledger: Ledger, caps: Capabilities) -> str | None:
    """The declared job run if the ledger says it is running, else None."""
    try:
        return caps.verified(ledger).job_run
    except UnknownJobRun:
        return None


def run_once(ws: Workspace, ledger: Ledger, *, actor: str, caps: Capabilities,
             env: Mapping[str, str], now: datetime | None = None) -> OutboxReport:
    """One pass over the approved drafts. Holds the outbox lock for the whole pass.

    atlas.toml is read afresh for every pass, so a policy change made while a worker
    runs voids approvals at once; if it cannot be read, nothing is sent (fail closed)."""
    report = OutboxReport()
    started = utc_now()
    lock = _outbox_lock(ws)
    try:
        report.job_run = _verified_run(ledger, caps)
        _mark_interrupted(ledger, actor, report)
        try:
            config = load_config(ws.config_path)
        except ConfigError as exc:
            report.config_error = exc.message
        else:
            _Pass(ws.home, config, ledger, actor, caps, env, report).run(now)
        report.interrupted = stop_requested()
        report.receipt_id = _run_receipt(ledger, actor, started, report, caps.job_run)
    finally:
        lock.release()
    return report


@dataclass
class _Claimed:
    draft: dict[str, Any]
    message: EmailMessage


@dataclass
class _Pass:
    home: Path
    config: Config
    ledger: Ledger
    actor: str
    caps: Capabilities
    env: Mapping[str, str]
    report: OutboxReport
    unavailable: dict[str, str] = field(default_factory=dict)
    refused_lanes: dict[str, str] = field(default_factory=dict)  # lane -> hold reason

    def run(self, fixed_now: datetime | None) -> None:
        start = fixed_now or datetime.now(UTC)
        rows = self.ledger.query("SELECT id FROM drafts WHERE state='approved' AND "
                                 "(next_attempt_at IS NULL OR next_attempt_at <= ?) "
                                 "ORDER BY approved_at, id", (fmt_ts(start),))
        for row in rows:
            if stop_requested() is not None:  # told to stop: no further send begins
                return
            now = fixed_now or datetime.now(UTC)  # each send is judged at its own moment
            claimed = self._claim(int(row["id"]), now)
            if claimed is not None:
                self._send(claimed, now)

    def _unavailable(self, channel: str) -> str | None:
        """Why the channel cannot be used at all right now (credentials missing), once
        per pass."""
        if channel not in self.unavailable:
            try:
                sender_for(channel, self.config.all_channels()[channel], self.home,
                           self.env).check()
                return None
            except ChannelUnavailable as exc:
                self.unavailable[channel] = exc.reason
        return self.unavailable[channel]

    def _claim(self, draft_id: int, now: datetime) -> _Claimed | None:
        """Decide under the writer lock, in the transaction that records the intent:
        every send-time condition (approval hash, expiry, suppression, lane open, channel,
        cap, cooldown), the work's capabilities and the channel's credentials, judged on
        the state as it is now."""
        outcome: dict[str, Any] = {}

        def build(conn: sqlite3.Connection) -> list[NewEvent]:
            outcome.clear()
            d = get_draft(self.ledger, draft_id)
            if d["state"] != "approved":
                return []
            bad = failing(send_time_conditions(self.ledger, self.config, d, now))
            if bad:
                return self._unsendable(d, bad, outcome)
            subject = f"draft:{draft_id}"
            lane = self.config.all_lanes()[d["lane"]]
            effect = Effect("email", d["lane"], _summary(d),
                            detail={"draft": draft_id})
            if d["lane"] in self.refused_lanes:  # refused once this pass: hold the rest
                outcome["held"] = self.refused_lanes[d["lane"]]
                return []
            caps, refused = capability_check(self.ledger, self.caps, d["lane"])
            if refused is not None:  # before the intent: a refusal is not an attempt
                outcome.update(bucket=self.report.refused, reason=refused, lane=d["lane"])
                return [refusal_event(self.actor, caps, effect, refused)]
            channel = str(draft_channel(self.config, d))  # the lane's: the conditions hold
            unavailable = self._unavailable(channel)
            if unavailable is not None:  # nothing can be sent: hold it, no intent
                outcome["held"] = unavailable
                return []
            from_address = _from_address(self.config, channel)
            msg_id = message_id(d, from_address)
            try:
                message = build_message(d, from_address, msg_id,
                                        unsubscribe=not lane.owner_only)
            except (ValueError, TypeError) as exc:  # a message that cannot exist: not a send
                outcome.update(bucket=self.report.failed,
                               reason=f"the message cannot be built: {exc}")
                return [NewEvent("draft.failed", self.actor, {
                    "id": draft_id, "reason": outcome["reason"]}, subject=subject)]
            outcome["claimed"] = _Claimed(d, message)
            return [NewEvent("draft.queued", self.actor, {"id": draft_id}, subject=subject),
                    NewEvent("draft.sending", self.actor, {
                        "id": draft_id, "message_id": msg_id,
                        "attempt": int(d["attempts"]) + 1}, subject=subject)]

        events = self.ledger.transact(build)
        if "held" in outcome:
            self.report.held.setdefault(outcome["held"], []).append(draft_id)
        elif "bucket" in outcome:
            outcome["bucket"].append(draft_id)
            self.report.reasons[draft_id] = outcome["reason"]
            if "lane" in outcome:  # the lane's one refusal this pass
                self.refused_lanes[outcome["lane"]] = (
                    f"{outcome['reason']} (refused once this pass: receipt #{events[0].id})")
                self.report.reasons[draft_id] += f" (receipt #{events[0].id})"
        claimed: _Claimed | None = outcome.get("claimed")
        return claimed

    def _unsendable(self, d: dict[str, Any], bad: list[Condition],
                    outcome: dict[str, Any]) -> list[NewEvent]:
        names = {c.name for c in bad}
        approval = [c for c in bad if c.name in ("approval_matches_content",
                                                 "approval_unexpired")]
        if approval:
            outcome.update(bucket=self.report.voided, reason=describe(approval))
            return [NewEvent("draft.approval_voided", self.actor, {
                "id": d["id"], "reason": outcome["reason"], "state": "send_ready"},
                subject=f"draft:{d['id']}")]
        if "no_header_injection" in names:  # written before the check existed: never sendable
            outcome.update(bucket=self.report.failed, reason=describe(
                [c for c in bad if c.name == "no_header_injection"]))
            return [NewEvent("draft.failed", self.actor, {
                "id": d["id"], "reason": outcome["reason"]}, subject=f"draft:{d['id']}")]
        if "not_suppressed" in names:
            return [self._void_suppressed(d, outcome)]
        outcome["held"] = hold_reason(d["lane"], bad)
        return []

    def _void_suppressed(self, d: dict[str, Any], outcome: dict[str, Any]) -> NewEvent:
        """A recipient suppressed after approval: nothing is attempted and the approval is
        void (the draft is send-ready again, and not approval-ready while suppressed)."""
        outcome.update(bucket=self.report.suppressed, reason=SUPPRESSED_AFTER_APPROVAL)
        return NewEvent("draft.approval_voided", self.actor, {
            "id": d["id"], "reason": SUPPRESSED_AFTER_APPROVAL, "state": "send_ready"},
            subject=f"draft:{d['id']}")

    def _mark(self, d: dict[str, Any], kind: str, bucket: list[int], *, reason: str,
              **payload: Any) -> None:
        self.ledger.append(f"draft.{kind}", self.actor,
                           {"id": d["id"], "reason": reason, **payload},
                           subject=f"draft:{d['id']}")
        bucket.append(d["id"])
        self.report.reasons[d["id"]] = reason

    def _send(self, claimed: _Claimed, now: datetime) -> None:
        """Hand the message to the channel; every outcome is recorded, and no failure of
        this draft stops the pass."""
        d, message = claimed.draft, claimed.message
        attempt = int(d["attempts"]) + 1
        effect = Effect("email", d["lane"], _summary(d),
                        message=message, detail={"draft": d["id"],
                                                 "message_id": str(message["Message-ID"])})
        started = utc_now()
        try:
            reply, counters = perform(self.ledger, self.config, self.home, actor=self.actor,
                                      caps=self.caps, effect=effect, env=self.env, now=now)
        except ChannelUnavailable as exc:  # nothing was sent: hold it for the next pass
            self._mark(d, "retry", self.report.held.setdefault(exc.reason, []),
                       attempts=attempt - 1, next_attempt_at=fmt_ts(now), reason=exc.reason)
            return
        except EffectRefused as exc:  # refused before the channel: not an attempt
            hold = exc.details.get("hold")  # the lane closed (or filled) since the claim
            self._mark(d, "retry", self.report.refused if hold is None else
                       self.report.held.setdefault(str(hold), []), attempts=attempt - 1,
                       next_attempt_at=fmt_ts(now), reason=f"refused: {exc.message}"
                       if hold is None else str(hold))
            return
        except SendInterrupted as exc:  # known not sent: the next pass sends it
            self._mark(d, "retry", self.report.stopped, attempts=attempt - 1,
                       next_attempt_at=fmt_ts(now), reason=exc.reason)
            return
        except AmbiguousFailure as exc:
            self._mark(d, "ambiguous", self.report.ambiguous, reason=exc.reason)
            return
        except TemporaryFailure as exc:
            if attempt >= MAX_ATTEMPTS:
                self._mark(d, "failed", self.report.failed,
                           reason=f"gave up after {attempt} attempts: {exc.reason}")
            else:
                delay = timedelta(seconds=BACKOFF_SECONDS * 2 ** (attempt - 1))
                self._mark(d, "retry", self.report.retrying, attempts=attempt,
                           next_attempt_at=fmt_ts(now + delay), reason=exc.reason)
            return
        except PermanentFailure as exc:
            self._mark(d, "failed", self.report.failed, reason=exc.reason)
            return
        except AtlasError:
            raise  # the ledger itself failed: the intent stays, the next pass says ambiguous
        except Exception as exc:  # unexplained, after the intent: it may have gone out
            self._mark(d, "ambiguous", self.report.ambiguous,
                       reason=f"unexpected error while sending: {type(exc).__name__}: {exc}")
            return
        self._record_sent(d, message, reply, counters, started)

    def _record_sent(self, d: dict[str, Any], message: EmailMessage, reply: str,
                     counters: Effects, started: str) -> None:
        msg_id = str(message["Message-ID"])
        review = only_to_owner(self.config, message)
        digest = content_hash(d["to_addr"], d["subject"], d["body"])
        receipt = Receipt(
            kind="send", subject=f"draft:{d['id']}", actor=self.actor, started_at=started,
            finished_at=utc_now(), outcome="ok",
            summary=f"Draft {d['id']} was accepted by channel "
                    f"{draft_channel(self.config, d)} for "
                    f"{d['to_addr']}" + (" (review mail to the owner)." if review else "."),
            effects=counters,
            evidence={"message_id": msg_id, "reply": reply, "content_sha256": digest,
                      "approval_hash": d["approval_hash"], "lane": d["lane"],
                      "review_emails": int(review), "job_run": self.caps.job_run},
        )
        touches: list[int] = []

        def build(conn: sqlite3.Connection) -> list[NewEvent]:
            done = touch_done_events(conn, self.actor, d, utc_now())
            touches[:] = [int(e.payload["id"]) for e in done]
            return [NewEvent("draft.sent", self.actor, {
                "id": d["id"], "message_id": msg_id, "reply": reply,
                "content_sha256": digest}, subject=f"draft:{d['id']}"),
                *done, receipt.as_event()]

        self.ledger.transact(build)
        self.report.sent.append(d["id"])
        self.report.touches_done += touches
        self.report.emails_sent += counters.emails_sent
        self.report.review_emails += int(review)


def _run_receipt(ledger: Ledger, actor: str, started: str, report: OutboxReport,
                 declared_run: str | None) -> int:
    report.outcome = report.judge()
    failures = report.failures()
    if report.config_error is not None:
        parts = [f"Nothing was sent: {report.config_error}. Approved drafts wait until "
                 "atlas.toml is fixed"]
    else:
        parts = [(f"No email is known to have been sent: {failures} attempted send(s) did "
                  f"not complete ({len(report.ambiguous)} of them may have reached the "
                  "server)" if report.ambiguous else
                  f"No email was sent: all {failures} attempted send(s) failed")
                 if failures and not report.sent else
                 f"No email was sent: all {len(report.refused)} draft(s) tried were refused"
                 if report.outcome == "refused" else f"{len(report.sent)} email(s) sent"]
        if report.review_emails:
            parts.append(f"{report.review_emails} of them to the owner (review mail)")
        if report.interrupted is not None:
            parts.append(f"stopped by {report.interrupted}")
    parts += report.hold_lines()
    for label, ids in (("failed", report.failed), ("retrying", report.retrying),
                       ("ambiguous", report.ambiguous),
                       ("found ambiguous (an earlier outbox stopped mid-send)",
                        report.found_ambiguous), ("approval voided", report.voided),
                       ("suppressed after approval (approval voided)", report.suppressed),
                       ("refused", report.refused),
                       ("not sent (stopped before handing over)", report.stopped)):
        if ids:
            parts.append(f"{len(ids)} {label}")
    evidence = {k: v for k, v in report.to_dict().items() if k not in ("receipt_id", "outcome")}
    evidence["reasons"] = {str(k): v for k, v in report.reasons.items()}  # JSON object keys
    if declared_run is not None and declared_run != report.job_run:
        evidence["declared_job_run"] = declared_run  # not a running job run: not believed
    receipt = Receipt(
        kind="outbox.run", subject="outbox", actor=actor, started_at=started,
        finished_at=utc_now(), outcome=report.outcome, summary="; ".join(parts) + ".",
        effects=Effects(emails_sent=report.emails_sent), evidence=evidence,
    )
    return ledger.append_many([receipt.as_event()])[0].id


def run(ws: Workspace, ledger: Ledger, *, actor: str, caps: Capabilities,
        env: Mapping[str, str], once: bool = True, interval: float = 30.0,
        should_stop: Callable[[], bool] | None = None,
        on_pass: Callable[[OutboxReport], None] | None = None) -> list[OutboxReport]:
    """Run once, or keep running (a worker) until ``should_stop()`` says so or a stop
    signal arrives (:func:`~atlasops.ops.process.stop_signals_interrupt`). ``on_pass``
    is given each pass's report as soon as the pass ends."""
    reports: list[OutboxReport] = []
    while True:
        reports.append(run_once(ws, ledger, actor=actor, caps=caps, env=env))
        if on_pass is not None:
            on_pass(reports[-1])
        if once or stop_requested() is not None or (should_stop and should_stop()):
            return reports
        try:
            with interruptible():
                time.sleep(interval)
        except Interrupted:
            return reports


def resolve(ledger: Ledger, principal: Principal, draft_id: int, *, sent: bool,
            note: str = "") -> None:
    """A human decides what happened to an ambiguous send (owner only).

    ``--sent`` records when it was resolved; when the message really left is unknown,
    so ``sent_at`` stays empty."""
    principal.require_owner("resolve an ambiguous send")
    if not isinstance(sent, bool):
        raise InputError("say --sent or --not-sent")

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        d = get_draft(ledger, draft_id)
        if d["state"] != "ambiguous":
            raise Conflict(f"draft {draft_id} is {d['state']}, not ambiguous")
        now = utc_now()
        payload: dict[str, Any] = {"id": draft_id, "sent": sent, "note": note,
                                   "resolved_at": now}
        if not sent:  # its attempt is known not to have happened: off the day's cap
            why = (f"{principal.actor} resolved draft {draft_id}'s ambiguous send as not "
                   "sent" + (f": {note}" if note else "."))
            return [NewEvent("draft.resolved", principal.actor, payload,
                             subject=f"draft:{draft_id}"),
                    *(known_not_happened(principal.actor, attempt, attempted, why)
                      for attempt, attempted, status in claim_attempts(conn, draft_id)
                      if status != "did not happen")]
        payload["content_sha256"] = content_hash(d["to_addr"], d["subject"], d["body"])
        return [NewEvent("draft.resolved", principal.actor, payload,
                         subject=f"draft:{draft_id}"),
                *touch_done_events(conn, principal.actor, d, now)]
    ledger.transact(build)


__all__ = ["OutboxReport", "build_message", "claim_attempts", "message_id", "resolve", "run",
           "run_once"]
