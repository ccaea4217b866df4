"""Gates: tokens, lanes, suppression, drafts, approvals, the outbox, touches, packets."""

from __future__ import annotations

import os
import re
import signal
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .. import auth
from ..errors import InputError
from ..gates import drafts as drafts_lib
from ..gates import lanes as lanes_lib
from ..gates import outbox as outbox_lib
from ..gates import packets as packets_lib
from ..gates.status import gate_status
from ..gates.suppression import read_file
from ..gates.suppression import suppress as suppress_lib
from ..ops.process import stop_requested, stop_signals_interrupt
from .common import (
    HomeOpt,
    JsonOpt,
    capabilities,
    err,
    handles_errors,
    mark,
    open_ledger,
    out,
    principal,
    print_json,
    styled,
)

token_app = typer.Typer(help="Tokens: who may act. The owner approves; agents draft.",
                        no_args_is_help=True)
lane_app = typer.Typer(help="Lanes: the kinds of side effect and whether each is open.",
                       no_args_is_help=True)
drafts_app = typer.Typer(help="Drafts: outbound email on the ladder draft -> send-ready -> "
                         "approval-ready -> approved -> sent.", no_args_is_help=True)
gate_app = typer.Typer(help="The gate: why a draft can or cannot move, and what is held.",
                       no_args_is_help=True)
outbox_app = typer.Typer(help="The outbox: sends approved drafts through their lane's channel.",
                         no_args_is_help=True)
touches_app = typer.Typer(help="Touches: the due steps of outreach sequences.",
                          no_args_is_help=True)
