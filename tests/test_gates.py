"""Gates over a real SMTP server on 127.0.0.1 and a real Maildir."""

from __future__ import annotations

import mailbox
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from atlasops.auth import Principal, authenticate, create_token
from atlasops.errors import Conflict, InputError, PermissionDenied
from atlasops.gates import drafts, lanes, outbox, packets
from atlasops.gates.effects import Capabilities, Effect, EffectRefused, perform
from atlasops.gates.suppression import suppress
from atlasops.leads import import_csv
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import gate_workspace, owner_token, write_csv
from tests.smtp_servers import DroppingServer

FOOTER = "\n\nReply STOP to opt out."
AGENT = Principal("agent", "outreach")
CAPS = Capabilities()
# What mail software would make of it: Subject "Partner intro", then a Reply-To header,
# then a blank line, then a body of the attacker's choosing.
INJECTED_SUBJECT = ("=?utf-8?q?Partner_intro=0D=0AReply-To:_attacker@evil.example=0D=0A=0D=0A"
                    "Wire_the_money_to_X.?=")
WIRE_HEADERS = ["Content-Transfer-Encoding", "Content-Type", "Date", "From",
                "List-Unsubscribe", "MIME-Version", "Message-ID", "Subject", "To"]


def open_lane(led: Ledger, ws: Workspace, owner: Principal) -> None:
    lanes.record_posture(led, ws.config, owner, "outbound.prospect",
                         {"spf": "pass", "dkim": "pass", "dmarc": "pass"})
    lanes.set_lane(led, ws.config, owner, "outbound.prospect", open_=True, reason="test window")


def new_draft(led: Ledger, ws: Workspace, to: str = "cpa@firm.example",
              body: str = "Hello from WIMPER." + FOOTER, **kw: Any) -> dict[str, Any]:
    return drafts.create(led, ws.config, AGENT, to=to, subject="Partner intro", body=body, **kw)


def run(ws: Workspace, led: Ledger, **kw: Any) -> outbox.OutboxReport:
    return outbox.run_once(ws, led, actor="agent:outbox", caps=kw.pop("caps", CAPS),
                           env=kw.pop("env", {}), **kw)


def ledger_sent(led: Ledger) -> list[dict[str, Any]]:
    return [dict(r) for r in led.query("SELECT * FROM drafts WHERE state='sent' ORDER BY id")]


def test_lanes_are_closed_by_default_and_send_ready_is_not_approval_ready(
        gws: Workspace, owner: Principal) -> None:
    with Ledger.for_workspace(gws) as led:
        views = {v.name: v for v in lanes.all_lanes(led, gws.config)}
        assert views["outbound.prospect"].open is False
        assert views["social.post"].open is False and views["spend"].open is False
        d = new_draft(led, gws)
        assert d["state"] == "send_ready"
        assert drafts.display_state(led, gws.config, d) == "send_ready"
        ex = drafts.explain(led, gws.config, d["id"])
        failing = {c["name"] for c in ex["approval_ready"] if not c["passed"]}
        assert failing == {"lane_open", "deliverability_posture_recent"}
        with pytest.raises(Conflict) as info:
            drafts.approve(led, gws.config, owner, [d["id"]])
        assert "lane_open" in info.value.message
        assert "deliverability_posture_recent" in info.value.message


def test_only_the_owner_approves_and_opens_lanes(gws: Workspace, owner: Principal) -> None:
    with Ledger.for_workspace(gws) as led:
        with pytest.raises(PermissionDenied):
            lanes.set_lane(led, gws.config, AGENT, "outbound.prospect", open_=True, reason="x")
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        with pytest.raises(PermissionDenied):
            drafts.approve(led, gws.config, AGENT, [d["id"]])
        with pytest.raises(PermissionDenied):
            drafts.approve(led, gws.config, Principal("local", "root"), [d["id"]])
        agent_token, _ = create_token(led, owner, role="agent", name="outreach")
        as_agent = authenticate(led, gws.config, agent_token)
        assert as_agent.role == "agent"
        with pytest.raises(PermissionDenied):
            drafts.approve(led, gws.config, as_agent, [d["id"]])
        with pytest.raises(PermissionDenied, match="not a valid token"):
            authenticate(led, gws.config, agent_token + "x")
        assert drafts.get_draft(led, d["id"])["state"] == "send_ready"
        receipts = led.query("SELECT body FROM receipts WHERE kind='lane.change'")
        assert len(receipts) == 1 and "test window" in receipts[0]["body"]


def test_approved_send_matches_what_the_server_received(gws: Workspace, owner: Principal,
                                                        smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        ids = [new_draft(led, gws, to=f"p{i}@firm{i}.example")["id"] for i in range(4)]
        drafts.approve(led, gws.config, owner, ids)
        report = run(gws, led)
        assert sorted(report.sent) == ids
        sent = ledger_sent(led)
        assert len(smtp.messages) == len(sent) == 4
        assert {m.message_id for m in smtp.messages} == {d["message_id"] for d in sent}
        assert ({m.content_sha256() for m in smtp.messages}
                == {d["content_sha256"] for d in sent})
        # the Message-ID is derived from the approval: deterministic
        d0 = drafts.get_draft(led, ids[0])
        assert d0["message_id"] == outbox.message_id(d0, "matt@sender.test-biz.example")
        run_receipt = led.query("SELECT body FROM receipts WHERE id=?", (report.receipt_id,))
        assert '"emails_sent":4' in run_receipt[0]["body"]
        # nothing is sent twice
        run(gws, led)
        assert len(smtp.messages) == 4


def test_edit_after_approval_voids_it(gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        edited, voided = drafts.edit(led, gws.config, AGENT, d["id"],
                                     body="A different pitch." + FOOTER)
        assert voided and edited["state"] == "send_ready" and edited["approval_hash"] is None
        assert led.query("SELECT count(*) AS n FROM receipts WHERE kind='approval.voided'"
                         )[0]["n"] == 1
        run(gws, led)
        assert smtp.messages == []


def test_policy_change_after_approval_voids_it_at_send_time(ws: Workspace, smtp: Any) -> None:
    gws = gate_workspace(ws, smtp.port)
    with Ledger.for_workspace(gws) as led:
        token = owner_token(led)
        owner = authenticate(led, gws.config, token)
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
    text = gws.config_path.read_text().replace("daily_cap = 1000", "daily_cap = 999")
    gws.config_path.write_text(text)
    changed = Workspace.open(gws.home)
    with Ledger.for_workspace(changed) as led:
        report = run(changed, led)
        assert report.voided == [d["id"]] and smtp.messages == []


def test_expired_approval_is_not_sent(gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]], expires=timedelta(minutes=1))
        report = run(gws, led, now=datetime.now(UTC) + timedelta(minutes=2))
        assert report.voided == [d["id"]]
        assert drafts.get_draft(led, d["id"])["state"] == "send_ready"
        assert smtp.messages == []


