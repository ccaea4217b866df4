"""Numbered schema migrations, each recorded in ``schema_migrations`` when applied.

A migration is a function registered with :func:`migration`; :func:`migrate`
applies the pending ones in order, each in its own transaction. Never edit a
migration that has shipped: add the next number.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from .events import utc_now


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: list[Migration] = []


def migration(version: int, name: str) -> Callable[[Callable[[sqlite3.Connection], None]],
                                                   Callable[[sqlite3.Connection], None]]:
    def register(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
        if any(m.version == version for m in MIGRATIONS):
            raise ValueError(f"migration {version} is registered twice")
        MIGRATIONS.append(Migration(version, name, fn))
        MIGRATIONS.sort(key=lambda m: m.version)
        return fn

    return register


def _exec_script(conn: sqlite3.Connection, sql: str) -> None:
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration(1, "events, businesses, leads, receipts")
def _m1(conn: sqlite3.Connection) -> None:
    _exec_script(conn, """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT,
            payload TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX events_kind ON events(kind, id);
        CREATE INDEX events_ts ON events(ts);
        CREATE TABLE businesses (
            slug TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            sites TEXT NOT NULL,
            updated_event INTEGER NOT NULL REFERENCES events(id)
        );
        CREATE TABLE leads (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL DEFAULT '',
            company TEXT NOT NULL DEFAULT '',
            segment TEXT NOT NULL DEFAULT '',
            business TEXT REFERENCES businesses(slug),
            source TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'new',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            updated_event INTEGER NOT NULL REFERENCES events(id)
        );
        CREATE INDEX leads_segment ON leads(segment);
        CREATE INDEX leads_business ON leads(business);
        CREATE TABLE receipts (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            kind TEXT NOT NULL,
            subject TEXT,
            actor TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            outcome TEXT NOT NULL,
            summary TEXT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX receipts_kind ON receipts(kind, id);
    """)


@migration(2, "tokens, lanes, suppressions, drafts, touches, packets")
def _m2(conn: sqlite3.Connection) -> None:
    _exec_script(conn, """
        CREATE TABLE tokens (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            created_event INTEGER NOT NULL REFERENCES events(id),
            revoked_event INTEGER REFERENCES events(id)
        );
        CREATE TABLE lane_state (
            lane TEXT PRIMARY KEY,
            open INTEGER NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            changed_at TEXT NOT NULL,
            event_id INTEGER NOT NULL REFERENCES events(id)
        );
        CREATE TABLE lane_posture (
            event_id INTEGER PRIMARY KEY REFERENCES events(id),
            lane TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE INDEX lane_posture_lane ON lane_posture(lane, recorded_at);
        CREATE TABLE suppressions (
            email_key TEXT PRIMARY KEY,
            email TEXT NOT NULL,
            reason TEXT NOT NULL,
            added_at TEXT NOT NULL,
            event_id INTEGER NOT NULL REFERENCES events(id)
        );
        CREATE TABLE drafts (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            lane TEXT NOT NULL,
            channel TEXT,
            to_addr TEXT NOT NULL,
            to_key TEXT NOT NULL,
            subject TEXT NOT NULL,
            body TEXT NOT NULL,
            business TEXT REFERENCES businesses(slug),
            lead_id INTEGER REFERENCES leads(id),
            state TEXT NOT NULL,
            problems TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            version INTEGER NOT NULL,
            approval_hash TEXT,
            approved_by TEXT,
            approved_at TEXT,
            expires_at TEXT,
            message_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            sent_at TEXT,
            server_reply TEXT,
            content_sha256 TEXT,
            reason TEXT
        );
        CREATE INDEX drafts_state ON drafts(state, lane);
        CREATE INDEX drafts_to ON drafts(to_key, sent_at);
        CREATE TABLE touches (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            lead_id INTEGER NOT NULL REFERENCES leads(id),
            sequence TEXT NOT NULL,
            step INTEGER NOT NULL,
            due_at TEXT NOT NULL,
            lane TEXT NOT NULL,
            status TEXT NOT NULL,
            draft_id INTEGER REFERENCES drafts(id)
        );
        CREATE INDEX touches_due ON touches(status, due_at);
        CREATE TABLE packets (
            name TEXT PRIMARY KEY,
            business TEXT,
            segments TEXT NOT NULL,
            lead_ids TEXT NOT NULL,
            draft_ids TEXT NOT NULL,
            created_event INTEGER NOT NULL REFERENCES events(id),
            review_event INTEGER REFERENCES events(id)
        )
    """)


@migration(3, "snapshots, content, deploys, job runs")
def _m3(conn: sqlite3.Connection) -> None:
    _exec_script(conn, """
        CREATE TABLE snapshots (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            name TEXT NOT NULL,
            business TEXT REFERENCES businesses(slug),
            sha256 TEXT NOT NULL,
            data TEXT NOT NULL,
            job_run TEXT,
            recorded_at TEXT NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE INDEX snapshots_name ON snapshots(name, id);
        CREATE TABLE content (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            business TEXT NOT NULL REFERENCES businesses(slug),
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE TABLE deploys (
            id INTEGER PRIMARY KEY REFERENCES events(id),
            site TEXT NOT NULL,
            provider TEXT NOT NULL,
            url TEXT NOT NULL,
            git_commit TEXT,
            evidence TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE INDEX deploys_time ON deploys(recorded_at);
        CREATE TABLE job_runs (
            run_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            started_event INTEGER NOT NULL REFERENCES events(id),
            started_at TEXT NOT NULL,
            receipt_id INTEGER REFERENCES events(id),
            outcome TEXT
        )
    """)


@migration(4, "a covering index for reading one day's events by kind")
def _m4(conn: sqlite3.Connection) -> None:
    _exec_script(conn, """
        DROP INDEX IF EXISTS events_ts;
        CREATE INDEX events_ts_kind ON events(ts, kind)
    """)


@migration(5, "an index by kind then time, for counting one day's events per kind")
def _m5(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX events_kind_ts ON events(kind, ts)")


@migration(6, "the gaps recoveries declared in the hash chain (ledger.gap_declared)")
def _m6(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE ledger_gaps (
            first INTEGER PRIMARY KEY,
            last INTEGER NOT NULL,
            prev_hash TEXT NOT NULL,
            next_prev_hash TEXT NOT NULL,
            reason TEXT NOT NULL,
            event_id INTEGER NOT NULL REFERENCES events(id)
        )""")


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    value = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    return int(value or 0)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations; return the versions applied. ``conn`` is in autocommit."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = current_version(conn)
    applied: list[int] = []
    for m in MIGRATIONS:
        if m.version <= done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            m.apply(conn)
            conn.execute(
                "INSERT INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                (m.version, m.name, utc_now()),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        applied.append(m.version)
    return applied


def latest_version() -> int:
    return MIGRATIONS[-1].version if MIGRATIONS else 0


__all__ = ["MIGRATIONS", "Migration", "current_version", "latest_version", "migrate", "migration"]
