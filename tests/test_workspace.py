from __future__ import annotations

import stat
from pathlib import Path

import pytest

from atlasops.config import parse_config
from atlasops.errors import ConfigError, Conflict, WorkspaceError
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_creates_private_layout(ws: Workspace) -> None:
    for d in ws.layout():
        assert d.is_dir()
        assert mode(d) == 0o700, d
    assert mode(ws.home) == 0o700
    assert mode(ws.config_path) == 0o600
    assert ws.config.owner.email == "owner@owner.test-biz.example"
    assert set(ws.config.businesses) == {"wimper", "bbh"}


def test_init_is_idempotent_and_keeps_config(ws: Workspace) -> None:
    ws.config_path.write_text(ws.config_path.read_text() + "\n# my edit\n")
    again = Workspace.init(ws.home, "")
    assert again.config.owner.email == ws.config.owner.email
    assert "# my edit" in ws.config_path.read_text()
    with pytest.raises(Conflict):
        Workspace.init(ws.home, "someone-else@other.example")
    assert "# my edit" in ws.config_path.read_text()


def test_ledger_files_are_private_once_written(ws: Workspace) -> None:
    with Ledger.for_workspace(ws) as ledger:
        ledger.append("note.added", "t", {"text": "x"})
    segments = list(ws.journal_dir.glob("*.journal"))
    assert segments, "the append wrote no journal segment"
    for path in [ws.db_path, *segments, ws.lock_path, ws.config_path]:
        assert mode(path) == 0o600, path
    for path in [ws.home, *ws.layout()]:
        assert mode(path) == 0o700, path


def test_open_missing_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="does not exist"):
        Workspace.open(tmp_path / "nope")


def test_open_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="atlas.toml is missing"):
        Workspace.open(tmp_path)


def test_open_incomplete_workspace(ws: Workspace) -> None:
    ws.journal_dir.rmdir()
    with pytest.raises(WorkspaceError, match="data/journal is missing"):
        Workspace.open(ws.home)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[owner]\nemail = 'not-an-email'\n", "owner.email"),
        ("[owner]\nemail = 'a@b.example'\n[businesses.Bad-Slug]\nname = 'x'\n", "businesses"),
        ("[owner]\nemail = 'a@b.example'\n[businesses.ok]\n", "businesses.ok.name"),
        ("[owner]\nemail = 'a@b.example'\nowner_typo = 1\n", "owner.owner_typo"),
        ("lanes_typo = 1\n[owner]\nemail = 'a@b.example'\n", "lanes_typo"),
        ("[journal]\nsegment_bytes = 10\n", "owner"),
        ("[owner]\nemail = 'a@b.example'\n[journal]\nsegment_bytes = 10\n",
         "journal.segment_bytes"),
    ],
)
def test_invalid_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert f"key {key}" in info.value.message


def test_config_not_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[owner\nemail=")