def test_suppressed_after_approval_is_not_sent(gws: Workspace, owner: Principal,
                                                smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        suppress(led, AGENT, ["CPA@firm.example"], "unsubscribe")
        report = run(gws, led)
        assert smtp.messages == []
        # nothing was attempted: not a failed send, and the pass has not failed
        assert report.suppressed == [d["id"]] and report.failed == []
        assert report.outcome == "ok" and report.failures() == 0
        assert "recipient suppressed" in report.reason_lines()[0]
        after = drafts.get_draft(led, d["id"])
        assert after["state"] == "send_ready" and after["approval_hash"] is None
        assert drafts.display_state(led, gws.config, after) == "send_ready"
        with pytest.raises(Conflict, match="not_suppressed"):
            drafts.approve(led, gws.config, owner, [d["id"]])
        assert led.query("SELECT count(*) AS n FROM events WHERE kind IN "
                         "('draft.sending', 'effect.attempting')")[0]["n"] == 0
        with pytest.raises(InputError, match="suppression list"):
            new_draft(led, gws)


def test_closed_lane_holds_approved_drafts(gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        ids = [new_draft(led, gws, to=f"h{i}@firm.example")["id"] for i in range(3)]
        drafts.approve(led, gws.config, owner, ids)
        lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=False,
                       reason="reply drought")
        report = run(gws, led)
        assert report.held == {"lane outbound.prospect is closed": ids}
        assert report.hold_lines() == [
            "3 approved draft(s) held: lane outbound.prospect is closed"]
        assert smtp.messages == []
        body = led.query("SELECT body, outcome FROM receipts WHERE id=?",
                         (report.receipt_id,))[0]
        assert body["outcome"] == "held" and '"emails_sent":0' in body["body"]
        from atlasops.gates.status import gate_status

        status = {ln["name"]: ln for ln in gate_status(led, gws.config)["lanes"]}
        assert status["outbound.prospect"]["held"] == [
            "3 approved draft(s) held: lane outbound.prospect is closed"]
        assert status["outbound.prospect"]["drafts"] == {"approved": 3}


def test_cap_and_cooldown(ws: Workspace, smtp: Any) -> None:
    gws = gate_workspace(ws, smtp.port, cap=2, cooldown=24)
    with Ledger.for_workspace(gws) as led:
        owner = authenticate(led, gws.config, owner_token(led))
        open_lane(led, gws, owner)
        ids = [new_draft(led, gws, to=f"c{i}@firm.example")["id"] for i in range(3)]
        drafts.approve(led, gws.config, owner, ids)
        report = run(gws, led)
        assert len(report.sent) == 2
        assert list(report.held) == ["daily_cap_respected: 2 of 2 sent today"]
        again = new_draft(led, gws, to="c0@firm.example")
        ex = drafts.explain(led, gws.config, again["id"])
        cooldown = next(c for c in ex["approval_ready"] if c["name"] == "cooldown_respected")
        assert cooldown["passed"] is False and "cooldown runs until" in cooldown["why"]


def test_channel_that_is_not_the_lanes_is_refused(gws: Workspace, owner: Principal) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws, channel="owner-maildir")
        with pytest.raises(Conflict, match="channel_is_lanes_one_channel"):
            drafts.approve(led, gws.config, owner, [d["id"]])


def test_a_draft_without_its_own_channel_binds_the_lanes_channel_at_approval(
        ws: Workspace, smtp: Any) -> None:
    with Ledger.for_workspace(ws) as led:  # the default prospect lane: no channel yet
        owner = authenticate(led, ws.config, owner_token(led))
        early = new_draft(led, ws)
        assert early["channel"] is None
    gws = gate_workspace(ws, smtp.port)
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        late = new_draft(led, gws, to="late@firm.example")
        assert late["channel"] is None  # not frozen at creation either
        approved = drafts.approve(led, gws.config, owner, [early["id"], late["id"]])
        d = approved[0]
        assert d["approval_hash"] == drafts.approval_hash(gws.config, {**d, "channel": "zoho"})
        assert run(gws, led).sent == [early["id"], late["id"]]
        again = new_draft(led, gws, to="again@firm.example")
        drafts.approve(led, gws.config, owner, [again["id"]])
    # the lane moves to another channel: the approval bound the old one, so it is void
    text = gws.config_path.read_text().replace('channel = "zoho"', 'channel = "zoho2"')
    text += ("\n[channels.zoho2]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\n"
             f"port = {smtp.port}\ntls = \"none\"\nfrom_address = \"m@sender.test-biz.example\"\n")
    gws.config_path.write_text(text)
    moved = Workspace.open(gws.home)
    with Ledger.for_workspace(moved) as led:
        assert run(moved, led).voided == [again["id"]]
    assert [m.to for m in smtp.messages] == ["cpa@firm.example", "late@firm.example"]


