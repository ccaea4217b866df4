"""The outbox as an operator runs it: what it prints, its exit codes, stop signals, and
work that runs under a job run it does not belong to. Real SMTP on 127.0.0.1, real
processes, real job runs."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atlasops.auth import Principal, authenticate
from atlasops.gates import drafts, outbox
from atlasops.gates.effects import Capabilities
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import gate_workspace, owner_token
from tests.smtp_servers import DroppingServer, Recorder
from tests.test_gates import new_draft, open_lane

ATLAS = [sys.executable, "-m", "atlasops"]
ATLAS_CMD = f"{sys.executable} -m atlasops"


def approved(ws: Workspace, owner: Principal, n: int) -> list[int]:
    """``n`` approved drafts on the open prospect lane."""
    with Ledger.for_workspace(ws) as led:
        open_lane(led, ws, owner)
        ids = [new_draft(led, ws, to=f"p{i}@firm{i}.example")["id"] for i in range(n)]
        drafts.approve(led, ws.config, owner, ids)
    return ids


def subprocess_env(ws: Workspace, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ATLAS_HOME": str(ws.home), **extra}
    env.pop("ATLAS_TOKEN", None)
    return env


def receipts(ws: Workspace, kind: str) -> list[dict[str, Any]]:
    with Ledger.for_workspace(ws) as led:
        return [{"id": int(r["id"]), **json.loads(r["body"])} for r in led.query(
            "SELECT id, body FROM receipts WHERE kind=? ORDER BY id", (kind,))]


def count_events(ws: Workspace, kind: str) -> int:
    with Ledger.for_workspace(ws) as led:
        return int(led.query("SELECT count(*) AS n FROM events WHERE kind=?", (kind,))[0]["n"])


# -- work under a job run it does not belong to ----------------------------------------

@pytest.mark.parametrize("run", ["forged", "finished", "narrower"])
def test_an_outbox_under_a_run_that_may_not_send_sends_nothing(
        run: str, cli: Any, gws: Workspace, owner: Principal, smtp: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Capabilities are verified against the ledger at the claim: a made-up run id, a run
    that has finished, or a running job whose recorded lanes do not include the draft's
    (whatever the process declares) is refused: no intent, one refusal receipt for the
    lane, the other draft held by that refusal; the CLI says so and exits 8."""
    ids = approved(gws, owner, 2)
    if run == "narrower":
        with open(gws.config_path, "a", encoding="utf-8") as fh:
            fh.write(f'\n[jobs.sender]\ncommand = "env ATLAS_CAPABILITIES= {ATLAS_CMD} outbox '
                     'run --once"\nlanes = ["outbound.review"]\n')
        job = cli("jobs", "run", "sender", "--json").json()
        assert job["outcome"] == "failed" and "refused" in job["evidence"]["output_tail"]
        declared = job["evidence"]["run_id"]
    else:
        declared = "forged-run-123"
        if run == "finished":
            declared = cli("jobs", "run", "db-check", "--json").json()["evidence"]["run_id"]
        monkeypatch.setenv("ATLAS_JOB_RUN", declared)
        r = cli("outbox", "run", "--once")
        assert r.exit_code == 8, r.stdout + r.stderr
        assert "1 refused:" in r.stdout and "1 approved draft(s) held:" in r.stdout
        assert ("not a job run" if run == "forged" else "has finished") in r.stdout
    assert smtp.messages == []
    assert count_events(gws, "draft.sending") == 0
    (refusal,) = receipts(gws, "effect.refused")
    (run_receipt,) = receipts(gws, "outbox.run")
    assert run_receipt["outcome"] == "refused"
    assert run_receipt["evidence"]["refused"] == [ids[0]]
    (held,) = run_receipt["evidence"]["held"].items()
    assert held[1] == [ids[1]] and f"receipt #{refusal['id']}" in held[0]
    if run == "narrower":  # a running job: the verified run is recorded
        assert run_receipt["evidence"]["job_run"] == declared
        assert "do not include outbound.prospect" in refusal["evidence"]["why"]
    else:  # not believed: recorded as declared only
        assert run_receipt["evidence"]["job_run"] is None
        assert run_receipt["evidence"]["declared_job_run"] == declared
    with Ledger.for_workspace(gws) as led:
        assert {drafts.get_draft(led, i)["state"] for i in ids} == {"approved"}


