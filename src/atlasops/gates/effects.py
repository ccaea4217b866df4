"""Effects: the only way Atlas performs a side effect (send email, post, change a CTA,
spend, deploy).

Work runs with :class:`Capabilities` (a read-only job, or the lanes it may use).
A job run's capabilities are those its ``job.started`` event recorded: what the
process declares in its environment can only narrow them. :func:`perform` checks,
under the writer lock, the capability, then the lane (open, its one channel,
owner-only recipients, suppression, per-recipient cooldown, the daily cap for
every kind of effect), and in the same transaction records the attempt
(``effect.attempting``); only then does it talk to the provider. A refusal is
recorded as a receipt (what was attempted, why refused) and raised as
:class:`EffectRefused`; counters of a refused effect stay 0. The attempt's
outcome names it (``"attempt": id``): ``effect.performed``, tagged with its job
run, or an ``effect.refused`` receipt (outcome ``failed``) when the provider
failed, with ``may_have_happened``. An attempt without an outcome was cut off
(the process died or was killed) and may have happened.

An email counts as ``emails_sent`` unless every recipient is one of the owner's
addresses (mail to the owner is review mail, counted by the callers' receipts as
``review_emails``), whatever lane carried it.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal, NoReturn

from ..config import LANE_EFFECTS, Channel, Config
from ..errors import AtlasError, PermissionDenied
from ..ledger import Ledger, NewEvent, utc_now
from ..ops import process
from ..receipts import Effects, Outcome, Receipt
from .channels import (
    ChannelUnavailable,
    PermanentFailure,
    Sender,
    TemporaryFailure,
    sender_for,
)
from .conditions import Condition, describe, failing, hold_reason
from .lanes import cap_condition, cooldown_condition, get_lane, parse_ts
from .suppression import address_key, is_suppressed

Kind = Literal["email", "post", "cta_change", "spend", "deploy", "repair"]
COUNTER = {"email": "emails_sent", "post": "public_posts", "cta_change": "cta_changes",
           "spend": "spend_cents"}


class EffectRefused(AtlasError):
    exit_code = 8


class UnknownJobRun(PermissionDenied):
    """``ATLAS_JOB_RUN`` names a run that does not exist, is no longer running, or is not
    the caller's own (``details["actual_run"]``: the run the caller belongs to, if any)."""

    default_hint = ("ATLAS_JOB_RUN is set by `atlas jobs run` for the job it runs; work that "
                    "is not a running job must not set it.")


# A run is running from its job.started event until its job.run receipt, and at most until
# its timeout (plus this grace for the runner to kill it and write the receipt).
RUN_GRACE = timedelta(minutes=2)


@dataclass(frozen=True)
class RunningJob:
    run_id: str
    name: str
    capabilities: str
    builtin: bool

    @property
    def actor(self) -> str:
        return f"job:{self.name}#{self.run_id}"


def runner_alive(started: Mapping[str, Any]) -> bool:
    """Whether the `atlas jobs run` process a ``job.started`` payload names still runs: the
    same pid with the same start time (a zombie, or a reused pid, is not the runner). A
    payload without the pid is given the benefit of the doubt."""
    pid = started.get("runner_pid")
    if pid is None:
        return True
    start = started.get("runner_start")
    return process.still_running(int(pid), None if start is None else int(start))


def own_runs(ledger: Ledger, pid: int | None = None) -> list[str]:
    """The job runs process ``pid`` (default: this one) belongs to: the unfinished runs
    whose runner is its nearest ancestor (itself included) that runs any. A nested job's
    processes belong to the nested run, not to the outer one."""
    runners: dict[int, list[tuple[int | None, str]]] = {}
    for row in ledger.query("SELECT j.run_id, e.payload FROM job_runs j JOIN events e ON "
                            "e.id = j.started_event WHERE j.receipt_id IS NULL"):
        started = json.loads(row["payload"])
        if started.get("runner_pid") is not None:
            start = started.get("runner_start")
            runners.setdefault(int(started["runner_pid"]), []).append(
                (None if start is None else int(start), str(row["run_id"])))
    if not runners:  # no job runs: no need to walk /proc
        return []
    for proc in process.ancestry(os.getpid() if pid is None else pid):
        runs = [run for start, run in runners.get(proc.pid, ())
                if start is None or start == proc.start]
        if runs:
            return runs
    return []


