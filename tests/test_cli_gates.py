"""The gate commands through the CLI, with identity from ATLAS_TOKEN."""

from __future__ import annotations

import mailbox
from pathlib import Path
from typing import Any

import pytest

from atlasops.workspace import Workspace
from tests.conftest import gate_workspace, write_csv

FOOTER = "\n\nReply STOP to opt out."
PASSING = ("--spf", "pass", "--dkim", "pass", "--dmarc", "pass")


def init_owner_token(cli: Any) -> str:
    """`atlas init` (here re-run on a workspace that has no owner token yet) prints the
    owner's token once, on a line of its own."""
    r = cli("init")
    assert r.exit_code == 0, r.stderr
    (token,) = [ln for ln in r.stdout.splitlines() if ln.startswith("atl_")]
    return token


@pytest.fixture
def setup(cli: Any, ws: Workspace, smtp: Any, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> dict[str, str]:
    gate_workspace(ws, smtp.port)
    owner = init_owner_token(cli)
    monkeypatch.setenv("ATLAS_TOKEN", owner)
    agent = cli("token", "create", "--role", "agent", "--name", "outreach", "--json").json()
    rows = [[f"c{i}@cpa{i}.example", f"CPA {i}", f"Firm {i}", "cpa", "wimper"]
            for i in range(12)]
    assert cli("leads", "import", str(write_csv(tmp_path / "l.csv", rows))).exit_code == 0
    return {"owner": owner, "agent": agent["token"]}


def as_agent(monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str]) -> None:
    monkeypatch.setenv("ATLAS_TOKEN", tokens["agent"])


def as_owner(monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str]) -> None:
    monkeypatch.setenv("ATLAS_TOKEN", tokens["owner"])


