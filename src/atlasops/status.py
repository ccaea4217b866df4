"""``atlas status``: what is in the ledger and how healthy its journal is."""

from __future__ import annotations

from typing import Any

from .durability.backup import list_backups
from .errors import Conflict, StorageError
from .ledger import Ledger
from .ledger.lock import WriterLock
from .workspace import Workspace

HEALTH_LOCK_WAIT = 2.0  # seconds status waits for the writer lock to read both sides at once


def journal_health(ledger: Ledger) -> dict[str, Any]:
    """Cheap health: segments, size, the tail record, and whether it matches the ledger.

    Only the tail is read (``checked: "tail"``), so that status stays instant on a large
    journal; damage earlier in the journal is found by ``atlas ledger verify``."""
    journal = ledger.journal
    segments = journal.segments()
    try:  # both at one moment: a writer journals, then commits, under the lock
        with WriterLock(ledger.lock_path, timeout=HEALTH_LOCK_WAIT):
            tail = journal.tail()
            head = ledger.last_event()
    except Conflict:  # a long writer (a recovery): read both anyway, and say so below
        tail, head = journal.tail(), ledger.last_event()
    problems: list[str] = []
    if tail.problem is not None:
        problems.append(tail.problem.describe())
    head_id = head.id if head else 0
    if head_id != tail.last_id:
        problems.append(f"ledger ends at event {head_id}, journal at {tail.last_id}")
    elif head is not None and head.hash != tail.last_hash:
        problems.append(f"event {head_id} differs between ledger and journal")
    return {
        "ok": not problems,
        "segments": len(segments),
        "bytes": sum(s.stat().st_size for s in segments),
        "last_id": tail.last_id,
        "problems": problems,
        "checked": "tail",
        "full_check": "atlas ledger verify",
    }


def latest_backup(ws: Workspace) -> dict[str, Any] | None:
    """The newest backup directory with a readable manifest, if any."""
    for b in list_backups(ws):
        if b.created_at is not None:
            return {"name": b.name, "created_at": b.created_at, "validated": b.validated,
                    "hwm_event_id": b.hwm_event_id}
    return None


def status(ws: Workspace, ledger: Ledger) -> dict[str, Any]:
    last = ledger.last_event()
    try:
        counts = {t: ledger.count(t) for t in ("events", "businesses", "leads", "receipts")}
    except StorageError:
        raise
    return {
        "home": str(ws.home),
        "owner": ws.config.owner.email,
        "counts": counts,
        "last_event": None if last is None else {
            "id": last.id, "ts": last.ts, "kind": last.kind, "actor": last.actor},
        "journal": journal_health(ledger),
        "latest_backup": latest_backup(ws),
        "opened": {"caught_up": ledger.report.caught_up, "set_aside": ledger.report.set_aside},
    }


__all__ = ["journal_health", "latest_backup", "status"]