@pytest.mark.parametrize(("kw", "message"), [
    ({"to": "not-an-address"}, "not a valid email"),
    ({"to": "a@b.example\r\nBcc: x@y.example"}, "header injection"),
    ({"subject": "Hi\nBcc: x@y.example"}, "header injection"),
    # RFC 2047 encoded-words: the email library decodes them when the header is set
    ({"subject": INJECTED_SUBJECT}, "header injection"),
    ({"subject": "Hi =?utf-8?b?DQpCY2M6IHhAeS5leGFtcGxl?="}, "header injection"),
    ({"subject": "=?utf-8?q?Caf=C3=A9?="}, "encoded-word"),
    ({"to": "=?utf-8?q?ceo?=@victim.example"}, "encoded-word"),
    ({"to": "=?utf-8?q?a=0D=0ABcc=3A_x=40y.example?=@firm.example"}, "header injection"),
    ({"body": "x" * 200_000}, "larger than"),
    ({"lane": "social.post"}, "does not send email"),
    ({"lane": "nope"}, "unknown lane"),
    ({"business": "nope"}, "unknown business"),
])
def test_bad_drafts_are_rejected(gws: Workspace, kw: dict[str, str], message: str) -> None:
    args = {"to": "ok@firm.example", "subject": "S", "body": "B" + FOOTER, **kw}
    with Ledger.for_workspace(gws) as led:
        with pytest.raises(InputError, match=message):
            drafts.create(led, gws.config, AGENT, **args)  # type: ignore[arg-type]
        if {"to", "subject"} & set(kw):  # an edit is held to the same rule
            d = new_draft(led, gws)
            header = {k: v for k, v in kw.items() if k in ("to", "subject")}
            with pytest.raises(InputError, match=message):
                drafts.edit(led, gws.config, AGENT, d["id"], **header)
            assert drafts.get_draft(led, d["id"])["subject"] == "Partner intro"
        assert led.query("SELECT count(*) AS n FROM drafts WHERE subject != 'Partner intro'"
                         )[0]["n"] == 0


