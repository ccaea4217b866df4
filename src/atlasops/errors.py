"""Atlas's one exception tree.

Every error Atlas raises on purpose is an :class:`AtlasError`. Each class
carries the CLI ``exit_code`` it maps to and a ``hint`` that tells the user
what to do next; the faces (CLI, HTTP, MCP) only translate them::

    AtlasError                      exit 1
    ├── VerificationFailed          exit 1   a check found a discrepancy
    ├── SendFailed                  exit 1   a send failed or its outcome is unknown
    ├── InputError                  exit 2   bad input, rejected whole
    │   └── ImportRejected          exit 2   a CSV batch with row errors
    ├── WorkspaceError              exit 4   workspace missing or unreadable
    │   └── ConfigError             exit 4   atlas.toml invalid (key + reason)
    ├── StorageError                exit 5   database or journal unusable
    │   ├── DatabaseCorrupt         exit 5   SQLite says malformed / not a db
    │   └── JournalCorrupt          exit 5   a journal record fails its checksum
    ├── NotFound                    exit 6   unknown id or name
    ├── Conflict                    exit 7   the request clashes with the state
    └── PermissionDenied            exit 8   the caller's role may not do this

Third-party errors are wrapped where they enter (``raise X from exc``).
"""

from __future__ import annotations

from typing import Any


class AtlasError(Exception):
    """Base of every error Atlas raises on purpose."""

    exit_code: int = 1
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "error": type(self).__name__,
            "message": self.message,
            "exit_code": self.exit_code,
        }
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out


class VerificationFailed(AtlasError):
    exit_code = 1


class SendFailed(AtlasError):
    """A channel did not take a message (or may have): the receipt says which and why."""

    exit_code = 1


class InputError(AtlasError):
    exit_code = 2


class ImportRejected(InputError):
    """A batch had invalid rows; nothing was written."""

    default_hint = "Fix the rows listed, or pass --skip-invalid to import the valid rows only."


class WorkspaceError(AtlasError):
    exit_code = 4
    default_hint = "Create one with `atlas init --home DIR`, or point --home / $ATLAS_HOME at it."


class ConfigError(WorkspaceError):
    default_hint = "Edit atlas.toml and fix the key named above."


class StorageError(AtlasError):
    exit_code = 5


class DatabaseCorrupt(StorageError):
    default_hint = (
        "The ledger database is damaged; the journal still holds every committed event. "
        "Run `atlas recover --dry-run` to see the plan, then `atlas recover`."
    )


class JournalCorrupt(StorageError):
    default_hint = "Run `atlas ledger verify` to see every damaged record."


class NotFound(AtlasError):
    exit_code = 6


class Conflict(AtlasError):
    exit_code = 7


class PermissionDenied(AtlasError):
    exit_code = 8
    default_hint = ("Only the owner may do this. Set ATLAS_TOKEN to the owner's token "
                    "(`atlas init` printed it once).")


__all__ = [
    "PermissionDenied",
    "AtlasError",
    "SendFailed",
    "Conflict",
    "ConfigError",
    "DatabaseCorrupt",
    "ImportRejected",
    "InputError",
    "JournalCorrupt",
    "NotFound",
    "StorageError",
    "VerificationFailed",
    "WorkspaceError",
]
