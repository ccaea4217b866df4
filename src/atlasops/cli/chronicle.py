"""``atlas chronicle``, ``atlas chronicle check``, ``atlas worklog add``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..chronicle.check import check_post
from ..chronicle.compose import compose, parse_day
from ..chronicle.render import FORMATS, write
from ..errors import InputError
from .common import (
    HomeOpt,
    JsonOpt,
    actor,
    handles_errors,
    open_ledger,
    open_workspace,
    out,
    print_json,
    styled,
)

chronicle_app = typer.Typer(help="The daily chronicle, built only from what Atlas can read.",
                            invoke_without_command=True)
worklog_app = typer.Typer(help="Work-log notes for the chronicle.", no_args_is_help=True)

DateOpt = Annotated[str | None, typer.Option(
    "--date", help="The day, YYYY-MM-DD (UTC), or 'today' / 'yesterday'; default today.")]


def register(app: typer.Typer) -> None:
    app.add_typer(chronicle_app, name="chronicle")
    app.add_typer(worklog_app, name="worklog")


@chronicle_app.callback()
@handles_errors
def chronicle(
    ctx: typer.Context,
    date: DateOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Directory to write to "
                                                 "(default: data/chronicle/).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="md, html or json (default: "
                                            "all three).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the day's chronicle (data/chronicle/DATE.md, .html, .json).

    Every number carries its source; a number whose source is unavailable prints as
    "unknown (source unavailable: why)", and confidence drops with each missing source.
    """
    if ctx.invoked_subcommand is not None:
        return
    formats = list(FORMATS) if fmt is None else [fmt]
    if any(f not in FORMATS for f in formats):
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    ws = open_workspace(home)
    day = parse_day(date)
    data = compose(ws, day)
    paths = write(ws, data, formats, out_dir)
    if as_json:
        print_json({"date": data["date"], "paths": [str(p) for p in paths],
                    "headline": data["headline"]["text"],
                    "confidence": data["confidence"]["overall"]})
        return
    out.print(styled((data["date"], "bold"), f": {data['headline']['text']}"))
    out.print(f"Confidence: {data['confidence']['overall']}"
              + (" — " + "; ".join(data["confidence"]["missing"])
                 if data["confidence"]["missing"] else ""))
    for p in paths:
        out.print(f"wrote {p}")


@chronicle_app.command("check")
@handles_errors
def chronicle_check(
    post: Annotated[Path, typer.Argument(help="The post (Markdown or text) to check.")],
    date: DateOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a post's numbers and sent/posted/fixed/restored claims against the day's facts.

    A number next to a countable noun ("8 commits", "Emails sent: 0") must match the
    chronicle's number; dates, times, ids, headings and quotations are not claims.
    "Fixed" must match what was fixed; "restored" must name the backup (or the journal)
    and the loss boundary in its paragraph or the rest of its section. Exit 1 if any
    claim is unsupported or contradicted; exit 2 if the post cannot be read. See
    docs/chronicle.md.
    """
    text = _read_post(post)
    ws = open_workspace(home)
    data = compose(ws, parse_day(date))
    claims = check_post(text, data)
    bad = [c for c in claims if c.status != "supported"]
    if as_json:
        print_json({"date": data["date"], "claims": [c.to_dict() for c in claims],
                    "problems": len(bad)})
    elif not claims:
        out.print(f"No checkable claims found in {post}: no number next to a countable "
                  "noun, and no sent / posted / fixed / restored claim.")
    else:
        table = Table(title=f"{len(claims)} claim(s) checked against {data['date']}")
        for col in ("status", "claim", "why"):
            table.add_column(col, overflow="fold")
        for c in claims:
            style = {"supported": "green", "contradicted": "red"}.get(c.status, "yellow")
            table.add_row(Text(c.status, style=style), c.text[:120], c.why)
        out.print(table)
        out.print(f"{len(bad)} unsupported or contradicted claim(s).")
    if bad:
        raise typer.Exit(1)


def _read_post(post: Path) -> str:
    try:
        return post.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{post}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{post} is a directory, not a post") from exc
    except OSError as exc:
        raise InputError(f"{post} cannot be read: {(exc.strerror or str(exc)).lower()}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{post} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                         hint="Save the post as UTF-8 and check it again.") from exc


@worklog_app.command("add")
@handles_errors
def worklog_add(
    text: Annotated[str, typer.Argument(help="The note.")],
    date: DateOpt = None,
    home: HomeOpt = None,
) -> None:
    """Record a dated work-log note (the chronicle reads it)."""
    day = parse_day(date)
    if not text.strip():
        raise InputError("the note is empty")
    with open_ledger(home) as (_ws, ledger):
        event = ledger.append("worklog.added", actor(), {"date": day.isoformat(),
                                                         "text": text.strip()},
                              subject=f"worklog:{day.isoformat()}")
    out.print(f"Work-log note recorded for {day} (event {event.id}).")
