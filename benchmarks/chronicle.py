"""Benchmark: building the day's chronicle, against a bare count of the day's events.

Setup (not measured): a fresh workspace (``Workspace.init``) whose ledger receives
``--events`` events today (UTC) through ``Ledger.append_many``, ``--batch`` per call:

* ``note.added`` with a small payload (about 90% of the events),
* ``lead.created`` with a unique email (every 10th event; payload keys email, name, status),
* one ``job.run`` receipt per batch (``Receipt(...).as_event()``).

Then, in the same run and on the same file, each repeated ``--repeat`` times
(interleaved, after one untimed warm-up round; the median is reported):

* ``baseline_day``: plain ``sqlite3.connect`` and
  ``SELECT count(*) FROM events WHERE ts >= ? AND ts < ?`` for the day's bounds,
* ``baseline_all``: the same connection and ``SELECT count(*) FROM events``,
* ``compose``: ``atlasops.chronicle.compose.compose(ws, day)``,
* ``compose_write``: ``compose`` and then ``render.write(ws, data, ["md", "html", "json"])``.

Every event is on the day, so both baselines count the same events: the first through
the ``(ts, kind)`` index range of the day (what any count of a day must do), the second
with SQLite's whole-table count, which counts the entries of the smallest index page by
page without reading them. The goal (compose + write within 3x) is reported against
both. The day is fixed once, before the build, and used for everything afterwards; if a
UTC midnight falls during the build, the events appended after it belong to the next
day and the script says so.

Before the timed rounds, ``os.sync()`` writes the setup's dirty pages out, so the
chronicle's durable writes (an fsync per file) do not pay for the build.

Also measured, once each on the same file: ``PRAGMA quick_check`` of the whole database,
and of every table but ``events`` (what the chronicle runs), to show what a full check
would cost.

``--receipts N`` (default 100,000; 0 skips it) also builds a second workspace whose day
holds N ``route.check`` receipts (1 in 1,000 failing) and measures it the same way: a
receipt-heavy day, where the Timeline groups the routine receipts.

``--profile`` also runs ``compose`` + ``write`` once under cProfile and times, on its
own, every SQL statement ``compose`` executes (captured with a trace callback), with
its query plan.

Usage (from the project root)::

    .venv/bin/python benchmarks/chronicle.py [--events N] [--batch N] [--repeat R]
                                             [--receipts N] [--dir DIR] [--json] [--keep]
                                             [--profile]

It measures and reports; it exits 0 whether or not the goal is met.
"""

from __future__ import annotations

import argparse
import cProfile
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from atlasops.chronicle import sources
from atlasops.chronicle.compose import compose
from atlasops.chronicle.render import write
from atlasops.chronicle.sources import day_bounds
from atlasops.ledger import Ledger, NewEvent
from atlasops.receipts import Receipt
from atlasops.workspace import Workspace

GOAL = 3.0  # compose + write, as a multiple of the bare count of the day's events
FORMATS = ["md", "html", "json"]
ACTOR = "bench"
LEAD_EVERY = 10
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
NOTES = ("called, left a voicemail", "asked for pricing", "sent the deck",
         "wants a demo next week", "not the right contact", "replied: interested")
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


# -- setup ---------------------------------------------------------------------


