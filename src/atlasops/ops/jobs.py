"""Jobs: work run as a subprocess with declared capabilities and a receipt.

`atlas jobs run` records ``job.started`` (the run id, the job's capabilities, its
timeout), then runs the job with ``ATLAS_JOB_RUN`` (its run id),
``ATLAS_CAPABILITIES``, ``ATLAS_ACTOR`` and ``ATLAS_HOME`` in its environment.
Every side effect it asks Atlas for (CLI or library) is checked by the effects
module against the capabilities *recorded in the ledger* for that run (the
environment can only narrow them) and tagged with the run id. A run id is honoured
only in a process its runner started (the runner, recorded by pid and start time,
must be the caller's nearest job-runner ancestor): another job cannot borrow it.

When the job's own process exits, what it left running in its session is
killed (jobs may not leave daemons), and only then is the receipt written: it
counts every effect tagged with the run (performed, refused, or cut off in flight),
the deploys it recorded and the repairs it ran. A read-only run with any performed,
refused or in-flight effect is a *violation*. A job's process that drops the variables
is still found by ancestry (its runner); only a daemon that forks twice *and* drops them
is outside this accounting (counted apart as untagged): capabilities bind processes that
go through Atlas; they are not a sandbox.

Built-in jobs (backup, db check, route checks, backup prune, chronicle) are jobs
too, so the number of jobs run in a day is honest; their receipts say
``builtin: true``.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import BUILTIN_JOBS, BUILTIN_TIMEOUT, Config, Job
from ..errors import NotFound
from ..gates.effects import RUN_GRACE, Capabilities, runner_alive
from ..gates.lanes import parse_ts
from ..ledger import Ledger, NewEvent, utc_now
from ..receipts import Effects, Receipt
from . import process
from .records import parse_since

BUILTINS = BUILTIN_JOBS  # the one list is config.BUILTIN_JOBS; this name is for older imports


def _timeout(config: Config, name: str, job: Job | None) -> float:
    if job is not None:
        return job.timeout
    settings = config.builtin_jobs.get(name)
    return settings.timeout if settings is not None else BUILTIN_TIMEOUT


def all_jobs(config: Config) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, (argv, what) in BUILTIN_JOBS.items():
        out[name] = {"name": name, "builtin": True, "command": "atlas " + " ".join(argv),
                     "read_only": True, "lanes": [], "business": None,
                     "timeout": _timeout(config, name, None), "description": what}
    for name, job in config.jobs.items():
        out[name] = {"name": name, "builtin": False, "command": job.command,
                     "entry": job.entry, "read_only": job.read_only, "lanes": job.lanes,
                     "business": job.business, "timeout": job.timeout}
    return out


def _capabilities(job: Job | None) -> Capabilities:
    if job is None or job.read_only:
        return Capabilities(read_only=True, lanes=frozenset())
    return Capabilities(lanes=frozenset(job.lanes))


def _command(name: str, job: Job | None, home: Path) -> str | list[str]:
    if job is None:
        return [sys.executable, "-m", "atlasops", *BUILTIN_JOBS[name][0], "--home", str(home)]
    if job.command is not None:
        return job.command
    assert job.entry is not None
    module, func = job.entry.split(":", 1)
    code = f"import {module} as m; m.{func}()"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def withheld_credentials(config: Config, name: str, job: Job | None,
                         caps: Capabilities) -> set[str]:
    """The credential variables atlas.toml names that a run may not see. A channel's
    (``user_env``, ``password_env``) only reach a run with a lane that sends through that
    channel; a route's (``auth.env``) only the built-in ``route-checks`` job and runs with
    the ``repair`` capability (a repair reads the route before and after)."""
    lanes = config.all_lanes()
    usable = set(lanes) if caps.lanes is None else caps.lanes
    used = {lanes[n].channel for n in usable if n in lanes and not caps.read_only}
    withheld = {v for cname, ch in config.all_channels().items() if cname not in used
                for v in (ch.user_env, ch.password_env) if v}
    reads_routes = (job is None and name == "route-checks") or (
        not caps.read_only and (caps.lanes is None or "repair" in caps.lanes))
    if not reads_routes:
        withheld |= {r.auth.env for r in config.routes.values() if r.auth is not None}
    return withheld


def _runner() -> dict[str, int | None]:
    """This process, as ``job.started`` records it: its pid, and its start time, so that a
    reused pid is never taken for the runner."""
    me = process.proc_stat(os.getpid())
    return {"runner_pid": os.getpid(), "runner_start": me.start if me else None}


def run_job(ledger: Ledger, config: Config, home: Path, name: str, *, actor: str,
            env: Mapping[str, str]) -> dict[str, Any]:
    """Run a job now and write its job-run receipt. A job started from inside another job
    gets no more than its parent's capabilities, as the ledger recorded them."""
    job = config.jobs.get(name)
    if job is None and name not in BUILTIN_JOBS:
        raise NotFound(f"no job named {name!r}", hint="`atlas jobs list` shows them.")
    # the parent run: the declared one (a forged one is refused) or, when the variable was
    # dropped, the one this runner belongs to
    parent = Capabilities.from_env(env).verified(ledger)
    caps = _capabilities(job).narrow(parent)
    timeout = _timeout(config, name, job)
    run_id = f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{pysecrets.token_hex(3)}"
    ledger.append("job.started", actor, {
        "run_id": run_id, "name": name, "capabilities": caps.spelled(),
        "parent_run": parent.job_run, "builtin": job is None, "timeout": timeout,
        **_runner()}, subject=f"job:{name}")
    started = utc_now()
    # The job never inherits the caller's identity (an owner's token in the operator's
    # shell must not let a job approve, open lanes or mint tokens), nor credentials its
    # capabilities do not use.
    hidden = {"ATLAS_TOKEN", *withheld_credentials(config, name, job, caps)}
    child_env = {k: v for k, v in env.items() if k not in hidden}
    child_env.update({"ATLAS_JOB_RUN": run_id, "ATLAS_CAPABILITIES": caps.spelled(),
                      "ATLAS_HOME": str(home), "ATLAS_ACTOR": f"job:{name}#{run_id}"})
    if job is not None and job.business:
        child_env["ATLAS_BUSINESS"] = job.business
    secrets = process.secret_values(env, process.config_secret_names(config))
    cwd = Path(job.cwd) if job is not None and job.cwd else home
    if not cwd.is_absolute():
        cwd = home / cwd
    run = _Run(name, run_id, job, caps, _command(name, job, home), timeout,
               parent.job_run, started, actor, secrets)
    with process.stop_signals_interrupt():  # SIGTERM: kill the job, still write the receipt
        try:
            ran = process.run(run.command, cwd=cwd, env=child_env, timeout=timeout,
                              secrets=secrets)
        except OSError as exc:  # could not start: still a run, and still a receipt
            ran = process.Ran(None, 0.0, f"could not start: {exc.strerror or exc}", 0, False)
        receipt = _receipt(ledger, run, ran)
        event = ledger.append_many([NewEvent("receipt.recorded", actor, receipt.body(),
                                             subject=f"job:{name}")])[0]
    return {**receipt.body(), "receipt_id": event.id}


