"""Operations: jobs, snapshots, route checks, repair, content and deploys."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..gates.effects import Capabilities, UnknownJobRun, acting_run
from ..ledger import Ledger
from ..ops import jobs as jobs_lib
from ..ops import records
from ..ops.repair import check_routes
from ..ops.repair import repair as repair_lib
from .common import (
    HomeOpt,
    JsonOpt,
    actor,
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

jobs_app = typer.Typer(help="Jobs: agent work with declared capabilities and a receipt.",
                       no_args_is_help=True)
snapshot_app = typer.Typer(help="Snapshots: outputs of read-only lanes, with provenance.",
                           no_args_is_help=True)
check_app = typer.Typer(help="Checks that read what users can reach.", no_args_is_help=True)
content_app = typer.Typer(help="Content items: drafts of articles and posts.",
                          no_args_is_help=True)
deploy_app = typer.Typer(help="Deploy receipts.", no_args_is_help=True)


def _acting(ledger: Ledger) -> tuple[str, Capabilities]:
    """Who acts, and with what capabilities. Work that says it is a job run
    (``ATLAS_JOB_RUN``) must be one that is running, and its own (else exit 8); work that
    does not say so but runs inside a job (it dropped the variable) is that job's. A job
    run acts as ``job:NAME#RUN``."""
    caps = capabilities()
    run = acting_run(ledger, caps.job_run)
    if run is None:
        return actor(), caps
    return run.actor, replace(caps, job_run=run.run_id)


def _acting_for_effect(ledger: Ledger) -> tuple[str, Capabilities]:
    """:func:`_acting`, for a command that asks for a side effect (repair, publish,
    deploy record). A job run that does not verify (made up, finished, another job's)
    gives no identity: the plain actor, with the capabilities as declared, so that the
    effect's own capability check refuses it *with a receipt*, tagged with the run the
    caller really belongs to (a violation for a read-only job), never only an error."""
    try:
        return _acting(ledger)
    except UnknownJobRun:
        return actor(), capabilities()


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(snapshot_app, name="snapshot")
    app.add_typer(check_app, name="check")
    app.add_typer(content_app, name="content")
    app.add_typer(deploy_app, name="deploy")
    app.command("repair")(repair)


# -- jobs ---------------------------------------------------------------------

@jobs_app.command("list")
@handles_errors
def jobs_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Configured jobs ([jobs.NAME] in atlas.toml) and the built-in ones."""
    with open_ledger(home, read_only=True) as (ws, _ledger):
        rows = list(jobs_lib.all_jobs(ws.config).values())
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} job(s)")
    for col in ("job", "capabilities", "timeout s", "command"):
        table.add_column(col, overflow="fold")
    for j in rows:
        caps = "read-only" if j["read_only"] else (", ".join(j["lanes"]) or "no lanes")
        table.add_row(j["name"] + (" (built-in)" if j["builtin"] else ""), caps,
                      f"{j['timeout']:g}", str(j.get("command") or j.get("entry")))
    out.print(table)


@jobs_app.command("run")
@handles_errors
def jobs_run(name: Annotated[str, typer.Argument(help="The job.")], home: HomeOpt = None,
             as_json: JsonOpt = False) -> None:
    """Run a job now as a subprocess and write its job-run receipt.

    The job gets ATLAS_JOB_RUN and its capabilities; every side effect it asks Atlas for
    is checked and counted. When it exits, processes it left running are killed. SIGTERM
    or Ctrl-C kills the job and still writes the receipt. Exit 1 when the job failed,
    timed out, was interrupted, or (read-only) requested a side effect.
    """
    with open_ledger(home) as (ws, ledger), err.status(f"Running job {name}..."):
        result = jobs_lib.run_job(ledger, ws.config, ws.home, name, actor=actor(),
                                  env=os.environ)
    if as_json:
        print_json(result)
    else:
        style = "green" if result["outcome"] == "ok" else "red"
        out.print(styled((result["summary"], style), f" Receipt #{result['receipt_id']}."))
        tail = result["evidence"]["output_tail"].strip()
        if tail:
            out.print(tail[-1500:], style="dim", highlight=False)
    if result["outcome"] != "ok":
        raise typer.Exit(1)


@jobs_app.command("runs")
@handles_errors
def jobs_runs(since: Annotated[str | None, typer.Option("--since", help="ISO date.")] = None,
              home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Job runs, oldest first. A run without a receipt is `running`, or `no receipt
    (runner died)` once its runner is gone or its time is up."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = jobs_lib.list_runs(ledger, since)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} job run(s)")
    for col in ("run", "started", "state", "summary"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["run_id"] + (" (built-in)" if r["builtin"] else ""), r["started_at"],
                      r["state"], str(r["summary"] or ""))
    out.print(table)


# -- snapshots ----------------------------------------------------------------

@snapshot_app.command("record")
@handles_errors
def snapshot_record(
    name: Annotated[str, typer.Argument(help="e.g. portfolio, attribution, cross-sell.")],
    file: Annotated[Path, typer.Option("--file", help="A JSON file.")],
    business: Annotated[str | None, typer.Option("--business")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a snapshot with provenance (the job run it came from, when, its hash).

    A read-only job may record snapshots: they are records, not side effects."""
    with open_ledger(home) as (ws, ledger):
        who, caps = _acting(ledger)
        snap = records.record_snapshot(ledger, ws.config, name=name, path=file, actor=who,
                                       business=business, job_run=caps.job_run)
    if as_json:
        print_json(snap)
        return
    out.print(f"Snapshot {name} #{snap['id']} recorded (sha256 {snap['sha256'][:16]}..."
              + (f", job run {snap['job_run']}" if snap["job_run"] else "") + ").")


