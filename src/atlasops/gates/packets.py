"""Touches (the due steps of outreach sequences) and packets (contacts and their
drafts bundled for the owner's review).

Sending a packet *to the owner* goes through lane ``outbound.review`` and its
channel, within that lane's daily cap and cooldown. It is not a prospect send: it
works while ``outbound.prospect`` is closed, and it counts as review mail
(``review_emails``), not as an email sent.

A touch is done when a draft for its lead on its lane is sent (or settled as sent),
or when someone marks it done (``atlas touches done``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, NoReturn

from ..auth import Principal
from ..config import Config
from ..errors import Conflict, InputError, NotFound, SendFailed
from ..ledger import Ledger, NewEvent, utc_now
from ..receipts import Receipt
from ..workspace import Workspace
from .channels import AmbiguousFailure, ChannelUnavailable, SendFailure, TemporaryFailure
from .effects import Capabilities, Effect, perform
from .lanes import fmt_ts
from .suppression import address_key, wire_address

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _marks(values: list[Any]) -> str:
    return ",".join("?" * len(values))


# -- touches ------------------------------------------------------------------

def _parse_due(value: str) -> str:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"due date {value!r} is not ISO-8601 (2026-06-27 or "
                         "2026-06-27T09:00:00Z)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return fmt_ts(dt)


def add_touches(ledger: Ledger, config: Config, principal: Principal,
                rows: list[dict[str, Any]]) -> int:
    """Add touches: each row has lead (id or email), due, and optional sequence/step/lane.
    One invalid row rejects the batch."""
    lanes = config.all_lanes()
    prepared = []
    for n, row in enumerate(rows, start=1):
        lane = row.get("lane") or "outbound.prospect"
        if lane not in lanes:
            raise InputError(f"touch {n}: unknown lane {lane!r}")
        try:
            step = int(row.get("step") or 1)
        except ValueError as exc:
            raise InputError(f"touch {n}: step must be a whole number") from exc
        prepared.append((n, row["lead"], _parse_due(str(row["due"])),
                         str(row.get("sequence") or "default"), step, lane))

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        out = []
        for n, lead, due, seq, step, lane in prepared:
            found = conn.execute("SELECT id FROM leads WHERE id=? OR email_key=?",
                                 (lead if str(lead).isdigit() else -1,
                                  str(lead).casefold())).fetchone()
            if found is None:
                raise NotFound(f"touch {n}: no lead {lead!r}")
            out.append(NewEvent("touch.created", principal.actor, {
                "lead_id": found[0], "sequence": seq, "step": step, "due_at": due,
                "lane": lane}, subject=f"lead:{found[0]}"))
        return out

    return len(ledger.transact(build))


def due_touches(ledger: Ledger, at: datetime | None = None) -> list[dict[str, Any]]:
    at = at or datetime.now(UTC)
    return [dict(r) for r in ledger.query(
        "SELECT t.id, t.lead_id, l.email, t.sequence, t.step, t.due_at, t.lane, t.status"
        " FROM touches t JOIN leads l ON l.id = t.lead_id"
        " WHERE t.status='due' AND t.due_at <= ? ORDER BY t.due_at, t.id", (fmt_ts(at),))]


def touch_done_events(conn: sqlite3.Connection, actor: str, draft: dict[str, Any],
                      at: str) -> list[NewEvent]:
    """The touch a sent draft completes: its lead's earliest touch on its lane that is
    due by now and not yet done (none if the draft has no lead)."""
    if draft.get("lead_id") is None:
        return []
    row = conn.execute("SELECT id FROM touches WHERE lead_id=? AND lane=? AND status='due'"
                       " AND due_at <= ? ORDER BY due_at, id LIMIT 1",
                       (draft["lead_id"], draft["lane"], at)).fetchone()
    if row is None:
        return []
    return [NewEvent("touch.done", actor, {"id": row[0], "status": "done",
                                            "draft_id": draft["id"],
                                            "note": f"draft {draft['id']} was sent"},
                     subject=f"lead:{draft['lead_id']}")]


def complete_touch(ledger: Ledger, principal: Principal, touch_id: int,
                   note: str = "") -> dict[str, Any]:
    """Mark a touch done by hand (agents may: the step happened outside Atlas)."""
    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        row = conn.execute("SELECT lead_id, status FROM touches WHERE id=?",
                           (touch_id,)).fetchone()
        if row is None:
            raise NotFound(f"no touch with id {touch_id}", hint="`atlas touches due` lists "
                           "them.")
        if row[1] != "due":
            raise Conflict(f"touch {touch_id} is {row[1]} already")
        return [NewEvent("touch.done", principal.actor, {"id": touch_id, "status": "done",
                                                         "draft_id": None, "note": note},
                         subject=f"lead:{row[0]}")]

    ledger.transact(build)
    return dict(ledger.query("SELECT * FROM touches WHERE id=?", (touch_id,))[0])


# -- packets ------------------------------------------------------------------

def create_packet(ledger: Ledger, config: Config, principal: Principal, name: str, *,
                  segments: list[str], limit: int = 10,
                  business: str | None = None) -> dict[str, Any]:
    if not NAME_RE.match(name):
        raise InputError("a packet name is letters, digits, '.', '-' or '_'")
    if business is not None and business not in config.businesses:
        raise InputError(f"unknown business {business!r}")
    segs = [s.strip().lower() for s in segments if s.strip()]
    if not segs:
        raise InputError("name at least one segment")
    if limit < 1:
        raise InputError("--limit must be at least 1")

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        if conn.execute("SELECT 1 FROM packets WHERE name=?", (name,)).fetchone():
            raise Conflict(f"a packet named {name!r} exists already")
        sql = (f"SELECT l.id FROM leads l WHERE l.segment IN ({_marks(segs)}) AND "
               "l.email_key NOT IN (SELECT email_key FROM suppressions)")
        args: list[Any] = list(segs)
        if business:
            sql += " AND l.business=?"
            args.append(business)
        sql += " ORDER BY l.id LIMIT ?"
        args.append(limit)
        lead_ids = [r[0] for r in conn.execute(sql, args)]
        if not lead_ids:
            raise NotFound("no unsuppressed leads in those segments")
        draft_ids = [r[0] for r in conn.execute(
            f"SELECT max(id) FROM drafts WHERE lead_id IN ({_marks(lead_ids)}) AND state NOT IN "
            "('withdrawn','rejected') GROUP BY lead_id",
            lead_ids)]
        return [NewEvent("packet.created", principal.actor, {
            "name": name, "business": business, "segments": segs, "lead_ids": lead_ids,
            "draft_ids": sorted(draft_ids)}, subject=f"packet:{name}")]

    ledger.transact(build)
    return get_packet(ledger, name)


def get_packet(ledger: Ledger, name: str) -> dict[str, Any]:
    rows = ledger.query("SELECT * FROM packets WHERE name=?", (name,))
    if not rows:
        raise NotFound(f"no packet named {name!r}", hint="`atlas packet list`.")
    p = dict(rows[0])
    for key in ("segments", "lead_ids", "draft_ids"):
        p[key] = json.loads(p[key])
    return p


def list_packets(ledger: Ledger) -> list[dict[str, Any]]:
    return [get_packet(ledger, str(r["name"])) for r in
            ledger.query("SELECT name FROM packets ORDER BY created_event")]


def render_packet(ledger: Ledger, packet: dict[str, Any]) -> str:
    lines = [f"Review packet {packet['name']}: {len(packet['lead_ids'])} contact(s) in "
             f"segments {', '.join(packet['segments'])}.", "",
             "This is for your review. Nothing here has been sent to anyone; every prospect "
             "send still needs the lane open and your explicit approval of the exact text.",
             ""]
    drafts = {int(r["lead_id"]): dict(r) for r in ledger.query(
        f"SELECT * FROM drafts WHERE id IN ({_marks(packet['draft_ids'])})",
        packet["draft_ids"])} if packet["draft_ids"] else {}
    for n, lead_id in enumerate(packet["lead_ids"], start=1):
        lead = ledger.query("SELECT * FROM leads WHERE id=?", (lead_id,))[0]
        lines.append(f"{n}. {lead['name'] or '(no name)'} <{lead['email']}> - "
                     f"{lead['company'] or '-'} [{lead['segment']}]")
        d = drafts.get(lead_id)
        if d:
            lines += [f"   draft {d['id']} ({d['state']}): {d['subject']}",
                      *("   | " + ln for ln in str(d["body"]).splitlines()), ""]
        else:
            lines.append("   (no draft yet)")
    return "\n".join(lines) + "\n"


def send_review(ws: Workspace, ledger: Ledger, principal: Principal, name: str, *,
                caps: Capabilities, env: Mapping[str, str]) -> dict[str, Any]:
    """Email the packet to the owner through lane outbound.review.

    A refusal (capabilities, lane, cap, cooldown) or a failed send leaves a receipt and
    raises an error that says what to do next."""
    packet = get_packet(ledger, name)
    config = ws.config
    lane = config.all_lanes()["outbound.review"]
    channel = config.all_channels().get(lane.channel or "")
    from_address = (channel.from_address if channel and channel.from_address
                    else config.owner.email)
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = wire_address(config.owner.email) or config.owner.email
    msg["Subject"] = f"[Atlas review] packet {name}: {len(packet['lead_ids'])} contacts"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg_id = make_msgid(domain=from_address.rsplit("@", 1)[-1])
    msg["Message-ID"] = msg_id
    msg.set_content(render_packet(ledger, packet))
    started = utc_now()
    contacts = len(packet["lead_ids"])
    evidence = {"message_id": msg_id, "lane": "outbound.review", "contacts": contacts,
                "job_run": caps.job_run}
    try:
        reply, counters = perform(ledger, config, ws.home, actor=principal.actor, caps=caps,
                                  effect=Effect("email", "outbound.review",
                                                f"email packet {name} to the owner for review",
                                                message=msg, detail={"packet": name}), env=env)
    except SendFailure as exc:
        _review_failed(ledger, principal, name, started, evidence, exc)
    receipt = Receipt(
        kind="packet.review", subject=f"packet:{name}", actor=principal.actor,
        started_at=started, finished_at=utc_now(), outcome="ok",
        summary=(f"Packet {name} ({contacts} contacts) is in the owner's inbox for review "
                 f"({config.owner.email}); no prospect was emailed."),
        effects=counters,
        evidence={**evidence, "reply": reply, "review_emails": 1},
    )
    events = ledger.append_many([
        NewEvent("packet.review_sent", principal.actor, {
            "name": name, "message_id": msg_id, "lane": "outbound.review",
            "to_key": address_key(config.owner.email)}, subject=f"packet:{name}"),
        receipt.as_event()])
    return {"packet": name, "message_id": msg_id, "reply": reply,
            "receipt_id": events[-1].id, "to": config.owner.email}


def _review_failed(ledger: Ledger, principal: Principal, name: str, started: str,
                   evidence: dict[str, Any], exc: SendFailure) -> NoReturn:
    """Record the failed review send, then raise the error with the next step."""
    if isinstance(exc, ChannelUnavailable):
        hint = "Set the environment variables the channel names, then run it again."
    elif isinstance(exc, TemporaryFailure):
        hint = f"Nothing was sent. Try again later: `atlas packet send-review {name}`."
    elif isinstance(exc, AmbiguousFailure):
        hint = ("The owner's server may have it: check the inbox before sending it again "
                "(a second send would be a duplicate).")
    else:
        hint = "Nothing was sent. Check outbound.review's channel and the owner's address."
    receipt = Receipt(
        kind="packet.review", subject=f"packet:{name}", actor=principal.actor,
        started_at=started, finished_at=utc_now(), outcome="failed",
        summary=f"Packet {name} was not sent for review: {exc.reason}",
        evidence={**evidence, "error": exc.reason, "failure": type(exc).__name__,
                  "review_emails": 0})
    event = ledger.append_many([receipt.as_event()])[0]
    raise SendFailed(f"packet {name} was not sent for review: {exc.reason} "
                     f"(receipt #{event.id})", hint=hint, receipt_id=event.id) from exc


__all__ = ["add_touches", "complete_touch", "create_packet", "due_touches", "get_packet",
           "list_packets", "render_packet", "send_review", "touch_done_events"]
