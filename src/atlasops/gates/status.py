"""``atlas gate status``: every lane, what is waiting in it, and what holds it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ..config import Config
from ..ledger import Ledger
from .conditions import failing
from .drafts import ready_conditions
from .lanes import all_lanes, sent_today
from .packets import due_touches


def gate_status(ledger: Ledger, config: Config) -> dict[str, Any]:
    now = datetime.now(UTC)
    touches = due_touches(ledger, now)
    lanes_out = []
    for lane in all_lanes(ledger, config):
        rows = [dict(r) for r in ledger.query("SELECT * FROM drafts WHERE lane=?", (lane.name,))]
        counts: Counter[str] = Counter()
        holds: Counter[str] = Counter()
        for d in rows:
            state = d["state"]
            if state in ("send_ready", "approved"):
                bad = failing(ready_conditions(ledger, config, d, now))
                if state == "send_ready" and not bad:
                    state = "approval_ready"
                if bad and state == "approved":
                    first = bad[0]
                    holds[f"lane {lane.name} is closed" if first.name == "lane_open"
                          else f"{first.name}: {first.why}"] += 1
            counts[state] += 1
        held_lines = [f"{n} approved draft(s) held: {why}" for why, n in holds.items()]
        lanes_out.append({
            **lane.to_dict(), "drafts": dict(sorted(counts.items())),
            "sent_today": sent_today(ledger, lane.name, now),
            "touches_due": sum(1 for t in touches if t["lane"] == lane.name),
            "held": held_lines,
        })
    return {"at": now.isoformat(), "lanes": lanes_out, "touches_due": len(touches)}


__all__ = ["gate_status"]