@snapshot_app.command("list")
@handles_errors
def snapshot_list(name: Annotated[str | None, typer.Option("--name")] = None,
                  home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List snapshots."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = records.list_snapshots(ledger, name)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        out.print(f"#{r['id']} {r['name']} {r['recorded_at']} by {r['actor']}"
                  + (f" (job run {r['job_run']})" if r["job_run"] else ""))


@snapshot_app.command("show")
@handles_errors
def snapshot_show(snapshot_id: Annotated[int, typer.Argument(metavar="ID")],
                  home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Show a snapshot and its data."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        snap = records.get_snapshot(ledger, snapshot_id)
    if as_json:
        print_json(snap)
        return
    out.print(styled((f"Snapshot #{snap['id']}", "bold"),
                     f" {snap['name']} at {snap['recorded_at']} by {snap['actor']}"))
    out.print(f"sha256 {snap['sha256']}; business {snap['business'] or '-'}; job run "
              f"{snap['job_run'] or '- (not recorded by a job)'}")
    out.print_json(data=snap["data"])


# -- route checks and repair ---------------------------------------------------

@check_app.command("routes")
@handles_errors
def check_routes_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Routes to check (default: "
                                                      "all).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read each route's real page once and judge it; a receipt per route. Exit 1 if any
    fails. (A repair's readback is what needs `healthy_after` passes in a row.)"""
    with open_ledger(home) as (ws, ledger):
        who, caps = _acting(ledger)
        results = check_routes(ledger, ws.config, names, actor=who, env=os.environ,
                               job_run=caps.job_run)
    if as_json:
        print_json([{**r.reading.to_dict(), "receipt_id": r.receipt_id} for r in results])
    else:
        for r in results:
            moved = (f" -> {r.reading.final_url}" if r.reading.redirects else "")
            out.print(styled(mark(r.reading.passed), f" {r.reading.route}: {r.reading.status} "
                             f"in {r.reading.ms:.0f} ms ({r.reading.url}{moved})"))
            for c in r.reading.checks:
                if not c.passed:
                    out.print(f"    {c.name}: {c.detail}")
    if not all(r.reading.passed for r in results):
        raise typer.Exit(1)


@handles_errors
def repair(
    route: Annotated[str, typer.Argument(help="The route to repair.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read the route and show the "
                                          "runbook; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Run the runbook even if the route "
                                        "passes.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read the route (the symptom), run its runbook, then read it back.

    The outcome is `fixed` only when the readback passes; `not_fixed` otherwise (exit 1);
    `not_broken` when the route already passed (nothing run unless --force). Running a
    runbook is a side effect: from a job it needs the `repair` capability (a read-only
    job is refused, exit 8, with a receipt). SIGTERM or Ctrl-C kills the running step and
    still writes the receipt. --dry-run only reads (secrets in the commands redacted).
    """
    with open_ledger(home) as (ws, ledger), err.status(f"Repairing {route}: read, run, "
                                                       "read back..."):
        who, caps = _acting_for_effect(ledger)
        result = repair_lib(ledger, ws.config, ws.home, route, actor=who, env=os.environ,
                            caps=caps, dry_run=dry_run, force=force)
    if as_json:
        print_json(result)
    elif dry_run:
        out.print(f"Symptom: {result['symptom']['summary']}")
        verb = "would run" if result["would_run"] else "runbook step"
        for step in result["plan"]:
            out.print(f"  {verb} {step['name']}: {step['command']}")
        if not result["would_run"]:
            out.print(f"Nothing would run: {result['why_not']}.")
    else:
        _print_repair(result)
    if not dry_run and result["outcome"] == "not_fixed":
        raise typer.Exit(1)


def _print_repair(r: dict[str, Any]) -> None:
    style = {"fixed": "green", "not_broken": "green"}.get(r["outcome"], "red")
    out.print(styled((r["outcome"], f"bold {style}"), f": {r['summary']}"))
    out.print(f"symptom: {r['symptom']['summary']}")
    for a in r.get("actions", []):
        out.print(f"  step {a['name']}: {a['result']} ({a['ms']:.0f} ms)")
    rb = r.get("readback")
    if rb:
        out.print(f"  readback: {'passed' if rb['passed'] else 'FAILED'} "
                  f"({len(rb['readings'])} reading(s) shown)")
    out.print(f"Receipt #{r['receipt_id']}.", style="dim")


# -- content and deploys --------------------------------------------------------

@content_app.command("add")
@handles_errors
def content_add(
    business: Annotated[str, typer.Option("--business")],
    title: Annotated[str, typer.Option("--title")],
    file: Annotated[Path, typer.Option("--file", help="The text (UTF-8, Markdown).")],
    status: Annotated[str, typer.Option("--status", help="draft or review.")] = "draft",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a content item (an article or post draft). A draft is a record, not a side
    effect, so a read-only job may add one; publishing is `atlas content publish`."""
    with open_ledger(home) as (ws, ledger):
        who, caps = _acting(ledger)
        item = records.add_content(ledger, ws.config, business=business, title=title,
                                   path=file, actor=who, status=status, job_run=caps.job_run)
    if as_json:
        print_json(item)
        return
    out.print(f"Content #{item['id']} ({item['status']}): {item['title']}")


@content_app.command("list")
@handles_errors
def content_list(business: Annotated[str | None, typer.Option("--business")] = None,
                 home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List content items."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = records.list_content(ledger, business)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} content item(s)")
    for col in ("id", "business", "status", "title"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["business"], r["status"], r["title"])
    out.print(table)


@content_app.command("publish")
@handles_errors
def content_publish(
    content_id: Annotated[int, typer.Argument(metavar="ID")],
    lane: Annotated[str, typer.Option("--lane", help="The lane that publishes it.")
                    ] = "social.post",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a content item: a side effect of its lane, through the effects module.

    The lane must be open and its channel a `directory` channel (the file is written
    there; hosted social providers are not implemented). While the lane needs approval,
    only the owner may publish (ATLAS_TOKEN with role owner). Archived or already
    published items are refused (exit 7); a refusal is a receipt (exit 8).
    """
    with open_ledger(home) as (ws, ledger):
        who, caps = _acting_for_effect(ledger)
        person = principal(ws, ledger)
        result = records.publish_content(
            ledger, ws.config, ws.home, content_id, lane=lane,
            actor=person.actor if caps.job_run is None else who,
            by_owner=person.is_owner, caps=caps, env=os.environ)
    if as_json:
        print_json(result)
        return
    out.print(f"{result['summary']} Receipt #{result['receipt_id']}.")


@deploy_app.command("record")
@handles_errors
def deploy_record(
    site: Annotated[str, typer.Option("--site")],
    provider: Annotated[str, typer.Option("--provider", help="e.g. cloudflare.")],
    url: Annotated[str, typer.Option("--url")],
    commit: Annotated[str | None, typer.Option("--commit")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="The provider's output "
                                              "(JSON or text), kept as evidence.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a deploy receipt (a deploy that a provider performed).

    The provider's output is kept with secrets redacted. A read-only context, or a job
    without the `deploy` capability, is refused (exit 8, with a receipt)."""
    with open_ledger(home) as (ws, ledger):
        who, caps = _acting_for_effect(ledger)
        result = records.record_deploy(ledger, ws.config, site=site, provider=provider,
                                       url=url, actor=who, caps=caps, env=os.environ,
                                       commit=commit, evidence_file=file)
    if as_json:
        print_json(result)
        return
    out.print(f"Deploy of {site} recorded. Receipt #{result['receipt_id']}.")


@deploy_app.command("list")
@handles_errors
def deploy_list(since: Annotated[str | None, typer.Option("--since", help="ISO date.")] = None,
                home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Deploy receipts, oldest first."""
    with open_ledger(home, read_only=True) as (_ws, ledger):
        rows = records.list_deploys(ledger, since)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} deploy(s)")
    for col in ("id", "when", "site", "provider", "url", "commit"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["recorded_at"], r["site"], r["provider"], r["url"],
                      str(r["git_commit"] or ""))
    out.print(table)