def new_event(i: int, batch: int) -> NewEvent:
    """The ``i``-th event of the workload: mostly notes, every 10th a lead, and the
    last event of every batch a ``job.run`` receipt."""
    if i % batch == batch - 1:
        now = datetime.now(UTC)
        return Receipt(kind="job.run", subject="job:bench", actor=ACTOR,
                       started_at=(now - timedelta(seconds=2)).strftime(TS_FORMAT),
                       finished_at=now.strftime(TS_FORMAT), outcome="ok",
                       summary=f"bench job {i // batch}: 5 prospects researched",
                       evidence={"run_id": f"bench-{i // batch}", "job": "bench",
                                 "builtin": False}).as_event()
    if i % LEAD_EVERY == 0:
        first = FIRST_NAMES[i % len(FIRST_NAMES)]
        last = LAST_NAMES[(i // len(FIRST_NAMES)) % len(LAST_NAMES)]
        return NewEvent("lead.created", ACTOR, {
            "email": f"{first.lower()}.{last.lower()}.{i:08d}@company{i % 977}.example.com",
            "name": f"{first} {last}", "status": "new"})
    return NewEvent("note.added", ACTOR, {"text": NOTES[i % len(NOTES)], "lead": i // 37})


def build(home: Path, events: int, batch: int) -> tuple[Workspace, float]:
    start = time.perf_counter()
    ws = Workspace.init(home, "owner@bench.example")
    ledger = Ledger.for_workspace(ws).open()
    try:
        for lo in range(0, events, batch):
            ledger.append_many([new_event(i, batch) for i in range(lo, min(lo + batch, events))])
    finally:
        ledger.close()
    return ws, time.perf_counter() - start


def build_receipts(home: Path, receipts: int, batch: int) -> tuple[Workspace, float]:
    """A receipt-heavy day: ``receipts`` route checks, one in a thousand failing."""
    start = time.perf_counter()
    ws = Workspace.init(home, "owner@bench.example")
    ledger = Ledger.for_workspace(ws).open()
    now = datetime.now(UTC).strftime(TS_FORMAT)
    try:
        for lo in range(0, receipts, batch):
            ledger.append_many([Receipt(
                kind="route.check", subject=f"route:r{i % 50}", actor=ACTOR, started_at=now,
                finished_at=now, outcome="failed" if i % 1000 == 999 else "ok",
                summary=f"GET /r{i % 50} returns 200.").as_event()
                for i in range(lo, min(lo + batch, receipts))])
    finally:
        ledger.close()
    return ws, time.perf_counter() - start


def quick_checks(db: Path) -> dict[str, float]:
    """Seconds for ``PRAGMA quick_check`` of the whole file, and of every table but events."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        seconds, _ = timed(lambda: conn.execute("PRAGMA quick_check").fetchall())
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = "
                                             "'table' AND name NOT IN ('events') AND name "
                                             "NOT LIKE 'sqlite_%'")]
        partial, _ = timed(lambda: [conn.execute(f'PRAGMA quick_check("{t}")').fetchall()
                                    for t in tables])
    finally:
        conn.close()
    return {"full_s": round(seconds, 4), "all_but_events_s": round(partial, 4)}


def file_sizes(ws: Workspace) -> dict[str, int]:
    journal = sum(p.stat().st_size for p in ws.journal_dir.rglob("*") if p.is_file())
    return {"db_bytes": ws.db_path.stat().st_size, "journal_bytes": journal}


# -- the measurements ----------------------------------------------------------


def baseline_day(db: Path, start: str, end: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events WHERE ts >= ? AND ts < ?",
                                (start, end)).fetchone()[0])
    finally:
        conn.close()


def baseline_all(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(ws: Workspace, day: date, repeat: int) -> tuple[dict[str, list[float]],
                                                              dict[str, Any]]:
    start, end = day_bounds(day)
    db = ws.db_path
    steps: dict[str, Callable[[], Any]] = {
        "baseline_day": lambda: baseline_day(db, start, end),
        "baseline_all": lambda: baseline_all(db),
        "compose": lambda: compose(ws, day),
        "compose_write": lambda: write(ws, compose(ws, day), FORMATS),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    values: dict[str, Any] = {}
    # The setup's writes go to disk first: the chronicle's files are written durably
    # (fsync), and an fsync must not pay for flushing the hundreds of MB just built.
    os.sync()
    for round_ in range(repeat + 1):  # round 0 warms the page cache and is not counted
        for name, fn in steps.items():
            seconds, values[name] = timed(fn)
            if round_:
                times[name].append(seconds)
    return times, values


def chronicle_facts(data: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    numbers = {n["key"]: n["value"] for n in data["numbers"]}
    return {
        "events": numbers.get("events"),
        "prospects_added": numbers.get("prospects_added"),
        "jobs_run": numbers.get("jobs_run"),
        "checks_run": numbers.get("checks_run"),
        "timeline_rows": len(data["timeline"]),
        "confidence": data["confidence"]["overall"],
        "files": {p.suffix.lstrip("."): p.stat().st_size for p in paths},
    }


# -- profile -------------------------------------------------------------------


@contextmanager
def traced_statements() -> Iterator[list[str]]:
    """Record every statement run on the connections the chronicle opens."""
    statements: list[str] = []
    namespace = vars(sources)  # connect_ro as sources.py looks it up
    original: Callable[[Path], sqlite3.Connection] = namespace["connect_ro"]

    def connect_ro(path: Path) -> sqlite3.Connection:
        conn = original(path)
        conn.set_trace_callback(statements.append)
        return conn

    namespace["connect_ro"] = connect_ro
    try:
        yield statements
    finally:
        namespace["connect_ro"] = original


def profile(ws: Workspace, day: date, top: int) -> dict[str, Any]:
    with traced_statements() as statements:
        compose(ws, day)
    queries = []
    conn = sqlite3.connect(f"file:{ws.db_path}?mode=ro", uri=True)
    try:
        for sql in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            runs = []
            rows = 0
            for _ in range(3):
                start = time.perf_counter()
                rows = len(conn.execute(sql).fetchall())
                runs.append(time.perf_counter() - start)
            plan = [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            queries.append({"sql": " ".join(sql.split()), "rows": rows,
                            "median_s": statistics.median(runs), "plan": plan})
    finally:
        conn.close()
    profiler = cProfile.Profile()
    profiler.enable()
    write(ws, compose(ws, day), FORMATS)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return {"queries": queries, "cprofile": out.getvalue()}


# -- reporting -----------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform()}


def run_workload(ws: Workspace, day: date, repeat: int, events: int, build_s: float
                 ) -> dict[str, Any]:
    """Measure one built workspace; the report of it."""
    sizes = file_sizes(ws)
    times, values = measure(ws, day, repeat)
    data = compose(ws, day)
    facts = chronicle_facts(data, write(ws, data, FORMATS))
    med = {name: statistics.median(runs) for name, runs in times.items()}
    ratios = {f"compose_write/{b}": round(med["compose_write"] / med[b], 2)
              for b in ("baseline_day", "baseline_all")}
    return {
        "setup": {"build_s": round(build_s, 2), "events_per_s": round(events / build_s, 1),
                  **sizes, "events_on_day": values["baseline_day"],
                  "events_total": values["baseline_all"],
                  "day_boundary_crossed": values["baseline_day"] != events},
        "chronicle": facts,
        "quick_check": quick_checks(ws.db_path),
        "results": {name: {"runs_s": [round(s, 4) for s in runs],
                           "median_s": round(med[name], 4)} for name, runs in times.items()},
        "ratios": {"compose/baseline_day": round(med["compose"] / med["baseline_day"], 2),
                   **ratios},
        "goal": {"goal": GOAL, **{b: {"ratio": r, "met": r <= GOAL}
                                  for b, r in (("baseline_day", ratios[
                                      "compose_write/baseline_day"]), ("baseline_all", ratios[
                                          "compose_write/baseline_all"]))}},
    }


LABELS = {
    "baseline_day": "baseline: count(*) of the day (sqlite3)",
    "baseline_all": "plain count(*) of all events (sqlite3)",
    "compose": "compose(ws, day)",
    "compose_write": "compose + write md, html, json",
}


def print_report(report: dict[str, Any]) -> None:
    cfg, mach = report["config"], report["machine"]
    print(f"Chronicle of {cfg['day']}: median of {cfg['repeat']} runs, in {cfg['dir']}")
    print(f"nproc {mach['nproc']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
          f"{mach['platform']}")
    for name, workload in report["workloads"].items():
        print(f"\n== {name} ==")
        print_workload(workload)


def print_workload(report: dict[str, Any]) -> None:
    setup, ch, qc = report["setup"], report["chronicle"], report["quick_check"]
    print(f"setup: build {setup['build_s']:.1f} s, {setup['events_on_day']:,} events on the "
          f"day, {setup['events_total']:,} in all; leads.db {setup['db_bytes'] / 1e6:.0f} MB")
    print(f"quick_check: whole database {qc['full_s']:.3f} s; every table but events "
          f"{qc['all_but_events_s']:.3f} s")
    print(f"chronicle: {ch['events']:,} events, {ch['prospects_added']:,} prospects, "
          f"{ch['jobs_run']} job runs, {ch['checks_run']:,} checks, {ch['timeline_rows']} "
          "timeline rows; files "
          + ", ".join(f"{k} {v:,} B" for k, v in ch["files"].items()))
    print()
    header = f"{'measurement':<42} {'median s':>9}   runs (s)"
    print(header)
    print("-" * len(header))
    for name, res in report["results"].items():
        runs = ", ".join(f"{s:.4f}" for s in res["runs_s"])
        print(f"{LABELS[name]:<42} {res['median_s']:>9.4f}   {runs}")
    print()
    for key, value in report["ratios"].items():
        print(f"{key:<28} {value:>6.2f}x")
    goal = report["goal"]
    for baseline in ("baseline_day", "baseline_all"):
        g = goal[baseline]
        print(f"goal: compose + write <= {goal['goal']:.0f}x {baseline}: {g['ratio']:.2f}x "
              f"{'PASS' if g['met'] else 'MISS'}")


def print_profile(prof: dict[str, Any]) -> None:
    print("\nStatements compose() runs, each timed on its own (median of 3):\n")
    for q in prof["queries"]:
        print(f"{q['median_s'] * 1000:9.1f} ms  {q['rows']:>6} rows  {q['sql'][:150]}")
        for line in q["plan"]:
            print(f"{'':27}plan: {line}")
    print("\ncProfile of compose + write:\n")
    print(prof["cprofile"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events appended today before measuring (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=5000,
                        help="events per append_many call, one receipt each (default 5000)")
    parser.add_argument("--receipts", type=int, default=100_000,
                        help="route.check receipts of the receipt-heavy day (default "
                             "100,000; 0 skips it)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement; the median is reported (default 3)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the temporary workspace is made (default: the system "
                             "temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--profile", action="store_true",
                        help="also time each statement compose runs and cProfile "
                             "compose + write")
    args = parser.parse_args(argv)
    for name in ("events", "batch", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.receipts < 0:
        parser.error("--receipts must be 0 or more")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="atlas-bench-chronicle-", dir=args.dir))
    log = sys.stderr if args.json else sys.stdout
    try:
        day = datetime.now(UTC).date()  # fixed once: the build and every measurement use it
        ws, build_s = build(workdir / "ws", args.events, args.batch)
        print(f"setup (not measured): {args.events:,} events in {build_s:.1f} s",
              file=log, flush=True)
        workloads = {f"{args.events:,} events": run_workload(ws, day, args.repeat,
                                                             args.events, build_s)}
        if args.receipts:
            heavy, heavy_s = build_receipts(workdir / "receipts", args.receipts, args.batch)
            print(f"setup (not measured): {args.receipts:,} receipts in {heavy_s:.1f} s",
                  file=log, flush=True)
            workloads[f"{args.receipts:,} route.check receipts"] = run_workload(
                heavy, day, args.repeat, args.receipts, heavy_s)
        for name, w in workloads.items():
            if w["setup"]["day_boundary_crossed"]:
                print(f"note ({name}): a UTC day boundary fell during the build: "
                      f"{w['setup']['events_on_day']:,} events are on {day}", file=log)
        report = {"config": {"events": args.events, "receipts": args.receipts,
                             "batch": args.batch, "repeat": args.repeat,
                             "dir": str(args.dir), "day": day.isoformat()},
                  "machine": machine(), "workloads": workloads}
        prof = profile(ws, day, top=25) if args.profile else None
        if args.json:
            if prof is not None:
                report["profile"] = prof
            print(json.dumps(report, indent=2))
        else:
            print_report(report)
            if prof is not None:
                print_profile(prof)
        if args.keep:
            print(f"kept {workdir}", file=log)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
