"""The chronicle's sources: what each one is, where it was read, and whether it could be.

Each adapter returns facts with their provenance (a :class:`SourceInfo`: name,
location, time read), or says why it could not read them. A source that errors,
is missing or is stale is reported with the reason; its numbers become
"unknown". Nothing is guessed. The ledger adapter is here; git is in
``gitlog.py``, status files and the work-log file in ``files.py``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..durability.detect import DETECTED
from ..ledger import Journal, canonical_json
from ..ledger.journal import Located
from ..ledger.store import connect_ro
from ..receipts import Effects
from ..workspace import Workspace

COUNTED_OUT = ("outbox.run", "job.run")  # aggregates: their effects are counted elsewhere
# Kinds read without their body: many of them can land in a day, and the chronicle
# needs only their kind, outcome, time and summary (effects are summed in SQL).
ROUTINE = ("route.check", "ledger.verify", "ledger.replay_check", "backup", "backup.prune",
           "send")
TS = "%Y-%m-%dT%H:%M:%S.%fZ"
JOURNAL_LOOK = 1000  # journal events past the ledger searched for a detection
ZERO_EFFECTS = canonical_json({"effects": Effects().model_dump()})[1:-1]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def why(exc: BaseException) -> str:
    """An exception as one line a reader can act on: its type and its message."""
    text = str(getattr(exc, "message", "") or exc).replace("\n", " ")[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class SourceInfo:
    """Where a source was read, and whether it could be.

    ``available`` is False when nothing could be read (its numbers are unknown).
    ``degraded`` is True when it was read but may not be whole or current (stale, a
    repository of several unreadable, a damaged table): confidence drops, numbers stay.
    """

    name: str
    kind: str
    location: str
    available: bool
    reason: str = ""
    degraded: bool = False
    notes: list[str] = field(default_factory=list)
    read_at: str = field(default_factory=now_iso)

    def fail(self, reason: str) -> None:
        self.available, self.reason = False, reason

    def note(self, text: str, *, degrade: bool = False) -> None:
        self.notes.append(text)
        self.reason = "; ".join(self.notes)
        self.degraded = self.degraded or degrade

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "location": self.location,
                "available": self.available, "reason": self.reason,
                "degraded": self.degraded, "notes": list(self.notes), "read_at": self.read_at}


def day_bounds(day: date) -> tuple[str, str]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    return start.strftime(TS), end.strftime(TS)


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, TS).replace(tzinfo=UTC)


# -- the ledger ---------------------------------------------------------------

@dataclass
class DayReceipt:
    """A receipt of the day. ``body`` is empty for the routine kinds (see ROUTINE)."""

    id: int
    ts: str
    kind: str
    outcome: str
    summary: str
    subject: str
    body: dict[str, Any]


@dataclass
class Waiting:
    """The state now (even for a past day): what is waiting for someone."""

    approved: int
    approval_ready: int
    send_ready: int
    ambiguous: int
    touches_due: int
    failing_routes: list[tuple[str, int]]  # (route, the receipt that says so)
    newest_backup: tuple[str, float] | None  # (name, age in hours)


@dataclass
class Detection:
    """A ``db.corruption.detected`` with no recovery after it."""

    event_id: int
    ts: str
    summary: str
    where: str  # "ledger" or "journal"


@dataclass
class LedgerDay:
    events_total: int
    counts: dict[str, int]
    receipts: list[DayReceipt]
    emails_sent: int
    emails_ambiguous: int
    public_posts: int
    cta_changes: int
    spend_cents: int
    worklog: list[dict[str, Any]]
    waiting: Waiting
    published: int = 0  # content items set to published
    detection: Detection | None = None
    damaged_tables: list[str] = field(default_factory=list)
    _by_kind: dict[str, list[DayReceipt]] | None = field(default=None, repr=False)

    def of_kind(self, *kinds: str) -> list[DayReceipt]:
        if self._by_kind is None:
            self._by_kind = {}
            for r in self.receipts:
                self._by_kind.setdefault(r.kind, []).append(r)
        if len(kinds) == 1:
            return self._by_kind.get(kinds[0], [])
        return sorted((r for k in kinds for r in self._by_kind.get(k, [])), key=lambda r: r.id)


def read_ledger(ws: Workspace, day: date) -> tuple[LedgerDay | None, SourceInfo]:
    """The day from the ledger. Any failure, of any type, makes the ledger unavailable
    with the exception named: bad data in a table must not stop the chronicle."""
    info = SourceInfo("ledger", "ledger", str(ws.db_path), True)
    try:
        conn = connect_ro(ws.db_path)
    except Exception as exc:  # the source boundary: every failure is a reason
        info.fail(why(exc))
        return None, info
    try:
        conn.row_factory = sqlite3.Row
        first = _first_event_ts(conn)
        if first is None or day_bounds(day)[1] <= first:
            info.fail(f"no record before {first}" if first else "the ledger holds no event")
            return None, info
        data = _read_day(conn, day)
        _health(conn, ws, data, info)
        return data, info
    except Exception as exc:  # the source boundary: every failure is a reason
        info.fail(why(exc))
        return None, info
    finally:
        conn.close()


def _first_event_ts(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT ts FROM events ORDER BY id LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def _read_day(conn: sqlite3.Connection, day: date) -> LedgerDay:
    start, end = day_bounds(day)
    # A loose index scan: walk the distinct kinds, count each inside its own (kind, ts)
    # range. Grouping a million rows by kind would sort them all first.
    counts = {str(r["k"]): int(r["n"]) for r in conn.execute(
        "WITH RECURSIVE kinds(k) AS (SELECT min(kind) FROM events UNION ALL "
        "SELECT (SELECT min(kind) FROM events WHERE kind > k) FROM kinds WHERE k IS NOT NULL) "
        "SELECT k, (SELECT count(*) FROM events WHERE kind = k AND ts >= ? AND ts < ?) AS n "
        "FROM kinds WHERE k IS NOT NULL", (start, end)) if r["n"]}
    routine = ",".join(f"'{k}'" for k in ROUTINE)
    receipts = [DayReceipt(int(r["id"]), str(r["ts"]), str(r["kind"]), str(r["outcome"]),
                           str(r["summary"]), str(r["subject"] or ""),
                           json.loads(r["body"]) if r["body"] is not None else {})
                for r in conn.execute(
        "SELECT e.id, e.ts, r.kind, r.outcome, r.summary, r.subject, "
        f"CASE WHEN r.kind IN ({routine}) THEN NULL ELSE r.body END AS body "
        "FROM events e JOIN receipts r ON r.id = e.id WHERE e.kind = 'receipt.recorded' "
        "AND e.ts >= ? AND e.ts < ? ORDER BY e.id", (start, end))]
    counted_out = ",".join(f"'{k}'" for k in COUNTED_OUT)
    # Bodies are canonical JSON; one whose counters are all 0 adds nothing, and finding
    # that text is far cheaper than parsing the body (a day of 100,000 route checks).
    effects = conn.execute(
        "SELECT " + ", ".join(f"coalesce(sum(json_extract(r.body, '$.effects.{k}')), 0)"
                              for k in ("public_posts", "cta_changes", "spend_cents"))
        + " FROM events e JOIN receipts r ON r.id = e.id WHERE e.kind = 'receipt.recorded' "
        f"AND e.ts >= ? AND e.ts < ? AND r.kind NOT IN ({counted_out}) "
        "AND instr(r.body, ?) = 0", (start, end, ZERO_EFFECTS)).fetchone()
    # sent = accepted by the server, or settled as sent by a human afterwards
    emails = int(conn.execute(
        "SELECT count(*) FROM events e JOIN drafts d ON d.id = json_extract(e.payload, '$.id')"
        " WHERE e.ts >= ? AND e.ts < ? AND d.lane != 'outbound.review' AND (e.kind = "
        "'draft.sent' OR (e.kind = 'draft.resolved' AND json_extract(e.payload, '$.sent')))",
        (start, end)).fetchone()[0])
    ambiguous = int(conn.execute(
        "SELECT count(*) FROM events e JOIN drafts d ON d.id = json_extract(e.payload, '$.id')"
        " WHERE e.kind = 'draft.ambiguous' AND e.ts >= ? AND e.ts < ? AND d.state = "
        "'ambiguous' AND d.lane != 'outbound.review'", (start, end)).fetchone()[0])
    published = int(conn.execute(
        "SELECT count(*) FROM events WHERE kind = 'content.status_changed' AND ts >= ? AND "
        "ts < ? AND json_extract(payload, '$.status') = 'published'", (start, end)).fetchone()[0])
    worklog = [{"id": int(r["id"]), "ts": str(r["ts"]), "actor": str(r["actor"]),
                "text": str(r["text"])} for r in conn.execute(
        "SELECT id, ts, actor, json_extract(payload, '$.text') AS text FROM events "
        "WHERE kind = 'worklog.added' AND json_extract(payload, '$.date') = ? "
        "AND text IS NOT NULL ORDER BY id", (day.isoformat(),))]
    return LedgerDay(
        events_total=sum(counts.values()), counts=counts, receipts=receipts,
        emails_sent=emails, emails_ambiguous=ambiguous, public_posts=int(effects[0]),
        cta_changes=int(effects[1]), spend_cents=int(effects[2]), worklog=worklog,
        waiting=_waiting(conn), published=published)


def _waiting(conn: sqlite3.Connection) -> Waiting:
    now = datetime.now(UTC)
    states = {str(r[0]): int(r[1]) for r in conn.execute(
        "SELECT state, count(*) FROM drafts WHERE lane != 'outbound.review' AND state IN "
        "('approved', 'approval_ready', 'send_ready', 'ambiguous') GROUP BY state")}
    touches = int(conn.execute("SELECT count(*) FROM touches WHERE status='due' AND "
                               "due_at <= ?", (now.strftime(TS),)).fetchone()[0])
    # the newest word on each route: a check, or a repair's readback
    failing = [(str(r["subject"]).removeprefix("route:"), int(r["id"])) for r in conn.execute(
        "SELECT id, subject, outcome FROM receipts WHERE id IN (SELECT max(id) FROM receipts "
        "WHERE kind IN ('route.check', 'repair') GROUP BY subject) ORDER BY subject")
        if r["outcome"] not in ("ok", "fixed", "not_broken")]
    backup = conn.execute("SELECT finished_at, subject FROM receipts WHERE kind='backup' "
                          "AND outcome='ok' ORDER BY id DESC LIMIT 1").fetchone()
    newest = None
    if backup is not None:
        age = now - parse_ts(str(backup["finished_at"]))
        newest = (str(backup["subject"]), age.total_seconds() / 3600)
    return Waiting(states.get("approved", 0), states.get("approval_ready", 0),
                   states.get("send_ready", 0), states.get("ambiguous", 0), touches,
                   failing, newest)


# -- is the ledger whole? -------------------------------------------------------

def _health(conn: sqlite3.Connection, ws: Workspace, data: LedgerDay,
            info: SourceInfo) -> None:
    """What the day's numbers cannot show: a detected corruption nobody has recovered
    from, tables that fail ``quick_check``, events the journal holds that the ledger
    has not applied. Each degrades the ledger source, with the reason."""
    data.damaged_tables = _damaged_tables(conn)
    if data.damaged_tables:
        info.note("quick_check fails for " + ", ".join(data.damaged_tables)
                  + " (run `atlas db check`, then `atlas recover`)", degrade=True)
    ledger_max = int(conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
    detection = _ledger_detection(conn)
    try:
        journal = Journal(ws.journal_dir, ws.config.journal.segment_bytes)
        tail = journal.tail()
        if tail.last_id > ledger_max:
            info.note(f"the journal holds events {ledger_max + 1}..{tail.last_id} that the "
                      "ledger has not applied yet", degrade=True)
            # a detection is appended at the journal's end: its last events are enough
            for item in journal.scan(after_id=max(ledger_max, tail.last_id - JOURNAL_LOOK)):
                if isinstance(item, Located) and item.event.kind == DETECTED:
                    detection = Detection(item.event.id, item.event.ts, str(
                        item.event.payload.get("summary", "")), "journal")
    except Exception as exc:  # the journal is a second opinion: its failure is a note
        info.note(f"the journal could not be read to look for detections: {why(exc)}",
                  degrade=True)
    if detection is not None:
        data.detection = detection
        info.note(f"corruption was detected at {detection.ts[:16].replace('T', ' ')} UTC "
                  f"(event {detection.event_id}, in the {detection.where}) and has not "
                  "been recovered", degrade=True)


def _damaged_tables(conn: sqlite3.Connection) -> list[str]:
    """``quick_check`` of every table but ``events``. ``events`` is the one table that
    grows with history (a full check of a million events costs several times the whole
    chronicle, see docs/benchmarks.md); the pages of it the chronicle reads are checked
    by reading them, and ``atlas db check`` checks it all."""
    damaged = []
    tables = [str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'events' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for table in tables:
        try:
            rows = conn.execute(f'PRAGMA quick_check("{table}")').fetchall()
        except sqlite3.DatabaseError as exc:
            rows = [(str(exc),)]
        if [str(r[0]) for r in rows] != ["ok"]:
            damaged.append(f"{table} ({str(rows[0][0])[:120]})")
    return damaged


def _ledger_detection(conn: sqlite3.Connection) -> Detection | None:
    found = conn.execute("SELECT id, ts, json_extract(payload, '$.summary') FROM events "
                         "WHERE kind = ? ORDER BY id DESC LIMIT 1", (DETECTED,)).fetchone()
    if found is None:
        return None
    # a not_broken recovery receipt closes a detection the file no longer shows (durability)
    recovered = conn.execute("SELECT max(id) FROM receipts WHERE kind = 'recovery' AND outcome "
                             "IN ('recovered', 'recovered_with_loss', 'not_broken')").fetchone()[0]
    if recovered is not None and int(recovered) > int(found[0]):
        return None
    return Detection(int(found[0]), str(found[1]), str(found[2] or ""), "ledger")


__all__ = ["COUNTED_OUT", "ROUTINE", "DayReceipt", "Detection", "LedgerDay", "SourceInfo",
           "Waiting", "day_bounds", "parse_ts", "read_ledger", "why"]