@dataclass
class _Run:
    name: str
    run_id: str
    job: Job | None
    caps: Capabilities
    command: str | list[str]
    timeout: float
    parent: str | None
    started: str
    actor: str
    secrets: list[str]


@dataclass
class Tally:
    """What a run (and runs started inside it) caused, from the ledger."""

    effects: Effects
    performed: int  # effect.performed events tagged with the run
    refused: int  # effect.refused receipts tagged with the run
    in_flight: int  # effect.attempting events with no outcome: cut off, may have happened
    deploys: int  # deploy receipts tagged with the run
    repairs: int  # repair receipts tagged with the run that ran runbook steps
    untagged: int  # effect records with no job run, made while it ran: not attributable

    @property
    def attempted(self) -> int:
        return self.performed + self.refused + self.in_flight


def _receipt(ledger: Ledger, run: _Run, ran: process.Ran) -> Receipt:
    tally = tally_run(ledger, run.run_id, run.started, utc_now())
    violation = run.caps.read_only and tally.attempted > 0
    if ran.interrupted:
        outcome, what = "failed", (f"was interrupted ({ran.interrupted}); its processes "
                                   "were killed")
    elif ran.timed_out:
        outcome, what = "failed", f"was killed at its {run.timeout:g} s timeout"
    elif ran.exit_code is None:
        outcome, what = "failed", ran.output_tail
    elif ran.exit_code != 0:
        outcome, what = "failed", f"exited {ran.exit_code}"
    else:
        outcome, what = "ok", "finished"
    if violation:
        outcome = "failed"
    counters = ", ".join(f"{v} {k.replace('_', ' ')}"
                         for k, v in tally.effects.model_dump().items())
    notes = []
    if tally.deploys:
        notes.append(f"{tally.deploys} deploy(s) recorded")
    if tally.repairs:
        notes.append(f"{tally.repairs} repair(s) ran a runbook")
    if ran.left:
        notes.append(f"{len(ran.left)} process(es) it left running were killed")
    if violation:
        notes.append(f"VIOLATION: a read-only job requested {tally.attempted} side "
                     f"effect(s) ({tally.refused} refused, {tally.performed} performed, "
                     f"{tally.in_flight} in flight)")
    elif tally.refused:
        notes.append(f"{tally.refused} side effect(s) refused")
    if tally.in_flight:
        notes.append(f"{tally.in_flight} side effect(s) in flight when stopped: may have "
                     "happened (the provider was called; no outcome was recorded)")
    if tally.untagged:
        notes.append(f"{tally.untagged} side effect(s) without a job run were recorded while "
                     "it ran (not attributed to it: any process may have caused them)")
    command = run.command
    shown = command if isinstance(command, str) else " ".join(shlex.quote(c) for c in command)
    return Receipt(
        kind="job.run", subject=f"job:{run.name}", actor=run.actor, started_at=run.started,
        finished_at=utc_now(), outcome=outcome,  # type: ignore[arg-type]
        summary=f"Job {run.name} {what} in {ran.ms / 1000:.1f} s with {counters}"
                + "".join(f"; {n}" for n in notes) + ".",
        effects=tally.effects,
        evidence={"run_id": run.run_id, "job": run.name, "builtin": run.job is None,
                  "command": process.redact(shown, run.secrets),
                  "capabilities": run.caps.spelled(), "exit_code": ran.exit_code, "ms": ran.ms,
                  "timed_out": ran.timed_out, "interrupted": ran.interrupted,
                  "output_bytes": ran.output_bytes, "output_tail": ran.output_tail,
                  "violation": violation, "performed_effects": tally.performed,
                  "refused_attempts": tally.refused, "in_flight_effects": tally.in_flight,
                  "deploys_recorded": tally.deploys, "repairs_run": tally.repairs,
                  "left_processes": len(ran.left), "killed_processes": ran.killed,
                  "untagged_effects_in_window": tally.untagged,
                  "parent_run": run.parent,
                  "business": run.job.business if run.job is not None else None},
    )


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


