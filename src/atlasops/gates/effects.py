"""Effects: the only way Atlas performs a side effect (send email, post, change a CTA,
spend, deploy).

Work runs with :class:`Capabilities` (a read-only job, or the lanes it may use).
:func:`perform` checks the capability, then the lane (open, its one channel,
owner-only recipients, daily cap, per-recipient cooldown), and only then talks to
the channel. A refusal is recorded as a receipt (what was attempted, why refused)
and raised as :class:`EffectRefused`; counters of a refused effect stay 0.

An email counts as ``emails_sent`` unless every recipient is one of the owner's
addresses (mail to the owner is review mail, counted by the callers' receipts as
``review_emails``), whatever lane carried it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

from ..config import LANE_EFFECTS, Config
from ..errors import AtlasError
from ..ledger import Ledger, NewEvent, utc_now
from ..receipts import Effects, Receipt
from .channels import Sender, sender_for
from .conditions import describe, failing
from .lanes import get_lane, limit_conditions
from .suppression import address_key

Kind = Literal["email", "post", "cta_change", "spend", "deploy"]
COUNTER = {"email": "emails_sent", "post": "public_posts", "cta_change": "cta_changes",
           "spend": "spend_cents"}


class EffectRefused(AtlasError):
    exit_code = 8


@dataclass(frozen=True)
class Capabilities:
    """What the current work may do. The default (no declaration) is unrestricted
    by capability; lanes and approvals still apply."""

    read_only: bool = False
    lanes: frozenset[str] | None = None
    job_run: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Capabilities:
        """``ATLAS_CAPABILITIES``: ``read_only``, or a comma list of lanes."""
        raw = env.get("ATLAS_CAPABILITIES", "").strip()
        job = env.get("ATLAS_JOB_RUN") or None
        if not raw:
            return cls(job_run=job)
        if raw == "read_only":
            return cls(read_only=True, lanes=frozenset(), job_run=job)
        if raw == "none":
            return cls(lanes=frozenset(), job_run=job)
        return cls(lanes=frozenset(x.strip() for x in raw.split(",") if x.strip()),
                   job_run=job)

    def describe(self) -> str:
        if self.read_only:
            return "read-only"
        if self.lanes is None:
            return "unrestricted"
        return "lanes " + (", ".join(sorted(self.lanes)) or "(none)")


@dataclass
class Effect:
    kind: Kind
    lane: str
    summary: str
    message: EmailMessage | None = None
    amount_cents: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def refusal_event(actor: str, caps: Capabilities, effect: Effect, why: str) -> NewEvent:
    """The receipt of a refused effect: what was attempted and why it was refused."""
    now = utc_now()
    return Receipt(
        kind="effect.refused", subject=f"lane:{effect.lane}", actor=actor, started_at=now,
        finished_at=now, outcome="refused",
        summary=f"Refused: {effect.summary}. {why}",
        evidence={"attempted": {"kind": effect.kind, "lane": effect.lane,
                                "summary": effect.summary, **effect.detail},
                  "capabilities": caps.describe(), "job_run": caps.job_run, "why": why},
    ).as_event()


def _refuse(ledger: Ledger, actor: str, caps: Capabilities, effect: Effect, why: str) -> None:
    event = ledger.append_many([refusal_event(actor, caps, effect, why)])[0]
    raise EffectRefused(f"{effect.summary}: refused. {why}", receipt_id=event.id)


def recipient_keys(message: EmailMessage) -> set[str]:
    """Every recipient of the message (To, Cc, Bcc)."""
    headers = [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]
    return {address_key(addr) for _name, addr in getaddresses(headers) if addr}


def only_to_owner(config: Config, message: EmailMessage) -> bool:
    """True when every recipient is one of the owner's addresses."""
    keys = recipient_keys(message)
    return bool(keys) and keys <= {address_key(a) for a in config.owner.addresses()}


def capability_refusal(caps: Capabilities, lane: str) -> str | None:
    """Why the work's capabilities do not allow an effect on this lane, or None."""
    if caps.read_only:
        return "The work runs read-only: it may not cause side effects."
    if caps.lanes is not None and lane not in caps.lanes:
        return f"Its capabilities ({caps.describe()}) do not include lane {lane}."
    return None


def perform(ledger: Ledger, config: Config, home: Path, *, actor: str, caps: Capabilities,
            effect: Effect, env: Mapping[str, str],
            now: datetime | None = None) -> tuple[str, Effects]:
    """Perform one side effect, or refuse it with a receipt. Returns (reply, counters)."""
    refused = capability_refusal(caps, effect.lane)
    if refused is not None:
        _refuse(ledger, actor, caps, effect, refused)
    if effect.lane not in LANE_EFFECTS:
        _refuse(ledger, actor, caps, effect, f"There is no lane {effect.lane}.")
    if effect.kind != "deploy" and LANE_EFFECTS[effect.lane] != effect.kind:
        _refuse(ledger, actor, caps, effect, f"Lane {effect.lane} does not carry "
                f"{effect.kind} effects.")
    lane = get_lane(ledger, config, effect.lane)
    if not lane.open:
        _refuse(ledger, actor, caps, effect, f"Lane {lane.name} is closed ({lane.reason}).")
    channels = config.all_channels()
    if lane.channel is None or lane.channel not in channels:
        _refuse(ledger, actor, caps, effect, f"Lane {lane.name} has no channel configured.")
    assert lane.channel is not None
    if effect.kind != "email" or effect.message is None:
        _refuse(ledger, actor, caps, effect, f"No provider for {effect.kind} effects is "
                f"available on channel {lane.channel}.")
    assert effect.message is not None
    if lane.settings.owner_only and not only_to_owner(config, effect.message):
        _refuse(ledger, actor, caps, effect, f"Lane {lane.name} only sends to the owner's "
                "addresses.")
    now = now or datetime.now(UTC)
    draft = effect.detail.get("draft")  # a draft's own recorded intent is not a prior send
    over = [c for key in sorted(recipient_keys(effect.message))
            for c in failing(limit_conditions(ledger, lane, key, now, exclude_draft=draft))]
    if over:
        _refuse(ledger, actor, caps, effect, f"Lane {lane.name}: {describe(over)}.")
    sender: Sender = sender_for(lane.channel, channels[lane.channel], home, env)
    reply = sender.send(effect.message)
    counters = Effects()
    if not only_to_owner(config, effect.message):  # mail only to the owner is review mail
        setattr(counters, COUNTER[effect.kind], 1)
    return reply, counters


__all__ = ["Capabilities", "Effect", "EffectRefused", "capability_refusal", "only_to_owner",
           "perform", "recipient_keys", "refusal_event"]
