"""Tables are projections of events: one function per event kind.

:func:`apply` is the only code that writes the domain tables. It must be a
pure function of the event (no clock, no randomness, no outside reads), so
that replaying the journal into an empty database reproduces the same tables.
Kinds without a projection (``journal.tail_set_aside``, ...) live only in
the ``events`` table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from .events import Event, canonical_json

Projection = Callable[[sqlite3.Connection, Event], None]
PROJECTIONS: dict[str, Projection] = {}

LEAD_FIELDS = ("email", "name", "company", "segment", "business", "source", "status")


def projection(kind: str) -> Callable[[Projection], Projection]:
    def register(fn: Projection) -> Projection:
        PROJECTIONS[kind] = fn
        return fn

    return register


def insert_event(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "INSERT INTO events(id, ts, kind, actor, subject, payload, prev_hash, hash)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (event.id, event.ts, event.kind, event.actor, event.subject,
         canonical_json(event.payload), event.prev_hash, event.hash),
    )


def apply(conn: sqlite3.Connection, event: Event) -> None:
    """Insert the event row and apply it to the tables (inside the caller's transaction)."""
    insert_event(conn, event)
    fn = PROJECTIONS.get(event.kind)
    if fn is not None:
        fn(conn, event)


@projection("business.upserted")
def _business_upserted(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO businesses(slug, name, sites, updated_event) VALUES (?,?,?,?)"
        " ON CONFLICT(slug) DO UPDATE SET name=excluded.name, sites=excluded.sites,"
        " updated_event=excluded.updated_event",
        (p["slug"], p["name"], json.dumps(p.get("sites", [])), e.id),
    )


@projection("lead.created")
def _lead_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO leads(id, email, email_key, name, company, segment, business, source,"
        " status, created_at, updated_at, updated_event) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (e.id, p["email"], p["email"].casefold(), p.get("name", ""), p.get("company", ""),
         p.get("segment", ""), p.get("business"), p.get("source", ""), p.get("status", "new"),
         e.ts, e.ts, e.id),
    )


@projection("lead.updated")
def _lead_updated(conn: sqlite3.Connection, e: Event) -> None:
    changes = {k: v for k, v in e.payload["changes"].items() if k in LEAD_FIELDS}
    sets = ", ".join(f"{k}=?" for k in changes)
    values: list[object] = list(changes.values())
    if "email" in changes:
        sets += ", email_key=?"
        values.append(str(changes["email"]).casefold())
    conn.execute(
        f"UPDATE leads SET {sets}, updated_at=?, updated_event=? WHERE id=?",
        (*values, e.ts, e.id, e.payload["id"]),
    )


@projection("receipt.recorded")
def _receipt_recorded(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO receipts(id, kind, subject, actor, started_at, finished_at, outcome,"
        " summary, body) VALUES (?,?,?,?,?,?,?,?,?)",
        (e.id, p["kind"], p.get("subject"), p["actor"], p["started_at"], p["finished_at"],
         p["outcome"], p["summary"], canonical_json(p)),
    )


PROJECTED_TABLES = ("events", "businesses", "leads", "receipts")

__all__ = ["LEAD_FIELDS", "PROJECTED_TABLES", "PROJECTIONS", "apply", "insert_event",
           "projection"]