# An effect.attempting event (``a``) whose outcome was never recorded: no later event
# names it as its ``attempt`` (effect.performed), and no receipt does (a refusal or failure).
_NO_OUTCOME = ("NOT EXISTS (SELECT 1 FROM events o WHERE o.id > a.id AND "
               "(json_extract(o.payload, '$.attempt') = a.id OR "
               "json_extract(o.payload, '$.evidence.attempt') = a.id))")
# Receipts that record an effect themselves (not through effect.performed): refusals,
# deploy records, and repairs that ran runbook steps (a restart). A content publish is
# counted once, by its effect.performed event.
_RAN_STEPS = "json_array_length(body, '$.actions') > 0"
_EFFECT_RECEIPT = f"(kind IN ('effect.refused', 'deploy') OR (kind = 'repair' AND {_RAN_STEPS}))"


def tally_run(ledger: Ledger, run_id: str, started: str, finished: str) -> Tally:
    """Add up what the run (and runs inside it) caused: the counters of its performed
    effects, its refusals, its effects cut off in flight, its deploy records and its
    repairs that ran a runbook. Effect records made in its time window without any run
    id are counted apart: they cannot be attributed."""
    runs = _runs_under(ledger, run_id)
    marks = ",".join("?" * len(runs))
    tagged = f"json_extract(a.payload, '$.job_run') IN ({marks})"
    total = Effects()
    performed = ledger.query("SELECT payload FROM events a WHERE kind='effect.performed' "
                             f"AND {tagged}", runs)
    for row in performed:
        for key, value in json.loads(row["payload"]).get("effects", {}).items():
            setattr(total, key, getattr(total, key) + int(value))
    in_flight = ledger.query("SELECT count(*) AS n FROM events a WHERE "
                             f"kind='effect.attempting' AND {tagged} AND {_NO_OUTCOME}", runs)

    def receipts(kind: str, where: str = "1") -> int:
        return int(ledger.query(
            f"SELECT count(*) AS n FROM receipts WHERE kind=? AND {where} AND "
            f"json_extract(body, '$.evidence.job_run') IN ({marks})", [kind, *runs])[0]["n"])

    untagged = ledger.query(
        "SELECT (SELECT count(*) FROM events a WHERE ts BETWEEN ? AND ? AND "
        "json_extract(payload, '$.job_run') IS NULL AND (kind='effect.performed' OR "
        f"(kind='effect.attempting' AND {_NO_OUTCOME}))) + (SELECT count(*) FROM receipts "
        f"WHERE {_EFFECT_RECEIPT} AND finished_at BETWEEN ? AND ? AND "
        "json_extract(body, '$.evidence.job_run') IS NULL) AS n",
        [started, finished, started, finished])[0]["n"]
    return Tally(total, len(performed), receipts("effect.refused"), int(in_flight[0]["n"]),
                 receipts("deploy"), receipts("repair", _RAN_STEPS), int(untagged))


