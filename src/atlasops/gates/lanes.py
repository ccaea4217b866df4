"""Lanes: their effective state (config default, then the owner's changes), policy
versions, caps and cooldowns, and the deliverability posture.

atlas.toml's ``open`` is a lane's starting state only: once ``atlas lane open`` or
``close`` has been used on a lane, the newest decision in the ledger wins."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..auth import Principal
from ..config import LANE_EFFECTS, Config, Lane
from ..errors import InputError, NotFound
from ..ledger import Ledger, NewEvent, canonical_json, utc_now
from ..receipts import Receipt
from .conditions import Condition


@dataclass(frozen=True)
class LaneView:
    name: str
    settings: Lane
    open: bool
    reason: str
    changed_by: str | None
    changed_at: str | None

    @property
    def channel(self) -> str | None:
        return self.settings.channel

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "open": self.open, "channel": self.channel,
                "reason": self.reason, "changed_by": self.changed_by,
                "changed_at": self.changed_at, "effect": LANE_EFFECTS[self.name],
                "daily_cap": self.settings.daily_cap,
                "cooldown_hours": self.settings.cooldown_hours,
                "needs_approval": self.settings.needs_approval,
                "owner_only": self.settings.owner_only}


def get_lane(ledger: Ledger, config: Config, name: str) -> LaneView:
    lanes = config.all_lanes()
    if name not in lanes:
        raise NotFound(f"no lane named {name!r}", hint="Lanes: " + ", ".join(lanes))
    settings = lanes[name]
    rows = ledger.query("SELECT open, reason, actor, changed_at FROM lane_state WHERE lane=?",
                        (name,))
    if rows:
        r = rows[0]
        return LaneView(name, settings, bool(r["open"]), str(r["reason"]), str(r["actor"]),
                        str(r["changed_at"]))
    return LaneView(name, settings, settings.open,
                    "open in atlas.toml" if settings.open else "closed by default", None, None)


def all_lanes(ledger: Ledger, config: Config) -> list[LaneView]:
    return [get_lane(ledger, config, n) for n in config.all_lanes()]


def set_lane(ledger: Ledger, config: Config, principal: Principal, name: str, *,
             open_: bool, reason: str) -> int:
    """Open or close a lane (owner only); the receipt records who and why."""
    principal.require_owner(f"{'open' if open_ else 'close'} a lane")
    if not reason.strip():
        raise InputError("--reason is required: say why the lane changes")
    before = get_lane(ledger, config, name)
    now = utc_now()
    verb = "opened" if open_ else "closed"
    receipt = Receipt(
        kind="lane.change", subject=f"lane:{name}", actor=principal.actor, started_at=now,
        finished_at=now, outcome="ok",
        summary=(f"Lane {name} is now {'open' if open_ else 'closed'} "
                 f"(was {'open' if before.open else 'closed'}): {reason}"),
        evidence={"lane": name, "was_open": before.open, "reason": reason},
    )
    events = ledger.append_many([
        NewEvent(f"lane.{verb}", principal.actor, {"lane": name, "reason": reason},
                 subject=f"lane:{name}"),
        receipt.as_event(),
    ])
    return events[-1].id


def record_posture(ledger: Ledger, config: Config, principal: Principal, name: str,
                   detail: dict[str, Any]) -> int:
    principal.require_owner("record a lane's deliverability posture")
    get_lane(ledger, config, name)
    return ledger.append("lane.posture_recorded", principal.actor,
                         {"lane": name, "detail": detail}, subject=f"lane:{name}").id


def latest_posture(ledger: Ledger, lane: str) -> dict[str, Any] | None:
    rows = ledger.query("SELECT recorded_at, detail FROM lane_posture WHERE lane=?"
                        " ORDER BY event_id DESC LIMIT 1", (lane,))
    if not rows:
        return None
    return {"recorded_at": rows[0]["recorded_at"], "detail": json.loads(rows[0]["detail"])}


def policy_version(config: Config, name: str) -> str:
    """A hash of the lane's policy and its channel's settings (not its open state).

    An approval binds to it: a policy change voids approvals at send time."""
    lane = config.all_lanes()[name]
    channel = config.all_channels().get(lane.channel or "")
    body = {"lane": name, "policy": lane.model_dump(exclude={"open"}),
            "channel": channel.model_dump() if channel else None}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def parse_ts(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def fmt_ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Cooldowns are per recipient, read from what was sent to whom: a draft whose send may
# have reached the recipient (sent, sending, or ambiguous) counts from the moment of its
# last change (for an ambiguous draft: when it was found ambiguous, at or after its intent,
# which can only lengthen the cooldown). Packets sent for review count toward the lane they
# went through (``packet.review_sent``).
MAYBE_SENT = "state IN ('sent', 'sending', 'ambiguous')"
SENT_AT = "COALESCE(sent_at, updated_at)"
REVIEW_SENT = ("kind = 'packet.review_sent' AND json_extract(payload, '$.lane') = ?")

# The daily cap counts, for every kind of effect, the attempts the effects module recorded
# (``effect.attempting``, written before any provider is called) on the lane since midnight
# UTC, less those whose recorded outcome says they did not happen. An attempt that may have
# happened (no outcome yet, or an ambiguous one) counts.
# (Both scans are ranges of an index on (kind, id) from the day's first event on.)
ATTEMPTS_TODAY = (
    "WITH today AS (SELECT coalesce(min(id), 9223372036854775807) AS first FROM events "
    "WHERE ts >= ?) "
    "SELECT count(*) AS n FROM events a, today WHERE a.kind = 'effect.attempting' "
    "AND a.id >= today.first AND json_extract(a.payload, '$.lane') = ? "
    "AND a.id NOT IN (SELECT json_extract(r.body, '$.evidence.attempt') FROM receipts r, "
    "today t WHERE r.kind = 'effect.refused' AND r.id >= t.first AND r.outcome = 'failed' "
    "AND json_extract(r.body, '$.evidence.attempt') IS NOT NULL "
    "AND json_extract(r.body, '$.evidence.may_have_happened') = 0)")


def sent_today(ledger: Ledger, lane: str, now: datetime) -> int:
    """Effects through the lane since midnight UTC that happened or may have (the one
    definition behind the daily cap and ``gate status``)."""
    midnight = fmt_ts(now.replace(hour=0, minute=0, second=0, microsecond=0))
    return int(ledger.query(ATTEMPTS_TODAY, (midnight, lane))[0]["n"])


def last_sent_to(ledger: Ledger, lane: str, to_key: str, *,
                 exclude_draft: int | None = None) -> str | None:
    """The latest send to this recipient: a draft on any lane, or a packet on this lane."""
    drafts = ledger.query(f"SELECT max({SENT_AT}) AS t FROM drafts WHERE to_key=? AND "
                          f"{MAYBE_SENT} AND id != ?", (to_key, exclude_draft or 0))
    reviews = ledger.query(f"SELECT max(ts) AS t FROM events WHERE {REVIEW_SENT} AND "
                           "json_extract(payload, '$.to_key') = ?", (lane, to_key))
    times = [str(r[0]["t"]) for r in (drafts, reviews) if r[0]["t"] is not None]
    return max(times, default=None)


def cap_condition(ledger: Ledger, lane: LaneView, now: datetime) -> Condition:
    """The lane's daily cap, evaluated now (for every kind of effect)."""
    count = sent_today(ledger, lane.name, now)
    cap = lane.settings.daily_cap
    return Condition("daily_cap_respected", count < cap, f"{count} of {cap} sent today")


