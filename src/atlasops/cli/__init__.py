"""The ``atlas`` command line: a thin face over the library.

Each command parses its input, calls one library function, and prints the
result (a Rich table, or JSON with ``--json``). Errors become the exit codes
documented in the README.
"""

from __future__ import annotations

import typer

from . import chronicle, durability, events, gates, leads, ledger, ops, receipts, workspace

app = typer.Typer(
    name="atlas",
    help=(
        "Atlas: the operations control plane for a business run partly by agents.\n\n"
        "One journaled ledger of everything, validated backups and honest recovery, "
        "risky lanes closed until the owner approves, and a daily chronicle built only "
        "from receipts.\n\n"
        "Start with `atlas demo` (a sample workspace) or `atlas init --owner YOU@EXAMPLE.COM`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
workspace.register(app)
durability.register(app)
gates.register(app)
ops.register(app)
chronicle.register(app)
app.add_typer(leads.app, name="leads")
app.add_typer(events.app, name="events")
app.add_typer(receipts.app, name="receipts")
app.add_typer(ledger.app, name="ledger")


def main() -> None:
    app()


__all__ = ["app", "main"]
