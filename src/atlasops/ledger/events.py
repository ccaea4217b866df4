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
from json.encoder import encode_basestring
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
    # The payload's canonical JSON, when already known (an event just sealed): the ledger
    # row and the journal record reuse it instead of serialising the payload again.
    payload_json: str | None = field(default=None, compare=False, repr=False)

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
        payload_json: str | None = canonical_json(new.payload)
        assert payload_json is not None
        digest = hash_from_stored(id, ts, new.kind, new.actor, new.subject, payload_json,
                                  prev_hash)
        if digest is None:  # fields of unexpected types: the slow path decides
            digest = cls.compute_hash(id, ts, new.kind, new.actor, new.subject, new.payload,
                                      prev_hash)
            payload_json = None
        return cls(id, ts, new.kind, new.actor, new.subject, new.payload, prev_hash, digest,
                   payload_json)

    def stored_payload(self) -> str:
        """The payload as the ledger and the journal store it (canonical JSON)."""
        return self.payload_json if self.payload_json is not None else canonical_json(
            self.payload)

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


def hash_from_stored(id: int, ts: str, kind: str, actor: str, subject: str | None,
                     payload_json: str, prev_hash: str) -> str | None:
    """The event hash computed from the *stored* payload text, without decoding it.

    The hashed body is ``canonical_json`` of ``{actor, id, kind, payload, prev_hash,
    subject, ts}``: sorted keys, no spaces. Atlas stores the payload as its canonical
    JSON (the ledger's ``payload`` column, the journal record's ``payload`` member), so
    the body is those keys in that order with the stored text spliced in, byte for byte
    what :meth:`Event.compute_hash` serialises. A match therefore proves exactly what
    the slow path proves; on a mismatch (or a field of an unexpected type) callers fall
    back to the slow path, so a non-canonical spelling of the same content is judged as
    before. Returns None when the fields are not of the types Atlas writes.
    """
    if (type(id) is not int or type(ts) is not str or type(kind) is not str
            or type(actor) is not str or type(payload_json) is not str
            or type(prev_hash) is not str
            or (subject is not None and type(subject) is not str)):
        return None
    head, rest = _spliced(id, ts, kind, actor, subject, payload_json, prev_hash)
    return hashlib.sha256((head + rest).encode("utf-8")).hexdigest()


def _spliced(id: int, ts: str, kind: str, actor: str, subject: str | None,
             payload_json: str, prev_hash: str) -> tuple[str, str]:
    """The canonical JSON of an event's fields, cut where ``"hash"`` goes (keys sorted:
    actor, [hash,] id, ...), with the stored payload text spliced in: ``head + rest`` is
    the hashed body, ``head + '"hash":..., ' + rest`` the journal record."""
    head = '{"actor":' + encode_basestring(actor) + ","
    rest = "".join((
        '"id":', str(id), ',"kind":', encode_basestring(kind),
        ',"payload":', payload_json, ',"prev_hash":', encode_basestring(prev_hash),
        ',"subject":', "null" if subject is None else encode_basestring(subject),
        ',"ts":', encode_basestring(ts), "}"))
    return head, rest


def record_json(event: Event) -> str:
    """The journal record of an event: its canonical JSON, hash included. Spliced from the
    sealed payload text when there is one (byte for byte what the slow path writes)."""
    if event.payload_json is None:
        return canonical_json(event.to_dict())
    head, rest = _spliced(event.id, event.ts, event.kind, event.actor, event.subject,
                          event.payload_json, event.prev_hash)
    return head + '"hash":' + encode_basestring(event.hash) + "," + rest


class StoredEvent:
    """An event as stored (ledger row or journal record), its payload still JSON text.

    Verification only needs the hash, the id and the links; decoding the payload
    (``json.loads``) and re-serialising it is most of the cost of checking a large
    ledger, so this form checks the hash from the stored text (:func:`hash_from_stored`)
    and only builds an :class:`Event` (:meth:`event`) when asked, or to fall back.
    ``verified`` is set by a reader that has already proven the hash from these exact
    fields (a journal record, see :func:`~atlasops.ledger.journal.decode_stored`)."""

    __slots__ = ("actor", "hash", "id", "kind", "payload_json", "prev_hash", "subject", "ts",
                 "verified")

    def __init__(self, id: int, ts: str, kind: str, actor: str, subject: str | None,
                 payload_json: str, prev_hash: str, hash: str, verified: bool = False) -> None:
        self.id, self.ts, self.kind, self.actor, self.subject = id, ts, kind, actor, subject
        self.payload_json, self.prev_hash, self.hash = payload_json, prev_hash, hash
        self.verified = verified

    @classmethod
    def from_event(cls, e: Event) -> StoredEvent:
        return cls(e.id, e.ts, e.kind, e.actor, e.subject, canonical_json(e.payload),
                   e.prev_hash, e.hash)

    def fields(self) -> tuple[Any, ...]:
        return (self.id, self.ts, self.kind, self.actor, self.subject, self.payload_json,
                self.prev_hash, self.hash)

    def __repr__(self) -> str:
        return f"StoredEvent{self.fields()!r}"

    def hash_ok(self) -> bool:
        if self.verified:
            return True
        fast = hash_from_stored(self.id, self.ts, self.kind, self.actor, self.subject,
                                self.payload_json, self.prev_hash)
        if fast is not None and fast == self.hash:
            self.verified = True
            return True
        try:
            return self.event().hash_ok()  # the slow path decides every other case
        except (ValueError, TypeError):
            return False

    def matches_record(self, body: bytes) -> bool:
        """Whether ``body`` (a journal record's JSON, after its CRC) is exactly the
        canonical record of these fields: then the full decoder would read these same
        fields from it. Proves the hash on the way (one SHA-256 for both copies)."""
        if (type(self.id) is not int or type(self.ts) is not str
                or type(self.kind) is not str or type(self.actor) is not str
                or type(self.payload_json) is not str or type(self.prev_hash) is not str
                or type(self.hash) is not str
                or (self.subject is not None and type(self.subject) is not str)):
            return False
        head, rest = _spliced(self.id, self.ts, self.kind, self.actor, self.subject,
                              self.payload_json, self.prev_hash)
        if (head + '"hash":' + encode_basestring(self.hash) + "," + rest).encode() != body:
            return False
        if not self.verified:
            self.verified = hashlib.sha256((head + rest).encode()).hexdigest() == self.hash
        return True

    def event(self) -> Event:
        """The decoded event (raises ValueError when the payload is not JSON)."""
        return Event(self.id, self.ts, self.kind, self.actor, self.subject,
                     json.loads(self.payload_json), self.prev_hash, self.hash)

    def same_as(self, other: StoredEvent) -> bool:
        """Whether two stored copies hold the same event, as decoded :class:`Event`
        equality says: equal stored fields are equal content; otherwise decode both.
        When they are equal and ``other``'s hash is proven, so is this one's (the hash
        is a function of exactly these fields)."""
        if self.fields() == other.fields():
            if other.verified:
                self.verified = True
            return True
        try:
            return self.event() == other.event()
        except (ValueError, TypeError):
            return False


__all__ = ["GENESIS_HASH", "Event", "NewEvent", "StoredEvent", "canonical_json",
           "hash_from_stored", "record_json", "utc_now"]
