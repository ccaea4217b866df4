"""``atlas recover``: restore, replay, salvage, verify, swap — and say exactly what was lost.

Plan, execute, verify; never restore in place. Every step is a line of the
receipt. The whole run holds the writer lock. The work happens in
``data/db/.recovering-<UTC>/`` (a scratch directory outside the workspace for
``--dry-run``); the live file is only replaced, atomically, after every
verification passed. The damaged files are *copied* into the quarantine with
their hashes, so they outlive the swap, are never deleted, and nothing writes
to them.

Sources, in order of trust: a validated backup (its hash and the facts its
manifest states, checked against the file now), the journal (CRC per record,
hash chain), and salvage from the damaged file (merged only where the hash
chain ties it to trusted history). What none of them holds is the loss,
stated as exact id ranges; when the journal itself cannot prove where history
ends, ``unknown_after`` says from where nothing can be known.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import AtlasError, Conflict
from ..fsutil import fsync_dir
from ..ledger import Journal, Ledger, NewEvent, utc_now, verify
from ..ledger.chain import describe_unapplied, read_gaps
from ..ledger.lock import WriterLock
from ..ledger.verify import VerifyReport
from ..receipts import Action, Check, Outcome, Receipt
from ..workspace import Workspace
from . import checks as ck
from . import swap
from .backup import BackupInfo, list_backups, manifest_drift, read_backup, write_json_durably
from .detect import Inspection, inspect_ledger
from .inplace import InPlace, marks, try_in_place, unclosed_detections
from .rebuild import (
    Built,
    JournalWindow,
    Steps,
    build_ledger,
    elapsed_ms,
    read_window,
    write_journal,
)

EXIT_OK, EXIT_CANNOT, EXIT_LOSS = 0, 2, 3
VERIFY_LIMIT = 50


class RecoveryFailed(AtlasError):
    """Recovery could not produce a verified ledger; nothing was changed."""

    exit_code = EXIT_CANNOT


@dataclass
class RecoveryResult:
    outcome: str  # recovered | recovered_with_loss | not_broken | failed | planned
    exit_code: int
    receipt: dict[str, Any]
    receipt_id: int | None = None
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "exit_code": self.exit_code, "dry_run": self.dry_run,
                "receipt_id": self.receipt_id, **self.receipt}


def diagnose(ws: Workspace) -> tuple[dict[str, Any] | None, Inspection]:
    """What is wrong with the live ledger (a symptom, None when nothing is), and what the
    look found: ``quick_check``, then ledger == journal as of one moment. When the file
    itself fails, the journal is not compared here: recovery reads it anyway (after the
    backup's high-water mark) and adds what it finds to the symptom."""
    found = inspect_ledger(ws, compare_damaged=False, held=True)
    if not found.problems:
        return None, found
    symptom: dict[str, Any] = {
        "summary": "; ".join(found.problems),
        "detected_by": "atlas recover (quick_check, ledger == journal)",
        "db_exists": ws.db_path.exists(), "checks": [c.model_dump() for c in found.checks]}
    if found.damage:
        symptom["damage"] = found.damage
    return symptom, found


# -- choosing the backup ------------------------------------------------------

def _backup_check(info: BackupInfo) -> tuple[Check | None, str | None]:
    """Is this backup's file the one that was validated, and does it say what its
    manifest says? Returns (the check that shows it, or why it cannot be used).

    sha256 recomputed now proves the file is byte for byte the copy that passed every
    check when it was taken, so it passes them still. The sha256 covers leads.db, not
    manifest.json, so each fact recovery takes from the manifest (the high-water mark:
    id, hash, time; page size and count; schema version; size) is read from the file
    itself and compared. Row counts are left to `atlas backups verify` (a full scan)."""
    if info.status != "validated":
        return None, info.problem or info.status
    if not info.sha256:
        return None, "the manifest records no sha256"
    sha, facts = ck.run_parallel([lambda: ck.sha256_check(info.db_path, info.sha256),
                                  lambda: ck.facts_check(info.db_path, immutable=True,
                                                         counts=False)])
    if not sha.check.passed:
        return None, (f"sha256 drift: manifest {info.sha256}, file {sha.value}"
                      if sha.value else f"sha256: {sha.check.detail}")
    if not facts.check.passed:
        return None, f"its facts cannot be read: {facts.check.detail}"
    drift = manifest_drift(info.manifest, facts.value)
    if drift:
        return None, "manifest drift: " + "; ".join(drift)
    passed = [str(c.get("name")) for c in info.manifest.get("checks", []) if c.get("passed")]
    sha.check.detail = (
        f"{sha.value} matches the manifest: the file is byte-identical to the copy that "
        f"passed {', '.join(passed)} when it was taken, so it passes them still; its "
        f"high-water mark (event {info.hwm_event_id}, its hash and time), page size and "
        "count, schema version and size, read from the file, match the manifest")
    sha.check.ms = round(max(sha.check.ms, facts.check.ms), 3)
    return sha.check, None


def choose_backup(ws: Workspace, forced: str | None
                  ) -> tuple[BackupInfo | None, list[dict[str, str]], list[Check]]:
    """The newest validated backup whose file and manifest still agree; each skipped
    backup is named with why. A backup named with ``--backup`` must be usable: if it is
    unknown or fails, recovery stops (exit 2) instead of falling back."""
    skipped: list[dict[str, str]] = []
    candidates = list_backups(ws)
    if forced is not None:
        path = ws.backups_dir / forced
        if "/" in forced or not path.is_dir():
            raise RecoveryFailed(f"no backup named {forced!r}; nothing was changed",
                                 hint="`atlas backups list` shows them.")
        candidates = [read_backup(path)]
    for info in candidates:
        check, why = _backup_check(info)
        if check is not None:
            return info, skipped, [check]
        skipped.append({"name": info.name, "why": why or "unusable"})
    if forced is not None:
        raise RecoveryFailed(
            f"backup {forced} cannot be used: {skipped[0]['why']}; nothing was changed",
            hint="Run `atlas backups verify` on it, or leave out --backup to use the newest "
                 "backup that passes.", skipped=skipped)
    return None, skipped, []


# -- the work ----------------------------------------------------------------

def _verify_result(db: Path, journal_dir: Path, segment_bytes: int
                   ) -> tuple[list[Check], VerifyReport]:
    """quick_check, integrity_check and foreign keys (SQLite, in threads) alongside one
    Python pass that checks ledger == journal and both hash chains: the ledger's chain
    is the ``hash_chain`` check, read from that same pass."""
    def ledger_vs_journal() -> ck.Outcome:
        t0 = time.perf_counter()
        report = verify(db, Journal(journal_dir, segment_bytes), limit=VERIFY_LIMIT)
        first = report.discrepancies[0].describe() if report.discrepancies else ""
        return ck.Outcome(Check(
            name="ledger == journal", passed=report.ok,
            detail=first or f"{report.last_id} events, journal and ledger identical",
            ms=elapsed_ms(t0)), report)

    quick, integrity, fk, lj = ck.run_parallel([
        lambda: ck.sqlite_check(db, "quick_check"),
        lambda: ck.sqlite_check(db, "integrity_check"),
        lambda: ck.foreign_key_check(db),
        ledger_vs_journal,
    ])
    report: VerifyReport = lj.value
    breaks = report.chain_breaks.get("ledger", [])
    if breaks:
        chain = Check(name="hash_chain", passed=False, detail=breaks[0].describe(),
                      ms=lj.check.ms)
    elif len(report.discrepancies) < VERIFY_LIMIT:
        chain = Check(name="hash_chain", passed=True, ms=lj.check.ms, detail=(
            f"{report.ledger_events} events chain (checked in the same pass as "
            "ledger == journal; ms is that pass's)"))
    else:  # the pass stopped early: check the rest of the chain on its own
        chain = ck.chain_check(db, read_gaps(journal_dir)).check
    return [quick.check, integrity.check, fk.check, lj.check, chain], report


def _old_journal_damage(db: Path, journal: Journal, report: VerifyReport,
                        checks: list[Check], journal_end: int) -> str | None:
    """Why the journal must be rewritten, when the only thing wrong is the journal
    itself in segments :func:`read_window` did not read (before the backup's
    high-water mark): the ledger side of the pass is clean (its chain verifies, it
    lacks no journal record, and every event the journal lacks lies within the
    journal's span), so the journal is rewritten from the recovered ledger, as it is
    for any damaged journal. None when that is not the case: events missing *beyond*
    the journal's end are its lost tail, a loss :func:`build_ledger` must state."""
    if report.ok or any(not c.passed for c in checks if c.name not in (
            "ledger == journal", "hash_chain")):
        return None
    if len(report.discrepancies) >= VERIFY_LIMIT:
        report = verify(db, journal, limit=10**9)  # every discrepancy, not the first 50
    if report.chain_breaks.get("ledger") or any(
            d.where == "ledger" or (d.where == "journal" and (d.event_id or 0) > journal_end)
            for d in report.discrepancies):
        return None
    return (f"the journal is damaged where recovery did not need it "
            f"({len(report.discrepancies)} discrepancies, first: "
            f"{report.discrepancies[0].describe()})")


def _statement(loss: dict[str, Any], backup: BackupInfo | None, built: Built) -> str:
    base = (f"backup {backup.name} (events 1..{backup.hwm_event_id})" if backup else
            "the journal alone (no usable backup)")
    parts = []
    if loss["lost_event_ranges"]:
        spans = ", ".join(f"{a}..{b}" for a, b in loss["lost_event_ranges"])
        parts.append(f"events {spans} could not be recovered")
    if loss["unknown_after"]:
        u = loss["unknown_after"]
        parts.append(f"nothing after event {u['id']} can be known ({u['why']})")
    if loss["salvaged_unmerged"]["count"]:
        s = loss["salvaged_unmerged"]
        parts.append(f"{s['count']} salvaged row(s) could not be verified and wait for review "
                     f"in {s['path']}")
    parts += describe_unapplied(built.unapplied)
    if loss["earlier_gaps"]:
        spans = ", ".join(f"{a}..{b}" for a, b in loss["earlier_gaps"])
        parts.append(f"events {spans} were lost before this recovery (an earlier recovery "
                     "declared them), not by it")
    if loss["none"]:
        return (f"Nothing {'new ' if loss['earlier_gaps'] else ''}was lost: restored from "
                f"{base}, replayed the journal to event {built.last_id}, and verified "
                "ledger == journal" + "".join(f"; {p}" for p in parts) + ".")
    return f"Restored from {base} up to event {built.last_id}; " + "; ".join(parts) + "."


def _write_review(path: Path, rows: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE salvaged_events (id INTEGER, reason TEXT, event TEXT)")
        conn.executemany("INSERT INTO salvaged_events VALUES (?,?,?)",
                         [(r["id"], r["reason"], json.dumps(r.get("event"), default=str))
                          for r in rows])
        conn.commit()
    finally:
        conn.close()
    os.chmod(path, 0o600)


def recover(ws: Workspace, *, actor: str, dry_run: bool = False,
            backup_name: str | None = None) -> RecoveryResult:
    """Recover the ledger (see the module docstring). Raises :class:`RecoveryFailed`
    (exit 2) when it cannot, with the live file as it was found."""
    try:
        lock = WriterLock(ws.lock_path, timeout=120)
        lock.acquire()
    except Conflict as exc:
        raise RecoveryFailed(f"{exc.message}; nothing was changed", hint=exc.hint) from exc
    try:
        pending = ws.recovery_pending_path
        if pending.exists():
            return _pending_plan(pending) if dry_run else _finish(ws, pending)
        try:
            result = _recover_locked(ws, actor=actor, dry_run=dry_run,
                                     backup_name=backup_name)
        except RecoveryFailed:
            raise
        except Exception as exc:  # any other failure: the live file is untouched
            raise RecoveryFailed(
                f"recovery stopped: {_describe(exc)}; nothing was changed (the live file is "
                "as it was found)", hint="Fix the cause above and run `atlas recover` "
                "again.") from exc
        return result if result is not None else _finish(ws, pending)
    finally:
        lock.release()


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, AtlasError) else f"{type(exc).__name__}: {exc}"


def _recover_locked(ws: Workspace, *, actor: str, dry_run: bool,
                    backup_name: str | None) -> RecoveryResult | None:
    """Everything before the swap. Returns a result when there is nothing to swap (a
    healthy ledger, or a dry run); None once ``recovery-pending.json`` is written."""
    started = utc_now()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    steps = Steps()
    t0 = time.perf_counter()
    symptom, found = diagnose(ws)
    steps.actions.append(Action(
        name="diagnose", ms=elapsed_ms(t0), command="PRAGMA quick_check; ledger == journal "
        "(when quick_check passes)", result=symptom["summary"] if symptom else (
            "no damage found" + (f"; the journal's events {found.unapplied[0]}.."
                                 f"{found.unapplied[1]} are not applied yet"
                                 if found.unapplied else ""))))
    if symptom is None and backup_name is None:
        unclosed = unclosed_detections(ws)
        if found.unapplied is None and not unclosed:
            healthy = {"kind": "recovery", "outcome": "not_broken",
                       "summary": "The ledger is healthy (quick_check ok, ledger == journal); "
                                  "nothing was changed."}
            return RecoveryResult("not_broken", EXIT_OK, healthy, dry_run=dry_run)
        done = try_in_place(ws, found, unclosed, steps, started=started, stamp=stamp,
                            actor=actor, dry_run=dry_run)
        if isinstance(done, InPlace):
            return RecoveryResult("planned" if dry_run else done.outcome, EXIT_OK,
                                  done.receipt, done.receipt_id, dry_run=dry_run)
        symptom = done
    symptom = symptom or {"summary": "no damage found; recovery forced with --backup"}

    work = (Path(tempfile.mkdtemp(prefix="atlas-recover-")) if dry_run
            else ws.db_dir / f".recovering-{stamp}")
    if not dry_run:
        _clear_stale_work(ws)
        work.mkdir(mode=0o700)
    try:
        return _rebuild(ws, work, stamp, steps, symptom, started, actor=actor,
                        dry_run=dry_run, backup_name=backup_name)
    except BaseException:
        if dry_run or not ws.recovery_pending_path.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if dry_run:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Sources:
    """What the first two steps found: the quarantined copies and the backup."""

    quarantined: dict[str, Any]
    seen: dict[str, list[int] | None]
    backup: BackupInfo | None
    skipped: list[dict[str, str]]
    backup_checks: list[Check]

    @property
    def hwm(self) -> int:
        return self.backup.hwm_event_id or 0 if self.backup else 0


def _rebuild(ws: Workspace, work: Path, stamp: str, steps: Steps, symptom: dict[str, Any],
             started: str, *, actor: str, dry_run: bool, backup_name: str | None
             ) -> RecoveryResult | None:
    staging, final_q = work / "quarantine", ws.quarantine_dir / stamp
    src = _Sources({}, {}, None, [], [])
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The quarantine copy runs alongside choosing, reading, restoring and REINDEX;
        # it is waited for before anything reads the copy (and before any error unwinds).
        qsteps = Steps()
        copying = pool.submit(qsteps.run, "quarantine", lambda: _quarantine(
            ws, src, staging, final_q, dry_run), "copy leads.db, -wal, -shm; sha256")

        def damaged_file() -> Path | None:
            copying.result()
            steps.actions[1:1], qsteps.actions = qsteps.actions, []  # after "diagnose"
            path = ws.db_path if dry_run else staging / ws.db_path.name
            return path if path.exists() else None

        _choose(ws, steps, src, backup_name)
        jr = _read_journal(ws, steps, src, symptom)
        built = build_ledger(ws, src.backup, work, steps, jr, damaged_file, _marks(ws, src))
        damaged_file()
    new_journal, checks = _verify(ws, work, steps, built, jr, src.quarantined)
    loss = _loss(built, src, final_q / "salvage-review.db")
    failing = next((c for c in checks if not c.passed), None)
    would_fail = (f"the rebuilt ledger failed {failing.name}: {failing.detail}"
                  if failing is not None else None)
    outcome: Outcome = ("failed" if would_fail else
                        "recovered" if loss["none"] else "recovered_with_loss")
    receipt = Receipt(
        kind="recovery", subject="ledger", actor=actor, started_at=started,
        finished_at=utc_now(), outcome=outcome,
        summary=(loss["statement"] if not would_fail else
                 "Recovery could not verify the rebuilt ledger; nothing was changed."),
        symptom=symptom, actions=steps.actions, checks=checks,
        evidence={"recovery_id": stamp,
                  "quarantine": {"path": str(final_q) if src.quarantined else None,
                                 "files": {n: {**f, "path": str(final_q / n)}
                                           for n, f in src.quarantined.items()}},
                  "salvage_notes": built.salvage_notes,
                  "replayed_from_journal": built.replayed,
                  "merged_from_salvage": built.merged_from_salvage},
    ).body()
    b = src.backup
    receipt["backup"] = None if b is None else {
        "name": b.name, "created_at": b.created_at, "hwm_event_id": b.hwm_event_id,
        "hwm_ts": b.hwm_ts, "sha256": b.sha256,
        "checks": [c.model_dump() for c in src.backup_checks],
        "validated_with": b.manifest.get("checks", [])}
    receipt["skipped_backups"] = src.skipped
    receipt["loss"] = loss
    if dry_run:
        receipt["plan"] = _plan(ws, src, built, final_q, loss, would_fail)
        if would_fail is not None:
            return RecoveryResult("failed", EXIT_CANNOT, receipt, dry_run=True)
        return RecoveryResult("planned", EXIT_OK if loss["none"] else EXIT_LOSS, receipt,
                              dry_run=True)
    if would_fail is not None:
        raise RecoveryFailed(f"{would_fail}; nothing was changed", receipt=receipt)
    _stage_swap(ws, {
        "stamp": stamp, "work": str(work), "db": str(built.db),
        "new_journal": str(new_journal) if built.journal_needs_rewrite else None,
        "new_journal_identity": (swap.identity(new_journal)
                                 if built.journal_needs_rewrite else None),
        "quarantine": str(final_q), "live": src.seen, "receipt": receipt},
        staging if src.quarantined else None, built.unmerged)
    return None


def _quarantine(ws: Workspace, src: _Sources, staging: Path, final_q: Path,
                dry_run: bool) -> str:
    if dry_run:
        names = [f"{p.name} ({p.stat().st_size} bytes)" for p in _live_files(ws)]
        return ("would copy " + ", ".join(names) + f" into {final_q}" if names
                else "nothing to quarantine: no database file")
    staging.mkdir(mode=0o700)
    src.quarantined, src.seen = swap.quarantine(ws.db_path, staging)
    return (f"copied {', '.join(src.quarantined)} into {final_q} with sha256 (copies: "
            "nothing writes to them)" if src.quarantined else
            "nothing to quarantine: no database file")


def _choose(ws: Workspace, steps: Steps, src: _Sources, backup_name: str | None) -> None:
    def choose() -> str:
        src.backup, src.skipped, src.backup_checks = choose_backup(ws, backup_name)
        b, skipped = src.backup, src.skipped
        return ((f"chose {b.name} (high-water mark {b.hwm_event_id}): sha256 recomputed now "
                 "matches its manifest, and so do the facts the manifest states" if b
                 else "no usable backup")
                + (f"; skipped {len(skipped)}: " + "; ".join(
                    f"{s['name']} ({s['why']})" for s in skipped) if skipped else ""))

    steps.run("choose backup", choose, "sha256sum backups/<name>/leads.db; read its facts")


def _read_journal(ws: Workspace, steps: Steps, src: _Sources, symptom: dict[str, Any]
                  ) -> JournalWindow:
    """The journal after the backup's mark; without a backup it must be complete."""
    journal = Journal(ws.journal_dir, ws.config.journal.segment_bytes)
    jr = JournalWindow({}, [], None, 0, [], True)

    def read() -> str:
        nonlocal jr
        jr = read_window(journal, src.hwm)
        if jr.missing_dir:
            return "the journal directory is missing: nothing to read"
        return (f"{len(jr.events)} records after event {src.hwm} (journal ends at "
                f"{jr.last_id})" + (f"; {len(jr.problems)} damaged" if jr.problems else "")
                + (f"; missing: {', '.join(jr.missing_segments)}" if jr.missing_segments
                   else "") + ("" if jr.tail_clean else "; the tail is damaged"))

    steps.run("read journal", read, command=f"read journal records after event {src.hwm}")
    if jr.problems or jr.missing_segments:
        symptom["journal_problems"] = [*jr.missing_segments, *jr.problems][:20]
    if src.backup is None and not (jr.first_id == 1 and jr.intact):
        raise RecoveryFailed(
            "no validated backup passes its checks and the journal is not complete from "
            "event 1; nothing was changed",
            hint="Inspect `atlas backups list` and `atlas ledger verify`; the live file is "
                 "as it was found.", skipped=src.skipped, symptom=symptom)
    return jr


def _verify(ws: Workspace, work: Path, steps: Steps, built: Built, jr: JournalWindow,
            quarantined: dict[str, Any]) -> tuple[Path, list[Check]]:
    """Rewrite the journal when needed, verify, and seal the quarantine meanwhile.
    Returns (the journal the result was verified against, the checks)."""
    seg_bytes = ws.config.journal.segment_bytes
    new_journal = work / "journal" if built.journal_needs_rewrite else ws.journal_dir

    def rewrite(why: str) -> str:
        count = write_journal(built.db, new_journal, seg_bytes, built.gaps)
        return f"{why}wrote {count} records for the recovered ledger" + (
            " (there was no journal directory)" if jr.missing_dir
            else " (the old journal goes to quarantine)")

    if built.journal_needs_rewrite:
        steps.run("rewrite journal", lambda: rewrite(""))

    def seal() -> None:  # nothing reads the quarantined copies any more
        if quarantined:
            steps.run("seal quarantine", lambda: swap.seal(quarantined),
                      "fsync; sha256sum quarantine/<UTC>/*")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        sealed = pool.submit(seal)
        checks, report = _verify_result(built.db, new_journal, seg_bytes)
        verified = Action(name="verify", ms=elapsed_ms(t0), result=(
            "quick_check, integrity_check, foreign_key_check in threads, alongside one pass "
            "for ledger == journal and the hash chain"))
        sealed.result()
    steps.actions.append(verified)
    why = None if built.journal_needs_rewrite else _old_journal_damage(
        built.db, Journal(new_journal, seg_bytes), report, checks, jr.last_id)
    if why is not None:
        built.journal_needs_rewrite = True
        new_journal = work / "journal"
        steps.run("rewrite journal", lambda: rewrite(f"{why}: "))
        t0 = time.perf_counter()
        checks, report = _verify_result(built.db, new_journal, seg_bytes)
        steps.actions.append(Action(name="verify", ms=elapsed_ms(t0),
                                    result="again, against the rewritten journal"))
    return new_journal, checks


def _loss(built: Built, src: _Sources, review_path: Path) -> dict[str, Any]:
    earlier = sorted((g.first, g.last) for g in built.earlier_gaps)
    lost = _without([(g.first, g.last) for g in built.new_gaps], earlier)
    loss: dict[str, Any] = {
        "lost_event_ranges": [[a, b] for a, b in lost],
        "unknown_after": built.unknown_after,
        "salvaged_unmerged": {"count": len(built.unmerged),
                              "path": str(review_path) if built.unmerged else None},
        "recovery_point": {"event_id": built.last_id, "ts": built.last_ts},
        # lost before this recovery: named, but not this recovery's loss
        "earlier_gaps": [[a, b] for a, b in earlier],
        "unapplied": [u.to_dict() for u in built.unapplied],
    }
    # Rows kept for review whose ids are not lost (a salvaged row that differs from the
    # journal record of its id) are named in the statement but are no loss.
    loss["none"] = not lost and built.unknown_after is None
    loss["statement"] = _statement(loss, src.backup, built)
    return loss


def _without(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]
             ) -> list[tuple[int, int]]:
    """The inclusive id ranges ``ranges`` minus the ids of ``holes`` (both sorted)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        for h0, h1 in holes:
            if h1 < a or h0 > b:
                continue
            if h0 > a:
                out.append((a, h0 - 1))
            a = h1 + 1
        if a <= b:
            out.append((a, b))
    return out


def _stage_swap(ws: Workspace, state: dict[str, Any], staging: Path | None,
                unmerged: list[dict[str, Any]]) -> None:
    """Move the quarantine into place, write the review database, and then the plan of
    the swap (``recovery-pending.json``): from here on, a rerun finishes the job."""
    final_q = Path(state["quarantine"])
    try:
        if staging is not None:
            os.rename(staging, final_q)
            fsync_dir(ws.quarantine_dir)
        if unmerged:
            final_q.mkdir(mode=0o700, exist_ok=True)
            _write_review(final_q / "salvage-review.db", unmerged)
        write_json_durably(ws.recovery_pending_path, state)
    except BaseException:
        if not ws.recovery_pending_path.exists():  # our own copies: the live files are intact
            shutil.rmtree(final_q, ignore_errors=True)
        raise


def _marks(ws: Workspace, src: _Sources) -> list[BackupInfo]:
    """Backups whose high-water marks show how far history reached: the chosen one, and
    every other whose manifest states one (even one skipped for drift or a failed
    check: its events existed when it was taken). A false claim can only make recovery
    say "unknown", never "nothing lost"."""
    return [*([src.backup] if src.backup else []), *marks(ws)]


def _live_files(ws: Workspace) -> list[Path]:
    return [p for p in (Path(str(ws.db_path) + s) for s in swap.DB_SUFFIXES) if p.exists()]


def _plan(ws: Workspace, src: _Sources, built: Built, qdir: Path, loss: dict[str, Any],
          would_fail: str | None) -> dict[str, Any]:
    """What `atlas recover` would do, rehearsed on a scratch copy outside the workspace."""
    return {
        "backup": src.backup.name if src.backup else None,
        "backup_hwm_event_id": src.backup.hwm_event_id if src.backup else None,
        "skipped_backups": src.skipped,
        "quarantine": {"path": str(qdir), "files": [
            {"name": p.name, "size": p.stat().st_size} for p in _live_files(ws)]},
        "events_to_replay": built.replayed,
        "events_from_salvage": len(built.merged_from_salvage),
        "journal_rewrite": built.journal_needs_rewrite,
        "recovery_point": loss["recovery_point"],
        "expected_loss": loss["statement"],
        "would_fail": would_fail,
        "rehearsed_on": "a scratch copy outside the workspace; nothing in it was changed",
    }


def _pending_plan(pending: Path) -> RecoveryResult:
    """A dry run while an interrupted recovery waits: say what running it would do."""
    state = json.loads(pending.read_text(encoding="utf-8"))
    receipt: dict[str, Any] = state["receipt"]
    receipt["plan"] = {
        "finish_interrupted": state["stamp"],
        "backup": (receipt.get("backup") or {}).get("name"),
        "journal_rewrite": state.get("new_journal") is not None,
        "expected_loss": receipt["loss"]["statement"],
        "would_fail": None,
        "rehearsed_on": "the interrupted recovery verified this result before it stopped; "
                        "`atlas recover` swaps it in",
    }
    return RecoveryResult("planned", EXIT_OK if receipt["loss"]["none"] else EXIT_LOSS,
                          receipt, dry_run=True)


def _clear_stale_work(ws: Workspace) -> None:
    """Scratch directories of a recovery that was killed before its swap (Atlas's own:
    the live files were never changed by it, and its quarantine copies were in there)."""
    for p in ws.db_dir.glob(".recovering-*"):
        shutil.rmtree(p, ignore_errors=True)


def _finish(ws: Workspace, pending: Path) -> RecoveryResult:
    try:
        return _finish_pending(ws, pending)
    except Exception as exc:
        raise RecoveryFailed(
            f"the recovered ledger was verified but swapping it in stopped: {_describe(exc)}",
            hint="Fix the cause above and run `atlas recover` again: it finishes the swap "
                 f"({pending} describes it).") from exc


def _finish_pending(ws: Workspace, pending: Path) -> RecoveryResult:
    """Swap the verified ledger (and journal) into place, then record the receipt.

    Every step can be repeated: a recovery killed here is finished by the next run."""
    state = json.loads(pending.read_text(encoding="utf-8"))
    receipt: dict[str, Any] = state["receipt"]
    qdir = Path(state["quarantine"])
    qdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = swap.swap_db(Path(state["db"]), ws.db_path, qdir, state.get("live") or {})
    new_journal = state.get("new_journal")
    if new_journal:
        done.append("data/journal/: " + swap.swap_journal(
            Path(new_journal), ws.journal_dir, qdir / "journal",
            state.get("new_journal_identity")))
    receipt["actions"].append({
        "name": "atomic swap", "ms": elapsed_ms(t0),
        "result": "replaced data/db/leads.db" + (" and data/journal/" if new_journal else "")
                  + " (fsynced files and directories)" + "".join(f"; {n}" for n in done)})
    shutil.rmtree(state["work"], ignore_errors=True)
    with Ledger.for_workspace(ws, recovering=True) as ledger:
        event_id = _recorded(ledger, state["stamp"])
        if event_id is None:
            event_id = ledger.append_many([NewEvent("receipt.recorded", receipt["actor"],
                                                    receipt, subject="recovery")])[0].id
    pending.unlink()
    fsync_dir(ws.db_dir)
    loss = receipt["loss"]
    return RecoveryResult(receipt["outcome"], EXIT_OK if loss["none"] else EXIT_LOSS,
                          receipt, receipt_id=event_id)


def _recorded(ledger: Ledger, stamp: str) -> int | None:
    """The id of this recovery's receipt, if an interrupted run already recorded it."""
    rows = ledger.query("SELECT id, payload FROM events WHERE kind = 'receipt.recorded' "
                        "AND subject = 'recovery' ORDER BY id DESC LIMIT 1")
    if rows and json.loads(rows[0]["payload"]).get("evidence", {}).get(
            "recovery_id") == stamp:
        return int(rows[0]["id"])
    return None


__all__ = ["EXIT_CANNOT", "EXIT_LOSS", "EXIT_OK", "RecoveryFailed", "RecoveryResult",
           "choose_backup", "diagnose", "recover"]
