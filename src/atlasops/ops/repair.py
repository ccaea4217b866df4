"""Route checks with receipts, and repair: read, run the runbook, read back.

``fixed`` is earned only by the readback: the route must pass its checks
``healthy_after`` times in a row before the deadline. A runbook whose every
step exits 0 while the page is still broken is ``not_fixed``, with the evidence.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..config import Config, Route
from ..errors import ConfigError, InputError, NotFound
from ..ledger import Ledger, utc_now
from ..receipts import Action, Check, Receipt, record
from . import process
from .routes import Reading, describe_route, read


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
    """Read each route once and write a receipt per route."""
    chosen = names or sorted(config.routes)
    if not chosen:
        raise InputError("no routes are configured", hint="Add [routes.NAME] to atlas.toml.")
    routes = [(n, _route(config, n)) for n in chosen]
    out = []
    for name, route in routes:
        started = utc_now()
        try:
            reading = read(name, route, env)
        except ConfigError as exc:  # this route's credentials are missing: it fails, alone
            reading = Reading(name, route.url, False, None, 0.0,
                              [Check(name="credentials", passed=False, detail=exc.message)],
                              "", exc.message)
        what = describe_route(route)
        receipt = Receipt(
            kind="route.check", subject=f"route:{name}", actor=actor, started_at=started,
            finished_at=utc_now(), outcome="ok" if reading.passed else "failed",
            summary=(f"{what}: it does." if reading.passed else
                     f"{what}: it does NOT ({_first_failure(reading)})."),
            checks=reading.checks,
            evidence={"status": reading.status, "ms": reading.ms, "url": route.url,
                      "snippet": reading.snippet, "job_run": job_run},
        )
        out.append(RouteResult(reading, record(ledger, receipt).id))
    return out


def _first_failure(reading: Reading) -> str:
    bad = [c for c in reading.checks if not c.passed]
    return f"{bad[0].name}: {bad[0].detail}" if bad else "unknown"


def readback(name: str, route: Route, env: Mapping[str, str]) -> tuple[bool, list[Reading]]:
    """Read until ``healthy_after`` consecutive passes, or the deadline."""
    readings: list[Reading] = []
    streak = 0
    deadline = time.monotonic() + route.readback_deadline
    with httpx.Client(timeout=route.timeout, follow_redirects=True) as client:
        while True:
            r = read(name, route, env, client)
            readings.append(r)
            streak = streak + 1 if r.passed else 0
            if streak >= route.healthy_after:
                return True, readings
            if time.monotonic() + route.readback_interval > deadline:
                return False, readings
            time.sleep(route.readback_interval)


def repair(ledger: Ledger, config: Config, home: Path, name: str, *, actor: str,
           env: Mapping[str, str], dry_run: bool = False, force: bool = False
           ) -> dict[str, Any]:
    """Symptom, runbook steps, readback; one receipt that says what the user can now do."""
    route = _route(config, name)
    if route.runbook is None:
        raise InputError(f"route {name} has no runbook", hint=f"Set routes.{name}.runbook.")
    book = config.runbooks[route.runbook]
    started = utc_now()
    what = describe_route(route)
    can = route.user_can or what
    before = read(name, route, env)
    symptom = {"summary": f"{what}: " + ("it does" if before.passed else
                                         f"it does not ({_first_failure(before)})"),
               "status": before.status, "snippet": before.snippet,
               "checks": [c.model_dump() for c in before.checks]}
    plan = [{"name": s.name, "command": s.command, "cwd": s.cwd, "timeout": s.timeout}
            for s in book.steps]
    if dry_run:
        return {"dry_run": True, "route": name, "broken": not before.passed,
                "symptom": symptom, "plan": plan,
                "would_run": bool(force or not before.passed)}
    if before.passed and not force:
        receipt = Receipt(
            kind="repair", subject=f"route:{name}", actor=actor, started_at=started,
            finished_at=utc_now(), outcome="not_broken",
            summary=f"{what} already; nothing was run (use --force to run the runbook).",
            symptom=symptom, checks=before.checks,
            evidence={"status": before.status, "snippet": before.snippet})
        body = receipt.body()
        return {**body, "readback": None, "receipt_id": record(ledger, receipt).id}
    secrets = process.secret_values(env, process.config_secret_names(config))
    actions: list[Action] = []
    steps_ok = True
    for step in book.steps:
        cwd = Path(step.cwd) if step.cwd else home
        if not cwd.is_absolute():
            cwd = home / cwd
        try:
            ran = process.run(step.command, cwd=cwd, env={**env, **step.env},
                              timeout=step.timeout, secrets=secrets)
        except OSError as exc:  # the step could not even start (missing cwd, not executable)
            actions.append(Action(name=step.name, command=process.redact(step.command, secrets),
                                  ms=0.0, result=f"could not start: {exc.strerror or exc}"))
            steps_ok = False
            break
        result = ("timed out: killed with its process group" if ran.timed_out else
                  "ok" if ran.ok else f"exit {ran.exit_code}")
        actions.append(Action(name=step.name, command=process.redact(step.command, secrets),
                              exit_code=ran.exit_code, ms=ran.ms, result=result,
                              output_tail=ran.output_tail[-2000:]))
        if not ran.ok:
            steps_ok = False
            break
    healthy, readings = readback(name, route, env) if steps_ok else (False, [])
    last = readings[-1] if readings else None
    if healthy and before.passed:  # forced on a healthy route: nothing was broken
        outcome = "not_broken"
        summary = (f"{what}, before and after the runbook (run with --force); read back "
                   f"{route.healthy_after} time(s) in a row.")
    elif healthy:
        outcome, summary = "fixed", f"Fixed: users can {can}." if route.user_can else \
            f"Fixed: {what}, read back {route.healthy_after} time(s) in a row."
    elif not steps_ok:
        outcome = "not_fixed"
        summary = (f"Not fixed: runbook step {actions[-1].name!r} {actions[-1].result}; "
                   f"{what} still fails.")
    else:
        outcome = "not_fixed"
        summary = (f"Not fixed: every runbook step succeeded but the readback still fails "
                   f"({_first_failure(last) if last else 'no reading'}).")
    receipt = Receipt(
        kind="repair", subject=f"route:{name}", actor=actor, started_at=started,
        finished_at=utc_now(), outcome=outcome,  # type: ignore[arg-type]
        summary=summary, symptom=symptom, actions=actions,
        checks=last.checks if last else [],
        evidence={"readback_status": last.status if last else None,
                  "readback_snippet": last.snippet if last else None,
                  "readings": len(readings), "runbook": route.runbook},
    )
    body = receipt.body()
    body["readback"] = {"passed": healthy, "readings": [r.to_dict() for r in readings[-5:]],
                        "needed_consecutive": route.healthy_after}
    event = ledger.append_many([_with_readback(receipt, body)])[0]
    return {**body, "receipt_id": event.id}


def _with_readback(receipt: Receipt, body: dict[str, Any]) -> Any:
    from ..ledger import NewEvent

    return NewEvent("receipt.recorded", receipt.actor, body, subject=receipt.subject)


__all__ = ["RouteResult", "check_routes", "readback", "repair"]
