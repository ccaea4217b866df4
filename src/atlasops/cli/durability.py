"""``atlas backup``, ``atlas backups list|verify|prune``, ``atlas db check``, ``atlas recover``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ..durability import (
    db_check,
    find_backup,
    list_backups,
    prune,
    take_backup,
    verify_backup,
)
from ..durability import (
    recover as run_recovery,
)
from ..errors import InputError
from ..ledger import Ledger
from ..workspace import Workspace
from .common import (
    HomeOpt,
    JsonOpt,
    actor,
    err,
    handles_errors,
    mark,
    open_ledger,
    open_workspace,
    out,
    print_json,
    resolve_home,
    styled,
)

backups_app = typer.Typer(help="Backups: list, re-verify, prune by retention.",
                          no_args_is_help=True)
db_app = typer.Typer(help="The live database: integrity and ledger == journal checks.",
                     no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("recover")(recover)
    app.add_typer(backups_app, name="backups")
    app.add_typer(db_app, name="db")


def _checks_table(checks: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("check", "result", "detail", "ms"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c["name"], mark(c["passed"]),
                      str(c.get("detail", ""))[:200], f"{c.get('ms', 0):.0f}")
    return table


@handles_errors
def backup(
    label: Annotated[str, typer.Option("--label", help="Name prefix, e.g. hourly, daily, "
                                       "pre-migration.")] = "manual",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take an online backup and validate it on the copy.

    Writers keep working during the snapshot (SQLite's backup API). The copy is checked
    with quick_check, integrity_check, foreign_key_check, the hash chain, sha256, page
    and row counts; manifest.json records every result. Exit 1 if validation failed.
    """
    with open_ledger(home) as (ws, ledger), err.status("Taking and validating the backup..."):
        info, receipt_id = take_backup(ws, ledger, actor=actor(), label=label)
    data = {**info.to_dict(), "receipt_id": receipt_id,
            "checks": info.manifest.get("checks", [])}
    if as_json:
        print_json(data)
    else:
        out.print(_checks_table(data["checks"], f"Backup {info.name}"))
        if info.validated:
            out.print(styled(("validated", "green"), f": {info.path} holds events 1.."
                             f"{info.hwm_event_id} (to {info.hwm_ts}). Receipt #{receipt_id}."))
        else:
            err.print(styled(("FAILED validation", "red"), f": {info.path} is marked failed and "
                             "will never be used by `atlas recover`."))
    if not info.validated:
        raise typer.Exit(1)


