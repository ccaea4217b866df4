"""Shared fixtures: real workspaces on disk, a real ledger, the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from atlasops.cli import app
from atlasops.config import Business
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace

OWNER = "owner@owner.test-biz.example"
BUSINESSES = {
    "wimper": Business(name="WIMPER", sites=["wimper.example"]),
    "bbh": Business(name="Business Broker Hawaii", sites=["bbh.example"]),
}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws", OWNER, "Owner", BUSINESSES)


@pytest.fixture
def ledger(ws: Workspace) -> Iterator[Ledger]:
    with Ledger.for_workspace(ws) as led:
        yield led


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def cli(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `atlas ...` in-process against the test workspace (``--home`` is added)."""
    monkeypatch.setenv("ATLAS_ACTOR", "test:cli")
    monkeypatch.delenv("ATLAS_HOME", raising=False)
    runner = CliRunner()

    def run(*args: str, home: Path | None = ws.home) -> Result:
        argv = list(args)
        if home is not None:
            argv += ["--home", str(home)]
        r = runner.invoke(app, argv, catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    return run


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header or ["email", "name", "company", "segment", "business"])
        w.writerows(rows)
    return path


GATE_CONFIG = """
[channels.zoho]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
from_address = "matt@sender.test-biz.example"
timeout = 5

[lanes."outbound.prospect"]
channel = "zoho"
daily_cap = {cap}
cooldown_hours = {cooldown}
footer = "Reply STOP to opt out."
posture_max_age_days = 30
"""


def gate_workspace(ws: Workspace, port: int, *, cap: int = 1000, cooldown: float = 0,
                   extra: str = "") -> Workspace:
    """The test workspace with an SMTP channel on 127.0.0.1:port as the prospect lane's one
    channel (lane still closed, as by default)."""
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(GATE_CONFIG.format(port=port, cap=cap, cooldown=cooldown) + extra)
    return Workspace.open(ws.home)


def owner_token(ledger: Ledger) -> str:
    """The workspace's first owner token, minted as `atlas init` mints it."""
    from atlasops.auth import bootstrap_owner_token

    minted = bootstrap_owner_token(ledger)
    assert minted is not None, "the workspace has an owner token already"
    return minted[0]


@pytest.fixture
def smtp() -> Iterator[Any]:
    from tests.smtp_servers import Recorder

    server = Recorder().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gws(ws: Workspace, smtp: Any) -> Workspace:
    """The test workspace with the prospect lane on the `smtp` server (lane closed)."""
    return gate_workspace(ws, smtp.port)


@pytest.fixture
def owner(gws: Workspace) -> Any:
    """The owner, authenticated by the workspace's first owner token."""
    from atlasops.auth import authenticate

    with Ledger.for_workspace(gws) as led:
        return authenticate(led, gws.config, owner_token(led))
