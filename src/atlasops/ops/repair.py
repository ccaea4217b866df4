"""Route checks with receipts, and repair: read, run the runbook, read back.

``fixed`` is earned only by the readback: the route must pass its checks
``healthy_after`` times in a row before the deadline. A runbook whose every
step exits 0 while the page is still broken is ``not_fixed``, with the evidence.
Running a runbook is a side effect, checked like one (the ``repair`` capability);
a stop signal kills the running step and the receipt is still written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, Route, Runbook, Step
from ..errors import InputError, NotFound
from ..gates.effects import Capabilities, Effect, authorize
from ..ledger import Ledger, NewEvent, utc_now
from ..receipts import Action, Receipt, record
from . import process
from .routes import Reading, client_for, describe_route, read_or_fail


def _route(config: Config, name: str) -> Route:
    if name not in config.routes:
        raise NotFound(f"no route named {name!r}",
                       hint="Routes are [routes.NAME] sections of atlas.toml.")
    return config.routes[name]


@dataclass
class RouteResult:
    reading: Reading
    receipt_id: int


def check_routes(ledger: Ledger, config: Config, names: list[str] | None, *, actor: str,
                 env: Mapping[str, str], job_run: str | None = None) -> list[RouteResult]:
    """Read each route once and write a receipt per route. One reading judges the route
    now; ``healthy_after`` applies to a repair's readback."""
    chosen = names or sorted(config.routes)
    if not chosen:
        raise InputError("no routes are configured", hint="Add [routes.NAME] to atlas.toml.")
    routes = [(n, _route(config, n)) for n in chosen]
    out = []
    for name, route in routes:
        started = utc_now()
        reading = read_or_fail(name, route, env)  # missing credentials fail this route alone
        what = describe_route(route)
        receipt = Receipt(
            kind="route.check", subject=f"route:{name}", actor=actor, started_at=started,
            finished_at=utc_now(), outcome="ok" if reading.passed else "failed",
            summary=(f"{what}: it does." if reading.passed else
                     f"{what}: it does NOT ({_first_failure(reading)})."),
            checks=reading.checks,
            evidence={**reading.evidence(), "job_run": job_run},
        )
        out.append(RouteResult(reading, record(ledger, receipt).id))
    return out


def _first_failure(reading: Reading) -> str:
    bad = [c for c in reading.checks if not c.passed]
    return f"{bad[0].name}: {bad[0].detail}" if bad else "unknown"


@dataclass
class Readback:
    healthy: bool
    readings: list[Reading]
    interrupted: str | None = None  # the stop signal that cut it short, if one did


def readback(name: str, route: Route, env: Mapping[str, str]) -> Readback:
    """Read until ``healthy_after`` consecutive passes, or the deadline. A failed reading
    starts the count again; no reading waits past the deadline. Inside
    :func:`process.stop_signals_interrupt`, a stop signal ends it between readings (one
    during a reading, when that reading ends); Ctrl-C ends it at once."""
    readings: list[Reading] = []
    streak = 0
    deadline = time.monotonic() + route.readback_deadline
    try:
        with client_for(route, env) as client:
            while True:
                left = max(deadline - time.monotonic(), 0.001)
                r = read_or_fail(name, route, env, client, timeout=left)
                readings.append(r)
                streak = streak + 1 if r.passed else 0
                if streak >= route.healthy_after:
                    return Readback(True, readings)
                if time.monotonic() + route.readback_interval > deadline:
                    return Readback(False, readings)
                process.pause(route.readback_interval)
    except process.Interrupted as exc:
        return Readback(False, readings, exc.signame)
    except KeyboardInterrupt:
        return Readback(False, readings, "SIGINT")


@dataclass
class _Steps:
    actions: list[Action]
    failure: str | None  # how the first failing step failed; None when every step passed
    interrupted: str | None = None  # the stop signal that killed a step, if one did


def step_secrets(step: Step, env: Mapping[str, str], secret_names: list[str]) -> list[str]:
    """What to hide in a step's command and output: the configured secrets, variables
    whose names say they hold one, and every value of the step's own ``env``."""
    return process.secret_values({**env, **step.env}, [*secret_names, *step.env])


