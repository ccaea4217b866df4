"""Suppression: addresses that must never be emailed (unsubscribes, bounces, requests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from email_validator import EmailNotValidError, validate_email

from ..auth import Principal
from ..errors import InputError
from ..ledger import Ledger, NewEvent


def normalize(address: str) -> str:
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InputError(f"{address!r} is not a valid email address: {exc}") from exc


def wire_address(address: str) -> str | None:
    """The address as plain-ASCII SMTP carries it (an internationalised domain becomes
    punycode), or None when its local part is not ASCII: Atlas's channels do not speak
    SMTPUTF8, so such an address cannot be sent to."""
    try:
        return validate_email(address, check_deliverability=False).ascii_email
    except EmailNotValidError:
        return None


def address_key(address: str) -> str:
    """How the ledger keys an address: normalized (an internationalised domain in
    Unicode, as punycode decodes), case-folded."""
    try:
        return validate_email(address, check_deliverability=False).normalized.casefold()
    except EmailNotValidError:
        return address.casefold()


def read_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} cannot be read as UTF-8 text: {exc}") from exc
    out = []
    for line in text.splitlines():
        cell = line.split(",")[0].strip()
        if cell and not cell.startswith("#") and cell.lower() != "email":
            out.append(cell)
    return out


def suppress(ledger: Ledger, principal: Principal, addresses: list[str], reason: str) -> int:
    """Add addresses (all validated first: one bad address rejects the batch)."""
    normalized = [normalize(a) for a in addresses]

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        known = {r[0] for r in conn.execute("SELECT email_key FROM suppressions")}
        out = []
        for email in normalized:
            if email.casefold() in known:
                continue
            known.add(email.casefold())
            out.append(NewEvent("suppression.added", principal.actor,
                                {"email": email, "reason": reason}, subject=f"email:{email}"))
        return out

    return len(ledger.transact(build))


def is_suppressed(ledger: Ledger, address: str) -> bool:
    rows = ledger.query("SELECT 1 FROM suppressions WHERE email_key=?", (address.casefold(),))
    return bool(rows)


__all__ = ["address_key", "is_suppressed", "normalize", "read_file", "suppress",
           "wire_address"]