def test_what_reaches_the_server_has_exactly_the_expected_headers(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    from email.parser import BytesHeaderParser
    from email.policy import default

    subject = "Partner intro: Café ☕ = ? _ (a) <b> \"q\" " + "long " * 30
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = drafts.create(led, gws.config, AGENT, to="cpa@firm.example", subject=subject,
                          body="Hello from WIMPER." + FOOTER)
        drafts.approve(led, gws.config, owner, [d["id"]])
        assert run(gws, led).sent == [d["id"]]
    (got,) = smtp.messages
    head = BytesHeaderParser(policy=default).parsebytes(got.raw)
    assert sorted(head.keys()) == WIRE_HEADERS
    assert head["To"] == "cpa@firm.example" and "\n" not in str(head["Subject"])
    assert " ".join(str(head["Subject"]).split()) == " ".join(subject.split())
    assert got.body == "Hello from WIMPER." + FOOTER


def test_a_draft_that_hides_headers_is_never_sent_even_if_it_got_into_the_ledger(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    """A draft written (and approved) by an older Atlas, before encoded-words were refused
    at the edge: the gate reports the injection, approval is refused, and an approval that
    exists anyway ends in `failed` at send time with nothing sent."""
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        legacy = led.append("draft.created", "agent:old", {
            "lane": "outbound.prospect", "channel": "zoho", "to": "inj@firm.example",
            "subject": INJECTED_SUBJECT, "body": "Approved body." + FOOTER,
            "business": None, "lead_id": None, "state": "send_ready", "problems": []},
            subject="email:inj@firm.example").id
        ex = drafts.explain(led, gws.config, legacy)
        check = next(c for c in ex["send_ready"] if c["name"] == "no_header_injection")
        assert check["passed"] is False and "encoded-word" in check["why"]
        with pytest.raises(Conflict, match="no_header_injection"):
            drafts.approve(led, gws.config, owner, [legacy])
        d = drafts.get_draft(led, legacy)
        led.append("draft.approved", "owner:old", {
            "id": legacy, "approval_hash": drafts.approval_hash(gws.config, d),
            "expires_at": lanes.fmt_ts(datetime.now(UTC) + timedelta(days=1))},
            subject=f"draft:{legacy}")
        report = run(gws, led)
        assert report.failed == [legacy] and "header injection" in report.reasons[legacy]
        assert drafts.get_draft(led, legacy)["state"] == "failed"
    assert smtp.messages == []


def test_building_a_message_checks_its_serialized_headers() -> None:
    draft = {"to_addr": "inj@firm.example", "subject": INJECTED_SUBJECT, "body": "B"}
    with pytest.raises(ValueError, match="header injection"):
        outbox.build_message(draft, "m@sender.example", "<a@sender.example>",
                             unsubscribe=True)
    plain = outbox.build_message({**draft, "subject": "Hi"}, "m@sender.example",
                                 "<a@sender.example>", unsubscribe=False)
    assert sorted(plain.keys()) == [h for h in WIRE_HEADERS if h != "List-Unsubscribe"]


def test_missing_footer_is_a_draft_not_send_ready(gws: Workspace) -> None:
    with Ledger.for_workspace(gws) as led:
        d = new_draft(led, gws, body="No footer here.")
        assert d["state"] == "draft"
        assert d["problems"][0]["name"] == "footer_present"
        fixed, _ = drafts.edit(led, gws.config, AGENT, d["id"], body="Now." + FOOTER)
        assert fixed["state"] == "send_ready"


def test_smtp_refusals(gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        temp = new_draft(led, gws, to="temp@firm.example")["id"]
        drafts.approve(led, gws.config, owner, [temp])
        smtp.set_reply("451 4.3.0 try again later")
        report = run(gws, led)
        assert report.retrying == [temp]
        d = drafts.get_draft(led, temp)
        assert d["state"] == "approved" and d["next_attempt_at"] and "451" in d["reason"]
        assert run(gws, led).sent == []  # backoff: not due yet
        smtp.set_reply("550 5.1.1 no such user")
        report = run(gws, led, now=datetime.now(UTC) + timedelta(hours=1))
        assert report.failed == [temp]
        assert "550" in drafts.get_draft(led, temp)["reason"]
        assert smtp.messages == []


def test_connection_dropped_during_data_is_ambiguous_and_never_resent(
        ws: Workspace) -> None:
    server = DroppingServer().start()
    try:
        gws = gate_workspace(ws, server.port)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            open_lane(led, gws, owner)
            d = new_draft(led, gws)
            drafts.approve(led, gws.config, owner, [d["id"]])
            report = run(gws, led)
            assert report.ambiguous == [d["id"]]
            assert len(server.messages) == 1  # the server did get it
            run(gws, led)
            run(gws, led)
            assert len(server.messages) == 1
            assert drafts.get_draft(led, d["id"])["state"] == "ambiguous"
            with pytest.raises(PermissionDenied):
                outbox.resolve(led, AGENT, d["id"], sent=True)
            outbox.resolve(led, owner, d["id"], sent=True, note="seen in the sent folder")
            assert drafts.get_draft(led, d["id"])["state"] == "sent"
    finally:
        server.stop()


def test_unreachable_server_is_a_temporary_failure(ws: Workspace) -> None:
    from tests.smtp_servers import free_port

    gws = gate_workspace(ws, free_port())
    with Ledger.for_workspace(gws) as led:
        owner = authenticate(led, gws.config, owner_token(led))
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        assert run(gws, led).retrying == [d["id"]]


def test_missing_smtp_credentials_hold_the_drafts(ws: Workspace, smtp: Any) -> None:
    gws = gate_workspace(ws, smtp.port)
    text = gws.config_path.read_text().replace(
        'tls = "none"', 'tls = "none"\nuser_env = "ZOHO_USER"\npassword_env = "ZOHO_PASS"')
    gws.config_path.write_text(text)
    gws = Workspace.open(gws.home)
    with Ledger.for_workspace(gws) as led:
        owner = authenticate(led, gws.config, owner_token(led))
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        report = run(gws, led, env={"ZOHO_USER": "matt"})
        (why, held), = report.held.items()
        assert held == [d["id"]] and "ZOHO_PASS" in why and "matt" not in why
        assert drafts.get_draft(led, d["id"])["state"] == "approved"
        assert smtp.messages == []


@pytest.mark.parametrize(("kind", "lane"), [("email", "outbound.prospect"),
                                            ("email", "outbound.review"),
                                            ("post", "social.post"),
                                            ("cta_change", "site.cta_change"),
                                            ("spend", "spend"),
                                            ("deploy", "social.post")])
def test_read_only_context_is_refused_every_effect(gws: Workspace, owner: Principal,
                                                    smtp: Any, kind: str, lane: str) -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["To"] = gws.config.owner.email
    msg["From"] = gws.config.owner.email
    msg.set_content("x")
    caps = Capabilities(read_only=True, job_run="run-7")
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        before = led.count("receipts")
        with pytest.raises(EffectRefused):
            perform(led, gws.config, gws.home, actor="agent:radar", caps=caps,
                    effect=Effect(kind, lane, f"try {kind}", message=msg,  # type: ignore[arg-type]
                                  amount_cents=500), env={})
        rows = led.query("SELECT body, outcome FROM receipts ORDER BY id DESC LIMIT 1")
        assert led.count("receipts") == before + 1
        assert rows[0]["outcome"] == "refused"
        assert '"emails_sent":0' in rows[0]["body"] and '"spend_cents":0' in rows[0]["body"]
        assert "read-only" in rows[0]["body"] and "run-7" in rows[0]["body"]
    assert smtp.messages == []


def test_capabilities_limit_lanes(gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        report = run(gws, led, caps=Capabilities(lanes=frozenset({"outbound.review"})))
        assert report.refused == [d["id"]] and smtp.messages == []
        assert drafts.get_draft(led, d["id"])["state"] == "approved"
        assert Capabilities.from_env({"ATLAS_CAPABILITIES": "read_only"}).read_only
        assert Capabilities.from_env({"ATLAS_CAPABILITIES": "social.post, spend"}).lanes == {
            "social.post", "spend"}


def test_packet_review_goes_to_the_owner_while_prospects_stay_closed(
        gws: Workspace, owner: Principal, smtp: Any, tmp_path: Any) -> None:
    rows = [[f"c{i}@cpa{i}.example", f"CPA {i}", f"Firm {i}", seg, "wimper"]
            for i, seg in enumerate(["cpa", "broker", "fractional_cfo", "other"] * 4)]
    with Ledger.for_workspace(gws) as led:
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv", rows), actor="t")
        lead_ids = [int(r["id"]) for r in led.query("SELECT id FROM leads ORDER BY id")]
        new_draft(led, gws, to="c0@cpa0.example", lead_id=lead_ids[0])
        p = packets.create_packet(led, gws.config, AGENT, "wimper-partners",
                                  segments=["cpa", "broker", "fractional_cfo"], limit=10)
        assert len(p["lead_ids"]) == 10 and len(p["draft_ids"]) == 1
        result = packets.send_review(gws, led, AGENT, "wimper-partners", caps=CAPS, env={})
        box = mailbox.Maildir(gws.home / "data/maildir/owner", create=False)
        msgs = list(box)
        assert len(msgs) == 1
        assert msgs[0]["To"] == gws.config.owner.email
        assert "10 contacts" in msgs[0]["Subject"]
        assert "c0@cpa0.example" in msgs[0].get_payload()
        receipt = led.query("SELECT body FROM receipts WHERE id=?", (result["receipt_id"],))
        assert '"emails_sent":0' in receipt[0]["body"]
        assert lanes.get_lane(led, gws.config, "outbound.prospect").open is False
        assert smtp.messages == []
        assert ledger_sent(led) == []


def test_review_lane_only_reaches_the_owner(gws: Workspace) -> None:
    with Ledger.for_workspace(gws) as led:
        d = drafts.create(led, gws.config, AGENT, to="stranger@else.example", subject="s",
                          body="b", lane="outbound.review")
        assert d["state"] == "draft"
        assert d["problems"][0]["name"] == "recipient_is_owner"


def test_touches_due(gws: Workspace, tmp_path: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv",
                                              [["t@x.example", "T", "", "cpa", ""]]), actor="t")
        packets.add_touches(led, gws.config, AGENT, [
            {"lead": "t@x.example", "due": "2020-01-01", "step": 1},
            {"lead": "T@x.example", "due": "2999-01-01", "step": 2}])
        due = packets.due_touches(led)
        assert [t["step"] for t in due] == [1]
        with pytest.raises(InputError):
            packets.add_touches(led, gws.config, AGENT, [{"lead": "t@x.example",
                                                          "due": "tomorrow"}])


def test_an_ambiguous_send_counts_toward_cooldown_and_cap(ws: Workspace) -> None:
    server = DroppingServer().start()
    try:
        gws = gate_workspace(ws, server.port, cap=5, cooldown=336)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            open_lane(led, gws, owner)
            first = new_draft(led, gws)
            drafts.approve(led, gws.config, owner, [first["id"]])
            assert run(gws, led).ambiguous == [first["id"]]
            second = new_draft(led, gws)  # the same recipient
            with pytest.raises(Conflict, match="cooldown"):
                drafts.approve(led, gws.config, owner, [second["id"]])
            assert len(server.messages) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("bad", ["Hello\u2028Bcc: x@y.example", "Hi\x0bthere", "Hi\x85"])
def test_unicode_line_breaks_in_headers_are_refused(gws: Workspace, bad: str) -> None:
    with Ledger.for_workspace(gws) as led, pytest.raises(InputError, match="header"):
        drafts.create(led, gws.config, AGENT, to="a@firm.example", subject=bad,
                      body="B" + FOOTER)


def test_a_failing_posture_does_not_open_the_gate_and_agents_cannot_record_it(
        gws: Workspace, owner: Principal) -> None:
    with Ledger.for_workspace(gws) as led:
        with pytest.raises(PermissionDenied):
            lanes.record_posture(led, gws.config, AGENT, "outbound.prospect",
                                 {"spf": "pass", "dkim": "pass", "dmarc": "pass"})
        lanes.record_posture(led, gws.config, owner, "outbound.prospect",
                             {"spf": "fail", "dkim": "pass", "dmarc": "pass"})
        lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=True, reason="t")
        d = new_draft(led, gws)
        with pytest.raises(Conflict, match="not passing: spf"):
            drafts.approve(led, gws.config, owner, [d["id"]])


def test_revoking_the_owner_token_does_not_reopen_bootstrap(gws: Workspace,
                                                            owner: Principal) -> None:
    from atlasops.auth import revoke_token

    with Ledger.for_workspace(gws) as led:
        revoke_token(led, owner, "owner")
        with pytest.raises(PermissionDenied):
            create_token(led, AGENT, role="owner", name="mine")


def test_refused_passes_do_not_use_up_the_retry_budget(gws: Workspace, owner: Principal,
                                                       smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        for _ in range(6):
            run(gws, led, caps=Capabilities(read_only=True))
        assert drafts.get_draft(led, d["id"])["attempts"] == 0
        assert run(gws, led).sent == [d["id"]]


# -- review fixes (issue 4 audit) ----------------------------------------------------

def reopen(ws: Workspace, extra: str) -> Workspace:
    """Append to atlas.toml and open the workspace again (the config is read at open)."""
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(extra)
    return Workspace.open(ws.home)


ZOHO_ONLY = """
[channels.zoho]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
from_address = "matt@sender.test-biz.example"
timeout = 5

[lanes."outbound.prospect"]
channel = "zoho"
"""


def test_a_lane_section_keeps_the_defaults_it_does_not_set(ws: Workspace, smtp: Any) -> None:
    from atlasops.config import default_lanes

    gws = reopen(ws, ZOHO_ONLY.format(port=smtp.port))
    lane = gws.config.all_lanes()["outbound.prospect"]
    default = default_lanes()["outbound.prospect"]
    assert lane.channel == "zoho"
    assert lane.footer == default.footer and lane.footer is not None
    assert lane.posture_max_age_days == default.posture_max_age_days == 30
    assert (lane.daily_cap, lane.cooldown_hours) == (default.daily_cap, default.cooldown_hours)
    with Ledger.for_workspace(gws) as led:
        owner = authenticate(led, gws.config, owner_token(led))
        d = new_draft(led, gws, body="No footer at all.")
        assert d["state"] == "draft" and d["problems"][0]["name"] == "footer_present"
        lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=True, reason="t")
        ok = new_draft(led, gws)
        with pytest.raises(Conflict, match="deliverability_posture_recent"):
            drafts.approve(led, gws.config, owner, [ok["id"]])
    assert smtp.messages == []


def test_overriding_the_review_lane_keeps_it_owner_only(ws: Workspace, smtp: Any) -> None:
    gws = reopen(ws, ZOHO_ONLY.format(port=smtp.port)
                 + '\n[lanes."outbound.review"]\nopen = true\nchannel = "zoho"\n')
    assert gws.config.all_lanes()["outbound.review"].owner_only is True
    with Ledger.for_workspace(gws) as led:
        owner = authenticate(led, gws.config, owner_token(led))
        d = drafts.create(led, gws.config, AGENT, to="stranger@else.example", subject="s",
                          body="b", lane="outbound.review")
        assert d["state"] == "draft" and d["problems"][0]["name"] == "recipient_is_owner"
        with pytest.raises(Conflict, match="not send-ready; recipient_is_owner"):
            drafts.approve(led, gws.config, owner, [d["id"]])
        run(gws, led)
    assert smtp.messages == []


def test_a_config_that_turns_off_owner_only_on_the_review_lane_is_refused(
        ws: Workspace) -> None:
    from atlasops.errors import ConfigError

    with pytest.raises(ConfigError, match=r"outbound\.review.*owner_only"):
        reopen(ws, '\n[lanes."outbound.review"]\nowner_only = false\n')


def test_credentials_over_cleartext_smtp_are_refused_unless_loopback(ws: Workspace) -> None:
    from atlasops.config import parse_config
    from atlasops.errors import ConfigError

    base = ws.config_path.read_text()
    channel = ('\n[channels.zoho]\ntype = "smtp"\nhost = "{host}"\ntls = "none"\n'
               'user_env = "U"\npassword_env = "P"\nfrom_address = "m@x.example"\n')
    with pytest.raises(ConfigError, match=r"channels\.zoho.*cleartext"):
        parse_config(base + channel.format(host="smtp.zoho.example"))
    for host in ("127.0.0.1", "localhost", "::1"):
        assert parse_config(base + channel.format(host=host)).channels["zoho"].host == host
    assert parse_config(base + channel.format(host="smtp.zoho.example").replace(
        'tls = "none"', 'tls = "starttls"'))


def test_a_non_ascii_local_part_is_refused_when_the_draft_is_written(gws: Workspace) -> None:
    with Ledger.for_workspace(gws) as led:
        with pytest.raises(InputError, match="non-ASCII local part"):
            new_draft(led, gws, to="josé@firm.example")
        assert led.count("drafts") == 0


def test_an_internationalised_domain_is_sent_as_punycode(gws: Workspace, owner: Principal,
                                                         smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws, to="jose@bücher.example")
        drafts.approve(led, gws.config, owner, [d["id"]])
        assert run(gws, led).sent == [d["id"]]
        (got,) = smtp.messages
        assert got.to == "jose@xn--bcher-kva.example"
        assert got.content_sha256() == drafts.get_draft(led, d["id"])["content_sha256"]


def test_a_draft_that_cannot_be_sent_fails_alone_and_the_pass_goes_on(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    """A draft written before non-ASCII local parts were refused at draft time (recorded
    straight as an event, as an older Atlas did) fails with its reason; the next draft is
    still sent and the run's receipt is written."""
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        bad = led.append("draft.created", "agent:old", {
            "lane": "outbound.prospect", "channel": "zoho", "to": "josé@firm.example",
            "subject": "Hi", "body": "Hello." + FOOTER, "state": "send_ready",
            "problems": []}).id
        good = new_draft(led, gws)["id"]
        drafts.approve(led, gws.config, owner, [bad, good])
        report = run(gws, led)
        assert report.failed == [bad] and report.sent == [good]
        assert "non-ASCII" in drafts.get_draft(led, bad)["reason"]
        assert report.receipt_id is not None
        assert [m.to for m in smtp.messages] == ["cpa@firm.example"]
        # and no later pass turns the unsent draft into 'ambiguous'
        run(gws, led)
        assert drafts.get_draft(led, bad)["state"] == "failed"


def test_smtp_errors_before_data_are_known_not_sent_failures(gws: Workspace,
                                                             smtp: Any) -> None:
    from email.message import EmailMessage

    from atlasops.gates.channels import PermanentFailure, SmtpSender

    msg = EmailMessage()
    msg["From"] = "matt@sender.test-biz.example"
    msg["To"] = "josé@firm.example"
    msg["Subject"] = "s"
    msg.set_content("b")
    sender = SmtpSender("zoho", gws.config.all_channels()["zoho"], {})
    with pytest.raises(PermanentFailure, match="plain-ASCII"):
        sender.send(msg)
    assert smtp.messages == []


def test_a_running_worker_rereads_atlas_toml_before_every_pass(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=False, reason="wait")
        passes: list[int] = []

        def between_passes() -> bool:
            passes.append(1)
            if len(passes) == 1:  # the owner changes the policy while the worker runs
                text = gws.config_path.read_text().replace("daily_cap = 1000",
                                                           "daily_cap = 0")
                gws.config_path.write_text(text)
                lanes.set_lane(led, gws.config, owner, "outbound.prospect", open_=True,
                               reason="go")
                return False
            return True

        reports = outbox.run(gws, led, actor="agent:worker", caps=CAPS, env={}, once=False,
                             interval=0, should_stop=between_passes)
        assert len(reports) == 2 and reports[0].held and reports[1].voided == [d["id"]]
        assert smtp.messages == []
        assert drafts.get_draft(led, d["id"])["state"] == "send_ready"


def test_an_unreadable_atlas_toml_fails_closed(gws: Workspace, owner: Principal,
                                               smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        gws.config_path.write_text(gws.config_path.read_text() + "\n[lanes\n")
        report = run(gws, led)
        assert report.sent == [] and report.config_error is not None
        receipt = led.query("SELECT outcome, summary FROM receipts WHERE id=?",
                            (report.receipt_id,))[0]
        assert receipt["outcome"] == "failed"
        assert receipt["summary"].startswith("Nothing was sent") and "TOML" in receipt["summary"]
        assert drafts.get_draft(led, d["id"])["state"] == "approved"
    assert smtp.messages == []


REVIEW_OVER_SMTP = '\n[lanes."outbound.review"]\nchannel = "zoho"\n'


def test_send_review_over_smtp_failures_leave_a_receipt_and_a_clear_error(
        ws: Workspace, smtp: Any, tmp_path: Any) -> None:
    from atlasops.errors import SendFailed

    creds = 'tls = "none"\nuser_env = "ZOHO_USER"\npassword_env = "ZOHO_PASS"'
    gws = gate_workspace(ws, smtp.port, extra=REVIEW_OVER_SMTP)
    gws.config_path.write_text(gws.config_path.read_text().replace('tls = "none"', creds))
    gws = Workspace.open(gws.home)
    rows = [[f"c{i}@cpa{i}.example", f"CPA {i}", "", "cpa", "wimper"] for i in range(3)]
    with Ledger.for_workspace(gws) as led:
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv", rows), actor="t")
        packets.create_packet(led, gws.config, AGENT, "p", segments=["cpa"])
        with pytest.raises(SendFailed, match="ZOHO_PASS") as missing:
            packets.send_review(gws, led, AGENT, "p", caps=CAPS, env={"ZOHO_USER": "u"})
        assert "environment" in missing.value.hint
    gws.config_path.write_text(gws.config_path.read_text().replace(creds, 'tls = "none"'))
    gws = Workspace.open(gws.home)
    smtp.set_reply("554 5.7.1 refused")
    with Ledger.for_workspace(gws) as led:
        with pytest.raises(SendFailed, match="554") as refused:
            packets.send_review(gws, led, AGENT, "p", caps=CAPS, env={})
        assert "Nothing was sent" in refused.value.hint
        failed = led.query("SELECT outcome, body FROM receipts WHERE kind='packet.review' "
                           "ORDER BY id")
        assert [r["outcome"] for r in failed] == ["failed", "failed"]
        assert packets.get_packet(led, "p")["review_event"] is None
    assert smtp.messages == []


def test_mail_counts_as_sent_unless_every_recipient_is_the_owner(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    from email.message import EmailMessage

    def message(to: str, cc: str | None = None) -> EmailMessage:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "matt@sender.test-biz.example", to, "s"
        if cc:
            msg["Cc"] = cc
        msg.set_content("b")
        return msg

    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        owner_addr = gws.config.owner.email
        # the review lane refuses a stranger hidden in Cc (it would have counted 0)
        with pytest.raises(EffectRefused, match="only sends to the owner"):
            perform(led, gws.config, gws.home, actor="agent:x", caps=CAPS, env={},
                    effect=Effect("email", "outbound.review", "sneak",
                                  message=message(owner_addr, "stranger@else.example")))
        _, to_owner = perform(led, gws.config, gws.home, actor="agent:x", caps=CAPS, env={},
                              effect=Effect("email", "outbound.prospect", "self test",
                                            message=message(owner_addr.upper())))
        _, to_prospect = perform(led, gws.config, gws.home, actor="agent:x", caps=CAPS,
                                 env={}, effect=Effect("email", "outbound.prospect", "pitch",
                                                       message=message("p@firm.example")))
        assert (to_owner.emails_sent, to_prospect.emails_sent) == (0, 1)
        # an approved draft to the owner's own address is review mail, never hidden
        d = new_draft(led, gws, to=owner_addr)
        drafts.approve(led, gws.config, owner, [d["id"]])
        report = run(gws, led)
        assert report.sent == [d["id"]] and report.emails_sent == 0
        assert report.review_emails == 1
        body = led.query("SELECT body, summary FROM receipts WHERE id=?",
                         (report.receipt_id,))[0]
        assert '"review_emails":1' in body["body"] and "review mail" in body["summary"]
    assert len(smtp.messages) == 3


def test_suppression_that_lands_just_before_the_claim_stops_the_send(
        gws: Workspace, owner: Principal, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: another process records an unsubscribe after the outbox listed the
    approved drafts and began the claim, just before the claim takes the writer lock. The
    claim decides everything under that lock, in the transaction that records the intent,
    so it sees the unsubscribe: no intent, the approval is void, nothing is sent."""
    import os
    import subprocess
    import sys

    from atlasops.ledger.lock import WriterLock

    real_claim, real_acquire = outbox._Pass._claim, WriterLock.acquire
    state = {"claiming": False, "injected": False}

    def claim(self: Any, *args: Any) -> Any:
        state["claiming"] = True
        return real_claim(self, *args)

    def acquire(self: WriterLock) -> None:
        if state["claiming"] and not state["injected"] and self.path.endswith("writer.lock"):
            state["injected"] = True
            env = {**os.environ, "ATLAS_HOME": str(gws.home)}
            env.pop("ATLAS_TOKEN", None)
            subprocess.run([sys.executable, "-m", "atlasops", "suppress", "cpa@firm.example"],
                           env=env, check=True, capture_output=True, timeout=120)
        real_acquire(self)

    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        monkeypatch.setattr(outbox._Pass, "_claim", claim)
        monkeypatch.setattr(WriterLock, "acquire", acquire)
        report = run(gws, led)
        assert state["injected"]
        assert report.suppressed == [d["id"]] and report.sent == []
        assert led.query("SELECT count(*) AS n FROM events WHERE kind='draft.sending'"
                         )[0]["n"] == 0
    assert smtp.messages == []


def test_capabilities_are_checked_before_any_intent_is_recorded(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        report = run(gws, led, caps=Capabilities(read_only=True, job_run="radar-1"))
        assert report.refused == [d["id"]]
        kinds = [r["kind"] for r in led.query("SELECT kind FROM events WHERE id > ?",
                                              (d["id"],))]
        assert "draft.queued" not in kinds and "draft.sending" not in kinds
        assert led.query("SELECT count(*) AS n FROM receipts WHERE kind='effect.refused'"
                         )[0]["n"] == 1
    assert smtp.messages == []


def test_sending_a_leads_draft_completes_its_due_touch(gws: Workspace, owner: Principal,
                                                       smtp: Any, tmp_path: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv",
                                              [["t@x.example", "T", "", "cpa", ""]]), actor="t")
        lead = int(led.query("SELECT id FROM leads")[0]["id"])
        packets.add_touches(led, gws.config, AGENT, [
            {"lead": lead, "due": "2020-01-01", "step": 1},
            {"lead": lead, "due": "2999-01-01", "step": 2}])
        step1, step2 = (int(r["id"]) for r in led.query("SELECT id FROM touches ORDER BY step"))
        open_lane(led, gws, owner)
        d = new_draft(led, gws, to="t@x.example", lead_id=lead)
        drafts.approve(led, gws.config, owner, [d["id"]])
        assert [t["id"] for t in packets.due_touches(led)] == [step1]
        report = run(gws, led)
        assert report.sent == [d["id"]] and report.touches_done == [step1]
        assert packets.due_touches(led) == []
        rows = {int(r["id"]): dict(r) for r in led.query("SELECT * FROM touches")}
        assert rows[step1]["status"] == "done" and rows[step1]["draft_id"] == d["id"]
        assert rows[step2]["status"] == "due"  # not due yet: sending did not complete it
        assert packets.complete_touch(led, AGENT, step2, "called")["status"] == "done"
        with pytest.raises(Conflict):
            packets.complete_touch(led, AGENT, step2)


def test_the_review_lanes_cap_applies_to_packets(ws: Workspace, tmp_path: Any) -> None:
    from atlasops.gates.status import gate_status

    gws = reopen(ws, '\n[lanes."outbound.review"]\nopen = true\nchannel = "owner-maildir"\n'
                 'owner_only = true\nneeds_approval = false\ncooldown_hours = 0\n'
                 'daily_cap = 2\n')
    rows = [[f"c{i}@cpa{i}.example", f"CPA {i}", "", "cpa", "wimper"] for i in range(3)]
    with Ledger.for_workspace(gws) as led:
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv", rows), actor="t")
        packets.create_packet(led, gws.config, AGENT, "p", segments=["cpa"])
        for _ in range(2):
            packets.send_review(gws, led, AGENT, "p", caps=CAPS, env={})
        with pytest.raises(EffectRefused, match="2 of 2 sent today"):
            packets.send_review(gws, led, AGENT, "p", caps=CAPS, env={})
        status = {ln["name"]: ln for ln in gate_status(led, gws.config)["lanes"]}
        assert status["outbound.review"]["sent_today"] == 2
        assert led.query("SELECT count(*) AS n FROM receipts WHERE kind='effect.refused'"
                         )[0]["n"] == 1
    assert len(list(mailbox.Maildir(gws.home / "data/maildir/owner", create=False))) == 2


def test_a_run_where_every_send_failed_is_failed(gws: Workspace, owner: Principal,
                                                 smtp: Any) -> None:
    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        ids = [new_draft(led, gws, to=f"f{i}@firm.example")["id"] for i in range(2)]
        drafts.approve(led, gws.config, owner, ids)
        smtp.set_reply("550 5.1.1 no such user")
        report = run(gws, led)
        assert sorted(report.failed) == ids
        receipt = led.query("SELECT outcome, summary FROM receipts WHERE id=?",
                            (report.receipt_id,))[0]
        assert receipt["outcome"] == "failed"
        assert receipt["summary"].startswith("No email was sent: all 2 attempted send(s) "
                                             "failed")


def test_gate_status_says_what_holds_send_ready_drafts_and_shows_expired_approvals(
        gws: Workspace, owner: Principal, smtp: Any) -> None:
    from atlasops.gates.status import gate_status

    with Ledger.for_workspace(gws) as led:
        waiting = [new_draft(led, gws, to=f"w{i}@firm.example")["id"] for i in range(2)]
        status = {ln["name"]: ln for ln in gate_status(led, gws.config)["lanes"]}
        assert status["outbound.prospect"]["held"] == [
            "2 send-ready draft(s) await approval-ready: lane outbound.prospect is closed"]
        open_lane(led, gws, owner)
        drafts.approve(led, gws.config, owner, [waiting[0]], expires=timedelta(0))
        status = {ln["name"]: ln for ln in gate_status(led, gws.config)["lanes"]}
        assert status["outbound.prospect"]["drafts"] == {"approval_ready": 1, "expired": 1}
        assert any(line.startswith("1 approval(s) expired")
                   for line in status["outbound.prospect"]["held"])
        assert drafts.explain(led, gws.config, waiting[0])["display_state"] == "expired"
        assert [d["id"] for d in drafts.list_drafts(led, gws.config, state="expired")] == [
            waiting[0]]
        # approving again replaces the expired approval (with a void event first)
        (again,) = drafts.approve(led, gws.config, owner, [waiting[0]])
        assert again["state"] == "approved"
        assert drafts.display_state(led, gws.config, again) == "approved"
        assert led.query("SELECT count(*) AS n FROM events WHERE kind='draft.approval_voided'"
                         )[0]["n"] == 1
        with pytest.raises(Conflict, match="is approved until"):
            drafts.approve(led, gws.config, owner, [waiting[0]])


def test_messages_are_opaque_carry_list_unsubscribe_and_maildir_files_are_private(
        gws: Workspace, owner: Principal, smtp: Any, tmp_path: Any) -> None:
    import stat

    with Ledger.for_workspace(gws) as led:
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        drafts.approve(led, gws.config, owner, [d["id"]])
        run(gws, led)
        (got,) = smtp.messages
        assert b"X-Atlas-Draft" not in got.raw
        assert f".{d['id']}." not in got.message_id
        assert (b"List-Unsubscribe: <mailto:matt@sender.test-biz.example?subject=unsubscribe>"
                in got.raw)
        import_csv(led, gws.config, write_csv(tmp_path / "l.csv",
                                              [["c@cpa.example", "C", "", "cpa", ""]]),
                   actor="t")
        packets.create_packet(led, gws.config, AGENT, "p", segments=["cpa"])
        packets.send_review(gws, led, AGENT, "p", caps=CAPS, env={})
    files = list((gws.home / "data/maildir/owner/new").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    for folder in ("data/maildir", "data/maildir/owner", "data/maildir/owner/new"):
        assert stat.S_IMODE((gws.home / folder).stat().st_mode) == 0o700, folder
    (review,) = mailbox.Maildir(gws.home / "data/maildir/owner", create=False)
    assert review["List-Unsubscribe"] is None  # the owner's review mail needs none


def test_resolving_as_sent_records_when_it_was_resolved_not_a_send_time(ws: Workspace) -> None:
    server = DroppingServer().start()
    try:
        gws = gate_workspace(ws, server.port)
        with Ledger.for_workspace(gws) as led:
            owner = authenticate(led, gws.config, owner_token(led))
            open_lane(led, gws, owner)
            d = new_draft(led, gws)
            drafts.approve(led, gws.config, owner, [d["id"]])
            assert run(gws, led).ambiguous == [d["id"]]
            outbox.resolve(led, owner, d["id"], sent=True)
            row = drafts.get_draft(led, d["id"])
            assert row["state"] == "sent" and row["sent_at"] is None
            assert "resolved as sent" in row["reason"] and "unknown" in row["reason"]
            event = led.query("SELECT payload FROM events WHERE kind='draft.resolved'")[0]
            assert '"resolved_at"' in event["payload"]
    finally:
        server.stop()


def test_first_owner_token_only_by_bootstrap_and_approvals_name_the_token(
        gws: Workspace) -> None:
    from atlasops.auth import bootstrap_owner_token

    with Ledger.for_workspace(gws) as led:
        with pytest.raises(PermissionDenied):  # no owner token yet: still not for anyone
            create_token(led, Principal("local", "someone"), role="owner", name="mine")
        token, _ = bootstrap_owner_token(led, name="laptop") or ("", 0)
        assert bootstrap_owner_token(led) is None  # only once, ever
        owner = authenticate(led, gws.config, token)
        assert owner.actor == f"owner:{gws.config.owner.email} (token laptop)"
        open_lane(led, gws, owner)
        d = new_draft(led, gws)
        (approved,) = drafts.approve(led, gws.config, owner, [d["id"]])
        assert approved["approved_by"] == f"owner:{gws.config.owner.email} (token laptop)"