packet_app = typer.Typer(help="Packets: contacts and drafts bundled for the owner's review.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(lane_app, name="lane")
    app.add_typer(drafts_app, name="drafts")
    app.add_typer(gate_app, name="gate")
    app.add_typer(outbox_app, name="outbox")
    app.add_typer(touches_app, name="touches")
    app.add_typer(packet_app, name="packet")
    app.command("approve")(approve)
    app.command("reject")(reject)
    app.command("suppress")(suppress)


# -- tokens -------------------------------------------------------------------

@token_app.command("create")
@handles_errors
def token_create(
    role: Annotated[str, typer.Option("--role", help="owner or agent.")],
    name: Annotated[str, typer.Option("--name", help="A name for the holder, e.g. "
                                      "outreach-agent.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token (owner only) and print it once; only its sha256 is stored.

    The first owner token comes from `atlas init`; every later token, owner or agent,
    needs ATLAS_TOKEN set to an owner token.
    """
    with open_ledger(home) as (ws, ledger):
        token, event_id = auth.create_token(ledger, principal(ws, ledger),
                                            role=role, name=name)  # type: ignore[arg-type]
    if as_json:
        print_json({"name": name, "role": role, "token": token, "event_id": event_id})
        return
    out.print(f"Token for {role} {name!r} (shown once; store it as ATLAS_TOKEN):")
    print(token)


@token_app.command("list")
@handles_errors
def token_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (names and roles; never the secrets)."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = auth.list_tokens(ledger)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} token(s)")
    for col in ("name", "role", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["name"]), str(r["role"]),
                      "revoked" if r["revoked_event"] else "active")
    out.print(table)


@token_app.command("revoke")
@handles_errors
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")],
                 home: HomeOpt = None) -> None:
    """Revoke a token (owner only)."""
    with open_ledger(home) as (ws, ledger):
        auth.revoke_token(ledger, principal(ws, ledger), name)
    out.print(f"Token {name!r} revoked.")


# -- lanes --------------------------------------------------------------------

@lane_app.command("list")
@handles_errors
def lane_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every lane: open or closed, its one channel, cap, cooldown, approval rule."""
    with open_ledger(home, read_only=True) as (ws, ledger):
        rows = [v.to_dict() for v in lanes_lib.all_lanes(ledger, ws.config)]
    if as_json:
        print_json(rows)
        return
    table = Table(title="Lanes")
    for col in ("lane", "state", "channel", "cap/day", "cooldown h", "approval", "why"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], mark(r["open"], "open", "closed"),
                      r["channel"] or "-", str(r["daily_cap"]), f"{r['cooldown_hours']:g}",
                      "each item" if r["needs_approval"] else "no", r["reason"])
    out.print(table)


def _lane_change(name: str, reason: str, home: Path | None, open_: bool) -> None:
    with open_ledger(home) as (ws, ledger):
        rid = lanes_lib.set_lane(ledger, ws.config, principal(ws, ledger), name,
                                 open_=open_, reason=reason)
    out.print(f"Lane {name} is {'open' if open_ else 'closed'}. Receipt #{rid}.")


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the receipt).")]


@lane_app.command("open")
@handles_errors
def lane_open(name: Annotated[str, typer.Argument(help="The lane, e.g. outbound.prospect.")],
              reason: ReasonOpt, home: HomeOpt = None) -> None:
    """Open a lane (owner only). Approved items in it may then be sent."""
    _lane_change(name, reason, home, True)


@lane_app.command("close")
@handles_errors
def lane_close(name: Annotated[str, typer.Argument(help="The lane.")], reason: ReasonOpt,
               home: HomeOpt = None) -> None:
    """Close a lane (owner only). Approved items stay approved but are held."""
    _lane_change(name, reason, home, False)


@lane_app.command("posture")
@handles_errors
def lane_posture(
    name: Annotated[str, typer.Argument(help="The lane.")],
    spf: Annotated[str, typer.Option("--spf", help="pass/fail")] = "unknown",
    dkim: Annotated[str, typer.Option("--dkim", help="pass/fail")] = "unknown",
    dmarc: Annotated[str, typer.Option("--dmarc", help="pass/fail")] = "unknown",
    note: Annotated[str, typer.Option("--note")] = "",
    home: HomeOpt = None,
) -> None:
    """Record the lane's deliverability posture (owner only): SPF, DKIM, DMARC, notes."""
    with open_ledger(home) as (ws, ledger):
        eid = lanes_lib.record_posture(ledger, ws.config, principal(ws, ledger), name,
                                       {"spf": spf, "dkim": dkim, "dmarc": dmarc,
                                        "note": note})
    out.print(f"Deliverability posture for {name} recorded (event {eid}).")


# -- suppression --------------------------------------------------------------

@handles_errors
def suppress(
    emails: Annotated[list[str] | None, typer.Argument(help="Addresses to suppress.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A file with one address per "
                                              "line (or a CSV whose first column is email).")
                    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="e.g. unsubscribe, bounce.")
                      ] = "unsubscribe",
    home: HomeOpt = None,
) -> None:
    """Never email these addresses again (checked at draft time and at send time)."""
    addresses = list(emails or []) + (read_file(file) if file else [])
    if not addresses:
        raise InputError("name addresses or pass --file")
    with open_ledger(home) as (ws, ledger):
        n = suppress_lib(ledger, principal(ws, ledger), addresses, reason)
    out.print(f"{n} address(es) added to the suppression list "
              f"({len(addresses) - n} already there).")


# -- drafts -------------------------------------------------------------------

def _body(body: str | None, body_file: Path | None) -> str | None:
    if body is not None and body_file is not None:
        raise InputError("pass --body or --body-file, not both")
    if body_file is not None:
        try:
            return body_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{body_file} cannot be read as UTF-8: {exc}") from exc
    return body


def _draft_row(d: dict[str, Any]) -> list[str]:
    return [str(d["id"]), d.get("display_state", d["state"]), d["lane"], d["to_addr"],
            d["subject"][:60]]


@drafts_app.command("create")
@handles_errors
def drafts_create(
    to: Annotated[str, typer.Option("--to", help="The recipient.")],
    subject: Annotated[str, typer.Option("--subject")],
    body: Annotated[str | None, typer.Option("--body")] = None,
    body_file: Annotated[Path | None, typer.Option("--body-file")] = None,
    lane: Annotated[str, typer.Option("--lane")] = "outbound.prospect",
    business: Annotated[str | None, typer.Option("--business")] = None,
    lead: Annotated[int | None, typer.Option("--lead", help="The lead id.")] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="Without it the draft "
                                                "uses the lane's one channel, whichever that "
                                                "is when it is approved; another is refused "
                                                "at approval.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a draft. It is send-ready when its content is reviewable."""
    text = _body(body, body_file)
    if text is None:
        raise InputError("pass --body or --body-file")
    with open_ledger(home) as (ws, ledger):
        d = drafts_lib.create(ledger, ws.config, principal(ws, ledger), to=to, subject=subject,
                              body=text, lane=lane, business=business, lead_id=lead,
                              channel=channel)
    if as_json:
        print_json(d)
        return
    out.print(f"Draft {d['id']} is {d['state']}."
              + ("" if not d["problems"] else " Not yet send-ready: "
                 + "; ".join(p["why"] for p in d["problems"])))


@drafts_app.command("list")
@handles_errors
def drafts_list(
    state: Annotated[str | None, typer.Option("--state", help="draft, send_ready, "
                                              "approval_ready, approved, expired, sent, "
                                              "...")] = None,
    lane: Annotated[str | None, typer.Option("--lane")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List drafts with their state (approval-ready is evaluated now)."""
    with open_ledger(home, read_only=True) as (ws, ledger):
        rows = drafts_lib.list_drafts(ledger, ws.config, state=state, lane=lane, limit=limit)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} draft(s)")
    for col in ("id", "state", "lane", "to", "subject"):
        table.add_column(col, overflow="fold")
    for d in rows:
        table.add_row(*_draft_row(d))
    out.print(table)


@drafts_app.command("show")
@handles_errors
def drafts_show(draft_id: Annotated[int, typer.Argument(metavar="ID")], home: HomeOpt = None,
                as_json: JsonOpt = False) -> None:
    """Show one draft in full."""
    with open_ledger(home, read_only=True) as (ws, ledger):
        d = drafts_lib.get_draft(ledger, draft_id)
        d["display_state"] = drafts_lib.display_state(ledger, ws.config, d)
    if as_json:
        print_json(d)
        return
    out.print(styled((f"Draft {d['id']}", "bold"), f" ({d['display_state']}) lane {d['lane']} "
                     f"via {drafts_lib.channel_label(ws.config, d)}"))
    out.print(f"To: {d['to_addr']}\nSubject: {d['subject']}\n\n{d['body']}", highlight=False)
    if d["approval_hash"]:
        out.print(f"\napproved by {d['approved_by']} at {d['approved_at']}, expires "
                  f"{d['expires_at']}, hash {d['approval_hash'][:16]}...", style="dim")
    if d["reason"]:
        out.print(f"note: {d['reason']}", style="dim")


@drafts_app.command("edit")
@handles_errors
def drafts_edit(
    draft_id: Annotated[int, typer.Argument(metavar="ID")],
    to: Annotated[str | None, typer.Option("--to")] = None,
    subject: Annotated[str | None, typer.Option("--subject")] = None,
    body: Annotated[str | None, typer.Option("--body")] = None,
    body_file: Annotated[Path | None, typer.Option("--body-file")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit a draft. Editing an approved draft voids its approval (with a receipt)."""
    with open_ledger(home) as (ws, ledger):
        d, voided = drafts_lib.edit(ledger, ws.config, principal(ws, ledger), draft_id, to=to,
                                    subject=subject, body=_body(body, body_file))
    if as_json:
        print_json({**d, "voided_approval": voided})
        return
    out.print(f"Draft {draft_id} is {d['state']}."
              + (" Its approval was voided: it needs a fresh approval." if voided else ""))


@drafts_app.command("withdraw")
@handles_errors
def drafts_withdraw(draft_id: Annotated[int, typer.Argument(metavar="ID")],
                    reason: Annotated[str, typer.Option("--reason")] = "",
                    home: HomeOpt = None) -> None:
    """Withdraw a draft (it will never be sent)."""
    with open_ledger(home) as (ws, ledger):
        drafts_lib.withdraw(ledger, principal(ws, ledger), draft_id, reason)
    out.print(f"Draft {draft_id} withdrawn.")


# -- gate -------------------------------------------------------------------

def _conditions_table(title: str, conds: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("condition", "result", "why"):
        table.add_column(col, overflow="fold")
    for c in conds:
        table.add_row(c["name"], mark(c["passed"]),
                      c["why"])
    return table


@gate_app.command("explain")
@handles_errors
def gate_explain(draft_id: Annotated[int, typer.Argument(metavar="ID")],
                 home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every condition between a draft and a send, each with pass/fail and why."""
    with open_ledger(home, read_only=True) as (ws, ledger):
        data = drafts_lib.explain(ledger, ws.config, draft_id)
    if as_json:
        print_json(data)
        return
    out.print(styled((f"Draft {draft_id}", "bold"), f" is {data['display_state']}."))
    out.print(_conditions_table("send-ready (the content)", data["send_ready"]))
    out.print(_conditions_table("approval-ready (the business gate)", data["approval_ready"]))
    if data["approval"]:
        out.print(_conditions_table("the approval", data["approval"]))


@gate_app.command("status")
@handles_errors
def gate_status_cmd(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Per lane: open or closed, channel, drafts by state, touches due, what holds them."""
    with open_ledger(home, read_only=True) as (ws, ledger):
        data = gate_status(ledger, ws.config)
    if as_json:
        print_json(data)
        return
    table = Table(title="Gate status")
    for col in ("lane", "state", "channel", "drafts", "sent today", "touches due"):
        table.add_column(col, overflow="fold")
    for ln in data["lanes"]:
        counts = ", ".join(f"{k} {v}" for k, v in ln["drafts"].items()) or "-"
        table.add_row(ln["name"], mark(ln["open"], "open", "closed"),
                      ln["channel"] or "-", counts, str(ln["sent_today"]),
                      str(ln["touches_due"]))
    out.print(table)
    for ln in data["lanes"]:
        for line in ln["held"]:
            out.print(line, style="yellow")


# -- approvals ----------------------------------------------------------------

def parse_duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)\s*([dhm])", text.strip())
    if not m:
        raise InputError(f"--expires {text!r}: use a number and d, h or m (e.g. 7d, 12h)")
    n, unit = int(m.group(1)), m.group(2)
    delta = {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    if delta <= timedelta(0) or delta > timedelta(days=90):
        raise InputError("--expires must be between 1 minute and 90 days")
    return delta


@handles_errors
def approve(
    ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Draft ids.")],
    expires: Annotated[str, typer.Option("--expires", help="How long the approval lasts.")
                       ] = "7d",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve drafts (owner only), bound to the hash of their exact content.

    Refused whole, with each failing condition, if any draft is not approval-ready.
    Any later edit voids the approval.
    """
    delta = parse_duration(expires)
    with open_ledger(home) as (ws, ledger):
        rows = drafts_lib.approve(ledger, ws.config, principal(ws, ledger), ids, expires=delta)
    if as_json:
        print_json(rows)
        return
    for d in rows:
        out.print(f"Draft {d['id']} approved until {d['expires_at']} "
                  f"(hash {d['approval_hash'][:16]}...).")


@handles_errors
def reject(draft_id: Annotated[int, typer.Argument(metavar="ID")], reason: ReasonOpt,
           home: HomeOpt = None) -> None:
    """Reject a draft (owner only)."""
    with open_ledger(home) as (ws, ledger):
        drafts_lib.reject(ledger, principal(ws, ledger), draft_id, reason)
    out.print(f"Draft {draft_id} rejected.")


# -- outbox -------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _show_pass(r: outbox_lib.OutboxReport) -> None:
    if r.config_error is not None:
        err.print(f"Nothing was sent: {r.config_error}. Receipt #{r.receipt_id}.",
                  style="red")
        return
    out.print(f"{len(r.sent)} sent, {len(r.failed)} failed, {len(r.retrying)} retrying, "
              f"{len(r.ambiguous) + len(r.found_ambiguous)} ambiguous, {len(r.refused)} refused "
              f"({r.outcome}). Receipt #{r.receipt_id}.")
    for line in r.reason_lines():
        out.print(line, style="red", highlight=False)
    for line in r.hold_lines():
        out.print(line, style="yellow", highlight=False)
    if r.interrupted is not None:
        err.print(f"Stopped by {r.interrupted}: no further send was begun; the pass's "
                  "receipt is written.", style="yellow")


def _outbox_exit(last: outbox_lib.OutboxReport, stopped: str | None) -> int:
    """128 + the signal when stopped; else 1 when the pass failed, 8 when every draft it
    tried was refused, 0 otherwise."""
    if stopped is not None:
        return 128 + int(signal.Signals[stopped])
    return {"failed": 1, "refused": 8}.get(last.outcome, 0)


@outbox_app.command("run")
@handles_errors
def outbox_run(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (otherwise keep "
                                       "running until interrupted).")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between "
                                            "passes without --once.")] = 30.0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send approved drafts through their lane's one channel, re-checking every gate first.

    Each pass is printed as it ends: what was sent, and what was not and why (failed,
    voided, refused, held). With --json: a list of passes with --once, else one JSON
    object per pass. Ctrl-C or SIGTERM ends the pass after the send in progress (one not
    yet handed to the server is not sent, and is sent on the next pass); the pass writes
    its receipt. Exit 0; 1 if the pass failed; 8 if every draft it tried was refused
    (capabilities); 130 (Ctrl-C) or 143 (SIGTERM) when stopped.
    """
    def show(report: outbox_lib.OutboxReport) -> None:
        if as_json:
            if not once:
                print_json(report.to_dict())
        else:
            _show_pass(report)

    with open_ledger(home) as (ws, ledger):
        who = principal(ws, ledger)
        with stop_signals_interrupt(STOP_SIGNALS):
            reports = outbox_lib.run(ws, ledger, actor=who.actor, caps=capabilities(),
                                     env=os.environ, once=once, interval=interval,
                                     on_pass=show)
            stopped = stop_requested()
    if as_json and once:
        print_json([r.to_dict() for r in reports])
    code = _outbox_exit(reports[-1], stopped)
    if code:
        raise typer.Exit(code)


@outbox_app.command("resolve")
@handles_errors
def outbox_resolve(
    draft_id: Annotated[int, typer.Argument(metavar="ID")],
    sent: Annotated[bool | None, typer.Option("--sent/--not-sent", help="What really "
                                              "happened (check the recipient's server or "
                                              "your sent folder).")] = None,
    note: Annotated[str, typer.Option("--note")] = "",
    home: HomeOpt = None,
) -> None:
    """Settle an ambiguous send (owner only). --not-sent returns it to send-ready."""
    if sent is None:
        raise InputError("say --sent or --not-sent")
    with open_ledger(home) as (ws, ledger):
        outbox_lib.resolve(ledger, principal(ws, ledger), draft_id, sent=sent, note=note)
    out.print(f"Draft {draft_id} recorded as {'sent' if sent else 'not sent'}.")


# -- touches ------------------------------------------------------------------

@touches_app.command("due")
@handles_errors
def touches_due(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Touches due now."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = packets_lib.due_touches(ledger)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} touch(es) due")
    for col in ("id", "lead", "sequence", "step", "due", "lane"):
        table.add_column(col)
    for t in rows:
        table.add_row(str(t["id"]), t["email"], t["sequence"], str(t["step"]), t["due_at"],
                      t["lane"])
    out.print(table)


@touches_app.command("done")
@handles_errors
def touches_done(
    touch_id: Annotated[int, typer.Argument(metavar="ID", help="The touch's id (see "
                                            "`atlas touches due`).")],
    note: Annotated[str, typer.Option("--note", help="What was done, e.g. 'called'.")] = "",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark a touch done by hand (a step that happened outside Atlas). Sending a draft
    for the lead on the touch's lane marks it done by itself."""
    with open_ledger(home) as (ws, ledger):
        t = packets_lib.complete_touch(ledger, principal(ws, ledger), touch_id, note)
    if as_json:
        print_json(t)
        return
    out.print(f"Touch {touch_id} is done.")


@touches_app.command("add")
@handles_errors
def touches_add(
    lead: Annotated[str, typer.Option("--lead", help="Lead id or email.")],
    due: Annotated[str, typer.Option("--due", help="ISO date or time (UTC).")],
    sequence: Annotated[str, typer.Option("--sequence")] = "default",
    step: Annotated[int, typer.Option("--step", min=1)] = 1,
    lane: Annotated[str, typer.Option("--lane")] = "outbound.prospect",
    home: HomeOpt = None,
) -> None:
    """Add one due touch for a lead."""
    with open_ledger(home) as (ws, ledger):
        packets_lib.add_touches(ledger, ws.config, principal(ws, ledger),
                                [{"lead": lead, "due": due, "sequence": sequence,
                                  "step": step, "lane": lane}])
    out.print("1 touch added.")


@touches_app.command("import")
@handles_errors
def touches_import(file: Annotated[Path, typer.Argument(help="CSV: lead (id or email), due, "
                                                        "sequence, step, lane.")],
                   home: HomeOpt = None) -> None:
    """Import touches from a CSV (all or nothing)."""
    import csv

    try:
        with open(file, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{file} cannot be read as a UTF-8 CSV: {exc}") from exc
    if not rows or not {"lead", "due"} <= set(rows[0]):
        raise InputError(f"{file} needs the columns lead and due")
    with open_ledger(home) as (ws, ledger):
        n = packets_lib.add_touches(ledger, ws.config, principal(ws, ledger), rows)
    out.print(f"{n} touch(es) added.")


# -- packets ------------------------------------------------------------------

@packet_app.command("create")
@handles_errors
def packet_create(
    name: Annotated[str, typer.Argument(help="The packet's name.")],
    segment: Annotated[str, typer.Option("--segment", help="Comma list, e.g. "
                                         "cpa,broker,fractional_cfo.")],
    limit: Annotated[int, typer.Option("--limit", min=1)] = 10,
    business: Annotated[str | None, typer.Option("--business")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bundle contacts (unsuppressed leads of the segments) and their drafts for review."""
    with open_ledger(home) as (ws, ledger):
        p = packets_lib.create_packet(ledger, ws.config, principal(ws, ledger), name,
                                      segments=segment.split(","), limit=limit,
                                      business=business)
    if as_json:
        print_json(p)
        return
    out.print(f"Packet {name}: {len(p['lead_ids'])} contact(s), {len(p['draft_ids'])} "
              "draft(s).")


@packet_app.command("list")
@handles_errors
def packet_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List packets."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = packets_lib.list_packets(ledger)
    if as_json:
        print_json(rows)
        return
    for p in rows:
        out.print(f"{p['name']}: {len(p['lead_ids'])} contacts, {len(p['draft_ids'])} drafts, "
                  + ("sent for review" if p["review_event"] else "not yet reviewed"))


@packet_app.command("show")
@handles_errors
def packet_show(name: Annotated[str, typer.Argument()], home: HomeOpt = None) -> None:
    """Show a packet as the owner will read it."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        text = packets_lib.render_packet(ledger, packets_lib.get_packet(ledger, name))
    out.print(text, highlight=False)


@packet_app.command("send-review")
@handles_errors
def packet_send_review(name: Annotated[str, typer.Argument()], home: HomeOpt = None,
                       as_json: JsonOpt = False) -> None:
    """Email the packet to the owner through lane outbound.review (not a prospect send)."""
    with open_ledger(home) as (ws, ledger):
        result = packets_lib.send_review(ws, ledger, principal(ws, ledger), name,
                                         caps=capabilities(), env=os.environ)
    if as_json:
        print_json(result)
        return
    out.print(f"Packet {name} sent for review to {result['to']} ({result['reply']}). "
              f"Receipt #{result['receipt_id']}.")
    err.print("No prospect was emailed.", style="dim")