def test_tokens(cli: Any, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = cli("token", "list", "--json").json()
    assert {(r["name"], r["role"]) for r in rows} == {("owner", "owner"), ("outreach", "agent")}
    assert "atl_" not in cli("token", "list").stdout
    as_agent(monkeypatch, setup)
    r = cli("token", "create", "--role", "agent", "--name", "x")
    assert r.exit_code == 8
    monkeypatch.setenv("ATLAS_TOKEN", "atl_wrong")
    r = cli("lane", "list")
    assert r.exit_code == 8 and "not a valid token" in r.stderr
    as_owner(monkeypatch, setup)
    assert cli("token", "revoke", "outreach").exit_code == 0
    as_agent(monkeypatch, setup)
    assert cli("lane", "list").exit_code == 8


def test_the_whole_ladder(cli: Any, setup: dict[str, str], smtp: Any,
                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_agent(monkeypatch, setup)
    body = tmp_path / "body.txt"
    body.write_text("Hi, a partner intro." + FOOTER)
    lead = cli("leads", "list", "--json").json()[0]["id"]
    r = cli("drafts", "create", "--to", "c0@cpa0.example", "--subject", "Intro",
            "--body-file", str(body), "--lead", str(lead), "--json")
    assert r.exit_code == 0, r.stderr
    draft = r.json()
    assert draft["state"] == "send_ready"
    r = cli("gate", "explain", str(draft["id"]), "--json")
    failing = {c["name"] for c in r.json()["approval_ready"] if not c["passed"]}
    assert failing == {"lane_open", "deliverability_posture_recent"}
    assert "lane_open" in cli("gate", "explain", str(draft["id"])).stdout
    r = cli("approve", str(draft["id"]))
    assert r.exit_code == 8 and "only the owner" in r.stderr
    r = cli("lane", "open", "outbound.prospect", "--reason", "agents may not")
    assert r.exit_code == 8
    as_owner(monkeypatch, setup)
    r = cli("approve", str(draft["id"]))
    assert r.exit_code == 7 and "lane_open" in r.stderr
    assert cli("lane", "posture", "outbound.prospect", "--spf", "pass", "--dkim", "pass",
               "--dmarc", "pass").exit_code == 0
    assert cli("lane", "open", "outbound.prospect", "--reason", "Zoho-only test").exit_code == 0
    lanes = {x["name"]: x for x in cli("lane", "list", "--json").json()}
    assert lanes["outbound.prospect"]["open"] is True
    assert lanes["outbound.prospect"]["reason"] == "Zoho-only test"
    assert "open" in cli("lane", "list").stdout
    listed = cli("drafts", "list", "--state", "approval_ready", "--json").json()
    assert [d["id"] for d in listed] == [draft["id"]]
    r = cli("approve", str(draft["id"]), "--expires", "2d", "--json")
    assert r.exit_code == 0 and r.json()[0]["state"] == "approved"
    assert cli("approve", "999").exit_code == 6
    assert cli("approve", str(draft["id"]), "--expires", "soon").exit_code == 2
    as_agent(monkeypatch, setup)
    r = cli("outbox", "run", "--once", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()[0]["sent"] == [draft["id"]]
    assert len(smtp.messages) == 1 and smtp.messages[0].subject == "Intro"
    shown = cli("drafts", "show", str(draft["id"]), "--json").json()
    assert shown["state"] == "sent" and shown["message_id"] == smtp.messages[0].message_id
    assert "Intro" in cli("drafts", "show", str(draft["id"])).stdout
    r = cli("drafts", "edit", str(draft["id"]), "--subject", "x")
    assert r.exit_code == 7
    assert "sent" in cli("drafts", "list").stdout


def test_edit_voids_and_withdraw_and_reject(cli: Any, setup: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("lane", "posture", "outbound.prospect", *PASSING).exit_code == 0
    assert cli("lane", "open", "outbound.prospect", "--reason", "t").exit_code == 0
    ids = [cli("drafts", "create", "--to", f"c{i}@cpa{i}.example", "--subject", "S",
               "--body", "B" + FOOTER, "--json").json()["id"] for i in range(3)]
    assert cli("approve", *map(str, ids)).exit_code == 0
    r = cli("drafts", "edit", str(ids[0]), "--body", "Changed" + FOOTER, "--json")
    assert r.json()["voided_approval"] is True and r.json()["state"] == "send_ready"
    assert cli("drafts", "withdraw", str(ids[1])).exit_code == 0
    assert cli("reject", str(ids[2]), "--reason", "tone").exit_code == 0
    states = {d["id"]: d["state"] for d in cli("drafts", "list", "--json").json()}
    assert states == {ids[0]: "send_ready", ids[1]: "withdrawn", ids[2]: "rejected"}
    assert cli("drafts", "list", "--state", "bogus").exit_code == 2


def test_drafts_written_before_the_lane_has_a_channel_go_through_it_once_it_has(
        cli: Any, ws: Workspace, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed day: drafts pile up behind the closed prospect lane before the Zoho path is
    set; once the owner configures it and opens the lane, they are approved and sent."""
    monkeypatch.setenv("ATLAS_TOKEN", init_owner_token(cli))
    r = cli("drafts", "create", "--to", "c0@cpa0.example", "--subject", "Intro",
            "--body", "Hi." + FOOTER, "--json")
    assert r.exit_code == 0, r.stderr
    draft = str(r.json()["id"])
    assert r.json()["channel"] is None  # no channel of its own: the lane's
    assert "via the lane's channel (none configured yet)" in cli("drafts", "show",
                                                                 draft).stdout
    r = cli("approve", draft)
    assert r.exit_code == 7 and "has no channel configured" in r.stderr
    gate_workspace(ws, smtp.port)  # the owner sets up the Zoho channel for the lane
    assert cli("lane", "posture", "outbound.prospect", *PASSING).exit_code == 0
    assert cli("lane", "open", "outbound.prospect", "--reason", "Zoho is set").exit_code == 0
    gate = cli("gate", "explain", draft, "--json").json()["approval_ready"]
    (channel,) = [c for c in gate if c["name"] == "channel_is_lanes_one_channel"]
    assert channel["passed"] and channel["why"].startswith("the lane's channel (zoho)")
    r = cli("approve", draft)
    assert r.exit_code == 0, r.stderr
    assert "via the lane's channel (zoho)" in cli("drafts", "show", draft).stdout
    r = cli("outbox", "run", "--once", "--json")
    assert r.exit_code == 0 and r.json()[0]["sent"] == [int(draft)]
    assert [m.subject for m in smtp.messages] == ["Intro"]


def test_bad_draft_input_exit_2(cli: Any, setup: dict[str, str]) -> None:
    r = cli("drafts", "create", "--to", "x@y.example\nBcc: z@z.example", "--subject", "S",
            "--body", "B")
    assert r.exit_code == 2 and "header injection" in r.stderr
    r = cli("drafts", "create", "--to", "x@y.example", "--subject", "S")
    assert r.exit_code == 2
    assert cli("suppress", "bad@bad.example", "--reason", "unsubscribe").exit_code == 0
    r = cli("drafts", "create", "--to", "BAD@bad.example", "--subject", "S", "--body", "B")
    assert r.exit_code == 2 and "suppression" in r.stderr
    assert cli("suppress").exit_code == 2
    assert cli("suppress", "not-an-address").exit_code == 2


def test_text_that_is_not_utf8_is_refused_with_exit_2_and_nothing_written(
        cli: Any, setup: dict[str, str], ws: Workspace) -> None:
    """Bytes that are not UTF-8 in an argument arrive as lone surrogates (as Python decodes
    argv); each command refuses them with exit 2 and a clear message, and writes nothing."""
    from atlasops.ledger import Ledger

    draft = cli("drafts", "create", "--to", "ok@firm.example", "--subject", "S", "--body",
                "B" + FOOTER, "--json").json()["id"]
    with Ledger.for_workspace(ws) as led:
        before = led.query("SELECT count(*) AS n FROM events")[0]["n"]
    bad = "\udcff"
    for args, says in [
        (("drafts", "create", "--to", "ok@firm.example", "--subject", "S", "--body",
          "B" + bad + FOOTER), "the body holds text that is not valid UTF-8"),
        (("drafts", "create", "--to", "ok@firm.example", "--subject", "S" + bad, "--body",
          "B" + FOOTER), "the subject holds text that is not valid UTF-8"),
        (("drafts", "edit", str(draft), "--subject", "S" + bad),
         "the subject holds text that is not valid UTF-8"),
        (("lane", "close", "outbound.prospect", "--reason", "r" + bad), "not valid UTF-8"),
        (("suppress", "x@firm.example", "--reason", "r" + bad), "not valid UTF-8"),
    ]:
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    with Ledger.for_workspace(ws) as led:
        assert led.query("SELECT count(*) AS n FROM events")[0]["n"] == before


def test_suppress_file(cli: Any, setup: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "unsub.csv"
    f.write_text("email\na@x.example\nb@x.example\na@x.example\n")
    r = cli("suppress", "--file", str(f))
    assert r.exit_code == 0 and "2 address(es)" in r.stdout


def test_closed_lane_holds_and_gate_status(cli: Any, setup: dict[str, str], smtp: Any) -> None:
    assert cli("lane", "posture", "outbound.prospect", *PASSING).exit_code == 0
    assert cli("lane", "open", "outbound.prospect", "--reason", "t").exit_code == 0
    ids = [cli("drafts", "create", "--to", f"c{i}@cpa{i}.example", "--subject", "S",
               "--body", "B" + FOOTER, "--json").json()["id"] for i in range(4)]
    assert cli("approve", *map(str, ids)).exit_code == 0
    assert cli("lane", "close", "outbound.prospect", "--reason", "reply drought").exit_code == 0
    r = cli("outbox", "run", "--once")
    assert r.exit_code == 0 and "4 approved draft(s) held: lane outbound.prospect is closed" \
        in r.stdout
    assert smtp.messages == []
    status = cli("gate", "status", "--json").json()
    prospect = next(ln for ln in status["lanes"] if ln["name"] == "outbound.prospect")
    assert prospect["drafts"] == {"approved": 4} and prospect["open"] is False
    assert "held: lane outbound.prospect is closed" in cli("gate", "status").stdout


def test_ambiguous_resolve_cli(cli: Any, setup: dict[str, str]) -> None:
    r = cli("outbox", "resolve", "1")
    assert r.exit_code == 2
    r = cli("outbox", "resolve", "99999", "--sent")
    assert r.exit_code == 6


def test_touches_and_packets(cli: Any, setup: dict[str, str], ws: Workspace,
                             smtp: Any, tmp_path: Path) -> None:
    assert cli("touches", "add", "--lead", "c1@cpa1.example", "--due", "2020-01-01"
               ).exit_code == 0
    ids = [x["id"] for x in cli("leads", "list", "--json").json()]
    f = tmp_path / "touches.csv"
    f.write_text(f"lead,due,step\n{ids[2]},2020-01-02,1\n{ids[3]},2999-01-01,2\n")
    assert cli("touches", "import", str(f)).exit_code == 0
    due = cli("touches", "due", "--json").json()
    assert len(due) == 2
    assert "c1@cpa1.example" in cli("touches", "due").stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("lead,due\nnobody@x.example,2020-01-01\n")
    assert cli("touches", "import", str(bad)).exit_code == 6
    assert len(cli("touches", "due", "--json").json()) == 2
    r = cli("packet", "create", "wimper-partners", "--segment", "cpa,broker,fractional_cfo",
            "--limit", "10", "--json")
    assert r.exit_code == 0 and len(r.json()["lead_ids"]) == 10
    assert cli("packet", "create", "wimper-partners", "--segment", "cpa").exit_code == 7
    assert "10 contact(s)" in cli("packet", "show", "wimper-partners").stdout
    r = cli("packet", "send-review", "wimper-partners", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["to"] == ws.config.owner.email
    assert len(list(mailbox.Maildir(ws.home / "data/maildir/owner", create=False))) == 1
    assert smtp.messages == []
    assert "sent for review" in cli("packet", "list").stdout
    assert cli("packet", "list", "--json").json()[0]["name"] == "wimper-partners"


def test_read_only_capabilities_refuse_review_send(cli: Any, setup: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("packet", "create", "p", "--segment", "cpa").exit_code == 0
    monkeypatch.setenv("ATLAS_CAPABILITIES", "read_only")
    monkeypatch.setenv("ATLAS_JOB_RUN", "revenue-radar-1")
    r = cli("packet", "send-review", "p")
    assert r.exit_code == 8 and "read-only" in r.stderr
    refused = cli("receipts", "list", "--kind", "effect.refused", "--json").json()
    assert len(refused) == 1 and refused[0]["outcome"] == "refused"


def test_init_mints_the_owner_token_once_and_only_the_owner_makes_more(
        cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "fresh"
    r = cli("init", "--owner", "me@mine.example", home=home)
    assert r.exit_code == 0, r.stderr
    (token,) = [ln for ln in r.stdout.splitlines() if ln.startswith("atl_")]
    assert "shown once" in r.stdout and "ATLAS_TOKEN" in r.stdout
    again = cli("init", home=home)
    assert again.exit_code == 0 and "atl_" not in again.stdout
    monkeypatch.delenv("ATLAS_TOKEN", raising=False)
    r = cli("token", "create", "--role", "owner", "--name", "mine", home=home)
    assert r.exit_code == 8 and "only the owner" in r.stderr and "atlas init" in r.stderr
    monkeypatch.setenv("ATLAS_TOKEN", token)
    agent = cli("token", "create", "--role", "agent", "--name", "a", "--json", home=home)
    assert agent.exit_code == 0
    monkeypatch.setenv("ATLAS_TOKEN", agent.json()["token"])
    assert cli("token", "create", "--role", "owner", "--name", "x", home=home).exit_code == 8
    monkeypatch.setenv("ATLAS_TOKEN", token)
    assert cli("token", "create", "--role", "owner", "--name", "laptop", home=home
               ).exit_code == 0
    assert {r["name"] for r in cli("token", "list", "--json", home=home).json()} == {
        "owner", "a", "laptop"}


def test_touches_done_and_gate_status_reflect_it(cli: Any, setup: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    as_agent(monkeypatch, setup)
    assert cli("touches", "add", "--lead", "c1@cpa1.example", "--due", "2020-01-01"
               ).exit_code == 0
    (touch,) = cli("touches", "due", "--json").json()
    assert cli("gate", "status", "--json").json()["touches_due"] == 1
    r = cli("touches", "done", str(touch["id"]), "--note", "called", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["status"] == "done"
    assert cli("touches", "due", "--json").json() == []
    assert cli("gate", "status", "--json").json()["touches_due"] == 0
    assert cli("touches", "done", str(touch["id"])).exit_code == 7
    assert cli("touches", "done", "99999").exit_code == 6


def test_send_review_over_smtp_that_fails_is_exit_1_with_a_receipt(
        cli: Any, setup: dict[str, str], ws: Workspace, smtp: Any) -> None:
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write('\n[lanes."outbound.review"]\nchannel = "zoho"\n')
    assert cli("packet", "create", "p", "--segment", "cpa").exit_code == 0
    smtp.set_reply("451 4.3.0 try again later")
    r = cli("packet", "send-review", "p")
    assert r.exit_code == 1
    assert "not sent for review" in r.stderr and "451" in r.stderr and "Try again" in r.stderr
    (receipt,) = cli("receipts", "list", "--kind", "packet.review", "--json").json()
    assert receipt["outcome"] == "failed"
    assert smtp.messages == []


def test_gate_status_names_what_holds_send_ready_drafts(cli: Any, setup: dict[str, str]
                                                        ) -> None:
    for i in range(3):
        assert cli("drafts", "create", "--to", f"c{i}@cpa{i}.example", "--subject", "S",
                   "--body", "B" + FOOTER).exit_code == 0
    out = cli("gate", "status").stdout
    assert "3 send-ready draft(s) await approval-ready: lane outbound.prospect is closed" in out


def test_approving_a_draft_named_twice_approves_it_once(cli: Any, setup: dict[str, str]
                                                        ) -> None:
    assert cli("lane", "posture", "outbound.prospect", *PASSING).exit_code == 0
    assert cli("lane", "open", "outbound.prospect", "--reason", "t").exit_code == 0
    draft = str(cli("drafts", "create", "--to", "c1@cpa1.example", "--subject", "S",
                    "--body", "B" + FOOTER, "--json").json()["id"])
    r = cli("approve", draft, draft, draft)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("approved until") == 1
    (receipt,) = cli("receipts", "list", "--kind", "approval", "--json").json()
    assert receipt["summary"].startswith("1 draft(s) approved")
    approved = cli("drafts", "list", "--state", "approved", "--json").json()
    assert [d["id"] for d in approved] == [int(draft)]


def test_a_token_that_is_not_utf8_is_an_invalid_token(ws: Workspace) -> None:
    """The environment carries bytes: a token that is not UTF-8 is refused as any wrong
    token is (exit 8), never a traceback."""
    import os
    import subprocess
    import sys

    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env.update({b"ATLAS_HOME": os.fsencode(ws.home), b"ATLAS_TOKEN": b"atl_\xff"})
    r = subprocess.run([sys.executable, "-m", "atlasops", "lane", "list"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 8
    assert "not a valid token" in r.stderr and "Traceback" not in r.stderr
