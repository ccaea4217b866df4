"""The workspace: one private directory that holds everything Atlas knows.

::

    atlas.toml                      owner, businesses, later lanes/routes/jobs
    data/db/leads.db                the live ledger (SQLite, WAL)
    data/journal/                   append-only journal segments
    data/db/backups/                validated backups
    data/db/quarantine/             damaged files moved aside, never deleted
    data/chronicle/                 daily chronicles

Directories are created 0700 and files 0600: the ledger holds leads' personal
data and must be private to the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Business, Config, load_config, normal_email, render_config
from .errors import ConfigError, Conflict, InputError, StorageError, WorkspaceError

CONFIG_NAME = "atlas.toml"
# Written by `atlas recover` once a verified ledger is ready to swap in; removed when the
# swap and its receipt are done. While it exists nothing else opens the workspace.
RECOVERY_PENDING = "recovery-pending.json"
DIR_MODE = 0o700
FILE_MODE = 0o600


@dataclass(frozen=True)
class Workspace:
    home: Path
    config: Config

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def db_path(self) -> Path:
        return self.db_dir / "leads.db"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def backups_dir(self) -> Path:
        return self.db_dir / "backups"

    @property
    def quarantine_dir(self) -> Path:
        return self.db_dir / "quarantine"

    @property
    def chronicle_dir(self) -> Path:
        return self.data_dir / "chronicle"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "writer.lock"

    @property
    def recovery_pending_path(self) -> Path:
        return self.db_dir / RECOVERY_PENDING

    def layout(self) -> list[Path]:
        return [
            self.data_dir,
            self.db_dir,
            self.journal_dir,
            self.backups_dir,
            self.quarantine_dir,
            self.chronicle_dir,
        ]

    @classmethod
    def open(cls, home: Path, *, recovering: bool = False) -> Workspace:
        """Open an existing workspace, or explain why it cannot be opened.

        ``recovering`` is for `atlas recover` alone: it may open a workspace whose
        recovery was interrupted, or whose journal directory is missing (it rebuilds it)."""
        home = Path(home).expanduser().absolute()
        if not home.exists():
            raise WorkspaceError(f"no Atlas workspace at {home}: the directory does not exist")
        if not home.is_dir():
            raise WorkspaceError(f"{home} is not a directory")
        if not os.access(home, os.R_OK | os.X_OK):
            raise WorkspaceError(
                f"the workspace {home} is not readable by this user",
                hint="Check its owner and permissions (Atlas creates it 0700).",
            )
        config_path = home / CONFIG_NAME
        if not config_path.exists():
            raise WorkspaceError(f"{home} is not an Atlas workspace: {CONFIG_NAME} is missing")
        ws = cls(home=home, config=load_config(config_path))
        if ws.recovery_pending_path.exists() and not recovering:
            raise StorageError(
                f"a recovery of {ws.db_path} was interrupted before it finished",
                hint=f"Run `atlas recover --home {home}`: it finishes the swap it had verified.")
        missing = [p for p in ws.layout() if not p.is_dir()
                   and not (recovering and p == ws.journal_dir)]
        if missing:
            hint = f"Run `atlas init --home {home}` again; it only adds what is missing."
            if missing[0] == ws.journal_dir and ws.db_path.exists():
                hint = (f"The journal holds the ledger's history: run `atlas recover --home "
                        f"{home}`. It rebuilds data/journal/ from the ledger and states what "
                        "can no longer be known (`atlas init` would only add an empty one).")
            raise WorkspaceError(
                f"the workspace {home} is incomplete: {missing[0].relative_to(home)} is missing",
                hint=hint,
            )
        return ws

    @classmethod
    def init(
        cls,
        home: Path,
        owner_email: str,
        owner_name: str = "",
        businesses: dict[str, Business] | None = None,
        *,
        demo: bool = False,
        extra_config: str = "",
    ) -> Workspace:
        """Create the layout (idempotent: an existing ``atlas.toml`` is kept as it is)."""
        home = Path(home).expanduser().absolute()
        if home.exists() and not home.is_dir():
            raise Conflict(f"{home} exists and is not a directory")
        config_path = home / CONFIG_NAME
        if home.is_dir() and not config_path.exists() and any(home.iterdir()):
            # Atlas makes its home private (0700): never do that to someone else's folder
            raise Conflict(f"{home} already holds files and is not an Atlas workspace",
                           hint="Choose a new or empty directory for the workspace.")
        text = None
        if not config_path.exists():
            # Validate before anything is created: a bad --owner leaves no directory behind.
            try:
                text = render_config(owner_email, owner_name, businesses, demo=demo,
                                     extra=extra_config)
            except ConfigError as exc:
                raise InputError(f"cannot create the workspace: {exc.message}",
                                 hint="atlas init --owner you@yourbusiness.com") from exc
        try:
            _mkdir_private(home)
            if text is not None:
                _write_private(config_path, text)
            ws = cls(home=home, config=load_config(config_path))
            if text is None and owner_email:
                _same_owner(ws, owner_email)
            for path in ws.layout():
                _mkdir_private(path)
        except PermissionError as exc:
            raise WorkspaceError(f"cannot create the workspace at {home}: {exc}") from exc
        return ws


def _same_owner(ws: Workspace, owner_email: str) -> None:
    """``init`` on an existing workspace never rewrites atlas.toml: a different --owner is a
    conflict to resolve by hand, not something to ignore silently."""
    try:
        wanted = normal_email(owner_email)
    except ValueError as exc:
        raise InputError(f"--owner {owner_email!r} is not a valid email address: {exc}") from exc
    if wanted.casefold() != ws.config.owner.email.casefold():
        raise Conflict(
            f"{ws.home / CONFIG_NAME} already names the owner {ws.config.owner.email}, "
            f"not {wanted}; atlas init never rewrites atlas.toml",
            hint="To change the owner, edit [owner] email in atlas.toml.",
        )


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


__all__ = ["CONFIG_NAME", "RECOVERY_PENDING", "Workspace"]
