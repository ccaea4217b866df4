"""What broke and how it was fixed: each incident from its receipt, in plain words.

A recovery tells the five parts: the symptom, the recovery point (the backup
used, or the journal), the meaningful steps, the checks that verified it, and
the loss boundary. A repair tells its symptom, its runbook steps, the readback
that verified it, and what the user can do now.
"""

from __future__ import annotations

from typing import Any

from .prose import clock, count, join, sentence
from .sources import DayReceipt, LedgerDay

# The recovery steps worth telling, in the recovery's own order, in plain words.
# Steps left out are told elsewhere: the diagnosis is the symptom, the chosen backup
# is the recovery point, the verification is the checks.
RECOVERY_STEPS = {
    "quarantine": "Moved the damaged file aside into quarantine (kept, never deleted).",
    "restore": None,  # the result says what was restored
    "reindex": "Rebuilt every index.",
    "salvage": None,
    "replay": None,
    "rewrite journal": "Rewrote the journal for the recovered ledger; the damaged one is "
                       "in quarantine.",
    "atomic swap": "Swapped the verified copy into place.",
}


def incidents(ledger: LedgerDay) -> list[dict[str, Any]]:
    out = []
    for r in ledger.receipts:
        if r.kind == "recovery" and r.outcome != "not_broken":
            out.append(_recovery(r))
        elif r.kind == "repair" and r.outcome in ("fixed", "not_fixed"):
            out.append(_repair(r))
    if ledger.detection is not None:
        d = ledger.detection
        out.append(_open("Corruption was detected and has not been recovered",
                         f"At {clock(d.ts)} UTC, {d.summary or 'corruption was detected'} "
                         f"(event {d.event_id}, in the {d.where})."))
    elif ledger.damaged_tables:
        out.append(_open("The ledger fails quick_check and has not been recovered",
                         "quick_check fails for " + join(ledger.damaged_tables) + "."))
    return out


def _open(title: str, symptom: str) -> dict[str, Any]:
    return {"kind": "detection", "title": title, "outcome": "open", "receipt": None,
            "symptom": symptom, "recovery_point": None, "steps": [], "steps_intro": "",
            "verified": "Nothing has verified the ledger since.",
            "boundary_label": "Next",
            "boundary": "Run `atlas db check --full`, then `atlas recover`."}


def _recovery(r: DayReceipt) -> dict[str, Any]:
    b = r.body
    backup = b.get("backup") or None
    loss = b.get("loss") or {}
    point = loss.get("recovery_point") or {}
    if backup:
        source = (f"Backup {backup.get('name')}, which holds events "
                  f"1..{backup.get('hwm_event_id')}"
                  + (f" (to {backup['hwm_ts'][:19].replace('T', ' ')} UTC)"
                     if backup.get("hwm_ts") else "") + ".")
    else:
        source = "No backup was used: the ledger was rebuilt from the journal alone."
    if point.get("event_id"):
        source += f" After the journal was replayed, the ledger reaches event {point['event_id']}."
    title = {"recovered": "The ledger database was damaged; nothing was lost",
             "recovered_with_loss": "The ledger database was damaged, and data was lost",
             }.get(r.outcome, "The ledger database was damaged and could not be recovered")
    checks = b.get("checks", [])
    failed = [f"{c['name']} ({c.get('detail', '')})" for c in checks if not c.get("passed")]
    verified = (sentence(join([c["name"] for c in checks]) + " all passed") if not failed
                else sentence("Failed: " + join(failed)))
    return {"kind": "recovery", "title": title, "outcome": r.outcome, "receipt": r.id,
            "symptom": sentence(_symptom(b)),
            "backup": backup.get("name") if backup else None,
            "backup_hwm": backup.get("hwm_event_id") if backup else None,
            "recovery_point": source, "steps": _recovery_steps(b), "steps_intro": "",
            "verified": verified if checks else "No check was recorded.",
            "boundary_label": "Loss boundary",
            "boundary": str(loss.get("statement") or r.summary)}


def _symptom(body: dict[str, Any]) -> str:
    s = body.get("symptom")
    return str(s.get("summary", "")) if isinstance(s, dict) else str(s or "not recorded")


def _recovery_steps(body: dict[str, Any]) -> list[str]:
    steps = [f"Skipped backup {s.get('name')}: {s.get('why', '')}."
             for s in body.get("skipped_backups", [])[:3]]
    for a in body.get("actions", []):
        name, result = str(a.get("name")), str(a.get("result", ""))
        if result.startswith(("failed", "could not")):
            steps.append(sentence(f"{name} failed: {result}"))
        elif name in RECOVERY_STEPS:
            steps.append(RECOVERY_STEPS[name] or sentence(result))
    return steps


def _repair(r: DayReceipt) -> dict[str, Any]:
    b = r.body
    route = r.subject.removeprefix("route:")
    promise, _, failure = _symptom(b).partition(": it does not (")
    symptom = (f"{promise}, but it did not: {failure.removesuffix(')')}" if failure
               else promise)
    snippet = (b.get("symptom") or {}).get("snippet") if isinstance(b.get("symptom"),
                                                                    dict) else None
    if snippet:
        symptom = sentence(symptom) + f" The page said: “{str(snippet)[:120]}”"
    runbook = b.get("evidence", {}).get("runbook")
    steps = [f"{a.get('name')}: {a.get('result')}" for a in b.get("actions", [])]
    readback = b.get("readback") or {}
    readings = readback.get("readings") or []
    status = readings[-1].get("status") if readings else None
    if readback.get("passed"):
        verified = (f"An HTTP readback of the real page passed "
                    f"{count(int(readback.get('needed_consecutive', 1)), 'time')} in a row"
                    + (f" (status {status})" if status is not None else ""))
    else:
        bad = [c for c in b.get("checks", []) if not c.get("passed")]
        verified = ("The readback still fails"
                    + (f": {bad[0]['name']}: {bad[0].get('detail', '')}" if bad else ""))
    fixed = r.outcome == "fixed"
    return {"kind": "repair", "title": f"Route {route} was failing" + (
                " and was fixed" if fixed else " and is still failing"),
            "outcome": r.outcome, "receipt": r.id, "route": route,
            "symptom": sentence(symptom), "recovery_point": None, "steps": steps,
            "steps_intro": f"The runbook {runbook} ran:" if runbook else "",
            "verified": sentence(verified),
            "boundary_label": "Now" if fixed else "Still broken",
            "boundary": sentence(r.summary.removeprefix("Fixed: "))}


__all__ = ["incidents"]
