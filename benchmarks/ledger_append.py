"""Benchmark: ledger appends, Atlas against a raw sqlite3 baseline.

Four measurements, each repeated ``--repeat`` times in a fresh temporary directory,
reported as the median rate in events per second:

* ``atlas_single``: ``Ledger.append("lead.created", ...)``, one event per call
  (file lock, BEGIN IMMEDIATE, insert + project, journal write + fdatasync, COMMIT).
* ``raw_single``: plain sqlite3 with ``journal_mode=WAL`` and ``synchronous=FULL``,
  one event row and one lead row per transaction.
* ``atlas_batch``: ``Ledger.append_many`` with ``--batch`` events per call.
* ``raw_batch``: plain sqlite3, one transaction per ``--batch`` events with ``executemany``.
* ``raw_single_inserts``, ``raw_batch_inserts``: the same two baselines with every row
  (JSON, hash) built before the clock starts, so that only SQLite's inserts are timed.

The baseline uses the same tables, columns and indexes as the ledger and does the work
any application storing such rows must do (timestamp, JSON payload, SHA-256 hash chain),
so the ratio atlas/raw shows the cost of the journal-first design, not of the row shape.

Usage (from the project root)::

    .venv/bin/python benchmarks/ledger_append.py [--events N] [--batch N] [--repeat R]
                                                  [--dir DIR] [--json] [--profile]

It measures and reports; it exits 0 whether or not the goals are met.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atlasops.ledger.events import NewEvent
from atlasops.ledger.store import Ledger

SEGMENT_BYTES = 64 * 1024 * 1024
KIND = "lead.created"
ACTOR = "bench"
GENESIS = "0" * 64

# Goals from the issue: Atlas's rate as a fraction of the raw sqlite3 rate.
GOAL_SINGLE = 0.5
GOAL_BATCH = 0.33

SEGMENTS = ("smb", "mid-market", "enterprise", "public-sector")
SOURCES = ("csv-import", "web-form", "referral", "trade-show", "outbound")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")

Payload = dict[str, Any]
Measure = Callable[[Path, list[Payload], int], float]

# The ledger's own tables (migration 1), recreated for the baseline.
RAW_SCHEMA = (
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        subject TEXT,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX events_kind ON events(kind, id)",
    "CREATE INDEX events_ts ON events(ts)",
    """CREATE TABLE businesses (
        slug TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        sites TEXT NOT NULL,
        updated_event INTEGER NOT NULL REFERENCES events(id)
    )""",
    """CREATE TABLE leads (
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
    )""",
    "CREATE INDEX leads_segment ON leads(segment)",
    "CREATE INDEX leads_business ON leads(business)",
)
INSERT_EVENT = (
    "INSERT INTO events(id, ts, kind, actor, subject, payload, prev_hash, hash)"
    " VALUES (?,?,?,?,?,?,?,?)"
)
INSERT_LEAD = (
    "INSERT INTO leads(id, email, email_key, name, company, segment, business, source,"
    " status, created_at, updated_at, updated_event) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)

EventRow = tuple[int, str, str, str, None, str, str, str]
LeadRow = tuple[int, str, str, str, str, str, None, str, str, str, str, int]


# -- workload ------------------------------------------------------------------


def lead_payload(i: int) -> Payload:
    """A realistic ``lead.created`` payload; the email is unique per ``i``."""
    first = FIRST_NAMES[i % len(FIRST_NAMES)]
    last = LAST_NAMES[(i // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return {
        "email": f"{first.lower()}.{last.lower()}.{i:07d}@company{i % 977}.example.com",
        "name": f"{first} {last}",
        "company": f"Company {i % 977} Ltd",
        "segment": SEGMENTS[i % len(SEGMENTS)],
        "source": SOURCES[i % len(SOURCES)],
        "status": "new",
    }


def chunks(items: list[Payload], size: int) -> list[list[Payload]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# -- Atlas ---------------------------------------------------------------------


def open_ledger(workdir: Path) -> Ledger:
    journal_dir = workdir / "journal"
    journal_dir.mkdir()
    ledger = Ledger(workdir / "ledger.db", journal_dir, workdir / "ledger.lock", SEGMENT_BYTES)
    return ledger.open()


def check_count(ledger: Ledger, expected: int) -> None:
    got = ledger.count("events")
    if got != expected:
        raise RuntimeError(f"the ledger holds {got} events, expected {expected}")


def atlas_single(workdir: Path, payloads: list[Payload], _batch: int) -> float:
    ledger = open_ledger(workdir)
    try:
        append = ledger.append
        start = time.perf_counter()
        for payload in payloads:
            append(KIND, ACTOR, payload)
        elapsed = time.perf_counter() - start
        check_count(ledger, len(payloads))
    finally:
        ledger.close()
    return elapsed


def atlas_batch(workdir: Path, payloads: list[Payload], batch: int) -> float:
    batches = [[NewEvent(KIND, ACTOR, p) for p in chunk] for chunk in chunks(payloads, batch)]
    ledger = open_ledger(workdir)
    try:
        append_many = ledger.append_many
        start = time.perf_counter()
        for news in batches:
            append_many(news)
        elapsed = time.perf_counter() - start
        check_count(ledger, len(payloads))
    finally:
        ledger.close()
    return elapsed


# -- raw sqlite3 baseline ------------------------------------------------------


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def open_raw(workdir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(workdir / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("BEGIN IMMEDIATE")
    for statement in RAW_SCHEMA:
        conn.execute(statement)
    conn.execute("COMMIT")
    return conn


def raw_rows(id_: int, ts: str, prev: str, payload: Payload) -> tuple[EventRow, LeadRow]:
    """The event row (JSON payload, chained SHA-256) and the lead row for one event."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{id_}|{ts}|{KIND}|{ACTOR}|{prev}|{body}".encode()).hexdigest()
    email = str(payload["email"])
    event: EventRow = (id_, ts, KIND, ACTOR, None, body, prev, digest)
    lead: LeadRow = (id_, email, email.casefold(), payload["name"], payload["company"],
                     payload["segment"], None, payload["source"], payload["status"],
                     ts, ts, id_)
    return event, lead


