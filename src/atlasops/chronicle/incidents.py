"""What broke and how it was fixed: each incident from its receipt, in plain words.

A recovery tells the five parts: the symptom, the recovery point (the backup
used, or the journal), the meaningful steps, the checks that verified it, and
the loss boundary. A repair tells its symptom, its runbook steps, the readback
that verified it, and what the user can do now.
"""

from __future__ import annotations

import re
from typing import Any

from .prose import clock, count, join, sentence
from .sources import DayReceipt, Detection, LedgerDay

# The recovery steps worth telling, in the recovery's own order, in plain words.
# Steps left out are told elsewhere: the diagnosis is the symptom, the chosen backup
# is the recovery point, the verification is the checks. ``None``: said from the body.
RECOVERY_STEPS = {
    "quarantine": "Moved the damaged file aside into quarantine (kept, never deleted).",
    "restore": None,
    "reindex": "Rebuilt every index.",
    "salvage": None,
    "replay": None,
    "rewrite journal": "Rewrote the journal for the recovered ledger; the damaged one is "
                       "in quarantine.",
    "atomic swap": "Swapped the verified copy into place.",
}
# The headline rules, most important first: incidents are listed in this order, and
# the first one is the day's headline.
RULES = {("recovery", "recovered_with_loss"): "incident with loss",
         ("recovery", "failed"): "failed recovery",
         ("detection", "open"): "open incident",
         ("detection", "recovered_later"): "open incident",
         ("recovery", "recovered"): "recovered incident",
         ("repair", "not_fixed"): "failed repair",
         ("repair", "fixed"): "repair",
         ("recovery", "not_broken"): "false alarm"}
ORDER = list(dict.fromkeys(RULES.values()))


def incidents(ledger: LedgerDay) -> list[dict[str, Any]]:
    """The day's incidents, most important first (see RULES); each carries the rule that
    ranks it and the sentence that headlines the day when it comes first."""
    out = []
    for r in ledger.receipts:
        if r.kind == "recovery" and (r.outcome != "not_broken" or _closed_alarms(r)):
            out.append(_recovery(r))
        elif r.kind == "repair" and r.outcome in ("fixed", "not_fixed"):
            out.append(_repair(r))
    if ledger.detection is not None:
        out.append(_detection(ledger.detection))
    elif ledger.damaged_tables:
        tables = join([t.split(" ")[0] for t in ledger.damaged_tables])
        out.append(_open("The ledger fails quick_check and has not been recovered",
                         "quick_check fails for " + join(ledger.damaged_tables) + ".",
                         f"The ledger is damaged (quick_check fails for {tables}) and has "
                         "not been recovered yet."))
    for i in out:
        i["rule"] = RULES.get((i["kind"], i["outcome"]), "incident")
    return sorted(out, key=lambda i: ORDER.index(i["rule"]) if i["rule"] in ORDER
                  else len(ORDER))


def _detection(d: Detection) -> dict[str, Any]:
    symptom = (f"At {clock(d.ts)} UTC, {d.summary or 'corruption was detected'} "
               f"(event {d.event_id}, in the {d.where}).")
    if d.recovered_by is None or d.recovered_at is None:
        return _open("Corruption was detected and has not been recovered", symptom,
                     f"The ledger is damaged (corruption was detected at {clock(d.ts)} UTC) "
                     "and has not been recovered yet.")
    later = f"on {d.recovered_at[:10]} at {clock(d.recovered_at)} UTC"
    return {**_open("Corruption was detected and was not recovered that day", symptom, ""),
            "outcome": "recovered_later", "verified": "Nothing verified the ledger that day.",
            "boundary_label": "Recovered later",
            "boundary": f"The recovery in receipt #{d.recovered_by} closed it, {later}.",
            "headline": f"The ledger was found damaged at {clock(d.ts)} UTC and was not "
                        f"recovered that day (it was recovered {later}, receipt "
                        f"#{d.recovered_by})."}


def _open(title: str, symptom: str, headline: str) -> dict[str, Any]:
    return {"kind": "detection", "title": title, "outcome": "open", "receipt": None,
            "symptom": symptom, "recovery_point": None, "steps": [], "steps_intro": "",
            "verified": "Nothing has verified the ledger since.",
            "boundary_label": "Next",
            "boundary": "Run `atlas db check --full`, then `atlas recover`.",
            "headline": headline}


def _closed_alarms(r: DayReceipt) -> list[int]:
    """The detections a recovery that kept the file in place found did not reproduce."""
    return list((r.body.get("evidence") or {}).get("closed_detections") or [])


