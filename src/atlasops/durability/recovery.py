"""``atlas recover``: restore, replay, salvage, verify, swap — and say exactly what was lost.

Plan, execute, verify; never restore in place. Every step is a line of the
receipt. The work happens in ``data/db/.recovering-<UTC>/`` (a scratch
directory outside the workspace for ``--dry-run``); the live file is only
replaced, atomically, after every verification passed. The damaged files are
hard-linked into ``data/db/quarantine/<UTC>/`` first, so they outlive the swap
and are never deleted.

Sources, in order of trust: a validated backup (re-verified now), the
journal (CRC per record, hash chain), and salvage from the damaged file
(merged only where the hash chain verifies it). What none of them holds is the
loss, stated as exact id ranges; when the journal itself cannot prove where
history ends, ``unknown_after`` says from where nothing can be known.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import AtlasError, NotFound
from ..fsutil import fsync_dir
from ..ledger import Journal, Ledger, utc_now, verify
from ..ledger.chain import read_gaps
from ..ledger.lock import WriterLock
from ..ledger.verify import VerifyReport
from ..receipts import Action, Check, Outcome, Receipt
from ..workspace import Workspace
from . import checks as ck
from .backup import BackupInfo, list_backups, read_backup, write_json_durably
from .rebuild import (
    Built,
    JournalWindow,
    Steps,
    build_ledger,
    elapsed_ms,
    read_window,
    write_journal,
)

PENDING = "recovery-pending.json"
EXIT_OK, EXIT_CANNOT, EXIT_LOSS = 0, 2, 3


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


def diagnose(ws: Workspace) -> dict[str, Any] | None:
    """What is wrong with the live ledger, or None when it is healthy."""
    journal = Journal(ws.journal_dir, ws.config.journal.segment_bytes)
    problems: list[str] = []
    detail: dict[str, Any] = {"db_exists": ws.db_path.exists()}
    if not ws.db_path.exists():
        problems.append(f"{ws.db_path.name} is missing")
    else:
        qc = ck.sqlite_check(ws.db_path, "quick_check")
        detail["quick_check"] = qc.check.detail
        if not qc.check.passed:
            problems.append(f"quick_check: {qc.check.detail}")
    if not problems:
        try:
            report = verify(ws.db_path, journal, limit=20)
            detail["ledger_vs_journal"] = [d.describe() for d in report.discrepancies]
            if not report.ok:
                problems.append(f"ledger != journal: {report.discrepancies[0].describe()}")
        except AtlasError as exc:
            problems.append(f"ledger cannot be read: {exc.message}")
    # When the file itself is damaged the journal is not read here: recovery reads it
    # anyway (after the backup's high-water mark) and adds what it finds to the symptom.
    if not problems:
        return None
    return {"summary": "; ".join(problems), "detected_by": "atlas recover (quick_check, "
            "ledger == journal)", **detail}


# -- choosing the backup ------------------------------------------------------

def choose_backup(ws: Workspace, forced: str | None
                  ) -> tuple[BackupInfo | None, list[dict[str, str]], list[Check]]:
    """The newest validated backup whose file is still the one that was validated.

    A backup was validated when it was taken: quick_check, integrity_check, foreign
    keys, facts and the hash chain all passed on the copy, and its sha256 went into the
    manifest. Recomputing that sha256 now proves the file is byte for byte the file
    that passed them, so it passes them still; a backup whose hash drifted is skipped,
    named, and the next one is tried. (`atlas backups verify` re-runs every check.)"""
    skipped: list[dict[str, str]] = []
    candidates = list_backups(ws)
    if forced is not None:
        path = ws.backups_dir / forced
        if "/" in forced or not path.is_dir():
            raise NotFound(f"no backup named {forced!r}", hint="`atlas backups list`.")
        candidates = [read_backup(path)]
    for info in candidates:
        if info.status != "validated":
            skipped.append({"name": info.name, "why": info.problem or info.status})
            continue
        if not info.db_path.exists():
            skipped.append({"name": info.name, "why": f"{info.db_path.name} is missing"})
            continue
        if not info.sha256:
            skipped.append({"name": info.name, "why": "the manifest records no sha256"})
            continue
        outcome = ck.sha256_check(info.db_path, info.sha256)
        if not outcome.check.passed:
            skipped.append({"name": info.name, "why": (
                f"sha256 drift: manifest {info.sha256}, file {outcome.value}"
                if outcome.value else f"sha256: {outcome.check.detail}")})
            continue
        passed = [str(c.get("name")) for c in info.manifest.get("checks", [])
                  if c.get("passed")]
        outcome.check.detail = (
            f"{outcome.value} matches the manifest: the file is byte-identical to the copy "
            f"that passed {', '.join(passed)} when it was taken, so it passes them still")
        return info, skipped, [outcome.check]
    return None, skipped, []


# -- the work ----------------------------------------------------------------

def _verify_result(db: Path, journal_dir: Path, segment_bytes: int
                   ) -> tuple[list[Check], VerifyReport]:
    """quick_check, integrity_check and foreign keys (SQLite, in threads) alongside one
    Python pass that checks ledger == journal and both hash chains: the ledger's chain
    is the ``hash_chain`` check, read from that same pass."""
    limit = 50

    def ledger_vs_journal() -> ck.Outcome:
        t0 = time.perf_counter()
        report = verify(db, Journal(journal_dir, segment_bytes), limit=limit)
        first = report.discrepancies[0].describe() if report.discrepancies else ""
        return ck.Outcome(Check(
            name="ledger == journal", passed=report.ok,
            detail=first or f"{report.last_id} events, journal and ledger identical",
            ms=elapsed_ms(t0)), report)

    integrity, fk, lj = ck.run_parallel([
        lambda: ck.integrity_and_quick_check(db),
        lambda: ck.foreign_key_check(db),
        ledger_vs_journal,
    ])
    report: VerifyReport = lj.value
    breaks = report.chain_breaks.get("ledger", [])
    if breaks:
        chain = Check(name="hash_chain", passed=False, detail=breaks[0].describe(),
                      ms=lj.check.ms)
    elif len(report.discrepancies) < limit:
        chain = Check(name="hash_chain", passed=True, ms=lj.check.ms, detail=(
            f"{report.ledger_events} events chain (checked in the same pass as "
            "ledger == journal; ms is that pass's)"))
    else:  # the pass stopped early: check the rest of the chain on its own
        chain = ck.chain_check(db, read_gaps(journal_dir)).check
    return [integrity.value, integrity.check, fk.check, lj.check, chain], report


def _old_journal_damage(db: Path, journal: Journal, report: VerifyReport,
                        checks: list[Check]) -> str | None:
    """Why the journal must be rewritten, when the only thing wrong is the journal
    itself in segments :func:`read_window` did not read (before the backup's
    high-water mark): the ledger side of the pass is clean (its chain verifies and it
    lacks no journal record), so the journal is rewritten from the recovered ledger,
    as it is for any damaged journal. None when that is not the case."""
    if report.ok or any(not c.passed for c in checks if c.name not in (
            "ledger == journal", "hash_chain")):
        return None
    if report.discrepancies and len(report.discrepancies) >= 50:
        report = verify(db, journal, limit=10**9)  # every discrepancy, not the first 50
    if report.chain_breaks.get("ledger") or any(
            d.where == "ledger" for d in report.discrepancies):
        return None
    return (f"the journal is damaged where recovery did not need it "
            f"({len(report.discrepancies)} discrepancies, first: "
            f"{report.discrepancies[0].describe()})")


def _statement(loss: dict[str, Any], backup: BackupInfo | None, built: Built) -> str:
    base = (f"backup {backup.name} (events 1..{backup.hwm_event_id})" if backup else
            "the journal alone (no usable backup)")
    if loss["none"]:
        return (f"Nothing was lost: restored from {base}, replayed the journal to event "
                f"{built.last_id}, and verified ledger == journal.")
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
    return (f"Restored from {base} up to event {built.last_id}; " + "; ".join(parts) + ".")


def _write_review(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

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


def _quarantine(ws: Workspace, stamp: str) -> tuple[Path, dict[str, Any]]:
    """Hard-link the damaged files into quarantine (the live names stay until the swap)."""
    qdir = ws.quarantine_dir / stamp
    qdir.mkdir(mode=0o700, parents=True)
    files: dict[str, Any] = {}
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(ws.db_path) + suffix)
        if not src.exists():
            continue
        dst = qdir / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        files[src.name] = {"path": str(dst), "sha256": ck.sha256_file(dst),
                           "size": dst.stat().st_size}
    fsync_dir(qdir)
    return qdir, files


def recover(ws: Workspace, *, actor: str, dry_run: bool = False,
            backup_name: str | None = None) -> RecoveryResult:
    lock = WriterLock(ws.lock_path, timeout=120)
    with lock:
        pending = ws.db_dir / PENDING
        if pending.exists() and not dry_run:
            return _finish_pending(ws, pending, actor)
        return _recover_locked(ws, actor=actor, dry_run=dry_run, backup_name=backup_name)


def _recover_locked(ws: Workspace, *, actor: str, dry_run: bool,
                    backup_name: str | None) -> RecoveryResult:
    started = utc_now()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    steps = Steps()
    t0 = time.perf_counter()
    symptom = diagnose(ws)
    diagnosed = Action(name="diagnose", ms=elapsed_ms(t0), command="PRAGMA quick_check; "
                       "ledger == journal (when quick_check passes)",
                       result=symptom["summary"] if symptom else "no damage found")
    if symptom is None and backup_name is None:
        healthy = {"kind": "recovery", "outcome": "not_broken",
                   "summary": "The ledger is healthy (quick_check ok, ledger == journal); "
                              "nothing was changed."}
        return RecoveryResult("not_broken", EXIT_OK, healthy, dry_run=dry_run)
    symptom = symptom or {"summary": "no damage found; recovery forced with --backup"}
    steps.actions.append(diagnosed)

    backup: BackupInfo | None = None
    skipped: list[dict[str, str]] = []
    backup_checks: list[Check] = []

    def choose() -> str:
        nonlocal backup, skipped, backup_checks
        backup, skipped, backup_checks = choose_backup(ws, backup_name)
        return ((f"chose {backup.name} (high-water mark {backup.hwm_event_id}): sha256 "
                 "recomputed now matches its manifest, so the file is the one that passed "
                 "every check when it was taken" if backup else "no usable backup")
                + (f"; skipped {len(skipped)}" if skipped else ""))

    steps.run("choose backup", choose, command="sha256sum backups/<name>/leads.db")
    journal = Journal(ws.journal_dir, ws.config.journal.segment_bytes)
    hwm = backup.hwm_event_id or 0 if backup else 0
    jr = JournalWindow({}, [], None, 0, [], True)

    def read() -> str:
        nonlocal jr
        jr = read_window(journal, hwm)
        return (f"{len(jr.events)} records after event {hwm} (journal ends at {jr.last_id})"
                + (f"; {len(jr.problems)} damaged" if jr.problems else "")
                + (f"; missing: {', '.join(jr.missing_segments)}" if jr.missing_segments
                   else "") + ("" if jr.tail_clean else "; the tail is damaged"))

    steps.run("read journal", read, command=f"read journal records after event {hwm}")
    if jr.problems or jr.missing_segments:
        symptom["journal_problems"] = [*jr.missing_segments, *jr.problems][:20]
    if backup is None and not (jr.first_id == 1 and jr.intact):
        raise RecoveryFailed(
            "no validated backup passes its checks and the journal is not complete from "
            "event 1; nothing was changed",
            hint="Inspect `atlas backups list` and `atlas ledger verify`; the live file is "
                 "as it was found.", skipped=skipped, symptom=symptom)
    work_parent = Path(tempfile.mkdtemp(prefix="atlas-recover-")) if dry_run else ws.db_dir
    work = work_parent / f".recovering-{stamp}" if not dry_run else work_parent
    if not dry_run:
        _clear_stale_work(ws)
        work.mkdir(mode=0o700)
    qdir: Path | None = None
    quarantined: dict[str, Any] = {}
    try:
        salvage_source: Path | None = None
        if ws.db_path.exists():
            if dry_run:
                salvage_source = ws.db_path
            else:
                def quarantine() -> str:
                    nonlocal qdir, quarantined
                    qdir, quarantined = _quarantine(ws, stamp)
                    return f"hard-linked {', '.join(quarantined)} into {qdir} with sha256"
                steps.run("quarantine", quarantine)
                assert qdir is not None
                salvage_source = qdir / ws.db_path.name
        built = build_ledger(ws, backup, work, steps, jr, salvage_source)
        new_journal = work / "journal" if built.journal_needs_rewrite else ws.journal_dir
        if built.journal_needs_rewrite:
            steps.run("rewrite journal", lambda: (
                f"wrote {write_journal(built.db, new_journal, ws.config.journal.segment_bytes, built.gaps)} "  # noqa: E501
                "records for the recovered ledger (the damaged journal goes to quarantine)"))
        t0 = time.perf_counter()
        checks, report = _verify_result(built.db, new_journal, ws.config.journal.segment_bytes)
        steps.actions.append(Action(name="verify", ms=elapsed_ms(t0), result=(
            "quick_check, integrity_check, foreign_key_check in threads, alongside one pass "
            "for ledger == journal and the hash chain")))
        why = None if built.journal_needs_rewrite else _old_journal_damage(
            built.db, Journal(new_journal, ws.config.journal.segment_bytes), report, checks)
        if why is not None:
            built.journal_needs_rewrite = True
            new_journal = work / "journal"
            steps.run("rewrite journal", lambda: (
                f"{why}: wrote {write_journal(built.db, new_journal, ws.config.journal.segment_bytes, built.gaps)} "  # noqa: E501
                "records for the recovered ledger (the damaged journal goes to quarantine)"))
            t0 = time.perf_counter()
            checks, report = _verify_result(built.db, new_journal,
                                            ws.config.journal.segment_bytes)
            steps.actions.append(Action(name="verify", ms=elapsed_ms(t0),
                                        result="again, against the rewritten journal"))
        lost = [[g.first, g.last] for g in built.gaps if g.first > hwm or g.last > hwm]
        review_path = (qdir or work) / "salvage-review.db"
        loss: dict[str, Any] = {
            "lost_event_ranges": lost,
            "unknown_after": built.unknown_after,
            "salvaged_unmerged": {"count": len(built.unmerged),
                                  "path": str(review_path) if built.unmerged else None},
            "recovery_point": {"event_id": built.last_id, "ts": built.last_ts},
        }
        loss["none"] = not lost and built.unknown_after is None and not built.unmerged
        loss["statement"] = _statement(loss, backup, built)
        ok = all(c.passed for c in checks)
        outcome: Outcome = (("recovered" if loss["none"] else "recovered_with_loss")
                            if ok else "failed")
        receipt: dict[str, Any] = Receipt(
            kind="recovery", subject="ledger", actor=actor, started_at=started,
            finished_at=utc_now(), outcome=outcome,
            summary=(loss["statement"] if ok else
                     "Recovery could not verify the rebuilt ledger; nothing was changed."),
            symptom=symptom, actions=steps.actions, checks=checks,
            evidence={"quarantine": {"path": str(qdir) if qdir else None,
                                     "files": quarantined},
                      "salvage_notes": built.salvage_notes,
                      "replayed_from_journal": built.replayed,
                      "merged_from_salvage": built.merged_from_salvage},
        ).body()
        receipt["backup"] = None if backup is None else {
            "name": backup.name, "created_at": backup.created_at,
            "hwm_event_id": backup.hwm_event_id, "hwm_ts": backup.hwm_ts,
            "sha256": backup.sha256, "checks": [c.model_dump() for c in backup_checks],
            "validated_with": backup.manifest.get("checks", [])}
        receipt["skipped_backups"] = skipped
        receipt["loss"] = loss
        if dry_run:
            receipt["plan"] = {"backup": backup.name if backup else None,
                               "events_to_replay": built.replayed,
                               "events_from_salvage": len(built.merged_from_salvage),
                               "expected_loss": loss["statement"]}
            return RecoveryResult("planned", EXIT_OK if loss["none"] else EXIT_LOSS,
                                  receipt, dry_run=True)
        if not ok:
            failing = [c for c in checks if not c.passed]
            raise RecoveryFailed(
                f"the rebuilt ledger failed {failing[0].name}: {failing[0].detail}; "
                "nothing was changed", receipt=receipt)
        if built.unmerged:
            _write_review(review_path, built.unmerged)
        state = {"stamp": stamp, "work": str(work), "db": str(built.db),
                 "new_journal": str(new_journal) if built.journal_needs_rewrite else None,
                 "quarantine": str(qdir) if qdir else str(ws.quarantine_dir / stamp),
                 "receipt": receipt, "phase": "swap"}
        write_json_durably(ws.db_dir / PENDING, state)
        return _finish_pending(ws, ws.db_dir / PENDING, actor)
    except BaseException:
        if dry_run:
            shutil.rmtree(work_parent, ignore_errors=True)
        elif work.exists() and not (ws.db_dir / PENDING).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if dry_run:
            shutil.rmtree(work_parent, ignore_errors=True)


def _clear_stale_work(ws: Workspace) -> None:
    """Scratch directories of a recovery that was killed before its swap (Atlas's own)."""
    for p in ws.db_dir.glob(".recovering-*"):
        shutil.rmtree(p, ignore_errors=True)


def _finish_pending(ws: Workspace, pending: Path, actor: str) -> RecoveryResult:
    """Swap the verified ledger (and journal) into place, then record the receipt.

    Every step can be repeated: a recovery killed here is finished by the next run."""
    import json

    state = json.loads(pending.read_text(encoding="utf-8"))
    receipt: dict[str, Any] = state["receipt"]
    qdir = Path(state["quarantine"])
    qdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = Path(state["db"])
    t0 = time.perf_counter()
    if db.exists():
        for suffix in ("-wal", "-shm"):
            live = Path(str(ws.db_path) + suffix)
            if live.exists():
                keep = qdir / live.name
                if not keep.exists():
                    os.link(live, keep)
                live.unlink()
        fd = os.open(db, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(db, ws.db_path)
        fsync_dir(ws.db_dir)
    new_journal = state.get("new_journal")
    if new_journal and Path(new_journal).exists():
        old = qdir / "journal"
        if ws.journal_dir.exists() and not old.exists():
            os.rename(ws.journal_dir, old)
        os.rename(new_journal, ws.journal_dir)
        fsync_dir(ws.data_dir)
    receipt["actions"].append({"name": "atomic swap", "result": "replaced data/db/leads.db"
                               + (" and data/journal/" if new_journal else "")
                               + " (fsynced file and directory)",
                               "ms": elapsed_ms(t0)})
    shutil.rmtree(state["work"], ignore_errors=True)
    with Ledger.for_workspace(ws) as ledger:
        from ..ledger import NewEvent

        event = ledger.append_many([NewEvent("receipt.recorded", actor, receipt,
                                             subject="recovery")])[0]
    pending.unlink()
    fsync_dir(ws.db_dir)
    loss = receipt["loss"]
    return RecoveryResult(receipt["outcome"], EXIT_OK if loss["none"] else EXIT_LOSS,
                          receipt, receipt_id=event.id)


__all__ = ["EXIT_CANNOT", "EXIT_LOSS", "EXIT_OK", "RecoveryFailed", "RecoveryResult",
           "choose_backup", "diagnose", "recover"]
