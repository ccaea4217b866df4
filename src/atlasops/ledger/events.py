"""Events: the only way state changes.

An event is ``(id, ts, kind, actor, subject, payload)`` plus the hash chain
(``prev_hash``, ``hash``). ``id`` counts from 1 with no gaps; ``ts`` is UTC.
The hash covers every other field and the previous hash, so a single event,
a salvaged row or a whole journal can be verified on its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64


def utc_now() -> str:
    """Now, as an ISO-8601 UTC timestamp with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """The one JSON spelling Atlas hashes and stores: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class NewEvent:
    """An event not yet appended: what a caller asks the ledger to record."""

    kind: str
    actor: str
    payload: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None


@dataclass(frozen=True)
class Event:
    id: int
    ts: str
    kind: str
    actor: str
    subject: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    @staticmethod
    def compute_hash(
        id: int,
        ts: str,
        kind: str,
        actor: str,
        subject: str | None,
        payload: dict[str, Any],
        prev_hash: str,
    ) -> str:
        body = canonical_json(
            {"id": id, "ts": ts, "kind": kind, "actor": actor, "subject": subject,
             "payload": payload, "prev_hash": prev_hash}
        )
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    @classmethod
    def seal(cls, new: NewEvent, id: int, ts: str, prev_hash: str) -> Event:
        digest = cls.compute_hash(id, ts, new.kind, new.actor, new.subject, new.payload, prev_hash)
        return cls(id, ts, new.kind, new.actor, new.subject, new.payload, prev_hash, digest)

    def hash_ok(self) -> bool:
        expected = self.compute_hash(
            self.id, self.ts, self.kind, self.actor, self.subject, self.payload, self.prev_hash
        )
        return expected == self.hash

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            "subject": self.subject,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            id=int(data["id"]),
            ts=str(data["ts"]),
            kind=str(data["kind"]),
            actor=str(data["actor"]),
            subject=None if data.get("subject") is None else str(data["subject"]),
            payload=dict(data["payload"]),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
        )


__all__ = ["GENESIS_HASH", "Event", "NewEvent", "canonical_json", "utc_now"]
