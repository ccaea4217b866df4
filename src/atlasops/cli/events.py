"""``atlas events list|tail``."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from ..ledger import Event
from .common import (
    HomeOpt,
    JsonOpt,
    err,
    handles_errors,
    open_ledger,
    out,
    print_json,
    styled,
)

app = typer.Typer(help="Events: the ledger's history, one row per state change.",
                  no_args_is_help=True)

KindOpt = Annotated[str | None, typer.Option(
    "--kind", help="Only this kind, e.g. lead.created, or a prefix like 'lead.*'.")]


def _table(events: list[Event]) -> Table:
    table = Table()
    for col in ("id", "ts", "kind", "actor", "subject", "payload"):
        table.add_column(col, overflow="fold")
    for e in events:
        payload = json.dumps(e.payload, ensure_ascii=False)
        table.add_row(str(e.id), e.ts, e.kind, e.actor, e.subject or "",
                      payload if len(payload) < 120 else payload[:117] + "...")
    return table


@app.command("list")
@handles_errors
def list_(
    after: Annotated[int, typer.Option("--after", min=0, help="Only events with id > AFTER.")
                     ] = 0,
    kind: KindOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List events in id order (JSON: id, ts, kind, actor, subject, payload, prev_hash, hash)."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        events = ledger.events(after=after, kind=kind, limit=limit + 1)
    more = len(events) > limit
    events = events[:limit]
    if as_json:
        print_json([e.to_dict() for e in events])
    else:
        out.print(_table(events))
    if more:  # on stderr, so the JSON on stdout stays one array
        err.print(f"{limit} event(s) shown; there are more: continue with --after "
                  f"{events[-1].id}, or raise --limit.", style="yellow")


@app.command("tail")
@handles_errors
def tail(
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many to show.")] = 10,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events "
                                         "until interrupted (Ctrl-C).")] = False,
    kind: KindOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between polls "
                                            "with --follow.")] = 0.5,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the newest events; with --follow, keep printing new ones as they are appended."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        events = ledger.events(kind=kind, limit=lines, newest=True)
        _emit(events, as_json)
        last = events[-1].id if events else (ledger.last_event() or _Zero).id
        try:
            while follow:
                time.sleep(interval)
                ledger.follow()  # a recovery may have swapped the file meanwhile
                new = ledger.events(after=last, kind=kind)
                if new:
                    _emit(new, as_json)
                    last = new[-1].id
        except KeyboardInterrupt:
            return


class _Zero:
    id = 0


def _emit(events: list[Event], as_json: bool) -> None:
    for e in events:
        if as_json:
            print(json.dumps(e.to_dict(), ensure_ascii=False), flush=True)
        else:
            out.print(styled(f"#{e.id} {e.ts} ", (e.kind, "bold"), f" {e.actor} {e.subject or ''}"),
                      highlight=False)