@backups_app.command("list")
@handles_errors
def backups_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every backup, newest first: age, high-water mark, validated, size."""
    ws = open_workspace(home)
    rows = [b.to_dict() for b in list_backups(ws)]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} backup(s) in {ws.backups_dir}")
    for col in ("name", "age", "high-water mark", "status", "size"):
        table.add_column(col)
    for r in rows:
        age = r["age_seconds"]
        age_text = "-" if age is None else (f"{age // 3600}h{(age % 3600) // 60:02d}m"
                                            if age >= 3600 else f"{age // 60}m{age % 60:02d}s")
        status = Text(r["status"], style={"validated": "green", "failed": "red"}.get(
            r["status"], "yellow"))
        table.add_row(r["name"], age_text,
                      "-" if r["hwm_event_id"] is None else f"{r['hwm_event_id']} "
                      f"({r['hwm_ts']})", status, "-" if r["size"] is None else str(r["size"]))
    out.print(table)


@backups_app.command("verify")
@handles_errors
def backups_verify(
    name: Annotated[str | None, typer.Argument(help="The backup to verify.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Verify every backup.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute a backup's sha256 and checks and report any drift from its manifest.

    Exit 1 when any verified backup drifted or fails a check.
    """
    ws = open_workspace(home)
    if name is None and not all_:
        raise InputError("name a backup or pass --all", hint="`atlas backups list`.")
    infos = list_backups(ws) if all_ else [find_backup(ws, name or "")]
    with err.status(f"Verifying {len(infos)} backup(s)..."):
        results = [verify_backup(i, ws.journal_dir) for i in infos]
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.ok:
                out.print(styled(("ok", "green"), f" {r.name}: hash and every check match the "
                                 "manifest"))
            else:
                err.print(styled(("DRIFT", "red"), f" {r.name}: " + "; ".join(r.drift)))
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@backups_app.command("prune")
@handles_errors
def backups_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted; "
                                          "delete nothing.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete backups outside the retention policy ([backups] in atlas.toml).

    Keeps the newest backup of each of the last keep_hourly hours, keep_daily days and
    keep_weekly weeks, and always the newest validated backup. Failed backups are pruned.
    """
    ws = open_workspace(home)
    if dry_run:
        plan = prune(ws, None, actor=actor(), dry_run=True)
    else:
        with Ledger.for_workspace(ws) as ledger:
            plan = prune(ws, ledger, actor=actor(), dry_run=False)
    if as_json:
        print_json({"dry_run": dry_run, **plan.to_dict()})
        return
    verb = "would delete" if dry_run else "deleted"
    for n, why in plan.delete:
        out.print(f"{verb} {n} ({why})")
    for n, why in plan.keep:
        out.print(f"keep {n} ({why})", style="dim")
    out.print(f"{len(plan.delete)} {verb}, {len(plan.keep)} kept.")


@db_app.command("check")
@handles_errors
def check(
    full: Annotated[bool, typer.Option("--full", help="integrity_check instead of the faster "
                                       "quick_check.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the live database and that it holds exactly the journal's events.

    The ledger and the journal are compared as they stood at one moment, so writers can
    keep working. Damage (SQLite's verdict, or a difference between ledger and journal)
    is looked at twice; confirmed, it is recorded as `db.corruption.detected` (in the
    journal, even when the database cannot be written: from then on nothing writes to the
    database until `atlas recover`) and the exit code is 1. Exit 1 also while an earlier
    detection waits for `atlas recover`. Journal events the ledger has not applied yet
    (an interrupted write) are noted, not damage: the next command applies them. A check
    that cannot run (the database locked by another program) records nothing: exit 5.
    """
    ws = open_workspace(home)
    result = db_check(ws, full=full, actor=actor())
    if as_json:
        print_json(result.to_dict())
    else:
        out.print(_checks_table([c.model_dump() for c in result.checks], "Database check"))
        for note in result.notes:
            err.print(styled(("note:", "yellow"), f" {note}"))
        if result.ok:
            out.print(styled(("ok", "green"), ": the database is sound and ledger == journal."))
        elif result.symptom is None:
            err.print(styled(("PENDING", "red"), f": detection event {result.pending[-1]} "
                             "waits for `atlas recover`; until then nothing is written. The "
                             "file passes these checks now: `atlas recover` checks it in "
                             "full and, if it passes, closes the detection without "
                             "rebuilding anything."))
        else:
            err.print(styled(("PROBLEM", "red"), f": {result.symptom['summary']}"))
            if result.event_id:
                err.print(f"recorded as event {result.event_id} (db.corruption.detected)")
            elif result.not_recorded:
                err.print(styled(("not recorded:", "yellow"), f" {result.not_recorded}"))
            err.print("next: `atlas recover --dry-run`, then `atlas recover`.")
    if not result.ok:
        raise typer.Exit(1)


