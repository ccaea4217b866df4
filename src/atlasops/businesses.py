"""Businesses of the portfolio: declared in ``atlas.toml``, recorded in the ledger."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .config import Config
from .ledger import Ledger, NewEvent


def sync_events(conn: sqlite3.Connection, config: Config, actor: str) -> list[NewEvent]:
    """The ``business.upserted`` events needed to make the ledger match the config."""
    current = {
        r[0]: (r[1], json.loads(r[2]))
        for r in conn.execute("SELECT slug, name, sites FROM businesses")
    }
    out: list[NewEvent] = []
    for slug, biz in sorted(config.businesses.items()):
        if current.get(slug) != (biz.name, list(biz.sites)):
            out.append(NewEvent("business.upserted", actor,
                                {"slug": slug, "name": biz.name, "sites": list(biz.sites)},
                                subject=f"business:{slug}"))
    return out


def sync(ledger: Ledger, config: Config, actor: str) -> int:
    """Record the config's businesses in the ledger; returns how many changed."""
    return len(ledger.transact(lambda conn: sync_events(conn, config, actor)))


def list_businesses(ledger: Ledger) -> list[dict[str, Any]]:
    rows = ledger.query(
        "SELECT b.slug, b.name, b.sites, count(l.id) AS leads FROM businesses b"
        " LEFT JOIN leads l ON l.business = b.slug GROUP BY b.slug ORDER BY b.slug")
    return [{**dict(r), "sites": json.loads(r["sites"])} for r in rows]


__all__ = ["list_businesses", "sync", "sync_events"]
