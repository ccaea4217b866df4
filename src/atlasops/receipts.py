"""Receipts: one shape for every kind of work Atlas records.

A receipt is the body of a ``receipt.recorded`` event. Kinds *add* keys
(recovery adds ``backup``/``loss``, repair adds ``readback``); they never
rename the common ones below. ``effects`` is always present: 0 is a fact.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import NotFound
from .ledger import Event, Ledger, NewEvent

Outcome = Literal["ok", "fixed", "not_fixed", "not_broken", "recovered", "recovered_with_loss",
                  "failed", "refused", "held"]


class Effects(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emails_sent: int = 0
    public_posts: int = 0
    cta_changes: int = 0
    spend_cents: int = 0


class Action(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    result: str
    ms: float = 0.0
    command: str | None = None
    exit_code: int | None = None
    output_tail: str | None = None


class Check(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    passed: bool
    detail: str = ""
    ms: float = 0.0


class Receipt(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str = Field(min_length=1)
    subject: str | None = None
    actor: str = Field(min_length=1)
    started_at: str
    finished_at: str
    outcome: Outcome
    summary: str = Field(min_length=1)
    symptom: dict[str, Any] | str | None = None
    actions: list[Action] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)
    effects: Effects = Field(default_factory=Effects)
    evidence: dict[str, Any] = Field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def as_event(self) -> NewEvent:
        return NewEvent("receipt.recorded", self.actor, self.body(),
                        subject=self.subject or self.kind)


def record(ledger: Ledger, receipt: Receipt) -> Event:
    """Append a receipt to the ledger; returns its event (the receipt id is the event id)."""
    return ledger.append_many([receipt.as_event()])[0]


def list_receipts(ledger: Ledger, *, kind: str | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
    sql = "SELECT id, kind, subject, actor, finished_at, outcome, summary FROM receipts"
    args: list[Any] = []
    if kind:
        sql += " WHERE kind = ?"
        args.append(kind)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return [dict(r) for r in ledger.query(sql, args)]


def get_receipt(ledger: Ledger, receipt_id: int) -> dict[str, Any]:
    rows = ledger.query("SELECT id, body FROM receipts WHERE id = ?", (receipt_id,))
    if not rows:
        raise NotFound(f"no receipt with id {receipt_id}",
                       hint="`atlas receipts list` shows the ids.")
    body: dict[str, Any] = json.loads(rows[0]["body"])
    return {"id": rows[0]["id"], **body}


__all__ = ["Action", "Check", "Effects", "Outcome", "Receipt", "get_receipt", "list_receipts",
           "record"]