@handles_errors
def recover(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan (backup, events "
                                          "to replay, expected loss); change nothing.")
                       ] = False,
    backup_name: Annotated[str | None, typer.Option(
        "--backup", help="Restore from this backup instead of the newest one that "
        "passes its checks.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recover a damaged ledger and state exactly what, if anything, was lost.

    Copies the damaged files into data/db/quarantine/ (never deletes them), restores the
    newest backup whose file still matches its manifest, REINDEXes, replays the journal
    after the backup, salvages what neither holds, verifies, swaps atomically, and writes
    a five-part receipt: symptom, backup, actions, checks, loss. When the file passes
    every check (quick_check, integrity_check, foreign keys, ledger == journal, hash
    chain) and only a detection or journal events not applied yet wait, nothing is
    rebuilt: they are applied in place and the receipt says `not_broken` (only
    detections) or `recovered`. Also finishes a recovery that was interrupted, and
    rebuilds a missing data/journal/. Exit 0: recovered with no
    loss (or healthy); 3: recovered with a stated loss; 2: could not recover (nothing
    changed). With --dry-run the exit code is the one the real run would have.
    """
    ws = Workspace.open(resolve_home(home), recovering=True)
    with err.status("Recovering: quarantine, restore, replay, verify..."):
        result = run_recovery(ws, actor=actor(), dry_run=dry_run, backup_name=backup_name)
    if as_json:
        print_json(result.to_dict())
    else:
        print_recovery(result.to_dict())
    raise typer.Exit(result.exit_code)


def print_plan(r: dict[str, Any]) -> None:
    """A dry run: what `atlas recover` would do, in the future tense."""
    p = r["plan"]
    out.print(styled(("Symptom", "bold"), f": {r['symptom']['summary']}"))
    if p.get("in_place"):
        closes = ", ".join(map(str, p["detections_to_close"]))
        out.print(styled(("Would keep the database file", "bold"), ": it passes every check; "
                         f"would apply {p['events_to_apply']} journal event(s) in place"
                         + (f" and close detection(s) {closes}" if closes else "")
                         + "; nothing would be restored or swapped"))
    elif p.get("finish_interrupted"):
        out.print(f"An interrupted recovery ({p['finish_interrupted']}) verified its result "
                  "before it stopped; `atlas recover` would swap it in and record its receipt.")
    else:
        q = p["quarantine"]
        files = ", ".join(f"{f['name']} ({f['size']} bytes)" for f in q["files"])
        out.print(styled(("Would quarantine", "bold"),
                         f": {files} -> {q['path']}" if files else ": nothing (no database file)"))
        out.print(styled(("Would restore", "bold"), ": " + (
            f"backup {p['backup']} (events 1..{p['backup_hwm_event_id']})" if p["backup"]
            else "no backup: the journal alone, from event 1")))
        for s in p["skipped_backups"]:
            out.print(f"   would skip {s['name']}: {s['why']}")
        out.print(styled(("Would replay", "bold"), f": {p['events_to_replay']} journal "
                         f"event(s) and merge {p['events_from_salvage']} salvaged, to event "
                         f"{p['recovery_point']['event_id']}"))
        if p["journal_rewrite"]:
            out.print(styled(("Would rewrite the journal", "bold"), " from the recovered "
                             "ledger (the old one would go to quarantine)"))
    if p["would_fail"]:
        out.print(styled(("Would FAIL", "red"), f": {p['would_fail']}; nothing would be "
                         "changed (exit 2)"))
    else:
        color = "green" if r["loss"]["none"] else "yellow"
        out.print(styled(("Expected loss", "bold"), ": ", (p["expected_loss"], color)))
    if r.get("checks"):
        out.print(_checks_table(r["checks"], "Checks on the rehearsal"))
    out.print(f"Rehearsed on {p['rehearsed_on']}.", style="dim")


def print_recovery(r: dict[str, Any]) -> None:
    title = "Recovery plan (dry run: nothing changed)" if r["dry_run"] else "Recovery receipt"
    out.rule(Text(title, style="bold"))
    if r["dry_run"] and "plan" in r:
        print_plan(r)
        return
    if r["outcome"] == "not_broken" and not r.get("receipt_id"):  # healthy: nothing recorded
        out.print(r["summary"])
        return
    out.print(styled(("1. Symptom", "bold"), f": {r['symptom']['summary']}"))
    b = r.get("backup")
    if r.get("evidence", {}).get("in_place"):
        out.print(styled(("2. Backup", "bold"), ": not needed; the database file was kept (it "
                         "passes every check)"))
    elif b:
        out.print(styled(("2. Backup", "bold"), f": {b['name']} (created {b['created_at']}, "
                         f"high-water mark event {b['hwm_event_id']} at {b['hwm_ts']}, "
                         f"sha256 {str(b['sha256'])[:16]}...)"))
    else:
        out.print(styled(("2. Backup", "bold"), ": none usable; rebuilt from the journal alone"))
    for s in r.get("skipped_backups", []):
        out.print(f"   skipped {s['name']}: {s['why']}")
    out.print(styled(("3. Actions", "bold"), ":"))
    for a in r["actions"]:
        out.print(f"   {a['name']}: {a['result']} ({a.get('ms', 0):.0f} ms)")
    out.print(_checks_table(r["checks"], "4. Verification checks"))
    loss = r["loss"]
    color = "green" if loss["none"] else "yellow"
    out.print(styled(("5. Loss", "bold"), ": ", (loss["statement"], color)))
    if loss["lost_event_ranges"]:
        out.print(f"   lost event ids: {loss['lost_event_ranges']}")
    if loss.get("earlier_gaps"):
        out.print(f"   lost before this recovery (declared then): {loss['earlier_gaps']}")
    if loss.get("unapplied"):
        out.print(f"   recorded, not applied: {[u['id'] for u in loss['unapplied']]}")
    if r.get("receipt_id"):
        out.print(f"Receipt #{r['receipt_id']} is in the recovered ledger.", style="dim")