def running_job(ledger: Ledger, run_id: str, pid: int | None = None) -> RunningJob:
    """The job run ``run_id``, checked against the ledger and the process tree: it must
    have been started by `atlas jobs run`, not have finished, and be the run the calling
    process (``pid``, default this one) belongs to — its runner an ancestor of the caller.
    Raises :class:`UnknownJobRun` otherwise; its ``actual_run`` detail names the run the
    caller does belong to, if any."""
    own = own_runs(ledger, pid)
    actual = own[0] if own else None
    rows = ledger.query("SELECT j.name, j.receipt_id, j.started_at, e.payload FROM job_runs j "
                        "JOIN events e ON e.id = j.started_event WHERE j.run_id = ?", (run_id,))
    if not rows:
        raise UnknownJobRun(f"ATLAS_JOB_RUN={run_id!r} is not a job run of this workspace",
                            actual_run=actual)
    if rows[0]["receipt_id"] is not None:
        raise UnknownJobRun(f"job run {run_id!r} has finished (receipt "
                            f"#{rows[0]['receipt_id']}); it can no longer act",
                            actual_run=actual)
    started: dict[str, Any] = json.loads(rows[0]["payload"])
    timeout = started.get("timeout")
    if timeout is not None:
        ends = parse_ts(str(rows[0]["started_at"])) + timedelta(seconds=float(timeout))
        if datetime.now(UTC) > ends + RUN_GRACE:
            raise UnknownJobRun(f"job run {run_id!r} is past its {float(timeout):g} s "
                                "timeout; it can no longer act", actual_run=actual)
    if not runner_alive(started):
        raise UnknownJobRun(f"the runner of job run {run_id!r} is gone; the run can no "
                            "longer act", actual_run=actual)
    if run_id not in own:
        raise UnknownJobRun(f"job run {run_id!r} is not this process's job run: its runner "
                            f"(pid {started.get('runner_pid')}) did not start this process; "
                            "work may act only for the job run that started it",
                            actual_run=actual)
    return RunningJob(run_id, str(rows[0]["name"]), str(started["capabilities"]),
                      bool(started.get("builtin", False)))


def acting_run(ledger: Ledger, declared: str | None, pid: int | None = None
               ) -> RunningJob | None:
    """The job run the caller (``pid``, default this process) acts for: the one it declares
    (``ATLAS_JOB_RUN``), checked by :func:`running_job`; without a declaration, the run it
    belongs to by ancestry (:func:`own_runs`), so a job's process that dropped the variable
    is still the job's. None outside every job run. Raises :class:`UnknownJobRun` like
    :func:`running_job`."""
    if declared is None:
        own = own_runs(ledger, pid)
        if not own:
            return None
        declared = own[0]
    return running_job(ledger, declared, pid)


@dataclass(frozen=True)
class Capabilities:
    """What the current work may do. The default (no declaration) is unrestricted
    by capability; lanes and approvals still apply."""

    read_only: bool = False
    lanes: frozenset[str] | None = None
    job_run: str | None = None

    @classmethod
    def parse(cls, raw: str, job_run: str | None = None) -> Capabilities:
        """``read_only``, ``none``, a comma list of lanes, or empty (unrestricted)."""
        raw = raw.strip()
        if not raw:
            return cls(job_run=job_run)
        if raw == "read_only":
            return cls(read_only=True, lanes=frozenset(), job_run=job_run)
        if raw == "none":
            return cls(lanes=frozenset(), job_run=job_run)
        return cls(lanes=frozenset(x.strip() for x in raw.split(",") if x.strip()),
                   job_run=job_run)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Capabilities:
        """What the process *declares* (``ATLAS_CAPABILITIES``, ``ATLAS_JOB_RUN``); a
        declared job run is believed only after :meth:`verified`."""
        return cls.parse(env.get("ATLAS_CAPABILITIES", ""), env.get("ATLAS_JOB_RUN") or None)

    def spelled(self) -> str:
        """The inverse of :meth:`parse`."""
        if self.read_only:
            return "read_only"
        if self.lanes is None:
            return ""
        return ",".join(sorted(self.lanes)) or "none"

    def narrow(self, other: Capabilities) -> Capabilities:
        """No more than both allow."""
        if self.read_only or other.read_only:
            return replace(self, read_only=True, lanes=frozenset())
        if other.lanes is None:
            return self
        lanes = other.lanes if self.lanes is None else self.lanes & other.lanes
        return replace(self, lanes=lanes)

    def verified(self, ledger: Ledger) -> Capabilities:
        """A job run's capabilities come from its own ``job.started`` event in the ledger;
        what the process declares can only narrow them, never widen them. The run is the
        declared one or, when none is declared, the one this process belongs to
        (:func:`acting_run`). Raises :class:`UnknownJobRun` when the declared run does not
        exist or is not running."""
        run = acting_run(ledger, self.job_run)
        if run is None:
            return self
        return Capabilities.parse(run.capabilities, run.run_id).narrow(self)

    def describe(self) -> str:
        if self.read_only:
            return "read-only"
        if self.lanes is None:
            return "unrestricted"
        return "lanes " + (", ".join(sorted(self.lanes)) or "(none)")


