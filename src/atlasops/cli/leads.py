"""``atlas leads import|list``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ImportRejected
from ..leads import import_csv, list_leads
from .common import (
    HomeOpt,
    JsonOpt,
    actor,
    err,
    handles_errors,
    open_ledger,
    out,
    print_json,
    styled,
)

app = typer.Typer(help="Leads: import from CSV, list.", no_args_is_help=True)


@app.command("import")
@handles_errors
def import_(
    file: Annotated[Path, typer.Argument(help="A UTF-8 CSV with a header row. Columns: email "
                                         "(required), name, company, segment, business, "
                                         "source, status.")],
    business: Annotated[str | None, typer.Option(
        "--business", help="Business slug for rows that do not name one.")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Import the valid rows and list the invalid ones, instead of "
        "rejecting the whole file.")] = False,
    update_status: Annotated[bool, typer.Option(
        "--update-status", help="Let the file's status column change leads that already "
        "exist (by default their status, the work done on them since, is kept).")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import leads from a CSV file: all or nothing unless --skip-invalid.

    Every row is validated first (email syntax, known business and status, no control
    characters). Re-importing the same file changes nothing; an existing lead's status
    changes only with --update-status. Exit code 2 when rows are invalid.
    """
    with open_ledger(home) as (ws, ledger):
        try:
            report = import_csv(ledger, ws.config, file, actor=actor(), business=business,
                                skip_invalid=skip_invalid, update_status=update_status)
        except ImportRejected as exc:
            if not as_json:
                _error_table(exc.details.get("errors", []), "Rejected rows")
            raise
    if as_json:
        print_json(report.to_dict())
        return
    if report.skipped:
        _error_table([e.__dict__ for e in report.skipped], "Skipped rows")
    if report.ignored_columns:
        err.print(styled(("ignored columns:", "yellow"), f" {', '.join(report.ignored_columns)}"))
    if report.status_kept:
        err.print(f"{len(report.status_kept)} existing lead(s) kept their status (the file "
                  "says otherwise; --update-status applies it).", style="yellow")
    out.print(f"{report.created} created, {report.updated} updated, {report.unchanged} "
              f"unchanged, {len({e.row for e in report.skipped})} rows skipped "
              f"({report.rows} rows read)."
              + (f" Receipt #{report.receipt_id}." if report.receipt_id else ""))


def _error_table(errors: list[dict[str, object]], title: str) -> None:
    table = Table(title=title)
    for col in ("line", "column", "value", "problem"):
        table.add_column(col)
    for e in errors[:200]:
        table.add_row(str(e["row"]), str(e["column"]), str(e["value"]), str(e["reason"]))
    err.print(table)
    if len(errors) > 200:
        err.print(f"... and {len(errors) - 200} more (use --json for all)")


@app.command("list")
@handles_errors
def list_(
    segment: Annotated[str | None, typer.Option("--segment", help="Only this segment.")] = None,
    business: Annotated[str | None, typer.Option("--business", help="Only this business.")
                        ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List leads, oldest first."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = list_leads(ledger, segment=segment, business=business, limit=limit)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} lead(s)")
    for col in ("id", "email", "name", "company", "segment", "business", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c] or "") for c in ("id", "email", "name", "company", "segment",
                                                  "business", "status")))
    out.print(table)
