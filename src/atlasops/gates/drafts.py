"""Drafts and the ladder: draft -> send_ready -> approval_ready -> approved -> queued ->
sent | failed | ambiguous, plus withdrawn and rejected.

*send-ready* is about the content: a valid, unsuppressed recipient, subject and
body present, no header injection, sizes in bounds, the lane's footer. It is
decided when the draft is written and stored with it.

*approval-ready* is about the business gate, which changes with time (a lane
closes, a cap fills): lane open, the lane's one channel, tracking, a recent
deliverability posture, cap and cooldown. It is evaluated whenever it is asked
for, so a list or an approval never trusts a stale verdict.
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import sqlite3
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from ..auth import Principal
from ..businesses import sync_events
from ..config import LANE_EFFECTS, Config
from ..errors import Conflict, InputError, NotFound
from ..ledger import Ledger, NewEvent, canonical_json
from ..receipts import Receipt
from .conditions import Condition, describe, failing
from .lanes import get_lane, latest_posture, limit_conditions, parse_ts, policy_version
from .suppression import is_suppressed, normalize, wire_address

MAX_SUBJECT = 300
STATES = ("draft", "send_ready", "approval_ready", "approved", "expired", "queued", "sending",
          "sent", "failed", "ambiguous", "withdrawn", "rejected")
# Two states are views, evaluated when asked: approval-ready is a send-ready draft that
# passes every gate condition now; expired is an approved draft whose approval has run out.
STORED_AS = {"approval_ready": "send_ready", "expired": "approved"}
EDITABLE = ("draft", "send_ready", "approved", "rejected")


def _has_crlf(value: str) -> bool:
    """Any line break or control character a mail header could be split on."""
    return len(value.splitlines()) > 1 or any(
        unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value)


def header_as_read(name: str, value: str) -> str:
    """The header's value as mail software reads it: the email library decodes RFC 2047
    encoded-words (``=?utf-8?q?...?=``) when a header is set, so this is what the message
    would really say. Raises ValueError when the library refuses the value outright."""
    return str(email.policy.default.header_store_parse(name, value)[1])


def header_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the ``name`` header as it is (None when it can): a line break
    or control character, raw or hidden in an encoded-word, or an encoded-word at all, which
    would make mail programs show other text (or another address) than the one approved."""
    if _has_crlf(value):
        return f"CR/LF in the {name} (header injection) is refused"
    try:
        shown = header_as_read(name, value)
    except Exception as exc:  # the library refuses it outright: so does Atlas
        return f"the {name} cannot be a mail header ({exc}): header injection is refused"
    if shown == value:
        return None
    if _has_crlf(shown):
        return (f"the {name} hides a line break in an RFC 2047 encoded-word (=?...?=), which "
                "mail software decodes into extra header lines: header injection is refused")
    if "=?" in value:
        return (f"the {name} contains an RFC 2047 encoded-word (=?charset?...?=); mail "
                f"software would show {shown!r}, not the text that is approved, so it is "
                "refused")
    return f"the {name} would read {shown!r} in a mail program, not as written"


def _utf8_problem(**fields: str) -> str | None:
    """The first field that is not UTF-8 text (bytes from argv or a file in another
    encoding arrive as lone surrogates), named."""
    for name, value in fields.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"the {name} holds text that is not valid UTF-8 "
                    f"({exc.object[exc.start:exc.end]!r}); nothing was written")
    return None


ENCODED_WORD_HINT = ("Write the text itself: Unicode is fine, Atlas encodes it when it sends. "
                     "Atlas refuses '=?...?=' encoded-words in headers.")