# A non-email effect's provider: given the channel's name and settings and the workspace,
# it performs the effect and returns what the provider said.
Deliver = Callable[[str, Channel, Path], str]


@dataclass
class Effect:
    kind: Kind
    lane: str  # for a deploy record: the capability ``deploy``
    summary: str
    message: EmailMessage | None = None
    amount_cents: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    deliver: Deliver | None = None


def refusal_event(actor: str, caps: Capabilities, effect: Effect, why: str, *,
                  outcome: Outcome = "refused", **evidence: Any) -> NewEvent:
    """The receipt of a refused effect: what was attempted and why it was refused."""
    now = utc_now()
    return Receipt(
        kind="effect.refused", subject=f"lane:{effect.lane}", actor=actor, started_at=now,
        finished_at=now, outcome=outcome,
        summary=f"{'Refused' if outcome == 'refused' else 'Failed'}: {effect.summary}. {why}",
        evidence={"attempted": {"kind": effect.kind, "lane": effect.lane,
                                "summary": effect.summary, **effect.detail},
                  "capabilities": caps.describe(), "job_run": caps.job_run, "why": why,
                  **evidence},
    ).as_event()


def refuse(ledger: Ledger, actor: str, caps: Capabilities, effect: Effect,
           why: str) -> NoReturn:
    """Record the refusal receipt and raise :class:`EffectRefused`."""
    event = ledger.append_many([refusal_event(actor, caps, effect, why)])[0]
    raise EffectRefused(f"{effect.summary}: refused. {why}", receipt_id=event.id)


def recipient_keys(message: EmailMessage) -> set[str]:
    """Every recipient of the message (To, Cc, Bcc)."""
    headers = [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]
    return {address_key(addr) for _name, addr in getaddresses(headers) if addr}


def only_to_owner(config: Config, message: EmailMessage) -> bool:
    """True when every recipient is one of the owner's addresses."""
    keys = recipient_keys(message)
    return bool(keys) and keys <= {address_key(a) for a in config.owner.addresses()}


def capability_check(ledger: Ledger, caps: Capabilities,
                     lane: str) -> tuple[Capabilities, str | None]:
    """The capabilities verified against the ledger, and why they do not allow an effect
    on ``lane`` (None when they do). Reads only: safe inside a write transaction. A
    refusal is tagged with the job run the caller really belongs to, never with one it
    only names."""
    read_only = "The work runs read-only: it may not cause side effects"
    try:
        verified = caps.verified(ledger)
    except UnknownJobRun as exc:
        caps = replace(caps, job_run=exc.details.get("actual_run"))
        return caps, (f"{read_only} (and {exc.message})." if caps.read_only else
                      exc.message + ".")
    if caps.read_only:
        return verified, read_only + "."
    caps = verified
    if caps.read_only:
        return caps, f"Job run {caps.job_run} runs read-only: it may not cause side effects."
    if caps.lanes is not None and lane not in caps.lanes:
        return caps, f"Its capabilities ({caps.describe()}) do not include {lane}."
    return caps, None


def authorize(ledger: Ledger, actor: str, caps: Capabilities, effect: Effect) -> Capabilities:
    """The capability check alone: refuse (with a receipt) what the work may not do.
    Returns the capabilities verified against the ledger."""
    verified, why = capability_check(ledger, caps, effect.lane)
    if why is not None:
        refuse(ledger, actor, verified, effect, why)
    return verified