def _run_steps(book: Runbook, home: Path, env: Mapping[str, str],
               secret_names: list[str]) -> _Steps:
    """Run the steps in order, stopping at the first that fails. A process a step leaves
    running (a restarted server) is left running: that is a restart's point."""
    actions: list[Action] = []
    for step in book.steps:
        secrets = step_secrets(step, env, secret_names)
        command = process.redact(step.command, secrets)
        cwd = Path(step.cwd) if step.cwd else home
        if not cwd.is_absolute():
            cwd = home / cwd
        try:
            ran = process.run(step.command, cwd=cwd, env={**env, **step.env},
                              timeout=step.timeout, secrets=secrets, leave_running=True)
        except OSError as exc:  # the step could not even start (missing cwd, not executable)
            why = f"could not start: {exc.strerror or exc}"
            actions.append(Action(name=step.name, command=command, ms=0.0, result=why))
            return _Steps(actions, why)
        if ran.interrupted:
            result = f"interrupted ({ran.interrupted}): killed with its session"
            failure = "was " + result
        elif ran.timed_out:
            result = failure = "timed out: killed with its process group"
        elif ran.ok:
            result, failure = "ok", ""
        else:
            result, failure = f"exit {ran.exit_code}", f"failed (exit {ran.exit_code})"
        actions.append(Action.model_validate({
            "name": step.name, "command": command, "exit_code": ran.exit_code, "ms": ran.ms,
            "result": result, "output_tail": ran.output_tail[-2000:],
            "left_running": len(ran.left)}))
        if failure:
            return _Steps(actions, failure, ran.interrupted)
    return _Steps(actions, None)


def repair(ledger: Ledger, config: Config, home: Path, name: str, *, actor: str,
           env: Mapping[str, str], caps: Capabilities | None = None, dry_run: bool = False,
           force: bool = False) -> dict[str, Any]:
    """Symptom, runbook steps, readback; one receipt that says what the user can now do.

    Running a runbook is a side effect (a restart): work with capabilities (a job) needs
    the ``repair`` capability; a read-only context, or a job run that is not the caller's
    own, is refused with a receipt. ``caps`` default to what ``env`` declares
    (``ATLAS_JOB_RUN``, ``ATLAS_CAPABILITIES``), checked against the ledger. ``--dry-run``
    only reads, so it is not checked."""
    route = _route(config, name)
    if route.runbook is None:
        raise InputError(f"route {name} has no runbook", hint=f"Set routes.{name}.runbook.")
    book = config.runbooks[route.runbook]
    names = process.config_secret_names(config)
    if dry_run:
        before = read_or_fail(name, route, env)
        plan = [{"name": s.name, "command": process.redact(s.command,
                                                           step_secrets(s, env, names)),
                 "cwd": s.cwd, "timeout": s.timeout} for s in book.steps]
        missing = _missing_credentials(before)
        would_run = missing is None and (force or not before.passed)
        why_not = None if would_run else (
            f"{missing} (a runbook cannot fix credentials)" if missing else
            "the route passes (--force runs the runbook anyway)")
        return {"dry_run": True, "route": name, "broken": not before.passed,
                "symptom": _symptom(route, before), "plan": plan,
                "would_run": would_run, "why_not": why_not}
    effect = Effect("repair", "repair", f"run runbook {route.runbook} to repair route {name}",
                    detail={"route": name, "runbook": route.runbook})
    caps = authorize(ledger, actor, Capabilities.from_env(env) if caps is None else caps,
                     effect)
    started = utc_now()
    what = describe_route(route)
    before = read_or_fail(name, route, env)
    receipt = Receipt(kind="repair", subject=f"route:{name}", actor=actor, started_at=started,
                      finished_at=started, outcome="not_broken", summary="-",
                      symptom=_symptom(route, before), checks=before.checks,
                      evidence={**before.evidence(), "runbook": route.runbook,
                                "job_run": caps.job_run})
    missing = _missing_credentials(before)
    if missing:  # the runbook cannot fix credentials: say so, run nothing
        return _recorded(ledger, receipt.model_copy(update={
            "finished_at": utc_now(), "outcome": "not_fixed",
            "summary": f"Not fixed: nothing was run, because {missing}."}), None)
    if before.passed and not force:
        return _recorded(ledger, receipt.model_copy(update={
            "finished_at": utc_now(),
            "summary": f"{what} already; nothing was run (use --force to run the runbook)."}),
            None)
    with process.stop_signals_interrupt():  # SIGTERM: kill the step, still write the receipt
        steps = _run_steps(book, home, env, names)
        if steps.interrupted:  # stopped: read nothing more
            back = Readback(False, [], steps.interrupted)
        elif steps.failure is None:
            back = readback(name, route, env)
        else:  # read the page once anyway: the receipt never claims a state it did not read
            back = Readback(False, [read_or_fail(name, route, env)])
        outcome, summary = _verdict(route, before, steps, back)
        last = back.readings[-1] if back.readings else None
        done = receipt.model_copy(update={
            "finished_at": utc_now(), "outcome": outcome, "summary": summary,
            "actions": steps.actions, "checks": last.checks if last else [],
            "evidence": {"readback_status": last.status if last else None,
                         "readback_snippet": last.snippet if last else None,
                         "readback_final_url": last.final_url if last else None,
                         "readback_redirects": last.redirects if last else [],
                         "readings": len(back.readings), "runbook": route.runbook,
                         "interrupted": back.interrupted, "job_run": caps.job_run}})
        return _recorded(ledger, done, {"passed": back.healthy,
                                        "readings": [r.to_dict() for r in back.readings[-5:]],
                                        "needed_consecutive": route.healthy_after})


