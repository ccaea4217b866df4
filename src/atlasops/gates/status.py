"""``atlas gate status``: every lane, what is waiting in it, and what holds it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ..config import Config
from ..ledger import Ledger
from .conditions import failing, hold_reason
from .drafts import approval_expired, ready_conditions, send_time_conditions
from .lanes import all_lanes, sent_today
from .packets import due_touches


def gate_status(ledger: Ledger, config: Config) -> dict[str, Any]:
    """Per lane: drafts by state (approval-ready and expired evaluated now), and one
    line for each reason that holds send-ready or approved drafts."""
    now = datetime.now(UTC)
    touches = due_touches(ledger, now)
    lanes_out = []
    for lane in all_lanes(ledger, config):
        rows = [dict(r) for r in ledger.query("SELECT * FROM drafts WHERE lane=?", (lane.name,))]
        counts: Counter[str] = Counter()
        held: Counter[str] = Counter()
        waiting: Counter[str] = Counter()
        for d in rows:
            state = d["state"]
            if approval_expired(d, now):
                state = "expired"
            elif state == "approved":
                bad = failing(send_time_conditions(ledger, config, d, now))
                if bad:
                    held[hold_reason(lane.name, bad)] += 1
            elif state == "send_ready":
                bad = failing(ready_conditions(ledger, config, d, now))
                if bad:
                    waiting[hold_reason(lane.name, bad)] += 1
                else:
                    state = "approval_ready"
            counts[state] += 1
        lines = [f"{n} approved draft(s) held: {why}" for why, n in held.items()]
        if counts["expired"]:
            lines.append(f"{counts['expired']} approval(s) expired: nothing is sent on them; "
                         "`atlas approve ID` approves the current text afresh")
        lines += [f"{n} send-ready draft(s) await approval-ready: {why}"
                  for why, n in waiting.items()]
        lanes_out.append({
            **lane.to_dict(), "drafts": dict(sorted(counts.items())),
            "sent_today": sent_today(ledger, lane.name, now),
            "touches_due": sum(1 for t in touches if t["lane"] == lane.name),
            "held": lines,
        })
    return {"at": now.isoformat(), "lanes": lanes_out, "touches_due": len(touches)}


__all__ = ["gate_status"]