def raw_check_count(conn: sqlite3.Connection, expected: int) -> None:
    got = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    if got != expected:
        raise RuntimeError(f"the raw database holds {got} events, expected {expected}")


def raw_single(workdir: Path, payloads: list[Payload], _batch: int) -> float:
    conn = open_raw(workdir)
    try:
        execute = conn.execute
        prev = GENESIS
        start = time.perf_counter()
        for id_, payload in enumerate(payloads, start=1):
            event, lead = raw_rows(id_, utc_now(), prev, payload)
            execute("BEGIN IMMEDIATE")
            execute(INSERT_EVENT, event)
            execute(INSERT_LEAD, lead)
            execute("COMMIT")
            prev = event[7]
        elapsed = time.perf_counter() - start
        raw_check_count(conn, len(payloads))
    finally:
        conn.close()
    return elapsed


def raw_batch(workdir: Path, payloads: list[Payload], batch: int) -> float:
    conn = open_raw(workdir)
    try:
        prev = GENESIS
        next_id = 1
        start = time.perf_counter()
        for chunk in chunks(payloads, batch):
            ts = utc_now()
            events: list[EventRow] = []
            leads: list[LeadRow] = []
            for payload in chunk:
                event, lead = raw_rows(next_id, ts, prev, payload)
                events.append(event)
                leads.append(lead)
                prev = event[7]
                next_id += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_EVENT, events)
            conn.executemany(INSERT_LEAD, leads)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        raw_check_count(conn, len(payloads))
    finally:
        conn.close()
    return elapsed


def prepared_rows(payloads: list[Payload]) -> list[tuple[EventRow, LeadRow]]:
    """Every row built before the clock starts: the inserts-only baselines time SQLite alone."""
    ts, prev, rows = utc_now(), GENESIS, []
    for id_, payload in enumerate(payloads, start=1):
        event, lead = raw_rows(id_, ts, prev, payload)
        rows.append((event, lead))
        prev = event[7]
    return rows


def raw_single_inserts(workdir: Path, payloads: list[Payload], _batch: int) -> float:
    rows = prepared_rows(payloads)
    conn = open_raw(workdir)
    try:
        execute = conn.execute
        start = time.perf_counter()
        for event, lead in rows:
            execute("BEGIN IMMEDIATE")
            execute(INSERT_EVENT, event)
            execute(INSERT_LEAD, lead)
            execute("COMMIT")
        elapsed = time.perf_counter() - start
        raw_check_count(conn, len(payloads))
    finally:
        conn.close()
    return elapsed


def raw_batch_inserts(workdir: Path, payloads: list[Payload], batch: int) -> float:
    rows = prepared_rows(payloads)
    batches = [([e for e, _ in rows[i:i + batch]], [lead for _, lead in rows[i:i + batch]])
               for i in range(0, len(rows), batch)]
    conn = open_raw(workdir)
    try:
        start = time.perf_counter()
        for events, leads in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_EVENT, events)
            conn.executemany(INSERT_LEAD, leads)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        raw_check_count(conn, len(payloads))
    finally:
        conn.close()
    return elapsed


# -- running -------------------------------------------------------------------

MEASURES: dict[str, Measure] = {
    "atlas_single": atlas_single,
    "raw_single": raw_single,
    "raw_single_inserts": raw_single_inserts,
    "atlas_batch": atlas_batch,
    "raw_batch": raw_batch,
    "raw_batch_inserts": raw_batch_inserts,
}
LABELS = {
    "atlas_single": "Atlas append (1 event/commit)",
    "raw_single": "raw sqlite3 WAL+FULL (1/commit)",
    "raw_single_inserts": "  the same, inserts only",
    "atlas_batch": "Atlas append_many (batch)",
    "raw_batch": "raw sqlite3 executemany (batch)",
    "raw_batch_inserts": "  the same, inserts only",
}