def list_runs(ledger: Ledger, since: str | None = None) -> list[dict[str, Any]]:
    """Job runs, oldest first. ``state`` is the outcome, ``running``, or — for a run with
    no receipt whose runner is gone or whose time is up — ``no receipt (runner died)``."""
    sql = ("SELECT j.run_id, j.name, j.started_at, j.receipt_id, j.outcome, r.summary, "
           "r.finished_at, e.payload FROM job_runs j JOIN events e ON e.id = j.started_event "
           "LEFT JOIN receipts r ON r.id = j.receipt_id")
    args: list[Any] = []
    cutoff = parse_since(since)
    if cutoff:
        sql += " WHERE j.started_at >= ?"
        args.append(cutoff)
    out = []
    for row in ledger.query(sql + " ORDER BY j.started_event", args):
        run = {k: row[k] for k in row.keys() if k != "payload"}
        started: dict[str, Any] = json.loads(row["payload"])
        run["builtin"] = started.get("builtin")
        run["state"] = row["outcome"] or _unfinished(str(row["started_at"]), started)
        out.append(run)
    return out


def _unfinished(started_at: str, started: dict[str, Any]) -> str:
    timeout = started.get("timeout")
    in_time = timeout is None or datetime.now(UTC) <= (
        parse_ts(started_at) + timedelta(seconds=float(timeout)) + RUN_GRACE)
    return "running" if in_time and runner_alive(started) else "no receipt (runner died)"


__all__ = ["BUILTINS", "Tally", "all_jobs", "list_runs", "run_job", "tally_run",
           "withheld_credentials"]
