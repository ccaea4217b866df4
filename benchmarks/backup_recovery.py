"""Benchmark: backup and recovery of a large ledger, against cp and raw sqlite3.

One run builds an Atlas workspace whose ``leads.db`` reaches about ``--size-mb`` MB
(``note.added`` events with ~1 KB payloads, appended 1000 per ``append_many``; this
is setup and is not measured), then times, as a ratio to ``cp`` of the same file:

* ``cp``: ``cp leads.db copy`` (no fsync), the unit every other time is divided by;
* ``raw_backup``: ``sqlite3.connect(src).backup(dst)``, SQLite's online backup API;
* ``raw_integrity``: ``PRAGMA integrity_check`` on the live file;
* ``raw_sha256``: SHA-256 of the file with hashlib, 4 MiB reads;
* ``atlas_backup``: ``take_backup(ws, ledger)``: snapshot, fsync, then every check on
  the copy (quick_check, integrity_check, foreign keys, sha256, facts, hash chain);
* ``atlas_recover``: ``recover(ws)`` after 16 pages in the middle of ``leads.db`` were
  zeroed, with a validated backup and a few thousand journal events after it to replay;
* the per-append latency of a writer in another process while ``take_backup`` runs,
  against the same writer with nothing else going on.

Optionally (when a ``litestream`` binary is found on PATH or beside this Python), the
same database is replicated with Litestream to a file replica, and both systems lose
their primary right after a burst of single-row commits: Litestream's restore (with
``-integrity-check full``) and Atlas's recovery are timed, and the committed rows each
one lost are counted.

Usage (from the project root)::

    .venv/bin/python benchmarks/backup_recovery.py [--size-mb N] [--repeat R] [--dir DIR]
                                                    [--json] [--keep] [--no-litestream]

It measures and reports; it exits 0 whether or not the goals are met.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

from atlasops.durability import backup as backup_module
from atlasops.durability import recovery as recovery_module
from atlasops.durability.backup import take_backup
from atlasops.durability.recovery import recover
from atlasops.errors import AtlasError
from atlasops.ledger import Ledger, NewEvent
from atlasops.workspace import Workspace

OWNER = "owner@bench.example"
ACTOR = "bench"
KIND = "note.added"
BUILD_BATCH = 1000
PAD_RAW_BYTES = 720  # base64 -> 960 characters: a ~1 KB payload that does not compress away
PAGE = 4096
ZERO_PAGES = 16
HASH_CHUNK = 4 * 1024 * 1024
FREE_SPACE_FACTOR = 5

# Goals from the issue.
GOAL_BACKUP = 1.3  # atlas backup <= 1.3 x (raw backup + integrity_check + sha256)
GOAL_RECOVER = 2.0  # atlas recover <= 2 x (cp + integrity_check)
GOAL_P99_MS = 50.0  # writer p99 during a backup

LABELS = {
    "cp": "cp leads.db",
    "raw_backup": "raw backup API copy",
    "raw_integrity": "raw PRAGMA integrity_check",
    "raw_sha256": "raw sha256 (4 MiB reads)",
    "atlas_backup": "atlas backup (take_backup)",
}
ORDER = ("cp", "raw_backup", "raw_integrity", "raw_sha256", "atlas_backup")


def log(msg: str) -> None:
    """Progress goes to stderr, so that --json keeps stdout clean."""
    print(msg, file=sys.stderr, flush=True)


def mb(n: int) -> float:
    return n / (1024 * 1024)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def drop_sidecars(db: Path) -> list[str]:
    removed = []
    for suffix in ("-wal", "-shm"):
        side = Path(str(db) + suffix)
        if side.exists():
            side.unlink()
            removed.append(side.name)
    return removed


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Phases:
    """Times named module-level functions of Atlas while a measurement runs.

    The functions are looked up as module globals at call time, so wrapping the
    module attribute times every call; names that do not exist are skipped."""

    def __init__(self, module: ModuleType, names: Sequence[str]) -> None:
        self.module, self.names = module, names
        self.spans: list[tuple[str, float, float]] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Phases:
        for name in self.names:
            fn = getattr(self.module, name, None)
            if callable(fn):
                self._saved[name] = fn
                setattr(self.module, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            setattr(self.module, name, fn)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans.append((name, t0, time.monotonic()))
        return timed

    def totals(self) -> list[dict[str, Any]]:
        out: dict[str, float] = {}
        for name, t0, t1 in self.spans:
            out[name] = out.get(name, 0.0) + (t1 - t0)
        return [{"phase": name, "seconds": round(sec, 3)} for name, sec in out.items()]


BACKUP_PHASES = ("_snapshot", "validate_copy", "write_json_durably", "record")
RECOVERY_PHASES = ("diagnose", "choose_backup", "read_window", "build_ledger",
                   "write_journal", "_verify_result", "_finish_pending")


# -- building the workspace (setup, not measured) -----------------------------------


def note_payloads(start: int, count: int, rng: random.Random) -> list[NewEvent]:
    return [NewEvent(KIND, ACTOR, {
        "i": i, "lead": f"lead{i % 50_000}@company{i % 977}.example.com",
        "text": base64.b64encode(rng.randbytes(PAD_RAW_BYTES)).decode("ascii"),
    }) for i in range(start, start + count)]


def build(ws: Workspace, target_bytes: int) -> dict[str, Any]:
    rng = random.Random(20240601)
    ledger = Ledger.for_workspace(ws).open()
    db, wal = ws.db_path, Path(str(ws.db_path) + "-wal")
    t0 = time.perf_counter()
    events = 0
    next_report = 0.05
    try:
        while file_size(db) + file_size(wal) < target_bytes:
            ledger.append_many(note_payloads(events, BUILD_BATCH, rng))
            events += BUILD_BATCH
            done = (file_size(db) + file_size(wal)) / target_bytes
            if done >= next_report:
                elapsed = time.perf_counter() - t0
                log(f"  build: {min(done, 1):4.0%}  {events:>9,} events  "
                    f"{elapsed:6.1f} s  ({events / elapsed:,.0f} events/s)")
                next_report = math.floor(done * 20 + 1) / 20
    finally:
        ledger.close()  # the last connection checkpoints the WAL into leads.db
    seconds = time.perf_counter() - t0
    return {"events": events, "seconds": round(seconds, 2),
            "db_bytes": file_size(db), "journal_bytes": dir_size(ws.journal_dir)}


# -- the measurements ------------------------------------------------------------------


def time_cp(db: Path, scratch: Path) -> float:
    dst = scratch / "cp-copy.db"
    t0 = time.perf_counter()
    subprocess.run(["cp", str(db), str(dst)], check=True)
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def time_raw_backup(db: Path, scratch: Path) -> float:
    dst_path = scratch / "raw-backup.db"
    t0 = time.perf_counter()
    src = sqlite3.connect(db)
    dst = sqlite3.connect(dst_path)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    elapsed = time.perf_counter() - t0
    dst_path.unlink()
    return elapsed


def time_raw_integrity(db: Path, _scratch: Path) -> float:
    t0 = time.perf_counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    if rows != [("ok",)]:
        raise RuntimeError(f"integrity_check on the live file: {rows[:5]}")
    return elapsed


def time_raw_sha256(db: Path, _scratch: Path) -> float:
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(db, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    h.hexdigest()
    return time.perf_counter() - t0


class AtlasBackup:
    """``take_backup`` on the open ledger; the backup is deleted afterwards."""

    def __init__(self, ws: Workspace, ledger: Ledger) -> None:
        self.ws, self.ledger = ws, ledger
        self.checks: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []

    def __call__(self, _db: Path, _scratch: Path) -> float:
        with Phases(backup_module, BACKUP_PHASES) as phases:
            t0 = time.perf_counter()
            info, _receipt = take_backup(self.ws, self.ledger, actor=ACTOR, label="bench")
            elapsed = time.perf_counter() - t0
        if not info.validated:
            raise RuntimeError(f"take_backup did not validate its copy: {info.manifest}")
        self.checks = [{"name": c["name"], "ms": c["ms"]} for c in info.manifest["checks"]]
        self.phases = phases.totals()
        shutil.rmtree(info.path)
        return elapsed


def run_timings(ws: Workspace, ledger: Ledger, scratch: Path, repeat: int
                ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    atlas = AtlasBackup(ws, ledger)
    measures: dict[str, Callable[[Path, Path], float]] = {
        "cp": time_cp, "raw_backup": time_raw_backup, "raw_integrity": time_raw_integrity,
        "raw_sha256": time_raw_sha256, "atlas_backup": atlas,
    }
    runs: dict[str, list[float]] = {name: [] for name in ORDER}
    # Interleaved, so that drift (page cache, writeback, neighbours) hits all alike.
    for r in range(repeat):
        for name in ORDER:
            os.sync()  # the previous step's dirty pages are not this one's to write
            seconds = measures[name](ws.db_path, scratch)
            runs[name].append(seconds)
            log(f"  run {r + 1}/{repeat}  {LABELS[name]:<28} {seconds:8.2f} s")
    return runs, {"checks": atlas.checks, "phases": atlas.phases}


# -- a writer in another process -------------------------------------------------------


def writer_process(home: str, conn: Connection, mode: str, interval: float,
                   seconds: float) -> None:
    """Appends one small event at a time.

    ``latency``: until told to stop, every ``interval`` seconds; sends back
    ``[(monotonic start, seconds)]``. ``burst``: back to back for ``seconds``; sends
    back the acknowledged ``[(id, hash)]`` and then waits to be killed."""
    ws = Workspace.open(Path(home))
    ledger = Ledger.for_workspace(ws).open()
    conn.send("ready")
    if mode == "latency":
        samples: list[tuple[float, float]] = []
        n = 0
        while not conn.poll():
            t0 = time.monotonic()
            ledger.append(KIND, "bench-writer", {"n": n, "text": "concurrent writer"})
            t1 = time.monotonic()
            samples.append((t0, t1 - t0))
            n += 1
            pause = interval - (t1 - t0)
            if pause > 0:
                time.sleep(pause)
        conn.recv()
        ledger.close()
        conn.send(samples)
        return
    acked: list[tuple[int, str]] = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        event = ledger.append(KIND, "bench-burst", {"n": n, "text": "burst before the loss"})
        acked.append((event.id, event.hash))
        n += 1
    conn.send(acked)
    conn.recv()  # killed here, with the connection still open: a sudden stop


def start_writer(home: Path, mode: str, interval: float = 0.0, seconds: float = 0.0
                 ) -> tuple[mp.process.BaseProcess, Connection]:
    ctx = mp.get_context("spawn")  # a clean interpreter: no inherited locks or connections
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=writer_process, args=(str(home), child, mode, interval, seconds),
                       daemon=True)
    proc.start()
    if not parent.poll(60) or parent.recv() != "ready":
        proc.kill()
        raise RuntimeError("the writer process did not start")
    return proc, parent


def latency_stats(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 3),
            "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3) if ms else math.nan}


def writer_latency(ws: Workspace, ledger: Ledger, idle_seconds: float, interval: float
                   ) -> dict[str, Any]:
    os.sync()
    proc, pipe = start_writer(ws.home, "latency", interval=interval)
    try:
        time.sleep(0.5)  # warm up: imports done, first appends out of the way
        idle_from = time.monotonic()
        time.sleep(idle_seconds)
        idle_to = backup_from = time.monotonic()
        with Phases(backup_module, ("_snapshot",)) as phases:
            info, _receipt = take_backup(ws, ledger, actor=ACTOR, label="bench")
        backup_to = time.monotonic()
        time.sleep(0.2)
        pipe.send("stop")
        if not pipe.poll(120):
            raise RuntimeError("the writer process did not report")
        samples: list[tuple[float, float]] = pipe.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    shutil.rmtree(info.path)
    idle = [d for t, d in samples if idle_from <= t < idle_to]
    during = [(t, d) for t, d in samples if backup_from <= t <= backup_to]
    snaps = [(t0, t1) for _name, t0, t1 in phases.spans]
    in_snapshot = [d for t, d in during if any(a <= t <= b for a, b in snaps)]
    in_checks = [d for t, d in during if not any(a <= t <= b for a, b in snaps)]
    return {"interval_ms": interval * 1000, "backup_seconds": round(backup_to - backup_from, 3),
            "snapshot_seconds": round(sum(b - a for a, b in snaps), 3),
            "backup_validated": info.validated,
            "idle": latency_stats(idle), "during_backup": latency_stats([d for _t, d in during]),
            "during_snapshot": latency_stats(in_snapshot),
            "during_checks": latency_stats(in_checks)}


# -- recovery ------------------------------------------------------------------------


def zero_middle(db: Path, pages: int) -> int:
    with open(db, "rb") as fh:
        header = fh.read(100)
    page_size = int.from_bytes(header[16:18], "big")
    if page_size != PAGE:
        raise RuntimeError(f"expected {PAGE}-byte pages, the file has {page_size}")
    first = file_size(db) // PAGE // 2 - pages // 2
    with open(db, "r+b") as fh:
        fh.seek(first * PAGE)
        fh.write(b"\0" * PAGE * pages)
        fh.flush()
        os.fsync(fh.fileno())
    return first


def append_extra(ws: Workspace, count: int) -> None:
    rng = random.Random(7)
    with Ledger.for_workspace(ws) as ledger:
        for start in range(0, count, 100):
            ledger.append_many(note_payloads(10_000_000 + start, min(100, count - start), rng))


def recovery_breakdown(receipt: dict[str, Any]) -> list[dict[str, Any]]:
    steps = [{"step": a["name"], "ms": a.get("ms")} for a in receipt.get("actions", [])]
    steps += [{"step": f"verify: {c['name']}", "ms": c.get("ms")}
              for c in receipt.get("checks", [])]
    backup = receipt.get("backup") or {}
    steps += [{"step": f"re-verify backup: {c['name']}", "ms": c.get("ms")}
              for c in backup.get("checks", [])]
    return steps


def measure_recovery(ws: Workspace, extra_events: int) -> dict[str, Any]:
    with Ledger.for_workspace(ws) as ledger:
        info, _receipt = take_backup(ws, ledger, actor=ACTOR, label="bench")
    if not info.validated:
        raise RuntimeError("the backup taken before the corruption did not validate")
    append_extra(ws, extra_events)
    leftovers = drop_sidecars(ws.db_path)  # every Ledger is closed: the WAL was checkpointed
    first = zero_middle(ws.db_path, ZERO_PAGES)
    os.sync()
    log(f"  zeroed pages {first}..{first + ZERO_PAGES - 1} of leads.db; recovering")
    with Phases(recovery_module, RECOVERY_PHASES) as phases:
        t0 = time.perf_counter()
        try:
            result = recover(ws, actor=ACTOR)
            exit_code, outcome, receipt = result.exit_code, result.outcome, result.receipt
        except AtlasError as exc:  # reported as a failed recovery, not a crashed benchmark
            exit_code, outcome = exc.exit_code, f"raised {type(exc).__name__}: {exc.message}"
            receipt = exc.details.get("receipt") or {}
        seconds = time.perf_counter() - t0
    loss = receipt.get("loss", {})
    return {
        "seconds": round(seconds, 3), "exit_code": exit_code, "outcome": outcome,
        "loss_none": bool(loss.get("none")), "statement": loss.get("statement"),
        "ok": exit_code == 0 and bool(loss.get("none")),
        "zeroed_pages": [first, first + ZERO_PAGES - 1], "sidecars_removed": leftovers,
        "backup": info.name, "extra_events": extra_events,
        "replayed": receipt.get("evidence", {}).get("replayed_from_journal"),
        "phases": phases.totals(), "breakdown": recovery_breakdown(receipt),
    }


# -- optional: Litestream, and what a sudden loss of the primary costs -----------------


def find_litestream() -> tuple[str | None, str]:
    candidates = [shutil.which("litestream"), str(Path(sys.executable).parent / "litestream")]
    for cand in candidates:
        if not cand or not os.access(cand, os.X_OK):
            continue
        try:
            version = subprocess.run([cand, "version"], capture_output=True, text=True,
                                     timeout=20)
            helptext = subprocess.run([cand, "restore", "-h"], capture_output=True, text=True,
                                      timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"litestream not available ({cand}: {exc})"
        if version.returncode != 0:
            return None, f"litestream not available ({cand} version: {version.stderr.strip()})"
        if "-integrity-check" not in helptext.stdout + helptext.stderr:
            return None, f"litestream {version.stdout.strip()} has no restore -integrity-check"
        return cand, version.stdout.strip()
    return None, "litestream not available (not on PATH nor beside this Python)"


def wait_for(log_path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float
             ) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log_path.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def count_rows(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def litestream_run(binary: str, ws: Workspace, work: Path, burst_seconds: float,
                   size_mb: float) -> dict[str, Any]:
    work.mkdir()
    primary, replica, restored = work / "primary.db", work / "replica", work / "restored.db"
    logfile = work / "litestream.log"
    src = sqlite3.connect(f"file:{ws.db_path}?mode=ro", uri=True)
    dst = sqlite3.connect(primary, isolation_level=None)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
        dst.execute("CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        events = int(dst.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        dst.close()
        src.close()
    os.sync()
    with open(logfile, "wb") as out:
        proc = subprocess.Popen([binary, "replicate", str(primary), f"file://{replica}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        if not wait_for(logfile, "snapshot complete", proc, timeout=max(120.0, size_mb)):
            return {"available": True, "ok": False,
                    "error": "no initial snapshot: " + logfile.read_text(errors="replace")[-800:]}
        snapshot = time.perf_counter() - t0
        time.sleep(1.5)  # let it settle into its steady sync loop
        conn = sqlite3.connect(primary, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")  # a committed row is on the primary's disk
        committed = 0
        end = time.monotonic() + burst_seconds
        while time.monotonic() < end:
            conn.execute("INSERT INTO bench_rows(body) VALUES (?)", (f"row {committed}",))
            committed += 1
        # The primary is lost right after the last commit: the replicator dies with it.
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        conn.close()
        for path in (primary, Path(f"{primary}-wal"), Path(f"{primary}-shm")):
            path.unlink(missing_ok=True)
    finally:
        stop(proc)
    os.sync()
    t0 = time.perf_counter()
    restore = subprocess.run([binary, "restore", "-integrity-check", "full", "-o",
                              str(restored), f"file://{replica}"], capture_output=True,
                             text=True)
    restore_s = time.perf_counter() - t0
    if restore.returncode != 0:
        return {"available": True, "ok": False, "snapshot_seconds": round(snapshot, 3),
                "error": f"restore exited {restore.returncode}: {restore.stderr[-800:]}"}
    kept = count_rows(restored, "SELECT count(*) FROM bench_rows")
    restored_events = count_rows(restored, "SELECT count(*) FROM events")
    return {"available": True, "ok": True, "snapshot_seconds": round(snapshot, 3),
            "restore_seconds": round(restore_s, 3), "replica_bytes": dir_size(replica),
            "events_restored": restored_events, "events_expected": events,
            "committed": committed, "restored": kept, "lost": committed - kept,
            "burst_seconds": burst_seconds}


def atlas_sudden_loss(ws: Workspace, burst_seconds: float) -> dict[str, Any]:
    """A writer appends back to back, is killed right after its last acknowledged append,
    and ``leads.db`` (with its -wal/-shm) is deleted; then ``atlas recover``."""
    proc, pipe = start_writer(ws.home, "burst", seconds=burst_seconds)
    try:
        if not pipe.poll(burst_seconds + 120):
            raise RuntimeError("the burst writer did not report")
        acked: list[tuple[int, str]] = pipe.recv()
    finally:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ws.db_path}{suffix}").unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    result = recover(ws, actor=ACTOR)
    seconds = time.perf_counter() - t0
    conn = sqlite3.connect(f"file:{ws.db_path}?mode=ro", uri=True)
    try:
        rows = dict(conn.execute("SELECT id, hash FROM events WHERE id >= ?",
                                 (min((i for i, _ in acked), default=0),)).fetchall())
    finally:
        conn.close()
    lost = [i for i, h in acked if rows.get(i) != h]
    return {"committed": len(acked), "restored": len(acked) - len(lost), "lost": len(lost),
            "recover_seconds": round(seconds, 3), "exit_code": result.exit_code,
            "loss_none": bool(result.receipt.get("loss", {}).get("none")),
            "burst_seconds": burst_seconds}


# -- report --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform()}


def build_report(args: argparse.Namespace, built: dict[str, Any],
                 runs: dict[str, list[float]], backup_profile: dict[str, Any],
                 writer: dict[str, Any], recovery: dict[str, Any],
                 litestream: dict[str, Any], total: float) -> dict[str, Any]:
    med = {name: statistics.median(values) for name, values in runs.items()}
    cp = med["cp"]
    raw_sum = med["raw_backup"] + med["raw_integrity"] + med["raw_sha256"]
    cp_check = med["cp"] + med["raw_integrity"]
    backup_ratio = med["atlas_backup"] / raw_sum
    recover_ratio = recovery["seconds"] / cp_check
    p99 = writer["during_backup"]["p99_ms"]
    timings = {name: {"runs": [round(s, 3) for s in runs[name]],
                      "median_s": round(med[name], 3), "x_cp": round(med[name] / cp, 2)}
               for name in ORDER}
    timings["raw_sum"] = {"median_s": round(raw_sum, 3), "x_cp": round(raw_sum / cp, 2)}
    timings["cp_plus_integrity"] = {"median_s": round(cp_check, 3),
                                    "x_cp": round(cp_check / cp, 2)}
    timings["atlas_recover"] = {"median_s": recovery["seconds"],
                                "x_cp": round(recovery["seconds"] / cp, 2)}
    if litestream.get("ok"):
        for key in ("snapshot_seconds", "restore_seconds"):
            timings[f"litestream_{key.split('_')[0]}"] = {
                "median_s": litestream[key], "x_cp": round(litestream[key] / cp, 2)}
        atlas_loss = litestream.get("atlas", {})
        if "recover_seconds" in atlas_loss:
            timings["atlas_recover_db_deleted"] = {
                "median_s": atlas_loss["recover_seconds"],
                "x_cp": round(atlas_loss["recover_seconds"] / cp, 2)}
    return {
        "config": {"size_mb": args.size_mb, "repeat": args.repeat, "dir": str(args.dir),
                   "extra_events": args.extra_events, "writer_interval_ms": args.writer_ms,
                   "burst_seconds": args.burst_seconds},
        "machine": machine(),
        "build": built,
        "timings": timings,
        "atlas_backup_profile": backup_profile,
        "writer_latency": writer,
        "recovery": recovery,
        "litestream": litestream,
        "goals": {
            "backup": {"what": "atlas backup / (raw backup + integrity_check + sha256)",
                       "goal": f"<= {GOAL_BACKUP}x", "ratio": round(backup_ratio, 2),
                       "met": backup_ratio <= GOAL_BACKUP},
            "recover": {"what": "atlas recover / (cp + integrity_check)",
                        "goal": f"<= {GOAL_RECOVER}x", "ratio": round(recover_ratio, 2),
                        "met": recover_ratio <= GOAL_RECOVER and recovery["ok"]},
            "writer_p99": {"what": "writer p99 during a backup (ms)",
                           "goal": f"< {GOAL_P99_MS:.0f} ms", "value": p99,
                           "met": p99 < GOAL_P99_MS},
        },
        "total_seconds": round(total, 1),
    }


def print_table(report: dict[str, Any]) -> None:
    cfg, mach, built = report["config"], report["machine"], report["build"]
    print(f"Backup and recovery: leads.db {mb(built['db_bytes']):,.0f} MB "
          f"({built['events']:,} events, journal {mb(built['journal_bytes']):,.0f} MB), "
          f"median of {cfg['repeat']}, in {cfg['dir']}")
    print(f"nproc {mach['nproc']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
          f"{mach['platform']}")
    print(f"build (setup, not measured): {built['seconds']:.1f} s; "
          f"whole run {report['total_seconds']:.0f} s")
    print()
    labels = {**LABELS,
              "raw_sum": "  raw backup + integrity + sha256",
              "cp_plus_integrity": "  cp + integrity_check",
              "atlas_recover": "atlas recover (16 zeroed pages)",
              "litestream_snapshot": "litestream initial replication",
              "litestream_restore": "litestream restore -integrity-check full",
              "atlas_recover_db_deleted": "atlas recover (leads.db deleted)"}
    header = f"{'measurement':<42} {'seconds':>9} {'x cp':>7}   runs (s)"
    print(header)
    print("-" * len(header))
    for name, t in report["timings"].items():
        runs = ", ".join(f"{s:.2f}" for s in t.get("runs", []))
        print(f"{labels[name]:<42} {t['median_s']:>9.2f} {t['x_cp']:>7.2f}   {runs}")
    print()
    w = report["writer_latency"]
    print(f"writer in another process, one small event per append, every "
          f"{w['interval_ms']:.0f} ms (backup took {w['backup_seconds']:.1f} s)")
    print(f"{'':<24} {'appends':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for key, label in (("idle", "idle"), ("during_backup", "during backup"),
                       ("during_snapshot", "  of which: snapshot"),
                       ("during_checks", "  of which: checks")):
        s = w[key]
        print(f"{label:<24} {s['n']:>8} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
              f"{s['max_ms']:>8.2f}")
    print()
    rec = report["recovery"]
    print(f"recover: exit {rec['exit_code']}, outcome {rec['outcome']}, loss none "
          f"{rec['loss_none']}; replayed {rec['replayed']} events; {rec['statement']}")
    ls = report["litestream"]
    if not ls.get("available"):
        print(f"litestream: skipped: {ls.get('reason')}")
    elif not ls.get("ok"):
        print(f"litestream: failed: {ls.get('error')}")
    else:
        a = ls.get("atlas", {})
        print(f"sudden loss of the primary right after {ls['burst_seconds']:.0f} s of "
              "single-row commits (rows committed / restored / lost):")
        print(f"  litestream {ls['version']}: {ls['committed']:,} / {ls['restored']:,} / "
              f"{ls['lost']:,}   (replica dies with the primary; restore "
              f"{ls['events_restored']:,} of {ls['events_expected']:,} events)")
        if a:
            print(f"  atlas: {a['committed']:,} / {a['restored']:,} / {a['lost']:,}   "
                  f"(leads.db deleted, journal kept; recover exit {a['exit_code']})")
    print()
    prof = report["atlas_backup_profile"]
    print("where atlas backup's time goes (last run):")
    print("  phases: " + ", ".join(f"{p['phase']} {p['seconds']:.2f} s"
                                   for p in prof["phases"]))
    print("  checks on the copy, in parallel threads: " + ", ".join(
        f"{c['name']} {c['ms'] / 1000:.2f} s" for c in prof["checks"]))
    print("where atlas recover's time goes:")
    print("  phases: " + ", ".join(f"{p['phase']} {p['seconds']:.2f} s"
                                   for p in rec["phases"]))
    print("  steps and checks from the receipt (checks of one group run in parallel):")
    for step in rec["breakdown"]:
        if step["ms"]:
            print(f"    {step['step']:<38} {step['ms'] / 1000:8.2f} s")
    print()
    for goal in report["goals"].values():
        verdict = "PASS" if goal["met"] else "MISS"
        value = goal.get("ratio")
        shown = f"{value:.2f}x" if value is not None else f"{goal['value']:.1f} ms"
        print(f"{goal['what']:<56} {shown:>9}   goal {goal['goal']:<9} {verdict}")


# -- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=1024,
                        help="size leads.db is grown to before measuring (default 1024)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each copy/check/backup timing; the median is reported "
                             "(default 3; recovery runs once)")
    parser.add_argument("--extra-events", type=int, default=3000,
                        help="events appended after the pre-corruption backup, for recovery "
                             "to replay (default 3000)")
    parser.add_argument("--writer-ms", type=float, default=10.0,
                        help="the concurrent writer appends every this many ms (default 10)")
    parser.add_argument("--burst-seconds", type=float, default=3.0,
                        help="seconds of back-to-back commits before the primary is lost "
                             "(default 3)")
    parser.add_argument("--no-litestream", action="store_true",
                        help="skip the Litestream comparison even if the binary is there")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the temporary directory is made (default: the system "
                             "temp dir); put it on the disk you want to measure")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    for name in ("size_mb", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    free = shutil.disk_usage(args.dir).free
    need = FREE_SPACE_FACTOR * args.size_mb * 1024 * 1024
    if free < need:
        parser.error(f"--dir {args.dir} has {mb(free):,.0f} MB free; a {args.size_mb} MB run "
                     f"needs about {mb(need):,.0f} MB ({FREE_SPACE_FACTOR}x the size)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="atlas-bench-backup-", dir=args.dir))
    scratch = base / "scratch"
    scratch.mkdir()
    try:
        log(f"building a {args.size_mb} MB ledger in {base} (setup, not measured)")
        ws = Workspace.init(base / "ws", OWNER)
        built = build(ws, args.size_mb * 1024 * 1024)
        log(f"  built {built['events']:,} events, leads.db {mb(built['db_bytes']):,.0f} MB, "
            f"journal {mb(built['journal_bytes']):,.0f} MB in {built['seconds']:.1f} s")

        log("timing copies, checks and atlas backup")
        ledger = Ledger.for_workspace(ws).open()
        try:
            runs, backup_profile = run_timings(ws, ledger, scratch, args.repeat)
            idle = min(max(statistics.median(runs["atlas_backup"]), 3.0), 30.0)
            log(f"writer latency: {idle:.1f} s idle, then during a backup")
            writer = writer_latency(ws, ledger, idle, args.writer_ms / 1000)
        finally:
            ledger.close()

        log("recovery: validated backup, more events, 16 zeroed pages, atlas recover")
        recovery = measure_recovery(ws, args.extra_events)
        log(f"  recover took {recovery['seconds']:.2f} s, exit {recovery['exit_code']}")

        litestream: dict[str, Any]
        binary, about = (None, "--no-litestream given") if args.no_litestream \
            else find_litestream()
        if binary is None:
            litestream = {"available": False, "reason": about}
            log(f"litestream: skipped: {about}")
        else:
            log(f"litestream {about}: replicating, burst, sudden loss, restore")
            try:
                litestream = litestream_run(binary, ws, base / "litestream",
                                            args.burst_seconds, args.size_mb)
            except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
                litestream = {"available": True, "ok": False, "error": repr(exc)}
            litestream["version"] = about
            if litestream.get("ok"):
                log("atlas: burst, sudden loss of leads.db, recover")
                litestream["atlas"] = atlas_sudden_loss(ws, args.burst_seconds)
            else:
                log(f"litestream: failed, comparison skipped: {litestream.get('error')}")

        report = build_report(args, built, runs, backup_profile, writer, recovery, litestream,
                              time.perf_counter() - started)
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
