"""``atlas ledger verify|rebuild``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..integrity import rebuild_as_of_now, verify_workspace
from ..ledger.chain import Unapplied, describe_unapplied
from .common import (
    HomeOpt,
    JsonOpt,
    actor,
    err,
    handles_errors,
    open_workspace,
    out,
    print_json,
    styled,
)

app = typer.Typer(help="The ledger itself: verify it against the journal, rebuild it.",
                  no_args_is_help=True)


@app.command("verify")
@handles_errors
def verify(
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    no_receipt: Annotated[bool, typer.Option("--no-receipt", help="Do not record a receipt "
                                             "of this check.")] = False,
    tables: Annotated[bool, typer.Option("--tables", help="Also replay the journal into a "
                                         "scratch database and compare every table (finds rows "
                                         "changed behind Atlas's back; slower).")] = False,
) -> None:
    """Check both hash chains and that the ledger holds exactly the journal's events.

    Reads the files as they are (nothing is repaired first). Exit 1 with the first
    discrepancy when they differ. With --tables, also check that every table is what
    replaying the journal produces.
    """
    ws = open_workspace(home)
    result = verify_workspace(ws, actor(), record_receipt=not no_receipt, tables=tables)
    report = result.report
    if as_json:
        print_json(result.to_dict())
    elif report.ok:
        out.print(styled(("ok", "green"), f": {report.journal_records} journal records == "
                  f"{report.ledger_events} ledger events, hash chains intact "
                  f"(last id {report.last_id})"
                  + ("; every table matches a replay of the journal." if tables else ".")))
    else:
        err.print(styled(("MISMATCH", "bold red"), f": {report.discrepancies[0].describe()}"))
        for d in report.discrepancies[1:10]:
            err.print(f"  also: {d.describe()}")
        if len(report.discrepancies) > 10:
            err.print(f"  ... {len(report.discrepancies) - 10} more (see --json)")
    if report.tail_problem and not as_json:
        err.print(f"not compared: a torn write after event {report.journal_end} "
                  f"({report.tail_problem}); the next command that writes sets it aside.",
                  style="yellow")
    if result.receipt_error and not as_json:
        err.print(styled(("receipt not recorded:", "yellow"), f" {result.receipt_error}"))
    if not report.ok:
        raise typer.Exit(1)


@app.command("rebuild")
@handles_errors
def rebuild(
    into: Annotated[Path, typer.Option("--into", help="Path of the NEW database to write "
                                       "(must not exist).")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay the whole journal into a fresh database at --into. Never overwrites."""
    ws = open_workspace(home)
    result, torn = rebuild_as_of_now(ws, into)
    if as_json:
        print_json({**result.__dict__, "tail_problem": torn})
        return
    out.print(styled(f"Replayed {result.events} events into ", (str(result.path), "bold"),
                     f" (last id {result.last_id})."))
    for phrase in describe_unapplied(map(Unapplied.from_dict, result.unapplied)):
        err.print(f"after a declared gap: {phrase}", style="yellow")
    if torn is not None:
        err.print(f"not replayed: a torn write after event {result.last_id} ({torn}); the "
                  "next command that writes sets it aside.", style="yellow")
