"""The effects module: the lane's cap for every kind of effect, the attempt recorded
before any provider is called, and decisions made under the writer lock. Real SMTP on
127.0.0.1, a real Maildir, a real directory channel, real processes."""

from __future__ import annotations

import json
import mailbox
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from atlasops.auth import Principal, authenticate
from atlasops.gates import drafts, lanes, outbox, packets
from atlasops.gates.channels import MaildirSender
from atlasops.gates.effects import Capabilities, Effect, perform
from atlasops.leads import import_csv
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import gate_workspace, owner_token, write_csv
from tests.smtp_servers import DroppingServer
from tests.test_gates import open_lane

ATLAS = [sys.executable, "-m", "atlasops"]
FOOTER = "\n\nReply STOP to opt out."
AGENT = Principal("agent", "outreach")

BLOG = """
[channels.blog]
type = "directory"
path = "published"

[lanes."social.post"]
channel = "blog"
daily_cap = 1
cooldown_hours = 0
"""


def events(led: Ledger, kind: str) -> list[dict[str, Any]]:
    return [{"id": int(r["id"]), **json.loads(r["payload"])} for r in
            led.query("SELECT id, payload FROM events WHERE kind=? ORDER BY id", (kind,))]


def refusals(led: Ledger) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in
            led.query("SELECT body FROM receipts WHERE kind='effect.refused' ORDER BY id")]