@dataclass
class _Decision:
    """What :func:`_decide` found: the verified capabilities, and either why the effect is
    refused, or how to perform it (through which channel)."""

    caps: Capabilities
    why: str | None = None
    hold: str | None = None  # a refusal by the lane's state (closed, cap, cooldown): waits
    channel: str = ""
    provider: Callable[[], str] | None = None
    counters: Effects = field(default_factory=Effects)


def _decide(ledger: Ledger, config: Config, home: Path, caps: Capabilities, effect: Effect,
            env: Mapping[str, str], at: datetime) -> _Decision:
    """Every check before an effect, on the state as it is now (run under the writer lock,
    in the transaction that records the attempt): capabilities, the lane (open, carrying
    this kind, its one channel), then for email the owner-only rule, the suppression list
    and each recipient's cooldown, and for every kind the lane's daily cap. Raises
    :class:`ChannelUnavailable` when the channel cannot be used at all (credentials)."""
    caps, why = capability_check(ledger, caps, effect.lane)
    if why is not None:
        return _Decision(caps, why)
    if effect.lane not in LANE_EFFECTS:
        return _Decision(caps, f"There is no lane {effect.lane}.")
    if effect.kind != "deploy" and LANE_EFFECTS[effect.lane] != effect.kind:
        return _Decision(caps, f"Lane {effect.lane} does not carry {effect.kind} effects.")
    lane = get_lane(ledger, config, effect.lane)
    if not lane.open:
        return _Decision(caps, f"Lane {lane.name} is closed ({lane.reason}).",
                         hold=hold_reason(lane.name, [Condition("lane_open", False, "")]))
    channels = config.all_channels()
    if lane.channel is None or lane.channel not in channels:
        return _Decision(caps, f"Lane {lane.name} has no channel configured.")
    name, channel = lane.channel, channels[lane.channel]
    decision = _Decision(caps, channel=name)
    limits = [cap_condition(ledger, lane, at)]
    message, deliver = effect.message, effect.deliver
    if effect.kind == "email" and message is not None and channel.type != "directory":
        if lane.settings.owner_only and not only_to_owner(config, message):
            return _Decision(caps, f"Lane {lane.name} only sends to the owner's addresses.")
        keys = sorted(recipient_keys(message))
        suppressed = [k for k in keys if is_suppressed(ledger, k)]
        if suppressed:
            return _Decision(caps, f"{', '.join(suppressed)} is on the suppression list.")
        draft = effect.detail.get("draft")  # a draft's own recorded intent is not a prior send
        limits += [cooldown_condition(ledger, lane, k, at, exclude_draft=draft) for k in keys]
        sender: Sender = sender_for(name, channel, home, env)
        sender.check()
        decision.provider = functools.partial(sender.send, message)
        if not only_to_owner(config, message):  # mail only to the owner is review mail
            decision.counters.emails_sent = 1
    elif effect.kind != "email" and deliver is not None and channel.type == "directory":
        decision.provider = functools.partial(deliver, name, channel, home)
        counter = COUNTER.get(effect.kind)
        if counter is not None:
            setattr(decision.counters, counter,
                    effect.amount_cents if counter == "spend_cents" else 1)
    else:
        return _Decision(caps, f"No provider for {effect.kind} effects is available on "
                               f"channel {name} ({channel.type}).")
    over = failing(limits)
    if over:
        return _Decision(caps, f"Lane {lane.name}: {describe(over)}.",
                         hold=hold_reason(lane.name, over))
    return decision


def failure_event(actor: str, caps: Capabilities, effect: Effect, attempt: int,
                  exc: BaseException, *, may_have_happened: bool) -> NewEvent:
    """The outcome of an attempt the provider did not complete: an ``effect.refused``
    receipt naming the attempt, saying whether the effect may still have happened."""
    reason = getattr(exc, "reason", None) or getattr(exc, "message", None) or str(exc)
    why = (f"The provider failed after the attempt was recorded: {reason}"
           + (" It may have happened." if may_have_happened else " It did not happen."))
    return refusal_event(actor, caps, effect, why, outcome="failed", attempt=attempt,
                         failure=type(exc).__name__, may_have_happened=may_have_happened)


