"""``atlas receipts list|show``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..receipts import get_receipt, list_receipts
from .common import (
    HomeOpt,
    JsonOpt,
    handles_errors,
    mark,
    open_ledger,
    out,
    print_json,
    styled,
)

app = typer.Typer(help="Receipts: the structured record of every job, check and repair.",
                  no_args_is_help=True)


@app.command("list")
@handles_errors
def list_(
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind, e.g. "
                                             "leads.import.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List receipts, newest first."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = list_receipts(ledger, kind=kind, limit=limit)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} receipt(s)")
    for col in ("id", "finished", "kind", "outcome", "summary"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["finished_at"], r["kind"], r["outcome"], r["summary"])
    out.print(table)


@app.command("show")
@handles_errors
def show(
    receipt_id: Annotated[int, typer.Argument(metavar="ID", help="The receipt id.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one receipt in full: summary, symptom, actions, checks, effects, evidence."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        r = get_receipt(ledger, receipt_id)
    if as_json:
        print_json(r)
        return
    out.print(styled((f"Receipt #{r['id']}", "bold"), f" {r['kind']} — {r['outcome']}"))
    out.print(r["summary"])
    out.print(f"by {r['actor']}, {r['started_at']} → {r['finished_at']}", style="dim")
    if r.get("symptom"):
        out.print(styled(("symptom:", "bold"), f" {r['symptom']}"))
    for a in r.get("actions", []):
        out.print(f"  action {a['name']}: {a['result']} ({a.get('ms', 0):.0f} ms)")
    for c in r.get("checks", []):
        out.print(styled(f"  check {c['name']}: ", mark(c["passed"]),
                         f" {c.get('detail', '')} ({c.get('ms', 0):.0f} ms)"))
    eff: dict[str, Any] = r.get("effects", {})
    out.print("  effects: " + ", ".join(f"{k}={v}" for k, v in eff.items()))
    if r.get("evidence"):
        out.print(f"  evidence: {r['evidence']}")