def _recovery(r: DayReceipt) -> dict[str, Any]:
    b = r.body
    backup = b.get("backup") or None
    loss = b.get("loss") or {}
    point = loss.get("recovery_point") or {}
    if (b.get("evidence") or {}).get("in_place"):
        source = ("No backup was needed: the database file passed every check and was kept "
                  "in place.")
    elif backup:
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
             "not_broken": "A corruption alarm did not reproduce; the ledger was sound",
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
            "boundary": str(loss.get("statement") or r.summary),
            "headline": _recovery_headline(r.outcome, b)}


def _recovery_headline(outcome: str, body: dict[str, Any]) -> str:
    backup = body.get("backup") or {}
    source = (f"backup {backup['name']} (recovery point: event {backup.get('hwm_event_id')})"
              if backup.get("name") else "the journal alone (no backup was used)")
    if outcome == "failed":
        return "The ledger was damaged and its recovery failed; nothing was changed."
    if outcome == "not_broken":
        closed = ", ".join(map(str, (body.get("evidence") or {}).get("closed_detections") or []))
        return (f"A corruption alarm (event {closed}) did not reproduce: the ledger passed "
                "every check and was kept; nothing was lost.")
    if outcome == "recovered":
        return f"The ledger was damaged and was restored from {source}; nothing was lost."
    return f"The ledger was damaged and was restored from {source}, but {_lost(body)}."


def _lost(body: dict[str, Any]) -> str:
    """The loss boundary in a few words: the lost events, and where history stops being
    known (from the receipt's ``loss``)."""
    loss = body.get("loss") or {}
    ranges = loss.get("lost_event_ranges") or []
    unknown = loss.get("unknown_after") or {}
    parts = [f"events {', '.join(f'{a}..{b}' for a, b in ranges)} could not be recovered"
             ] if ranges else []
    if unknown.get("id") is not None:
        parts.append(f"nothing after event {unknown['id']} can be known")
    return join(parts) or "its receipt does not say what was lost"


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
            steps.append(RECOVERY_STEPS[name] or _said(name, result, body))
    return steps


def _said(step: str, result: str, body: dict[str, Any]) -> str:
    """A restore or a replay from the receipt's own fields; any other step as recorded."""
    backup = body.get("backup") or {}
    if step == "restore" and backup.get("name"):
        return f"Restored backup {backup['name']} into a work copy."
    if step == "replay":
        mark = int(backup.get("hwm_event_id") or 0)
        last = int(((body.get("loss") or {}).get("recovery_point") or {}).get("event_id") or 0)
        salvaged = len((body.get("evidence") or {}).get("merged_from_salvage") or [])
        where = "the backup's mark" if backup.get("name") else "the start"
        if last <= mark:
            return f"Nothing needed replaying after {where} (event {mark})."
        return (f"Replayed events {mark + 1}..{last} after {where}, from the journal"
                + (f" ({salvaged} of them salvaged from the damaged file)" if salvaged
                   else "") + ".")
    return sentence(result)


def _repair(r: DayReceipt) -> dict[str, Any]:
    b = r.body
    route = r.subject.removeprefix("route:")
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
    now = r.summary.removeprefix("Fixed: ").removeprefix("Not fixed: ")
    return {"kind": "repair", "title": f"Route {route} was failing" + (
                " and was fixed" if fixed else " and is still failing"),
            "outcome": r.outcome, "receipt": r.id, "route": route,
            "symptom": _route_symptom(b), "recovery_point": None, "steps": steps,
            "steps_intro": f"The runbook {runbook} ran:" if runbook else "",
            "verified": sentence(verified),
            "boundary_label": "Now" if fixed else "Still broken",
            "boundary": sentence(now),
            "headline": sentence(f"Route {route} was failing and was repaired: {now}" if fixed
                                 else f"Route {route} is failing and its repair did not fix "
                                      f"it: {now}")}


def _route_symptom(body: dict[str, Any]) -> str:
    """``GET /x returns 200 ...: it does not (status: 500 (expected 200))`` as "GET /x
    answered 500 instead of 200 (the page said: “...”)."."""
    found = body.get("symptom")
    s: dict[str, Any] = found if isinstance(found, dict) else {}
    promise = _symptom(body).partition(": it does not (")[0]
    request = promise.partition(" returns ")[0] or promise
    bad = [c for c in s.get("checks", []) if isinstance(c, dict) and not c.get("passed")]
    first = bad[0] if bad else {}
    detail = str(first.get("detail", ""))
    expected = re.fullmatch(r"(\d+) \(expected (\d+)\)", detail)
    if first.get("name") == "status" and expected:
        text = f"{request} answered {expected[1]} instead of {expected[2]}"
    elif first.get("name") == "reachable":
        text = f"{request} could not be reached ({detail})"
    elif first:
        text = f"{promise}, but it did not ({first.get('name')}: {detail})"
    else:
        text = promise
    snippet = s.get("snippet")
    return sentence(text + (f" (the page said: “{str(snippet)[:120]}”)" if snippet else ""))


__all__ = ["incidents"]
