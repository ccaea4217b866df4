"""Who is acting: tokens, roles, principals.

The owner approves, opens lanes and recovers; agents (scoped tokens) record,
draft and request, and can never approve. Identity comes from a token (the
CLI reads ``$ATLAS_TOKEN``), never from an argument. Only the sha256 of a
token is stored; it is compared in constant time.

The first owner token is minted by ``atlas init`` (:func:`bootstrap_owner_token`);
every later token needs the owner. Tokens are enforced at Atlas's faces: a
process running as the same Unix user can call this library or edit the files
directly, so tokens are not a sandbox.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Literal

from .config import Config
from .errors import Conflict, InputError, NotFound, PermissionDenied
from .ledger import Ledger, NewEvent

Role = Literal["owner", "agent", "local", "job"]  # "job": a verified job run, no token
TOKEN_PREFIX = "atl_"


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str
    token: str | None = None  # the name of the owner token that authenticated

    @property
    def actor(self) -> str:
        via = f" (token {self.token})" if self.token else ""
        return f"{self.role}:{self.name}{via}"

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"

    def require_owner(self, what: str) -> None:
        if not self.is_owner:
            raise PermissionDenied(f"only the owner may {what}; you are {self.actor}")


def digest(token: str) -> str:
    """sha256 of the token. A token that is not valid UTF-8 (bytes in the environment
    arrive as lone surrogates) is still digested, so it is refused as any wrong token is:
    every real token is ASCII."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def authenticate(ledger: Ledger, config: Config, token: str | None,
                 local_name: str = "local") -> Principal:
    """The principal a token belongs to; without a token, an unprivileged local user."""
    if not token:
        return Principal("local", local_name)
    presented = digest(token)
    match: tuple[str, str] | None = None
    for row in ledger.query("SELECT name, role, sha256 FROM tokens WHERE revoked_event IS NULL"):
        # compare against every token, in constant time, without stopping early
        if hmac.compare_digest(str(row["sha256"]), presented):
            match = (str(row["name"]), str(row["role"]))
    if match is None:
        raise PermissionDenied("ATLAS_TOKEN is not a valid token for this workspace",
                               hint="Check the token, or ask the owner for a new one.")
    name, role = match
    if role == "owner":
        return Principal("owner", config.owner.email, token=name)
    return Principal("agent", name)


def create_token(ledger: Ledger, principal: Principal, *, role: Role, name: str
                 ) -> tuple[str, int]:
    """Create a token (owner only) and return it (shown once) with its event id."""
    principal.require_owner("create tokens")
    minted = _mint(ledger, principal.actor, role, name, first_owner=False)
    assert minted is not None
    return minted


def bootstrap_owner_token(ledger: Ledger, *, name: str = "owner",
                          actor: str = "system:init") -> tuple[str, int] | None:
    """Mint the workspace's first owner token (``atlas init`` does), or return None when
    an owner token has ever existed: revoking the owner's token must not let anyone
    else mint a new one this way."""
    return _mint(ledger, actor, "owner", name, first_owner=True)


def _mint(ledger: Ledger, actor: str, role: Role, name: str, *, first_owner: bool
          ) -> tuple[str, int] | None:
    if role not in ("owner", "agent"):
        raise InputError("a token's role is owner or agent")
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise InputError("a token name is 1-64 letters, digits, '-' or '_'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        if first_owner and conn.execute("SELECT 1 FROM tokens WHERE role='owner'").fetchone():
            return []
        if conn.execute("SELECT 1 FROM tokens WHERE name=?", (name,)).fetchone():
            raise Conflict(f"a token named {name!r} exists already")
        return [NewEvent("token.created", actor,
                         {"name": name, "role": role, "sha256": digest(token)},
                         subject=f"token:{name}")]

    events = ledger.transact(build)
    return (token, events[0].id) if events else None


def revoke_token(ledger: Ledger, principal: Principal, name: str) -> int:
    principal.require_owner("revoke tokens")
    rows = ledger.query("SELECT name FROM tokens WHERE name=? AND revoked_event IS NULL", (name,))
    if not rows:
        raise NotFound(f"no active token named {name!r}")
    return ledger.append("token.revoked", principal.actor, {"name": name},
                         subject=f"token:{name}").id


def list_tokens(ledger: Ledger) -> list[dict[str, object]]:
    return [dict(r) for r in ledger.query(
        "SELECT name, role, created_event, revoked_event FROM tokens ORDER BY created_event")]


__all__ = ["Principal", "authenticate", "bootstrap_owner_token", "create_token", "digest",
           "list_tokens", "revoke_token"]
