"""What every command shares: --home, --json, the actor, and error translation."""

from __future__ import annotations

import functools
import getpass
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import pydantic
import typer
from rich.console import Console
from rich.text import Text

from ..auth import Principal, authenticate
from ..durability.detect import record_if_confirmed
from ..errors import AtlasError, Conflict, DatabaseCorrupt, InputError, StorageError
from ..gates.effects import Capabilities, UnknownJobRun, acting_run
from ..ledger import Ledger
from ..ledger.store import storage_error
from ..workspace import Workspace

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_HOME = Path("atlas-data")

HomeOpt = Annotated[
    Path | None,
    # readable=False: Atlas itself says why a workspace cannot be opened (exit 4), instead of
    # a usage error (exit 2) from the option parser.
    typer.Option("--home", envvar="ATLAS_HOME", show_envvar=True, readable=False,
                 help="The workspace directory (default: $ATLAS_HOME, else ./atlas-data)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

# The consoles never read Rich markup: data (a lead named "[/x]", a path with brackets)
# prints exactly as it is. Styled words are built with ``styled`` and ``mark``.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def styled(*parts: str | Text | tuple[str, str]) -> Text:
    """One line from plain strings and ``(text, style)`` pairs; nothing is parsed."""
    return Text.assemble(*parts)


def mark(ok: bool, yes: str = "pass", no: str = "FAIL") -> Text:
    """A green ``yes`` or a red ``no``."""
    return Text(yes, style="green") if ok else Text(no, style="red")


def resolve_home(home: Path | None) -> Path:
    return home if home is not None else DEFAULT_HOME


def actor() -> str:
    """Who is acting: ``$ATLAS_ACTOR``, else the local user (until tokens exist)."""
    name = os.environ.get("ATLAS_ACTOR") or f"cli:{getpass.getuser()}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError("ATLAS_ACTOR is not valid UTF-8 text",
                         hint="Set it to a plain name, e.g. agent:researcher.") from exc
    return name


def principal(ws: Workspace, ledger: Ledger) -> Principal:
    """Who is acting, from ``$ATLAS_TOKEN`` (never from an argument). Work run by
    `atlas jobs run` has no token: it acts as its job run (``job:NAME#RUN``) once the run
    is verified against the ledger (the declared one, or the one it belongs to when it
    dropped ``ATLAS_JOB_RUN``). A run that does not verify gives no identity (the
    local user, as without a token); any side effect it asks for is refused, with a
    receipt naming the run it claimed (see ``gates.effects.capability_check``)."""
    token = os.environ.get("ATLAS_TOKEN")
    if not token:
        try:
            run = acting_run(ledger, os.environ.get("ATLAS_JOB_RUN") or None)
        except UnknownJobRun:
            run = None
        if run is not None:
            return Principal("job", f"{run.name}#{run.run_id}")
    return authenticate(ledger, ws.config, token, local_name=getpass.getuser())


def capabilities() -> Capabilities:
    return Capabilities.from_env(os.environ)


def open_workspace(home: Path | None) -> Workspace:
    return Workspace.open(resolve_home(home))


# How long a read command waits for the writer lock before it shows the ledger as it stands.
READ_LOCK_WAIT = 5.0


def _open_for(ws: Workspace, read_only: bool) -> Ledger:
    """The ledger, level with the journal. A read command (``read_only``) that may not
    bring it level just now (a detection waits for `atlas recover`; the writer lock is
    held longer than READ_LOCK_WAIT) shows it as it stands instead, and says why."""
    if not read_only:
        return Ledger.for_workspace(ws).open()
    ledger = Ledger.for_workspace(ws, lock_timeout=READ_LOCK_WAIT)
    try:
        return ledger.open()
    except (Conflict, DatabaseCorrupt) as exc:
        if isinstance(exc, DatabaseCorrupt) and "detection" not in exc.details:
            raise  # the file itself is damaged: reading it as it stands would fail too
        ledger.close()
        err.print(f"showing the ledger as it stands (events only the journal holds are not "
                  f"shown): {exc.message}", style="yellow")
        return Ledger.for_workspace(ws).open_as_it_stands()


@contextmanager
def open_ledger(home: Path | None, *, read_only: bool = False
                ) -> Iterator[tuple[Workspace, Ledger]]:
    """The workspace and its ledger. ``read_only`` marks a command that only reads: it
    still works, on the ledger as it stands, while Atlas may not write."""
    ws = open_workspace(home)
    try:
        with _open_for(ws, read_only) as ledger:
            if ledger.report.caught_up:
                err.print(f"applied {ledger.report.caught_up} journaled event(s) the "
                          "ledger was missing", style="yellow")
            for path in ledger.report.set_aside:
                err.print(f"a torn journal tail was set aside in {path}", style="yellow")
            if os.environ.get("ATLAS_TOKEN"):
                principal(ws, ledger)  # a token that is set must be valid, for every command
            yield ws, ledger
    except DatabaseCorrupt as exc:
        # Detection: the symptom goes to the journal even though the database is unusable,
        # once SQLite confirms the damage on a fresh connection (a detection stops writes).
        event, why = record_if_confirmed(ws, exc)
        if event is not None:
            exc.message += f" (recorded as event {event.id}, {event.kind})"
        elif why is not None:
            exc.message += f" ({why})"
            exc.hint = ("Run `atlas db check --full`: it looks again and records a detection "
                        "if the damage is real.")
        raise


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def report_error(exc: AtlasError, as_json: bool) -> None:
    if as_json:
        print_json(exc.to_dict())
    err.print(styled(("error:", "bold red"), f" {exc.message}"), highlight=False)
    if exc.hint:
        err.print(styled(("next:", "dim"), f" {exc.hint}"), highlight=False)


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map Atlas errors (and stray sqlite/OS errors) to a message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json", False))
        try:
            return fn(*args, **kwargs)
        except AtlasError as exc:
            report_error(exc, as_json)
            raise typer.Exit(exc.exit_code) from exc
        except sqlite3.Error as exc:
            wrapped = storage_error(exc, Path("leads.db"))
            report_error(wrapped, as_json)
            raise typer.Exit(wrapped.exit_code) from exc
        except OSError as exc:
            wrapped = StorageError(f"{exc.strerror or exc}: {exc.filename or ''}".strip(": "))
            report_error(wrapped, as_json)
            raise typer.Exit(wrapped.exit_code) from exc
        except (UnicodeError, pydantic.ValidationError) as exc:
            # an argument or variable that is not UTF-8 text reached a model or an encoder:
            # bad input (nothing was written: the write path checks before it writes)
            refused = InputError(f"an argument, file name or variable holds text that is not "
                                 f"valid UTF-8 and was refused: {_first_line(exc)}",
                                 hint="Fix the text (or rename the file), then try again.")
            report_error(refused, as_json)
            raise typer.Exit(refused.exit_code) from exc

    return wrapper


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["HomeOpt", "JsonOpt", "actor", "capabilities", "err", "handles_errors", "mark",
           "open_ledger", "open_workspace", "out", "principal", "print_json", "resolve_home",
           "styled"]