def perform(ledger: Ledger, config: Config, home: Path, *, actor: str, caps: Capabilities,
            effect: Effect, env: Mapping[str, str],
            now: datetime | None = None) -> tuple[str, Effects]:
    """Perform one side effect, or refuse it with a receipt. Returns (reply, counters).

    The decision (:func:`_decide`) is made under the writer lock, in the transaction that
    records the attempt (``effect.attempting``: kind, lane, summary, channel, job_run)
    *before* any provider is called, so an effect cut off mid-way (the process killed)
    still leaves a trace. Its outcome names the attempt: ``effect.performed`` (tagged with
    the job run, so a job's receipt counts every effect it caused, counters or not), or,
    when the provider fails, an ``effect.refused`` receipt saying whether the effect may
    still have happened."""
    at = now or datetime.now(UTC)
    found: list[_Decision] = []

    def build(_conn: sqlite3.Connection) -> list[NewEvent]:
        found[:] = [_decide(ledger, config, home, caps, effect, env, at)]
        d = found[0]
        if d.why is not None:
            return [refusal_event(actor, d.caps, effect, d.why)]
        return [NewEvent("effect.attempting", actor, {
            "kind": effect.kind, "lane": effect.lane, "summary": effect.summary,
            "channel": d.channel, "job_run": d.caps.job_run, "detail": effect.detail},
            subject=f"lane:{effect.lane}")]

    recorded = ledger.transact(build)[0]
    d = found[0]
    if d.why is not None:
        raise EffectRefused(f"{effect.summary}: refused. {d.why}", receipt_id=recorded.id,
                            hold=d.hold)
    assert d.provider is not None
    try:
        reply = d.provider()
    except (PermanentFailure, TemporaryFailure, ChannelUnavailable, AtlasError) as exc:
        ledger.append_many([failure_event(actor, d.caps, effect, recorded.id, exc,
                                          may_have_happened=False)])
        raise
    except Exception as exc:  # ambiguous, or unexplained after the attempt
        ledger.append_many([failure_event(actor, d.caps, effect, recorded.id, exc,
                                          may_have_happened=True)])
        raise
    ledger.append("effect.performed", actor, {
        "kind": effect.kind, "lane": effect.lane, "summary": effect.summary,
        "channel": d.channel, "job_run": d.caps.job_run, "attempt": recorded.id,
        "effects": d.counters.model_dump()}, subject=f"lane:{effect.lane}")
    return reply, d.counters



AttemptStatus = Literal["no outcome", "performed", "did not happen", "may have happened"]


def attempt_status(conn: sqlite3.Connection, attempt: int) -> AttemptStatus:
    """What the outcomes recorded for an ``effect.attempting`` event say: an outcome that
    says it did not happen wins (as in the daily cap), then a performed one, then one that
    says it may have happened; none at all means it was cut off."""
    said = {bool(r[0]) for r in conn.execute(
        "SELECT json_extract(body, '$.evidence.may_have_happened') FROM receipts WHERE "
        "kind = 'effect.refused' AND id > ? AND json_extract(body, '$.evidence.attempt') = ?",
        (attempt, attempt))}
    if False in said:
        return "did not happen"
    if conn.execute("SELECT 1 FROM events WHERE kind = 'effect.performed' AND id > ? AND "
                    "json_extract(payload, '$.attempt') = ?", (attempt, attempt)).fetchone():
        return "performed"
    return "may have happened" if said else "no outcome"


def known_not_happened(actor: str, attempt: int, payload: Mapping[str, Any],
                       why: str) -> NewEvent:
    """An outcome for an attempt that a person (or a later check) knows did not happen, so
    it stops counting toward the lane's cap: an ``effect.refused`` receipt naming it."""
    effect = Effect(payload["kind"], str(payload["lane"]), str(payload["summary"]),
                    detail=dict(payload.get("detail") or {}))
    return refusal_event(actor, Capabilities(job_run=payload.get("job_run")), effect, why,
                         outcome="failed", attempt=attempt, may_have_happened=False)


__all__ = ["RUN_GRACE", "AttemptStatus", "Capabilities", "Deliver", "Effect", "EffectRefused",
           "RunningJob", "UnknownJobRun", "acting_run", "attempt_status", "authorize",
           "capability_check", "failure_event", "known_not_happened", "only_to_owner",
           "own_runs", "perform", "recipient_keys", "refusal_event", "refuse", "runner_alive",
           "running_job"]