def cooldown_condition(ledger: Ledger, lane: LaneView, to_key: str, now: datetime, *,
                       exclude_draft: int | None = None) -> Condition:
    """The lane's per-recipient cooldown (email), evaluated now; ``exclude_draft`` is the
    send being judged itself (its intent may be recorded already)."""
    hours = lane.settings.cooldown_hours
    last = last_sent_to(ledger, lane.name, to_key, exclude_draft=exclude_draft)
    if last is None or hours == 0:
        return Condition("cooldown_respected", True, "no earlier send to this recipient"
                         if last is None else "no cooldown")
    until = parse_ts(last) + timedelta(hours=hours)
    return Condition("cooldown_respected", now >= until,
                     f"last send {last}; cooldown of {hours:g} h has passed"
                     if now >= until else f"last send {last}; cooldown runs until "
                     f"{fmt_ts(until)}")


def limit_conditions(ledger: Ledger, lane: LaneView, to_key: str, now: datetime, *,
                     exclude_draft: int | None = None) -> list[Condition]:
    """The lane's daily cap and its per-recipient cooldown, evaluated now."""
    return [cap_condition(ledger, lane, now),
            cooldown_condition(ledger, lane, to_key, now, exclude_draft=exclude_draft)]


__all__ = ["LaneView", "all_lanes", "cap_condition", "cooldown_condition", "fmt_ts", "get_lane",
           "last_sent_to", "latest_posture", "limit_conditions", "parse_ts", "policy_version",
           "record_posture", "sent_today", "set_lane"]