def test_the_daily_cap_applies_to_posts_and_gate_status_counts_them(
        cli: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(BLOG)
    with Ledger.for_workspace(ws) as led:
        monkeypatch.setenv("ATLAS_TOKEN", owner_token(led))
    assert cli("lane", "open", "social.post", "--reason", "one post a day").exit_code == 0
    codes, errors = [], []
    for i in range(3):
        text = tmp_path / f"post{i}.md"
        text.write_text(f"# Post {i}\n")
        item = cli("content", "add", "--business", "wimper", "--title", f"Post {i}",
                   "--file", str(text), "--json").json()["id"]
        r = cli("content", "publish", str(item))
        codes.append(r.exit_code)
        errors.append(r.stderr)
    written = list((ws.home / "published").iterdir())
    assert len(written) == 1  # ground truth: the directory channel holds one post
    assert codes == [0, 8, 8]
    assert "daily_cap_respected: 1 of 1 sent today" in errors[1]
    status = {ln["name"]: ln for ln in cli("gate", "status", "--json").json()["lanes"]}
    assert status["social.post"]["sent_today"] == len(written)


def test_every_performed_effect_names_the_attempt_recorded_before_it(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = drafts.create(led, gws.config, AGENT, to="p@firm.example", subject="S",
                          body="B" + FOOTER)
        drafts.approve(led, gws.config, owner, [d["id"]])
        assert outbox.run_once(gws, led, actor="agent:o", caps=Capabilities(),
                               env={}).sent == [d["id"]]
        (attempt,) = events(led, "effect.attempting")
        (performed,) = events(led, "effect.performed")
        sending = events(led, "draft.sending")[0]
        assert sending["id"] < attempt["id"] < performed["id"]  # intent, attempt, outcome
        assert {k: attempt[k] for k in ("kind", "lane", "channel", "job_run")} == {
            "kind": "email", "lane": "outbound.prospect", "channel": "zoho", "job_run": None}
        assert attempt["summary"] == performed["summary"]
        assert performed["attempt"] == attempt["id"]
    assert len(smtp.messages) == 1


def test_a_provider_failure_after_the_attempt_is_its_outcome(ws: Workspace) -> None:
    """A refusal by the server is known not to have happened; a connection lost during
    DATA may have (the server did store it): each outcome names its attempt."""
    server = DroppingServer().start()
    try:
        gws = gate_workspace(ws, server.port)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            open_lane(led, gws, owner)
            d = drafts.create(led, gws.config, AGENT, to="p@firm.example", subject="S",
                              body="B" + FOOTER)
            drafts.approve(led, gws.config, owner, [d["id"]])
            assert outbox.run_once(gws, led, actor="agent:o", caps=Capabilities(),
                                   env={}).ambiguous == [d["id"]]
            (attempt,) = events(led, "effect.attempting")
            (outcome,) = refusals(led)
            assert outcome["outcome"] == "failed"
            assert outcome["evidence"]["attempt"] == attempt["id"]
            assert outcome["evidence"]["may_have_happened"] is True
            assert len(server.messages) == 1  # it did happen
            assert events(led, "effect.performed") == []
    finally:
        server.stop()


def test_a_refused_send_is_known_not_to_have_happened(gws: Workspace, owner: Principal,
                                                      smtp: Any) -> None:
    smtp.set_reply("550 5.1.1 no such user")
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = drafts.create(led, gws.config, AGENT, to="p@firm.example", subject="S",
                          body="B" + FOOTER)
        drafts.approve(led, gws.config, owner, [d["id"]])
        assert outbox.run_once(gws, led, actor="agent:o", caps=Capabilities(),
                               env={}).failed == [d["id"]]
        (attempt,) = events(led, "effect.attempting")
        (outcome,) = refusals(led)
        assert outcome["evidence"]["attempt"] == attempt["id"]
        assert outcome["evidence"]["may_have_happened"] is False
        assert outcome["evidence"]["failure"] == "PermanentFailure"
        # it did not happen: it does not use up the day's cap
        assert lanes.sent_today(led, "outbound.prospect", datetime.now(UTC)) == 0
    assert smtp.messages == []


def test_a_send_killed_mid_way_leaves_its_attempt_without_an_outcome(ws: Workspace) -> None:
    """The outbox process is SIGKILLed while the server holds the message and has not
    answered: the ledger still shows the attempt (and no outcome), so a job's accounting
    can say it may have happened."""
    server = DroppingServer(after_data="hang").start()
    try:
        gws = gate_workspace(ws, server.port)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            open_lane(led, gws, owner)
            d = drafts.create(led, gws.config, AGENT, to="p@firm.example", subject="S",
                              body="B" + FOOTER)
            drafts.approve(led, gws.config, owner, [d["id"]])
        env = {**os.environ, "ATLAS_HOME": str(gws.home)}
        env.pop("ATLAS_TOKEN", None)
        proc = subprocess.Popen([*ATLAS, "outbox", "run", "--once"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert server.accepted.wait(30)
            while not server.messages and proc.poll() is None:
                server.stopped.wait(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(server.messages) == 1  # the server has it
        with Ledger.for_workspace(gws) as led:
            (attempt,) = events(led, "effect.attempting")
            assert attempt["lane"] == "outbound.prospect" and attempt["channel"] == "zoho"
            assert events(led, "effect.performed") == [] and refusals(led) == []
            # it may have happened: it counts toward the cap until someone knows better
            assert led.query(lanes.ATTEMPTS_TODAY, ("1970-01-01T00:00:00.000000Z",
                                                    "outbound.prospect"))[0]["n"] == 1
    finally:
        server.stop()


def test_two_review_sends_at_once_cannot_pass_the_cap(ws: Workspace, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: while one review send is in flight (its attempt recorded, the
    mail not yet delivered), another process sends the same packet. The cap is decided
    under the writer lock, counting attempts, so the second is refused."""
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write('\n[lanes."outbound.review"]\ndaily_cap = 1\ncooldown_hours = 0\n')
    gws = Workspace.open(ws.home)
    rows = [[f"c{i}@cpa{i}.example", f"CPA {i}", "", "cpa", "wimper"] for i in range(2)]
    real_send = MaildirSender.send
    second: list[subprocess.CompletedProcess[str]] = []

    def racing_send(self: MaildirSender, message: EmailMessage) -> str:
        if not second:
            env = {**os.environ, "ATLAS_HOME": str(gws.home)}
            env.pop("ATLAS_TOKEN", None)
            second.append(subprocess.run([*ATLAS, "packet", "send-review", "p"], env=env,
                                         capture_output=True, text=True, timeout=120))
        return real_send(self, message)

    monkeypatch.setattr(MaildirSender, "send", racing_send)
    with Ledger.for_workspace(gws) as led:
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv", rows), actor="t")
        packets.create_packet(led, gws.config, AGENT, "p", segments=["cpa"])
        packets.send_review(gws, led, AGENT, "p", caps=Capabilities(), env={})
    (other,) = second
    assert other.returncode == 8, other.stderr
    assert "daily_cap_respected: 1 of 1" in other.stderr
    assert len(list(mailbox.Maildir(gws.home / "data/maildir/owner", create=False))) == 1


def test_a_suppression_just_before_perform_takes_the_lock_stops_the_send(
        gws: Workspace, owner: Principal, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """perform decides under the writer lock too: an unsubscribe recorded by another
    process after the caller decided, just before perform records its attempt, stops it."""
    from atlasops.ledger.lock import WriterLock

    real_acquire = WriterLock.acquire
    injected: list[int] = []

    def acquire(self: WriterLock) -> None:
        if self.path.endswith("writer.lock") and not injected:
            injected.append(1)
            env = {**os.environ, "ATLAS_HOME": str(gws.home)}
            env.pop("ATLAS_TOKEN", None)
            subprocess.run([*ATLAS, "suppress", "p@firm.example"], env=env, check=True,
                           capture_output=True, timeout=120)
        real_acquire(self)

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ("m@sender.test-biz.example",
                                                          "p@firm.example", "s")
    message.set_content("b")
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        monkeypatch.setattr(WriterLock, "acquire", acquire)
        with pytest.raises(Exception, match="suppression list"):
            perform(led, gws.config, gws.home, actor="agent:x", caps=Capabilities(),
                    effect=Effect("email", "outbound.prospect", "pitch", message=message),
                    env={})
        assert injected and events(led, "effect.attempting") == []
    assert smtp.messages == []


def test_bcc_recipients_get_the_mail_but_never_the_header(gws: Workspace, owner: Principal,
                                                          smtp: Any) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ("m@sender.test-biz.example",
                                                          "p@firm.example", "s")
    message["Bcc"] = "hidden@else.example"
    message.set_content("b")
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        perform(led, gws.config, gws.home, actor="agent:x", caps=Capabilities(),
                effect=Effect("email", "outbound.prospect", "pitch", message=message), env={})
    (got,) = smtp.messages
    assert sorted(got.rcpts) == ["hidden@else.example", "p@firm.example"]
    assert b"hidden@else.example" not in got.raw and b"Bcc" not in got.raw
    assert message["Bcc"] == "hidden@else.example"  # the caller's message is untouched
