"""Recovery without a rebuild: when the live file passes every check, keep it.

A ``db.corruption.detected`` stops every write until `atlas recover`. When the
file it named passes every check now (``quick_check``, ``integrity_check``,
``foreign_key_check``, ledger == journal, the hash chain), restoring a backup
and replaying the journal would produce the same ledger at the cost of a full
rebuild, and a receipt saying "recovered" about a file that was not broken.
Instead the journal events the ledger has not applied (the detection itself,
and any write interrupted between its journal write and its commit, or a WAL
tail SQLite dropped) are applied in place, exactly as every open applies them,
and the receipt says what was found: ``not_broken`` when only detections were
waiting, ``recovered`` when the ledger lacked other events too.

The same rules as a full recovery decide whether "nothing lost" is proven
(:func:`why_unknown`); when they do not, or any check fails, the full recovery
runs instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ledger import Event, Journal, Ledger, NewEvent, utc_now
from ..receipts import Action, Check, Outcome, Receipt
from ..workspace import Workspace
from . import checks as ck
from . import swap
from .backup import BackupInfo, list_backups
from .detect import DETECTED, Inspection, cannot_check
from .rebuild import Steps, elapsed_ms, read_window, why_unknown
from .salvage import Salvage


@dataclass
class InPlace:
    """A recovery done (or, in a dry run, planned) without a rebuild."""

    outcome: Outcome  # not_broken | recovered
    receipt: dict[str, Any]
    receipt_id: int | None = None


def unclosed_detections(ws: Workspace) -> list[int]:
    """Under the writer lock: detections the ledger holds that no recovery receipt
    follows (an in-place recovery killed between applying them and recording its
    receipt)."""
    conn = ck.open_ro(ws.db_path, immutable=ck.live_immutable(ws.db_path))
    try:
        row = conn.execute(
            "SELECT (SELECT max(id) FROM events WHERE kind = ?), (SELECT max(id) FROM "
            "receipts WHERE kind = 'recovery')", (DETECTED,)).fetchone()
        if row[0] is None or (row[1] is not None and row[1] > row[0]):
            return []
        after = row[1] or 0
        return [int(r[0]) for r in conn.execute(
            "SELECT id FROM events WHERE kind = ? AND id > ? ORDER BY id", (DETECTED, after))]
    finally:
        conn.close()


def marks(ws: Workspace) -> list[BackupInfo]:
    """Every backup whose manifest states a high-water mark: how far history reached."""
    return [b for b in list_backups(ws) if isinstance(b.hwm_event_id, int)]


def try_in_place(ws: Workspace, found: Inspection, unclosed: list[int], steps: Steps,
                 *, started: str, stamp: str, actor: str, dry_run: bool
                 ) -> InPlace | dict[str, Any]:
    """``found`` passed quick_check and ledger == journal. Check the rest; apply what the
    ledger lacks and record the receipt (a dry run only plans). Returns the symptom for
    the full recovery instead when a check fails or "nothing lost" is not proven."""
    head = found.head
    end = found.unapplied[1] if found.unapplied else head
    fuller = _check_in_full(ws, steps)
    failed = next((c for c in fuller if not c.passed), None)
    if failed is not None:
        return _symptom(found, f"{failed.name}: {failed.detail}")
    applied, why = _journal_after(ws, steps, head, end)
    if why is not None:
        return _symptom(found, f"the journal cannot prove where history ends: {why}")
    closes = [e.id for e in applied if e.kind == DETECTED] + unclosed
    others = [e.id for e in applied if e.kind != DETECTED]
    compared = next(c for c in found.checks if c.name == "ledger == journal")
    checks = [*found.checks, *fuller, Check(
        name="hash_chain", passed=True, ms=compared.ms, detail=(
            f"events 1..{head} chain (checked in the same pass as ledger == journal); "
            + (f"events {head + 1}..{end} are checked against the chain as they are applied"
               if end > head else "nothing to apply")))]
    ts = applied[-1].ts if applied else _head_ts(ws)
    loss: dict[str, Any] = {
        "none": True, "lost_event_ranges": [], "unknown_after": None,
        "salvaged_unmerged": {"count": 0, "path": None},
        "recovery_point": {"event_id": end, "ts": ts}, "earlier_gaps": [], "unapplied": [],
        "statement": _statement(end, others, closes)}
    outcome: Outcome = "recovered" if others else "not_broken"
    # the ledger lost committed events: keep the WAL (which the next write reuses) first
    kept = _keep_wal(ws, stamp, steps) if others and not dry_run else None
    receipt = Receipt(
        kind="recovery", subject="ledger", actor=actor, started_at=started,
        finished_at=utc_now(), outcome=outcome, summary=loss["statement"],
        symptom=_symptom(found, None), actions=steps.actions, checks=checks,
        evidence={"recovery_id": stamp, "in_place": True,
                  "applied": [head + 1, end] if end > head else None,
                  "closed_detections": closes, "quarantine": kept},
    ).body()
    receipt |= {"backup": None, "skipped_backups": [], "loss": loss}
    if dry_run:
        receipt["plan"] = {
            "in_place": True, "events_to_apply": len(applied), "detections_to_close": closes,
            "recovery_point": loss["recovery_point"], "expected_loss": loss["statement"],
            "would_fail": None, "rehearsed_on": "the live file, read only: nothing was changed"}
        return InPlace(outcome, receipt)
    return InPlace(outcome, receipt, _apply(ws, receipt))


def _check_in_full(ws: Workspace, steps: Steps) -> list[Check]:
    """integrity_check and foreign_key_check, in threads (under the writer lock)."""
    t0 = time.perf_counter()
    imm = ck.live_immutable(ws.db_path)
    ran = ck.run_parallel([
        lambda: ck.sqlite_check(ws.db_path, "integrity_check", immutable=imm),
        lambda: ck.foreign_key_check(ws.db_path, immutable=imm)])
    steps.actions.append(Action(
        name="check in full", ms=elapsed_ms(t0),
        command="PRAGMA integrity_check; PRAGMA foreign_key_check",
        result="; ".join(f"{r.check.name}: {r.check.detail}" for r in ran)))
    for r in ran:
        if r.error is not None and not r.corrupt:
            raise cannot_check(f"{r.check.name} could not run ({r.check.detail})")
    return [r.check for r in ran]


def _journal_after(ws: Workspace, steps: Steps, head: int, end: int
                   ) -> tuple[list[Event], str | None]:
    """The journal's records after the ledger's head, and why they cannot be applied in
    place with "nothing lost" proven (the same rules as a full recovery), if so."""
    t0 = time.perf_counter()
    jr = read_window(Journal(ws.journal_dir, ws.config.journal.segment_bytes), head)
    why = why_unknown(jr, marks(ws), Salvage(max_id_seen=head, readable=True), head)
    steps.actions.append(Action(
        name="read journal after the ledger", ms=elapsed_ms(t0),
        command=f"read journal records after event {head}",
        result=f"{len(jr.events)} records after event {head} (journal ends at "
               f"{jr.last_id})" + (f"; {why}" if why else "")))
    applied = [jr.events[i] for i in sorted(jr.events)]
    if why is None and (jr.problems or jr.missing_segments):
        why = "; ".join([*jr.missing_segments, *jr.problems])
    if why is None and [e.id for e in applied] != list(range(head + 1, end + 1)):
        why = f"its records after event {head} are not {head + 1}..{end}"
    return applied, why


def _keep_wal(ws: Workspace, stamp: str, steps: Steps) -> dict[str, Any] | None:
    """Copy a non-empty -wal into ``quarantine/<stamp>/`` (with its hash, fsynced): the
    next write reuses it, and it may hold the frames SQLite dropped."""
    wal = Path(str(ws.db_path) + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return None
    qdir = ws.quarantine_dir / stamp
    qdir.mkdir(mode=0o700, parents=True)
    files = {wal.name: swap.copy_and_hash(wal, qdir / wal.name)}
    steps.run("quarantine", lambda: f"copied {wal.name} into {qdir}: " + swap.seal(files),
              "cp leads.db-wal quarantine/<UTC>/; sha256sum")
    return {"path": str(qdir), "files": files}


def _apply(ws: Workspace, receipt: dict[str, Any]) -> int:
    """Open the ledger as recovery does (the detections are applied, not refused): the
    catch-up every open runs, one transaction. Then the receipt."""
    t0 = time.perf_counter()
    with Ledger.for_workspace(ws, recovering=True) as ledger:
        receipt["actions"].append({
            "name": "apply in place", "ms": elapsed_ms(t0),
            "command": "the catch-up every open runs (one transaction, hash chain checked)",
            "result": f"applied {ledger.report.caught_up} journal event(s) to the live "
                      "ledger; nothing was restored or swapped (the file passes every check)"})
        return ledger.append_many([NewEvent("receipt.recorded", receipt["actor"], receipt,
                                            subject="recovery")])[0].id


def _head_ts(ws: Workspace) -> str | None:
    conn = ck.open_ro(ws.db_path, immutable=ck.live_immutable(ws.db_path))
    try:
        row = conn.execute("SELECT ts FROM events ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _statement(end: int, others: list[int], closes: list[int]) -> str:
    parts = ["the database file passes quick_check, integrity_check, foreign_key_check, "
             "ledger == journal and the hash chain, so it was kept (nothing was restored or "
             "swapped)"]
    if others:
        parts.append(f"the {len(others)} journal event(s) it lacked ({others[0]}.."
                     f"{others[-1]}) were applied to it")
    if closes:
        parts.append(f"detection event(s) {', '.join(map(str, closes))} did not reproduce "
                     "and are closed")
    return f"Nothing was lost: {'; '.join(parts)}; the ledger holds every event to {end}."


def _symptom(found: Inspection, why: str | None) -> dict[str, Any]:
    """What was found: the detections waiting, events the ledger had not applied, and
    (when the full recovery must run instead) why."""
    said = []
    if found.pending:
        said.append("detection event(s) waiting in the journal: " + "; ".join(
            f"{e.id} ({e.payload.get('detected_by', '?')}: "
            f"{e.payload.get('summary', 'no summary')})" for e in found.pending))
    lacked = found.unapplied[1] - found.unapplied[0] + 1 - len(found.pending) if (
        found.unapplied) else 0
    if found.unapplied and lacked:
        a, b = found.unapplied
        said.append(f"ledger != journal: the ledger lacks {lacked} journal event(s) in {a}..{b} "
                    "(a write interrupted between its journal write and its commit, or a "
                    "WAL tail SQLite dropped)")
    if not said:
        said.append("a detection in the ledger that no recovery closed")
    if why is not None:
        said.append(why)
    return {"summary": "; ".join(said), "detected_by": "atlas recover (quick_check, "
            "ledger == journal)", "checks": [c.model_dump() for c in found.checks],
            "pending_detections": [{"id": e.id, "ts": e.ts, **e.payload}
                                   for e in found.pending]}


__all__ = ["InPlace", "marks", "try_in_place", "unclosed_detections"]