def _missing_credentials(before: Reading) -> str | None:
    """Why the symptom reading had no credentials, if it had none: then nothing is run."""
    missing = [c.detail for c in before.checks if c.name == "credentials"]
    return missing[0] if missing else None


def _symptom(route: Route, before: Reading) -> dict[str, Any]:
    what = describe_route(route)
    return {"summary": f"{what}: " + ("it does" if before.passed else
                                      f"it does not ({_first_failure(before)})"),
            "status": before.status, "snippet": before.snippet,
            "final_url": before.final_url, "redirects": before.redirects,
            "checks": [c.model_dump() for c in before.checks]}


def _verdict(route: Route, before: Reading, steps: _Steps,
             back: Readback) -> tuple[str, str]:
    what = describe_route(route)
    last = back.readings[-1] if back.readings else None
    if steps.interrupted:
        return "not_fixed", (f"Not fixed: runbook step {steps.actions[-1].name!r} "
                             f"{steps.failure}; the page was not read back (the repair "
                             "was stopped).")
    if steps.failure is not None:
        assert last is not None
        now = (f"the page now answers {last.status}" if last.passed else
               f"{what}: it still does NOT ({_first_failure(last)})")
        return "not_fixed", (f"Not fixed: runbook step {steps.actions[-1].name!r} "
                             f"{steps.failure}; {now} — read back once, not counted as fixed "
                             "because the runbook did not complete.")
    if back.interrupted:
        seen = (f"; the last reading: {what}: it " +
                ("does" if last.passed else f"does NOT ({_first_failure(last)})")
                if last else "")
        return "not_fixed", (f"Not fixed: every runbook step succeeded, but the readback "
                             f"was interrupted ({back.interrupted}) after "
                             f"{len(back.readings)} reading(s){seen}.")
    assert last is not None
    if back.healthy and before.passed:  # forced on a healthy route: nothing was broken
        return "not_broken", (f"{what}, before and after the runbook (run with --force); "
                              f"read back {route.healthy_after} time(s) in a row.")
    if back.healthy:
        return "fixed", (f"Fixed: users can {route.user_can}." if route.user_can else
                         f"Fixed: {what}, read back {route.healthy_after} time(s) in a row.")
    return "not_fixed", ("Not fixed: every runbook step succeeded but the readback still "
                         f"fails ({_first_failure(last)}).")


def _recorded(ledger: Ledger, receipt: Receipt,
              readback_: dict[str, Any] | None) -> dict[str, Any]:
    body = receipt.body()
    body["readback"] = readback_
    event = ledger.append_many([NewEvent("receipt.recorded", receipt.actor, body,
                                         subject=receipt.subject)])[0]
    return {**body, "receipt_id": event.id}


__all__ = ["Readback", "RouteResult", "check_routes", "readback", "repair", "step_secrets"]
