"""Crash test: the outbox process (`atlas outbox run --once`) is killed with SIGKILL
at random moments while it sends to a real SMTP server on 127.0.0.1. No message is
ever delivered twice, and every draft ends in a state that matches what the server
received; `ambiguous` only for a draft whose send was in flight at the kill with its
attempt recorded (a claim cut off before its attempt is requeued and sent once).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from atlasops.auth import Principal, authenticate
from atlasops.gates import drafts, lanes, outbox
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import BUSINESSES, OWNER, gate_workspace, owner_token

FOOTER = "\n\nReply STOP to opt out."
RUNS = 20
ATLAS = [sys.executable, "-m", "atlasops"]


def setup(root: Path, port: int, n: int) -> Workspace:
    ws = gate_workspace(Workspace.init(root / "ws", OWNER, "O", BUSINESSES), port)
    with Ledger.for_workspace(ws) as led:
        owner = authenticate(led, ws.config, owner_token(led))
        lanes.record_posture(led, ws.config, owner, "outbound.prospect",
                             {"spf": "pass", "dkim": "pass", "dmarc": "pass"})
        lanes.set_lane(led, ws.config, owner, "outbound.prospect", open_=True, reason="crash")
        ids = [drafts.create(led, ws.config, Principal("agent", "a"), to=f"r{i}@firm.example",
                             subject=f"S{i}", body=f"Body {i}." + FOOTER)["id"]
               for i in range(n)]
        drafts.approve(led, ws.config, owner, ids)
    return ws


def states(ws: Workspace) -> dict[int, dict[str, Any]]:
    with Ledger.for_workspace(ws) as led:
        return {int(r["id"]): dict(r) for r in led.query("SELECT * FROM drafts")}


def attempts(ws: Workspace) -> int:
    with Ledger.for_workspace(ws) as led:
        return int(led.query("SELECT count(*) AS n FROM events WHERE "
                             "kind='effect.attempting'")[0]["n"])


def maybe_sent(ws: Workspace, ids: list[int]) -> set[int]:
    """Of these claimed drafts, those with an attempt that did or may have happened."""
    with Ledger.for_workspace(ws) as led:
        return {i for i in ids if any(status != "did not happen" for _a, _p, status in
                                      outbox.claim_attempts(led.conn, i))}


def test_sigkill_during_outbox_never_delivers_twice(smtp: Any) -> None:
    rng = random.Random(int(os.environ.get("ATLAS_CRASH_SEED", "4242")))
    kinds: Counter[str] = Counter()
    for _run in range(RUNS):
        smtp.messages.clear()
        with tempfile.TemporaryDirectory() as tmp:
            ws = setup(Path(tmp), smtp.port, 25)
            env = {**os.environ, "ATLAS_HOME": str(ws.home)}
            env.pop("ATLAS_TOKEN", None)
            proc = subprocess.Popen([*ATLAS, "outbox", "run", "--once"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if rng.random() < 0.15:
                time.sleep(rng.uniform(0, 0.3))  # early: start-up, marking, claiming
            else:  # wait for the sending to begin, then kill somewhere inside it
                deadline = time.monotonic() + 60
                while not smtp.messages and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 0.25))
            proc.kill()
            proc.wait()
            at_kill = states(ws)
            received_at_kill = Counter(m.message_id for m in smtp.messages)
            in_flight = [i for i, d in at_kill.items() if d["state"] == "sending"]
            assert len(in_flight) <= 1, "only one send is ever in flight"
            attempted = maybe_sent(ws, in_flight)
            # no message reaches the server without its attempt recorded first
            assert len(smtp.messages) <= attempts(ws)
            for i, d in at_kill.items():
                got = received_at_kill.get(d["message_id"], 0) if d["message_id"] else 0
                if d["state"] == "sent":
                    assert got == 1
                elif d["state"] != "sending":
                    assert got == 0, f"draft {i} ({d['state']}) was delivered unrecorded"
            # a second outbox finishes the job: an in-flight send whose attempt was recorded
            # becomes ambiguous; a claim cut off before its attempt is requeued and sent
            done = subprocess.run([*ATLAS, "outbox", "run", "--once"], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            final = states(ws)
            received = Counter(m.message_id for m in smtp.messages)
            assert all(n == 1 for n in received.values()), "a message was delivered twice"
            for i, d in final.items():
                got = received.get(d["message_id"], 0) if d["message_id"] else 0
                if d["state"] == "sent":
                    assert got == 1
                elif d["state"] == "ambiguous":
                    assert i in attempted, f"draft {i} is ambiguous with no attempt recorded"
                    assert got <= 1
                else:
                    raise AssertionError(f"draft {i} ended {d['state']}")
            hashes = {m.message_id: m.content_sha256() for m in smtp.messages}
            for d in final.values():
                if d["state"] == "sent":
                    assert hashes[d["message_id"]] == d["content_sha256"]
            kinds["ambiguous" if attempted else "requeued" if in_flight else "clean"] += 1
            kinds["killed before any send" if not received_at_kill else "killed mid-run"] += 1
    # the random kills really landed in different places
    assert kinds["killed mid-run"] >= RUNS // 2, kinds
