"""Workspace-level integrity checks that leave receipts: verify and replay."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AtlasError
from .ledger import (
    Journal,
    Ledger,
    RebuildReport,
    VerifyReport,
    compare_tables,
    rebuild,
    utc_now,
    verify,
)
from .ledger.lock import WriterLock
from .ledger.verify import Discrepancy, moment
from .receipts import Check, Receipt, record
from .workspace import Workspace


@dataclass
class Verified:
    report: VerifyReport
    receipt_id: int | None
    receipt_error: str | None

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out["receipt_id"] = self.receipt_id
        if self.receipt_error:
            out["receipt_error"] = self.receipt_error
        return out


def _journal(ws: Workspace) -> Journal:
    return Journal(ws.journal_dir, ws.config.journal.segment_bytes)


LOCK_WAIT = 30.0  # seconds a check waits for the writer lock (a recovery can hold it long)


def _lock(ws: Workspace) -> WriterLock:
    return WriterLock(ws.lock_path, timeout=LOCK_WAIT)


def replay_differences(ws: Workspace) -> tuple[int, list[str]]:
    """Replay the journal into a scratch database and compare every projected table with
    the ledger's, both as they stood at one moment (writers go on meanwhile). Returns
    (events replayed, the first differences)."""
    journal = _journal(ws)
    conn, tail = moment(ws.db_path, journal, _lock(ws))
    try:
        with tempfile.TemporaryDirectory(prefix="atlas-replay-") as tmp:
            target = Path(tmp) / "replay.db"
            result = rebuild(journal, target, upto=tail.last_id)
            return result.events, compare_tables(conn, target)
    finally:
        conn.close()


def rebuild_as_of_now(ws: Workspace, into: Path) -> tuple[RebuildReport, str | None]:
    """``atlas ledger rebuild``: replay the journal as it stands now (up to its last valid
    record, noted under the writer lock) into ``into``. Returns the report and the torn
    write after that record, if any (set aside by the next command that writes)."""
    journal = _journal(ws)
    with _lock(ws):
        tail = journal.tail()
    result = rebuild(journal, into, upto=tail.last_id)
    return result, tail.problem.describe() if tail.problem is not None else None


def verify_workspace(ws: Workspace, actor: str, *, record_receipt: bool = True,
                     tables: bool = False) -> Verified:
    """Verify the files as they are (nothing is healed first), then record a receipt.

    With ``tables``, also replay the journal into a scratch database and compare every
    projected table: a row changed behind Atlas's back (not through an event) is found."""
    started, t0 = utc_now(), time.perf_counter()
    report = verify(ws.db_path, _journal(ws), lock=_lock(ws))
    ms = (time.perf_counter() - t0) * 1000
    checks = [Check(name="ledger == journal, hash chains", passed=report.ok,
                    detail=(report.discrepancies[0].describe() if report.discrepancies
                            else f"{report.journal_records} records compared"), ms=ms)]
    if tables:
        t1 = time.perf_counter()
        try:
            replayed, diffs = replay_differences(ws)
            detail = diffs[0] if diffs else f"{replayed} events replayed; every table matches"
        except AtlasError as exc:
            diffs, detail = [exc.message], f"the journal cannot be replayed: {exc.message}"
        report.discrepancies += [Discrepancy("tables", None, d) for d in diffs]
        checks.append(Check(name="tables == replay of the journal", passed=not diffs,
                            detail=detail, ms=(time.perf_counter() - t1) * 1000))
    if not record_receipt:
        return Verified(report, None, None)
    first = report.discrepancies[0].describe() if report.discrepancies else ""
    receipt = Receipt(
        kind="ledger.verify", subject="ledger", actor=actor, started_at=started,
        finished_at=utc_now(), outcome="ok" if report.ok else "failed",
        summary=(f"The ledger and the journal hold the same {report.last_id} events and both "
                 "hash chains verify" + (", and replaying the journal reproduces every table."
                                         if tables else ".") if report.ok else
                 f"The ledger does not match the journal: {first}"),
        symptom=None if report.ok else {"first_discrepancy": first,
                                        "count": len(report.discrepancies)},
        checks=checks,
        evidence={"journal_records": report.journal_records,
                  "ledger_events": report.ledger_events, "last_id": report.last_id},
    )
    try:
        with Ledger.for_workspace(ws) as ledger:
            event = record(ledger, receipt)
        return Verified(report, event.id, None)
    except AtlasError as exc:
        return Verified(report, None, exc.message)


def replay_check(ws: Workspace, ledger: Ledger, actor: str) -> int:
    """Replay the journal into a scratch database and compare every table; record a receipt."""
    started, t0 = utc_now(), time.perf_counter()
    events, diffs = replay_differences(ws)
    same = not diffs
    ms = (time.perf_counter() - t0) * 1000
    receipt = Receipt(
        kind="ledger.replay_check", subject="ledger", actor=actor, started_at=started,
        finished_at=utc_now(), outcome="ok" if same else "failed",
        summary=(f"Replaying the journal's {events} events into an empty database "
                 "reproduces every table of the ledger." if same else
                 "Replaying the journal does NOT reproduce the ledger's tables."),
        checks=[Check(name="replay reproduces tables", passed=same,
                      detail=diffs[0] if diffs else f"{events} events replayed", ms=ms)],
        evidence={"events": events},
    )
    return record(ledger, receipt).id


__all__ = ["Verified", "rebuild_as_of_now", "replay_check", "replay_differences",
           "verify_workspace"]