def test_a_worker_lacking_the_lane_refuses_once_per_lane_per_pass(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    ids = approved(gws, owner, 4)
    passes: list[int] = []

    def two_passes() -> bool:
        passes.append(1)
        return len(passes) >= 2

    with Ledger.for_workspace(gws) as led:
        reports = outbox.run(gws, led, actor="agent:worker", env={}, once=False, interval=0,
                             caps=Capabilities(lanes=frozenset({"outbound.review"})),
                             should_stop=two_passes)
    assert len(reports) == 2
    refusals = receipts(gws, "effect.refused")
    assert len(refusals) == 2  # one per pass, not one per draft
    for report, refusal in zip(reports, refusals, strict=True):
        assert report.refused == [ids[0]] and report.outcome == "refused"
        (why, held), = report.held.items()
        assert held == ids[1:] and f"refused once this pass: receipt #{refusal['id']}" in why
    summaries = [r["summary"] for r in receipts(gws, "outbox.run")]
    assert all("3 approved draft(s) held" in s for s in summaries)
    assert smtp.messages == []


# -- what the CLI prints, and its exit codes -------------------------------------------

def test_a_pass_where_every_send_fails_exits_1_and_says_why(
        cli: Any, gws: Workspace, owner: Principal, smtp: Any) -> None:
    ids = approved(gws, owner, 2)
    smtp.set_reply("550 5.1.1 no such user")
    r = cli("outbox", "run", "--once")
    assert r.exit_code == 1
    assert "2 failed: DATA refused: 550 5.1.1 no such user" in r.stdout
    assert f"draft(s) {ids[0]}, {ids[1]}" in r.stdout
    r = cli("outbox", "run", "--once", "--json")  # nothing left to try: ok
    assert r.exit_code == 0 and r.json()[0]["outcome"] == "ok"


def test_voided_approvals_are_printed_with_the_reason(
        cli: Any, gws: Workspace, owner: Principal, smtp: Any) -> None:
    (draft,) = approved(gws, owner, 1)
    text = gws.config_path.read_text().replace("daily_cap = 1000", "daily_cap = 999")
    gws.config_path.write_text(text)
    r = cli("outbox", "run", "--once")
    assert r.exit_code == 0
    assert (f"1 approval(s) voided: approval_matches_content: the content or the lane "
            f"policy changed since approval (draft(s) {draft})") in r.stdout
    assert smtp.messages == []


def test_a_busy_outbox_lock_is_named(cli: Any, gws: Workspace, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(gws.data_dir / "outbox.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        r = cli("outbox", "run", "--once")
        assert r.exit_code == 7
        assert "another outbox is running" in r.stderr and "outbox.lock" in r.stderr
    finally:
        holder.kill()
        holder.communicate()


# -- stop signals ----------------------------------------------------------------------

@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_while_connecting_is_a_known_not_sent(
        ws: Workspace, sig: signal.Signals, code: int) -> None:
    """The server accepts the connection and never greets. The signal ends the pass at
    once: the draft was not sent (it stays approved, its retry budget untouched), the
    pass prints and writes its receipt, the exit code names the signal, and the next
    pass sends it exactly once."""
    silent = DroppingServer(greet=False).start()
    gws = gate_workspace(ws, silent.port)
    gws.config_path.write_text(gws.config_path.read_text().replace("timeout = 5",
                                                                   "timeout = 120"))
    gws = Workspace.open(gws.home)
    with Ledger.for_workspace(gws) as led:
        owner = authenticate(led, gws.config, owner_token(led))
    (draft,) = approved(gws, owner, 1)
    try:
        proc = subprocess.Popen([*ATLAS, "outbox", "run", "--once"], env=subprocess_env(gws),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert silent.accepted.wait(60), "the outbox never connected"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)  # long before the 120 s SMTP timeout
    finally:
        silent.stop()
    assert proc.returncode == code, stderr
    assert f"Stopped by {sig.name}" in stderr and "Receipt #" in stdout
    assert f"1 not sent (stopped before handing over; next pass): stopped by {sig.name}" \
        in stdout
    with Ledger.for_workspace(gws) as led:
        d = drafts.get_draft(led, draft)
        assert d["state"] == "approved" and d["attempts"] == 0
        assert f"stopped by {sig.name} before the message was handed over" in d["reason"]
    (run,) = receipts(gws, "outbox.run")
    assert run["outcome"] == "failed" and run["evidence"]["interrupted"] == sig.name
    assert run["evidence"]["stopped"] == [draft]
    (outcome,) = receipts(gws, "effect.refused")  # the attempt's outcome: did not happen
    assert outcome["evidence"]["may_have_happened"] is False
    server = Recorder(port=silent.port).start()  # the server is back
    try:
        with Ledger.for_workspace(gws) as led:
            report = outbox.run_once(gws, led, actor="agent:o", caps=Capabilities(), env={})
        assert report.sent == [draft] and report.ambiguous == []
        assert len(server.messages) == 1
    finally:
        server.stop()


def test_a_worker_prints_each_pass_and_stops_on_sigterm_between_passes(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    (draft,) = approved(gws, owner, 1)
    proc = subprocess.Popen([*ATLAS, "outbox", "run", "--interval", "300"],
                            env=subprocess_env(gws), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "the first pass was not printed while running"
        first = proc.stdout.readline()
        assert first.startswith("1 sent, 0 failed")
        assert proc.poll() is None  # still running: it printed the pass as it ended
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # long before the 300 s interval ends
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 143
    with Ledger.for_workspace(gws) as led:
        sent = drafts.get_draft(led, draft)
    assert [m.message_id for m in smtp.messages] == [sent["message_id"]]
    assert "1 sent" in first and f"Receipt #{receipts(gws, 'outbox.run')[0]['id']}" in first


# -- an outbox cut off mid-way, and what a human settles -------------------------------

class Killed(BaseException):
    """What SIGKILL does to the process at that point: nothing after it runs (no handler,
    no outcome, no receipt). A BaseException, so no `except Exception` records anything."""


def kill_at(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    def killed(*_args: Any, **_kw: Any) -> Any:
        raise Killed(name)
    monkeypatch.setattr(target, name, killed)


def run(ws: Workspace, led: Ledger) -> outbox.OutboxReport:
    return outbox.run_once(ws, led, actor="agent:outbox", caps=Capabilities(), env={})


def test_a_claim_cut_off_before_its_attempt_is_requeued_and_one_after_it_is_ambiguous(
        gws: Workspace, owner: Principal, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from atlasops.gates.channels import SmtpSender

    first, second = approved(gws, owner, 2)
    with Ledger.for_workspace(gws) as led:
        with monkeypatch.context() as m:  # killed after the claim, before perform's attempt
            kill_at(m, outbox, "perform")
            with pytest.raises(Killed):
                run(gws, led)
        assert drafts.get_draft(led, first)["state"] == "sending"
        assert count_events(gws, "effect.attempting") == 0  # nothing can have been sent
        report = run(gws, led)  # the next outbox: requeued and sent, once
        assert report.requeued == [first] and report.found_ambiguous == []
        assert sorted(report.sent) == [first, second]
        assert drafts.get_draft(led, first)["attempts"] == 1  # the cut-off claim: not one
    assert sorted(m.to for m in smtp.messages) == ["p0@firm0.example", "p1@firm1.example"]
    with Ledger.for_workspace(gws) as led:
        third = new_draft(led, gws, to="p2@firm2.example")["id"]
        drafts.approve(led, gws.config, owner, [third])
        with monkeypatch.context() as m:  # killed while talking to the server
            kill_at(m, SmtpSender, "send")
            with pytest.raises(Killed):
                run(gws, led)
        ((_attempt, _payload, status),) = outbox.claim_attempts(led.conn, third)
        assert status == "no outcome"
        report = run(gws, led)  # an attempt without an outcome may have gone out
        assert report.found_ambiguous == [third] and report.requeued == []
        assert drafts.get_draft(led, third)["state"] == "ambiguous"
    assert len(smtp.messages) == 2  # never re-sent by itself


def test_resolving_as_not_sent_takes_the_attempt_off_the_days_cap(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ambiguous sends, one whose server dropped the connection after DATA (its outcome
    says it may have happened) and one cut off with no outcome at all: both count toward
    the cap until the owner resolves them as not sent; then neither does."""
    from datetime import UTC, datetime

    from atlasops.gates import lanes
    from atlasops.gates.channels import SmtpSender

    server = DroppingServer().start()
    try:
        gws = gate_workspace(ws, server.port, cap=2)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            open_lane(led, gws, owner)
            dropped, cut = (new_draft(led, gws, to=f"{n}@firm.example")["id"]
                            for n in ("dropped", "cut"))
            drafts.approve(led, gws.config, owner, [dropped])
            assert run(gws, led).ambiguous == [dropped]
            drafts.approve(led, gws.config, owner, [cut])
            with monkeypatch.context() as m:
                kill_at(m, SmtpSender, "send")
                with pytest.raises(Killed):
                    run(gws, led)
            assert run(gws, led).found_ambiguous == [cut]

            def today() -> int:
                return lanes.sent_today(led, "outbound.prospect", datetime.now(UTC))

            assert today() == 2  # both may have gone out: the cap is full
            with pytest.raises(Exception, match="daily_cap_respected: 2 of 2"):
                drafts.approve(led, gws.config, owner, [new_draft(led, gws)["id"]])
            outbox.resolve(led, owner, dropped, sent=False, note="not in the sent folder")
            assert today() == 1
            outbox.resolve(led, owner, cut, sent=False)
            assert today() == 0
            statuses = [s for d in (dropped, cut) for _a, _p, s in
                        outbox.claim_attempts(led.conn, d)]
            assert statuses == ["did not happen", "did not happen"]
            from atlasops.gates.status import gate_status

            (prospect,) = [ln for ln in gate_status(led, gws.config)["lanes"]
                           if ln["name"] == "outbound.prospect"]
            assert prospect["sent_today"] == 0
            # both are send-ready again and can be approved within the cap
            drafts.approve(led, gws.config, owner, [dropped, cut])
    finally:
        server.stop()


def test_a_lane_closed_between_the_claim_and_the_send_holds_the_draft(
        gws: Workspace, owner: Principal, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the owner closes the lane after the outbox claimed a draft, just
    before perform decides. perform refuses it (no attempt); the draft is held, not
    refused: it stays approved, its retry budget untouched, and the pass is `held`."""
    from atlasops.gates import lanes

    (d,) = approved(gws, owner, 1)
    real_perform = outbox.perform

    def close_then_perform(ledger: Ledger, *args: Any, **kw: Any) -> Any:
        lanes.set_lane(ledger, gws.config, owner, "outbound.prospect", open_=False,
                       reason="reply drought")
        return real_perform(ledger, *args, **kw)

    with Ledger.for_workspace(gws) as led:
        with monkeypatch.context() as m:
            m.setattr(outbox, "perform", close_then_perform)
            report = run(gws, led)
        assert report.held == {"lane outbound.prospect is closed": [d]}
        assert report.refused == [] and report.outcome == "held"
        row = drafts.get_draft(led, d)
        assert row["state"] == "approved" and row["attempts"] == 0
        assert count_events(gws, "effect.attempting") == 0 and smtp.messages == []
        lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=True, reason="ok")
        assert run(gws, led).sent == [d]
    assert len(smtp.messages) == 1


def test_an_attempt_recorded_before_attempts_named_their_draft_is_known_by_its_summary(
        gws: Workspace, owner: Principal, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger written by an older Atlas: its attempts carry no detail. The draft's own is
    recognised by its summary (so a kill after it still means ambiguous); another draft's
    is not taken for it."""
    first, _second = approved(gws, owner, 2)
    with Ledger.for_workspace(gws) as led:
        with monkeypatch.context() as m:
            kill_at(m, outbox, "perform")
            with pytest.raises(Killed):
                run(gws, led)
        for draft_id in (first * 10 + 1, first):  # draft 71's summary starts like draft 7's
            led.append("effect.attempting", "agent:old", {
                "kind": "email", "lane": "outbound.prospect", "channel": "zoho",
                "job_run": None, "summary": f"send draft {draft_id} to p0@firm0.example"},
                subject="lane:outbound.prospect")
        ((_attempt, payload, status),) = outbox.claim_attempts(led.conn, first)
        assert payload["summary"].startswith(f"send draft {first} to") and status == "no outcome"
        assert run(gws, led).found_ambiguous == [first]
