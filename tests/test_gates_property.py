"""Property: random interleavings of create / edit / approve / reject / withdraw /
close-lane / open-lane / outbox-run against a real SMTP server never deliver a
message whose content differs from the approved content, never deliver without a
valid unexpired approval, never deliver on a closed lane, never deliver twice.

The model below is the test's own record of what was approved and when the lane
was open; it does not consult Atlas's tables to decide what was allowed.

The strategy is built to reach the states that matter: most scripts start from a
typical day (drafts written, the lane open, every draft approved), closing the lane
and running the outbox are drawn more often than the rest, every script ends with a
run, and explicit examples cover approve -> close -> run and approve -> close ->
open -> run. Removing the lane-open check (at approval, at the claim and in
``perform``) makes this test fail; that mutation was checked by hand.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from atlasops.auth import Principal, authenticate
from atlasops.errors import Conflict
from atlasops.gates import drafts, lanes, outbox
from atlasops.gates.effects import Capabilities
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import BUSINESSES, OWNER, gate_workspace, owner_token
from tests.smtp_servers import Recorder

FOOTER = "\n\nReply STOP to opt out."
AGENT = Principal("agent", "prop")
FROM = "matt@sender.test-biz.example"

# Closing the lane and running the outbox are drawn more often than the rest, so that
# "approved, then the lane closed, then a run" is common rather than rare.
op = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 3)),
    st.tuples(st.just("approve"), st.integers(0, 5)),
    st.tuples(st.just("approve_all")),
    st.tuples(st.just("edit"), st.integers(0, 5), st.sampled_from(["A", "B", "C"])),
    st.tuples(st.just("reject"), st.integers(0, 5)),
    st.tuples(st.just("withdraw"), st.integers(0, 5)),
    st.tuples(st.just("close")),
    st.tuples(st.just("close")),
    st.tuples(st.just("close")),
    st.tuples(st.just("open")),
    st.tuples(st.just("open")),
    st.tuples(st.just("run")),
    st.tuples(st.just("run")),
    st.tuples(st.just("run")),
    st.tuples(st.just("run_late")),
)
ops = st.lists(op, min_size=1, max_size=18)
# A typical day: drafts written, the lane opened, every draft approved. Most scripts start
# here, so what they do next (close, edit, run...) acts on live approvals.
WARM: list[tuple[Any, ...]] = [("create", 0), ("create", 1), ("create", 2), ("open",),
                               ("approve_all",)]


@pytest.fixture(scope="module")
def server() -> Iterator[Recorder]:
    s = Recorder().start()
    try:
        yield s
    finally:
        s.stop()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=ops, warm=st.sampled_from([True, True, True, False]))  # 3 in 4 start warm
@example(script=[("close",), ("run",)], warm=True)  # approved, then closed: held
@example(script=[("close",), ("open",), ("run",)], warm=True)  # closed, reopened: sent
@example(script=[("close",), ("run",), ("open",), ("run",), ("close",), ("run",)], warm=True)
@example(script=[("create", 0), ("approve", 0), ("close",), ("run",)], warm=False)
def test_no_delivery_without_matching_valid_approval(server: Recorder, warm: bool,
                                                     script: list[tuple[Any, ...]]) -> None:
    # every script ends with a run: what does the outbox do with the state it was left?
    script = [*(WARM if warm else []), *script, ("run",)]
    server.messages.clear()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws", OWNER, "O", BUSINESSES)
        ws = gate_workspace(ws, server.port)
        with Ledger.for_workspace(ws) as led:
            owner = authenticate(led, ws.config, owner_token(led))
            lanes.record_posture(led, ws.config, owner, "outbound.prospect",
                                 {"spf": "pass", "dkim": "pass", "dmarc": "pass"})
            check(ws, led, owner, server, script)


def approve(led: Ledger, ws: Workspace, owner: Principal, draft_id: int,
            approved: dict[int, tuple[str, str, str]], approvals: dict[str, int]) -> None:
    """Approve one draft (Atlas may refuse: Conflict) and record it in the model."""
    d = drafts.get_draft(led, draft_id)
    (row,) = drafts.approve(led, ws.config, owner, [draft_id])
    approved[draft_id] = (d["to_addr"], d["subject"], d["body"])
    approvals[outbox.message_id(row, FROM)] = draft_id


def check(ws: Workspace, led: Ledger, owner: Principal, server: Recorder,
          script: list[tuple[Any, ...]]) -> None:
    ids: list[int] = []
    approved: dict[int, tuple[str, str, str]] = {}  # the model: content at approval time
    approvals: dict[str, int] = {}  # the Message-ID each approval was given -> its draft
    lane_open = False
    delivered: set[int] = set()
    seen = 0
    for op in script:
        kind = op[0]
        pick = ids[op[1] % len(ids)] if ids and len(op) > 1 and kind != "create" else None
        try:
            if kind == "create":
                d = drafts.create(led, ws.config, AGENT, to=f"p{op[1]}@firm.example",
                                  subject=f"Hello {op[1]}", body="Pitch." + FOOTER)
                ids.append(d["id"])
            elif kind == "edit" and pick is not None:
                drafts.edit(led, ws.config, AGENT, pick, body=f"Pitch {op[2]}." + FOOTER)
                approved.pop(pick, None)
            elif kind == "approve" and pick is not None:
                approve(led, ws, owner, pick, approved, approvals)
            elif kind == "approve_all":
                for draft_id in ids:  # each on its own: one refusal does not stop the rest
                    try:
                        approve(led, ws, owner, draft_id, approved, approvals)
                    except Conflict:
                        pass
            elif kind == "reject" and pick is not None:
                drafts.reject(led, owner, pick, "no")
                approved.pop(pick, None)
            elif kind == "withdraw" and pick is not None:
                drafts.withdraw(led, AGENT, pick)
                approved.pop(pick, None)
            elif kind in ("close", "open"):
                lanes.set_lane(led, ws.config, owner, "outbound.prospect",
                               open_=kind == "open", reason="prop")
                lane_open = kind == "open"
            elif kind in ("run", "run_late"):
                late = kind == "run_late"
                if approved and not lane_open:
                    event("a run on a closed lane with live approvals")
                now = datetime.now(UTC) + (timedelta(days=8) if late else timedelta(0))
                outbox.run_once(ws, led, actor="agent:outbox", caps=Capabilities(), env={},
                                now=now)
                for msg in server.messages[seen:]:
                    draft_id = approvals.get(msg.message_id, -1)
                    assert lane_open, "delivered while the lane was closed"
                    assert not late, "delivered on an expired approval"
                    assert draft_id in approved, "delivered without a valid approval"
                    assert (msg.to, msg.subject, msg.body) == approved[draft_id], \
                        "delivered content differs from approved content"
                    assert draft_id not in delivered, "delivered twice"
                    delivered.add(draft_id)
                seen = len(server.messages)
                if late:
                    approved.clear()  # every approval has expired by then
                for i in delivered:
                    approved.pop(i, None)  # a sent draft's approval is used up
        except Conflict:
            pass
    event(f"delivered {min(len(delivered), 2)}+")
    sent = {int(r["id"]) for r in led.query("SELECT id FROM drafts WHERE state='sent'")}
    assert sent == delivered