@dataclass
class Result:
    name: str
    events: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.events / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "rates": [round(r, 1) for r in self.rates],
            "median_events_per_s": round(self.median, 1),
            "median_us_per_event": round(1e6 / self.median, 1),
        }


def run_one(measure: Measure, base: Path, name: str, payloads: list[Payload],
            batch: int, keep: bool) -> float:
    workdir = Path(tempfile.mkdtemp(prefix=f"atlas-bench-{name}-", dir=base))
    try:
        return measure(workdir, payloads, batch)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run(events: int, batch: int, repeat: int, base: Path, keep: bool) -> dict[str, Result]:
    payloads = [lead_payload(i) for i in range(events)]
    results = {name: Result(name, events) for name in MEASURES}
    # Interleave the measurements so that drift (page cache, other load) hits all alike.
    for _ in range(repeat):
        for name, measure in MEASURES.items():
            results[name].seconds.append(run_one(measure, base, name, payloads, batch, keep))
    return results


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def summary(results: dict[str, Result], args: argparse.Namespace) -> dict[str, Any]:
    def ratio(atlas: str, raw: str) -> float:
        return round(results[atlas].median / results[raw].median, 3)

    # Two readings of "raw sqlite3 doing the same inserts": with the per-event work an
    # application needs for the same guarantee (timestamp, JSON, SHA-256 chain) timed too,
    # and SQLite's inserts alone (rows prepared before the clock starts). Goals are judged
    # on both; the stricter one is the second.
    goals = {}
    for key, goal, atlas, raw in (("single", GOAL_SINGLE, "atlas_single", "raw_single"),
                                  ("batch", GOAL_BATCH, "atlas_batch", "raw_batch")):
        for suffix, baseline in (("", raw), ("_inserts_only", f"{raw}_inserts")):
            r = ratio(atlas, baseline)
            goals[key + suffix] = {"goal": goal, "ratio": r, "met": r >= goal,
                                   "baseline": baseline}
    return {
        "config": {"events": args.events, "batch": args.batch, "repeat": args.repeat,
                   "dir": str(args.dir), "segment_bytes": SEGMENT_BYTES},
        "machine": machine(),
        "results": {name: r.as_dict() for name, r in results.items()},
        "ratios": {k: g["ratio"] for k, g in goals.items()},
        "goals": goals,
    }


def print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    mach = report["machine"]
    print(f"Ledger appends: {cfg['events']} events per run, batch {cfg['batch']}, "
          f"median of {cfg['repeat']} runs, in {cfg['dir']}")
    print(f"nproc {mach['nproc']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
          f"{mach['platform']}")
    print()
    header = f"{'measurement':<34} {'events/s':>10} {'us/event':>9}   runs (events/s)"
    print(header)
    print("-" * len(header))
    for name, res in report["results"].items():
        runs = ", ".join(f"{r:.0f}" for r in res["rates"])
        print(f"{LABELS[name]:<34} {res['median_events_per_s']:>10.0f} "
              f"{res['median_us_per_event']:>9.1f}   {runs}")
    print()
    for key, goal in report["goals"].items():
        verdict = "PASS" if goal["met"] else "MISS"
        print(f"{key:<19} atlas/{goal['baseline']:<18} = {goal['ratio']:.2f}x   "
              f"goal >= {goal['goal']:.2f}x   {verdict}")


def profile_single(events: int, base: Path, top: int) -> str:
    """cProfile of Atlas single-event appends; the top functions by own time."""
    payloads = [lead_payload(i) for i in range(events)]
    workdir = Path(tempfile.mkdtemp(prefix="atlas-bench-profile-", dir=base))
    try:
        ledger = open_ledger(workdir)
        try:
            profiler = cProfile.Profile()
            profiler.enable()
            for payload in payloads:
                ledger.append(KIND, ACTOR, payload)
            profiler.disable()
        finally:
            ledger.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000,
                        help="events appended per run (default 5000)")
    parser.add_argument("--batch", type=int, default=100,
                        help="events per append_many / executemany call (default 100)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement; the median is reported (default 3)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the temporary directories are made (default: the "
                             "system temp dir); put it on the disk you want to measure")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--profile", action="store_true",
                        help="instead of measuring, cProfile Atlas single appends")
    args = parser.parse_args(argv)
    for name in ("events", "batch", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        print(profile_single(args.events, args.dir, top=25))
        return 0
    results = run(args.events, args.batch, args.repeat, args.dir, args.keep)
    report = summary(results, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
