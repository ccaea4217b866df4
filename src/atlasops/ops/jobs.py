"""Jobs: agent work run as a subprocess with declared capabilities and a receipt.

The job gets ``ATLAS_JOB_RUN`` (its run id), ``ATLAS_CAPABILITIES`` and
``ATLAS_HOME`` in its environment, so every side effect it asks Atlas for (CLI
or library) is checked against its capabilities by the effects module and
tagged with its run id. The job-run receipt adds up the counters of those
effects; a read-only job that asked for any side effect is a *violation*.
Built-in jobs (backup, db check, route checks, backup prune) are jobs too, so
the number of jobs run in a day is honest.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import shlex
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config, Job
from ..errors import NotFound
from ..ledger import Ledger, NewEvent, utc_now
from ..receipts import Effects, Receipt
from . import process
from .records import _since

BUILTINS: dict[str, tuple[list[str], str]] = {
    "backup": (["backup", "--label", "job"], "take and validate a backup"),
    "db-check": (["db", "check"], "quick_check and ledger == journal"),
    "route-checks": (["check", "routes"], "read every configured route"),
    "backup-prune": (["backups", "prune"], "apply the backup retention policy"),
    "chronicle": (["chronicle"], "write today's chronicle"),
}
COUNTED_OUT = ("outbox.run", "job.run")


def all_jobs(config: Config) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, (argv, what) in BUILTINS.items():
        out[name] = {"name": name, "builtin": True, "command": "atlas " + " ".join(argv),
                     "read_only": True, "lanes": [], "business": None, "timeout": 3600.0,
                     "description": what}
    for name, job in config.jobs.items():
        out[name] = {"name": name, "builtin": False, "command": job.command,
                     "entry": job.entry, "read_only": job.read_only, "lanes": job.lanes,
                     "business": job.business, "timeout": job.timeout}
    return out


def _capabilities(job: Job | None) -> str:
    if job is None or job.read_only:
        return "read_only"
    return ",".join(job.lanes) or "none"


def _command(name: str, job: Job | None, home: Path) -> str | list[str]:
    if job is None:
        return [sys.executable, "-m", "atlasops", *BUILTINS[name][0], "--home", str(home)]
    if job.command is not None:
        return job.command
    assert job.entry is not None
    module, func = job.entry.split(":", 1)
    code = f"import {module} as m; m.{func}()"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def run_job(ledger: Ledger, config: Config, home: Path, name: str, *, actor: str,
            env: Mapping[str, str]) -> dict[str, Any]:
    job = config.jobs.get(name)
    if job is None and name not in BUILTINS:
        raise NotFound(f"no job named {name!r}", hint="`atlas jobs list` shows them.")
    run_id = f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{pysecrets.token_hex(3)}"
    parent = env.get("ATLAS_JOB_RUN") or None
    caps = _narrow(_capabilities(job), env.get("ATLAS_CAPABILITIES"))
    ledger.append("job.started", actor, {"run_id": run_id, "name": name,
                                          "capabilities": caps, "parent_run": parent},
                  subject=f"job:{name}")
    started = utc_now()
    # The job never inherits the caller's identity: an owner's token in the operator's
    # shell must not let a job approve, open lanes or mint tokens.
    child_env = {k: v for k, v in env.items() if k != "ATLAS_TOKEN"}
    child_env.update({"ATLAS_JOB_RUN": run_id, "ATLAS_CAPABILITIES": caps,
                      "ATLAS_HOME": str(home)})
    if job is not None and job.business:
        child_env["ATLAS_BUSINESS"] = job.business
    secrets = process.secret_values(env, process.config_secret_names(config))
    cwd = Path(job.cwd) if job is not None and job.cwd else home
    if not cwd.is_absolute():
        cwd = home / cwd
    command = _command(name, job, home)
    timeout = job.timeout if job is not None else 3600.0
    try:
        ran = process.run(command, cwd=cwd, env=child_env, timeout=timeout, secrets=secrets)
    except OSError as exc:  # could not start: still a run, and still a receipt
        ran = process.Ran(None, 0.0, f"could not start: {exc.strerror or exc}", 0, False)
    effects, refused = _effects_of(ledger, run_id)
    caused = sum(effects.model_dump().values())
    violation = caps == "read_only" and (refused > 0 or caused > 0)
    shown = command if isinstance(command, str) else " ".join(shlex.quote(c) for c in command)
    if ran.timed_out:
        outcome, what = "failed", f"was killed at its {timeout:g} s timeout"
    elif ran.exit_code is None:
        outcome, what = "failed", ran.output_tail
    elif ran.exit_code != 0:
        outcome, what = "failed", f"exited {ran.exit_code}"
    else:
        outcome, what = "ok", "finished"
    if violation:
        outcome = "failed"
    counters = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in effects.model_dump().items())
    summary = (f"Job {name} {what} in {ran.ms / 1000:.1f} s with {counters}"
               + (f"; VIOLATION: a read-only job requested {refused + caused} side "
                  f"effect(s) ({refused} refused, {caused} performed)" if violation else "")
               + (f"; {refused} side effect(s) refused" if refused and not violation else "")
               + ".")
    receipt = Receipt(
        kind="job.run", subject=f"job:{name}", actor=actor, started_at=started,
        finished_at=utc_now(), outcome=outcome,  # type: ignore[arg-type]
        summary=summary, effects=effects,
        evidence={"run_id": run_id, "job": name, "command": process.redact(shown, secrets),
                  "capabilities": caps, "exit_code": ran.exit_code, "ms": ran.ms,
                  "timed_out": ran.timed_out, "output_bytes": ran.output_bytes,
                  "output_tail": ran.output_tail, "violation": violation,
                  "refused_attempts": refused, "parent_run": parent,
                  "business": job.business if job is not None else None},
    )
    event = ledger.append_many([NewEvent("receipt.recorded", actor, receipt.body(),
                                         subject=f"job:{name}")])[0]
    return {**receipt.body(), "receipt_id": event.id}


def _narrow(own: str, parent: str | None) -> str:
    """A job started from inside another job gets no more than its parent may do."""
    if parent is None or parent == "":
        return own
    if parent == "read_only" or own == "read_only":
        return "read_only"
    mine = set(own.split(",")) - {"none"}
    theirs = set(parent.split(",")) - {"none"}
    return ",".join(sorted(mine & theirs)) or "none"


def _runs_under(ledger: Ledger, run_id: str) -> list[str]:
    """This run and every run started from inside it."""
    runs, frontier = [run_id], [run_id]
    while frontier:
        marks = ",".join("?" * len(frontier))
        rows = ledger.query("SELECT json_extract(payload, '$.run_id') AS r FROM events "
                            "WHERE kind='job.started' AND json_extract(payload, "
                            f"'$.parent_run') IN ({marks})", frontier)
        frontier = [str(r["r"]) for r in rows]
        runs += frontier
    return runs


def _effects_of(ledger: Ledger, run_id: str) -> tuple[Effects, int]:
    """Add up the counters of every receipt the run (and runs inside it) caused; count
    its refusals. Aggregate receipts (outbox runs, nested job runs) are not counted
    twice: the per-effect receipts are."""
    total = Effects()
    refused = 0
    runs = _runs_under(ledger, run_id)
    marks = ",".join("?" * len(runs))
    rows = ledger.query("SELECT kind, body FROM receipts WHERE json_extract(body, "
                        f"'$.evidence.job_run') IN ({marks})", runs)
    for row in rows:
        if row["kind"] in COUNTED_OUT:
            continue
        body = json.loads(row["body"])
        if row["kind"] == "effect.refused":
            refused += 1
            continue
        for key, value in body.get("effects", {}).items():
            setattr(total, key, getattr(total, key) + int(value))
    return total, refused


def list_runs(ledger: Ledger, since: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT j.run_id, j.name, j.started_at, j.receipt_id, j.outcome, r.summary, "
           "r.finished_at FROM job_runs j LEFT JOIN receipts r ON r.id = j.receipt_id")
    args: list[Any] = []
    cutoff = _since(since)
    if cutoff:
        sql += " WHERE j.started_at >= ?"
        args.append(cutoff)
    return [dict(r) for r in ledger.query(sql + " ORDER BY j.started_event", args)]


__all__ = ["BUILTINS", "all_jobs", "list_runs", "run_job"]