def validate_input(config: Config, lane: str, to: str, subject: str, body: str) -> str:
    """Reject at the edge what can never become a safe email; returns the normalized address."""
    lanes = config.all_lanes()
    if lane not in lanes:
        raise InputError(f"unknown lane {lane!r}", hint="Lanes: " + ", ".join(lanes))
    if LANE_EFFECTS[lane] != "email":
        raise InputError(f"lane {lane} does not send email")
    not_utf8 = _utf8_problem(recipient=to, subject=subject, body=body)
    if not_utf8 is not None:
        raise InputError(not_utf8, hint="Write it as UTF-8 text (save a --body-file as UTF-8).")
    if _has_crlf(to) or _has_crlf(subject):
        raise InputError("CR/LF in the recipient or subject (header injection) is refused")
    address = normalize(to)
    wire = wire_address(address)
    if wire is None:
        raise InputError(f"{address} has a non-ASCII local part (before the @); Atlas's "
                         "channels send plain-ASCII SMTP without SMTPUTF8, so it cannot be "
                         "delivered", hint="Use the recipient's ASCII address. Internationalised "
                         "domains are fine: they are sent as punycode.")
    for name, value in (("To", wire), ("Subject", subject)):
        problem = header_problem(name, value)
        if problem is not None:
            raise InputError(problem, hint=ENCODED_WORD_HINT)
    if len(subject) > MAX_SUBJECT:
        raise InputError(f"the subject is longer than {MAX_SUBJECT} characters")
    limit = lanes[lane].max_body_bytes
    if len(body.encode("utf-8")) > limit:
        raise InputError(f"the body is larger than lane {lane}'s limit of {limit} bytes")
    if "\x00" in body:
        raise InputError("the body contains a NUL character")
    return address


def send_ready_conditions(ledger: Ledger, config: Config, lane: str, to: str, subject: str,
                          body: str) -> list[Condition]:
    settings = config.all_lanes()[lane]
    conds = [
        Condition("recipient_valid", True, f"{to} is a valid address"),
        Condition("not_suppressed", not is_suppressed(ledger, to),
                  "on the suppression list" if is_suppressed(ledger, to) else "not suppressed"),
        Condition("subject_present", bool(subject.strip()),
                  "present" if subject.strip() else "the subject is empty"),
        Condition("body_present", bool(body.strip()),
                  "present" if body.strip() else "the body is empty"),
        _header_condition(to, subject),
        Condition("size_within_bounds", True,
                  f"{len(body.encode())} of {settings.max_body_bytes} bytes"),
    ]
    if settings.footer:
        ok = settings.footer in body
        conds.append(Condition("footer_present", ok, "present" if ok else
                               f"lane {lane} requires the footer {settings.footer!r}"))
    if settings.owner_only:
        ok = to.casefold() in config.owner.addresses()
        conds.append(Condition("recipient_is_owner", ok, "an owner address" if ok else
                               f"lane {lane} only sends to the owner's addresses"))
    return conds


def _header_condition(to: str, subject: str) -> Condition:
    """Recipient and subject, each exactly the header mail software will read."""
    problems = [p for name, value in (("To", wire_address(to) or to), ("Subject", subject))
                if (p := header_problem(name, value)) is not None]
    return Condition("no_header_injection", not problems, "; ".join(problems) or
                     "To and Subject are single header lines that read exactly as written")


def gate_conditions(ledger: Ledger, config: Config, draft: dict[str, Any],
                    now: datetime | None = None) -> list[Condition]:
    """Every business-gate condition for a draft, evaluated now."""
    now = now or datetime.now(UTC)
    lane = get_lane(ledger, config, draft["lane"])
    s = lane.settings
    channels = config.all_channels()
    conds = [Condition("lane_open", lane.open, f"lane {lane.name} is "
                       + ("open" if lane.open else f"closed ({lane.reason})"))]
    if s.channel is None:
        conds.append(Condition("channel_is_lanes_one_channel", False,
                               f"lane {lane.name} has no channel configured"))
    else:
        chosen = draft_channel(config, draft)
        same = chosen == s.channel and s.channel in channels
        conds.append(Condition("channel_is_lanes_one_channel", same,
                               f"{channel_label(config, draft)} is lane {lane.name}'s one "
                               "channel" if same else f"the draft uses {chosen!r}; lane "
                               f"{lane.name} allows only {s.channel!r}"))
    if s.requires_tracking:
        conds.append(Condition("tracking_configured", bool(s.tracking),
                               f"tracking: {s.tracking}" if s.tracking else
                               "the lane requires tracking and none is configured"))
    if s.posture_max_age_days is not None:
        posture = latest_posture(ledger, lane.name)
        if posture is None:
            conds.append(Condition("deliverability_posture_recent", False,
                                   "no deliverability posture recorded "
                                   f"(`atlas lane posture {lane.name}`)"))
        else:
            age = now - parse_ts(posture["recorded_at"])
            recent = age <= timedelta(days=s.posture_max_age_days)
            failing_checks = [k for k in ("spf", "dkim", "dmarc")
                              if str(posture["detail"].get(k, "")).lower() != "pass"]
            why = (f"recorded {posture['recorded_at']}, {age.days} day(s) ago "
                   f"(limit {s.posture_max_age_days})")
            if failing_checks:
                why += f"; not passing: {', '.join(failing_checks)}"
            conds.append(Condition("deliverability_posture_recent",
                                   recent and not failing_checks, why))
    return conds + limit_conditions(ledger, lane, str(draft["to_addr"]).casefold(), now)


