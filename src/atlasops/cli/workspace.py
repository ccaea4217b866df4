"""``atlas init``, ``atlas status``, ``atlas demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .. import businesses
from ..auth import bootstrap_owner_token
from ..demo import run_demo
from ..errors import InputError
from ..ledger import Ledger
from ..status import status as workspace_status
from ..workspace import Workspace
from .common import (
    HomeOpt,
    JsonOpt,
    actor,
    err,
    handles_errors,
    mark,
    open_ledger,
    out,
    print_json,
    resolve_home,
    styled,
)
from .durability import print_recovery


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("status")(status)
    app.command("demo")(demo)


@handles_errors
def init(
    home: HomeOpt = None,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="The owner's email: the one person who approves and opens lanes.")] = None,
    name: Annotated[str, typer.Option("--name", help="The owner's name.")] = "",
) -> None:
    """Create a workspace (atlas.toml, the ledger, the journal, backup dirs), private to you.

    Prints the owner's token once: the first and only token minted without an owner.
    Safe to run again: it only adds what is missing and never overwrites atlas.toml.
    """
    path = resolve_home(home)
    if owner is None and not (path / "atlas.toml").exists():
        raise InputError("--owner EMAIL is required to create a new workspace",
                         hint="atlas init --owner you@yourbusiness.com")
    ws = Workspace.init(path, owner or "", name)
    with Ledger.for_workspace(ws) as ledger:
        businesses.sync(ledger, ws.config, actor())
        minted = bootstrap_owner_token(ledger)
    out.print(styled("Workspace ready at ", (str(ws.home), "bold"),
                     f" (owner {ws.config.owner.email})."))
    if minted is not None:
        out.print("The owner's token, shown once (Atlas keeps only its sha256). It approves "
                  "sends and opens lanes: keep it out of agents' environments.")
        print(minted[0])
        out.print("Use it as ATLAS_TOKEN for owner commands; agents get their own with "
                  "`atlas token create --role agent --name NAME` (run as the owner).")
    out.print("Next: add businesses to atlas.toml, then `atlas leads import FILE.csv`.")


@handles_errors
def status(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Counts, the last event, journal health and the latest backup."""
    with open_ledger(home, read_only=True) as (ws, ledger):
        data = workspace_status(ws, ledger)
    if as_json:
        print_json(data)
        return
    table = Table(title=f"Atlas workspace {data['home']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("owner", data["owner"])
    for key, value in data["counts"].items():
        table.add_row(key, str(value))
    last = data["last_event"]
    table.add_row("last event", "none" if last is None else
                  f"#{last['id']} {last['kind']} at {last['ts']} by {last['actor']}")
    j = data["journal"]
    health = mark(j["ok"], "tail ok", "; ".join(j["problems"]))
    table.add_row("journal", styled(health, f" ({j['segments']} segment(s), {j['bytes']} bytes, "
                                            f"last id {j['last_id']}; every record: "
                                            f"`{j['full_check']}`)"))
    b = data["latest_backup"]
    table.add_row("latest backup", "none yet" if b is None else
                  f"{b['name']} ({'validated' if b['validated'] else 'NOT validated'})")
    out.print(table)


@handles_errors
def demo(
    home: Annotated[Path, typer.Option(
        "--home", help="Where to build the demo workspace.")] = Path("atlas-demo"),
    reset: Annotated[bool, typer.Option(
        "--reset", help="Delete a previous demo workspace at --home first "
        "(refuses to delete anything that is not a demo workspace).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build a small realistic portfolio workspace and show what Atlas records."""
    with err.status("Playing the demo day..."):
        result = run_demo(home, actor=actor(), reset=reset)
    with Ledger.for_workspace(result.workspace) as ledger:
        data = workspace_status(result.workspace, ledger)
        from ..receipts import get_receipt

        receipts = [get_receipt(ledger, rid) for rid in result.receipts]
    if as_json:
        print_json({"status": data, "receipts": receipts,
                    "imported": result.imported.to_dict(),
                    "recovery": result.recovery.to_dict() if result.recovery else None,
                    "gates": result.gates.__dict__ if result.gates else None,
                    "ops": result.ops.__dict__ if result.ops else None,
                    "chronicle": result.chronicle})
        return
    out.rule(Text("Atlas demo", style="bold"))
    out.print(styled("Workspace: ", (str(result.workspace.home), "bold"),
                     f"  owner {result.workspace.config.owner.email}"))
    out.print(f"Businesses: {', '.join(sorted(result.workspace.config.businesses))}")
    imp = result.imported
    out.print(f"Leads import: {imp.created} new, {imp.updated} updated, "
              f"{imp.unchanged} unchanged from {Path(imp.file).name}")
    table = Table(title="Receipts written by this demo")
    for col in ("id", "kind", "outcome", "summary"):
        table.add_column(col)
    for r in receipts:
        table.add_row(str(r["id"]), r["kind"], r["outcome"], r["summary"])
    out.print(table)
    j = data["journal"]
    out.print(f"Ledger: {data['counts']['events']} events, journal "
              f"{'ok' if j['ok'] else 'NOT ok'} ({j['segments']} segment(s)).")
    if result.gates is not None:
        g = result.gates
        out.print(styled("\n", ("The gate", "bold"), f": an agent wrote {g.drafts} partner "
                         "drafts; the owner approved 40 during a Zoho-only test window, then "
                         "closed outbound.prospect (reply drought)."))
        for line in g.outbox_summary:
            out.print(f"  {line}", style="yellow")
        out.print(f"  {g.touches_due} touches due; packet {g.packet['name']} "
                  f"({g.packet['contacts']} contacts, {g.packet['drafts']} drafts) emailed to "
                  f"the owner for review: {g.packet['maildir']}")
        out.print(styled("  ", (f"{g.emails_sent} prospect emails sent.", "bold"),
                         " Send-ready is not approval-ready."))
        out.print(f"  The demo owner's token is in {g.owner_token_file} (0600); act as the "
                  f"owner with: export ATLAS_TOKEN=$(cat {g.owner_token_file})")
    if result.ops is not None:
        o = result.ops
        out.print(styled("\n", ("Operations", "bold"), ": the releases page lost its build "
                         f"output; `atlas check routes` read {o.check_before['status']} "
                         "(Internal Server Error)."))
        out.print(styled("  atlas repair: ", (str(o.repair["outcome"]), "bold"),
                         f". {o.repair['summary']}"))
        out.print(f"  {o.radar['summary']}")
        out.print(f"  {len(o.content)} content drafts added; {len(o.deploys)} deploy receipts "
                  "recorded.")
    if result.recovery is not None:
        out.print(styled("\n", ("The incident", "bold"), ": after a validated backup, an agent "
                         "marked 25 CPA leads contacted; then 8 pages in the middle of leads.db "
                         "were overwritten. `atlas recover` ran:"))
        print_recovery(result.recovery.to_dict())
    if result.chronicle:
        out.print(styled("\n", ("The chronicle", "bold"), " of the demo day, built only from "
                         "what Atlas could read (the work-log file is missing, so confidence is "
                         "medium):"))
        for path in result.chronicle:
            out.print(f"  {path}")
    out.print(f"Try: atlas --help; atlas status --home {result.workspace.home}; "
              f"atlas events list --home {result.workspace.home} --limit 5")