def draft_channel(config: Config, draft: dict[str, Any]) -> str | None:
    """The channel a draft goes through: the one it names, else (a draft written without
    one, e.g. before the lane had a channel) its lane's one channel as atlas.toml says now.
    An approval binds the channel resolved at that moment."""
    named = draft.get("channel")
    return str(named) if named is not None else config.all_lanes()[draft["lane"]].channel


def channel_label(config: Config, draft: dict[str, Any]) -> str:
    """The draft's channel for people: a draft without its own says it uses the lane's."""
    if draft.get("channel") is not None:
        return str(draft["channel"])
    lanes_channel = config.all_lanes()[draft["lane"]].channel
    return (f"the lane's channel ({lanes_channel})" if lanes_channel is not None else
            "the lane's channel (none configured yet)")


def approval_hash(config: Config, draft: dict[str, Any]) -> str:
    """sha256 of the canonical (recipient, subject, body, channel, lane policy version); the
    channel is the one the draft resolves to now (:func:`draft_channel`)."""
    body = {"to": str(draft["to_addr"]).casefold(), "subject": draft["subject"],
            "body": draft["body"], "channel": draft_channel(config, draft),
            "lane": draft["lane"], "policy_version": policy_version(config, draft["lane"])}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def content_hash(to: str, subject: str, body: str) -> str:
    """sha256 of the content as delivered (the recipient in the form SMTP carries it)."""
    wire = wire_address(to) or to
    return hashlib.sha256(canonical_json({"to": wire.casefold(), "subject": subject,
                                          "body": body}).encode()).hexdigest()


def approval_conditions(config: Config, draft: dict[str, Any],
                        now: datetime) -> list[Condition]:
    """An approved draft's approval: still bound to this content and policy, unexpired."""
    ok = draft["approval_hash"] == approval_hash(config, draft)
    expired = approval_expired(draft, now)
    return [Condition("approval_matches_content", ok, "the approved hash matches the content"
                      if ok else "the content or the lane policy changed since approval"),
            Condition("approval_unexpired", not expired,
                      f"{'expired' if expired else 'expires'} {draft['expires_at']}")]


def approval_expired(draft: dict[str, Any], now: datetime) -> bool:
    return draft["state"] == "approved" and parse_ts(draft["expires_at"]) <= now


def get_draft(ledger: Ledger, draft_id: int) -> dict[str, Any]:
    rows = ledger.query("SELECT * FROM drafts WHERE id=?", (draft_id,))
    if not rows:
        raise NotFound(f"no draft with id {draft_id}", hint="`atlas drafts list` shows them.")
    d = dict(rows[0])
    d["problems"] = json.loads(d["problems"])
    return d


def ready_conditions(ledger: Ledger, config: Config, draft: dict[str, Any],
                     now: datetime | None = None) -> list[Condition]:
    """Send-ready (re-checked now: the lane's rules may have changed) and approval-ready."""
    return (send_ready_conditions(ledger, config, draft["lane"], draft["to_addr"],
                                  draft["subject"], draft["body"])
            + gate_conditions(ledger, config, draft, now))


def send_time_conditions(ledger: Ledger, config: Config, draft: dict[str, Any],
                         now: datetime) -> list[Condition]:
    """Everything the outbox requires of an approved draft at the moment of sending."""
    return approval_conditions(config, draft, now) + ready_conditions(ledger, config, draft,
                                                                      now)


def display_state(ledger: Ledger, config: Config, draft: dict[str, Any],
                  now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    if approval_expired(draft, now):
        return "expired"
    if draft["state"] == "send_ready" and not failing(ready_conditions(ledger, config, draft,
                                                                        now)):
        return "approval_ready"
    return str(draft["state"])


def create(ledger: Ledger, config: Config, principal: Principal, *, to: str, subject: str,
           body: str, lane: str = "outbound.prospect", business: str | None = None,
           lead_id: int | None = None, channel: str | None = None) -> dict[str, Any]:
    """Write a draft. Without ``channel`` it goes through its lane's one channel, resolved
    when it is approved (so drafts written before the lane has a channel can be approved
    once it has one)."""
    address = validate_input(config, lane, to, subject, body)
    if business is not None and business not in config.businesses:
        raise InputError(f"unknown business {business!r}")
    if channel is not None and channel not in config.all_channels():
        raise InputError(f"unknown channel {channel!r}")

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        if lead_id is not None and not conn.execute("SELECT 1 FROM leads WHERE id=?",
                                                    (lead_id,)).fetchone():
            raise NotFound(f"no lead with id {lead_id}")
        if is_suppressed(ledger, address):
            raise InputError(f"{address} is on the suppression list; no draft was created")
        conds = send_ready_conditions(ledger, config, lane, address, subject, body)
        state = "send_ready" if not failing(conds) else "draft"
        return [*sync_events(conn, config, principal.actor),
                NewEvent("draft.created", principal.actor, {
            "lane": lane, "channel": channel, "to": address, "subject": subject, "body": body,
            "business": business, "lead_id": lead_id, "state": state,
            "problems": [c.to_dict() for c in failing(conds)]}, subject=f"lead:{lead_id}"
            if lead_id else f"email:{address}")]

    event = ledger.transact(build)[-1]
    return get_draft(ledger, event.id)


def edit(ledger: Ledger, config: Config, principal: Principal, draft_id: int, *,
         to: str | None = None, subject: str | None = None,
         body: str | None = None) -> tuple[dict[str, Any], bool]:
    """Change a draft. Any edit voids an approval (back to send-ready, with a receipt)."""
    current = get_draft(ledger, draft_id)
    new_to = current["to_addr"] if to is None else to
    new_subject = current["subject"] if subject is None else subject
    new_body = current["body"] if body is None else body
    address = validate_input(config, current["lane"], new_to, new_subject, new_body)

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        d = get_draft(ledger, draft_id)
        if d["state"] not in EDITABLE:
            raise Conflict(f"draft {draft_id} is {d['state']} and can no longer be edited")
        conds = send_ready_conditions(ledger, config, d["lane"], address, new_subject,
                                      new_body)
        state = "send_ready" if not failing(conds) else "draft"
        voided = d["state"] == "approved"
        events = [NewEvent("draft.edited", principal.actor, {
            "id": draft_id, "to": address, "subject": new_subject, "body": new_body,
            "state": state, "problems": [c.to_dict() for c in failing(conds)],
            "voided_approval": voided}, subject=f"draft:{draft_id}")]
        if voided:
            events.append(_void_receipt(principal, draft_id, "the draft was edited after "
                                        "approval", state))
        return events

    events = ledger.transact(build)
    return get_draft(ledger, draft_id), len(events) > 1


def _void_receipt(principal: Principal, draft_id: int, why: str, state: str) -> NewEvent:
    from ..ledger import utc_now

    now = utc_now()
    return Receipt(kind="approval.voided", subject=f"draft:{draft_id}", actor=principal.actor,
                   started_at=now, finished_at=now, outcome="ok",
                   summary=f"Draft {draft_id}'s approval is void ({why}); it is {state} "
                           "again and needs a fresh approval before it can be sent.",
                   evidence={"draft": draft_id, "reason": why}).as_event()


def withdraw(ledger: Ledger, principal: Principal, draft_id: int, reason: str = "") -> None:
    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        d = get_draft(ledger, draft_id)
        if d["state"] in ("sending", "sent", "ambiguous", "withdrawn"):
            raise Conflict(f"draft {draft_id} is {d['state']} and cannot be withdrawn")
        return [NewEvent("draft.withdrawn", principal.actor, {"id": draft_id,
                                                              "reason": reason},
                         subject=f"draft:{draft_id}")]
    ledger.transact(build)


def list_drafts(ledger: Ledger, config: Config, *, state: str | None = None,
                lane: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    if state is not None and state not in STATES:
        raise InputError(f"unknown state {state!r}; states: {', '.join(STATES)}")
    sql = "SELECT * FROM drafts WHERE 1=1"
    args: list[Any] = []
    if state is not None:
        sql += " AND state=?"
        args.append(STORED_AS.get(state, state))
    if lane is not None:
        sql += " AND lane=?"
        args.append(lane)
    sql += " ORDER BY id"
    now = datetime.now(UTC)
    out = []
    for row in ledger.query(sql, args):
        d = dict(row)
        d["problems"] = json.loads(d["problems"])
        d["display_state"] = display_state(ledger, config, d, now)
        if state is None or d["display_state"] == state:
            out.append(d)
        if limit is not None and len(out) >= limit:
            break
    return out


def explain(ledger: Ledger, config: Config, draft_id: int) -> dict[str, Any]:
    d = get_draft(ledger, draft_id)
    send_ready = send_ready_conditions(ledger, config, d["lane"], d["to_addr"], d["subject"],
                                       d["body"])
    now = datetime.now(UTC)
    gate = gate_conditions(ledger, config, d, now)
    approval = approval_conditions(config, d, now) if d["state"] == "approved" else []
    return {"id": draft_id, "state": d["state"],
            "display_state": display_state(ledger, config, d, now),
            "send_ready": [c.to_dict() for c in send_ready],
            "approval_ready": [c.to_dict() for c in gate],
            "approval": [c.to_dict() for c in approval],
            "summary": describe(send_ready + gate + approval)}


def approve(ledger: Ledger, config: Config, principal: Principal, ids: list[int], *,
            expires: timedelta = timedelta(days=7)) -> list[dict[str, Any]]:
    """Approve drafts (owner only), bound to the hash of their exact content.

    All or nothing: if any draft is not approval-ready, none is approved and the
    error lists the failing conditions of each."""
    principal.require_owner("approve drafts")
    if not ids:
        raise InputError("name at least one draft id")
    ids = list(dict.fromkeys(ids))  # a draft named twice is approved once
    from ..ledger import utc_now

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        now = datetime.now(UTC)
        refusals: list[str] = []
        events: list[NewEvent] = []
        for draft_id in ids:
            d = get_draft(ledger, draft_id)
            expired = approval_expired(d, now)
            if d["state"] != "send_ready" and not expired:
                refusals.append(f"draft {draft_id} is {d['state']}" + (
                    f" until {d['expires_at']}" if d["state"] == "approved" else
                    ", not send-ready" + "".join(f"; {p['name']}: {p['why']}"
                                                 for p in d["problems"])))
                continue
            bad = failing(ready_conditions(ledger, config, d, now))
            if bad:
                refusals.append(f"draft {draft_id} is not approval-ready: {describe(bad)}")
                continue
            if expired:  # the old approval ran out: void it, then approve afresh
                events.append(NewEvent("draft.approval_voided", principal.actor, {
                    "id": draft_id, "state": "send_ready",
                    "reason": f"the approval expired at {d['expires_at']}"},
                    subject=f"draft:{draft_id}"))
            events.append(NewEvent("draft.approved", principal.actor, {
                "id": draft_id, "approval_hash": approval_hash(config, d),
                "expires_at": (now + expires).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                subject=f"draft:{draft_id}"))
        if refusals:
            raise Conflict("nothing was approved: " + " | ".join(refusals),
                           hint="`atlas gate explain ID` lists every condition.",
                           refusals=refusals)
        stamp = utc_now()
        events.append(Receipt(
            kind="approval", subject="drafts", actor=principal.actor, started_at=stamp,
            finished_at=stamp, outcome="ok",
            summary=f"{len(ids)} draft(s) approved by {principal.actor}, each bound to the "
                    f"hash of its exact content, expiring in {_human(expires)}.",
            evidence={"drafts": ids}).as_event())
        return events

    ledger.transact(build)
    return [get_draft(ledger, i) for i in ids]


def _human(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours >= 24 and hours % 24 == 0:
        return f"{int(hours // 24)} day(s)"
    if hours >= 1:
        return f"{hours:g} hour(s)"
    return f"{delta.total_seconds() / 60:g} minute(s)"


def reject(ledger: Ledger, principal: Principal, draft_id: int, reason: str) -> None:
    principal.require_owner("reject drafts")
    if not reason.strip():
        raise InputError("--reason is required")

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        d = get_draft(ledger, draft_id)
        if d["state"] in ("sending", "sent", "ambiguous", "withdrawn", "rejected"):
            raise Conflict(f"draft {draft_id} is {d['state']} and cannot be rejected")
        return [NewEvent("draft.rejected", principal.actor, {"id": draft_id,
                                                             "reason": reason},
                         subject=f"draft:{draft_id}")]
    ledger.transact(build)


__all__ = ["STATES", "approval_conditions", "approval_expired", "approval_hash", "approve",
           "channel_label", "content_hash", "create", "display_state", "draft_channel",
           "edit", "explain", "gate_conditions", "get_draft", "list_drafts",
           "ready_conditions", "reject", "send_ready_conditions", "send_time_conditions",
           "validate_input",
           "withdraw"]
