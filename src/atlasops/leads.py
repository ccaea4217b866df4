"""Leads: CSV import validated at the edge, and listing.

An import is all-or-nothing by default: one invalid row rejects the batch and
nothing is written. ``skip_invalid`` imports the valid rows and reports the
rest. Re-importing the same file writes nothing (no new events for rows that
did not change).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from . import businesses
from .config import Config
from .errors import ImportRejected, InputError
from .fsutil import display_name
from .ledger import Ledger, NewEvent, utc_now
from .receipts import Receipt

STATUSES = ("new", "contacted", "replied", "qualified", "won", "lost", "unsubscribed")
COLUMNS = ("email", "name", "company", "segment", "business", "source", "status")
REQUIRED = ("email",)
MAX_FIELD = 500
MAX_ROWS = 1_000_000
SEGMENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class RowError:
    row: int  # line number in the file (the header is line 1)
    column: str
    value: str
    reason: str


@dataclass
class ImportReport:
    file: str
    sha256: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[RowError] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    # existing leads whose status the file would change, kept (no --update-status)
    status_kept: list[int] = field(default_factory=list)
    receipt_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LeadRow:
    line: int
    fields: dict[str, str]  # only the columns the file provides, cleaned


def _decode(path: Path) -> tuple[str, str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        return data.decode("utf-8-sig"), digest
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path} is not UTF-8: invalid byte 0x{data[exc.start]:02x} at byte {exc.start} "
            f"(line {line})",
            hint="Save the file as UTF-8 (most spreadsheets offer 'CSV UTF-8') and try again.",
        ) from exc


def parse_csv(path: Path, config: Config, default_business: str | None
              ) -> tuple[list[LeadRow], list[RowError], list[str], str, int]:
    """Read and validate every row. Returns (valid rows, errors, ignored columns, sha256, rows)."""
    if default_business is not None and default_business not in config.businesses:
        raise InputError(f"unknown business {default_business!r}",
                         hint="Businesses are declared in atlas.toml under [businesses.SLUG].")
    text, digest = _decode(path)
    # strict: an unterminated quote is an error, not a value that runs to the end of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration as exc:
        raise InputError(f"{path} is empty: expected a header row with an 'email' column") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: the header is not valid CSV: {exc}") from exc
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(
            f"{path}: required column {missing[0]!r} is missing "
            f"(columns found: {', '.join(repr(n) for n in names) or 'none'})")
    dupes = sorted({n for n in names if names.count(n) > 1 and n})
    if dupes:
        raise InputError(f"{path}: column {dupes[0]!r} appears more than once")
    ignored = [n for n in names if n not in COLUMNS]
    valid: list[LeadRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    count = 0
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            count += 1
            if count > MAX_ROWS:
                raise InputError(f"{path} has more than {MAX_ROWS} rows; split it")
            row, row_errors = _validate_row(line, names, cells, config, default_business)
            if row is not None:
                key = row.fields["email"].casefold()
                if key in seen:
                    row_errors.append(RowError(line, "email", row.fields["email"],
                                               f"duplicate of the address on line {seen[key]}"))
                else:
                    seen[key] = line
            if row_errors:
                errors.extend(row_errors)
            elif row is not None:
                valid.append(row)
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from exc
    return valid, errors, ignored, digest, count


def _validate_row(line: int, names: list[str], cells: list[str], config: Config,
                  default_business: str | None) -> tuple[LeadRow | None, list[RowError]]:
    errors: list[RowError] = []
    if len(cells) > len(names):
        errors.append(RowError(line, "-", "", f"{len(cells)} cells but the header has "
                               f"{len(names)} columns"))
        return None, errors
    raw = {n: (cells[i] if i < len(cells) else "") for i, n in enumerate(names) if n in COLUMNS}
    fields: dict[str, str] = {}
    for col, value in raw.items():
        value = value.strip()
        if len(value) > MAX_FIELD:
            errors.append(RowError(line, col, value[:40] + "...",
                                   f"longer than {MAX_FIELD} characters"))
        elif CONTROL_RE.search(value):
            errors.append(RowError(line, col, value[:40], "contains control characters"))
        elif value:
            fields[col] = value
    email = fields.get("email", "")
    if not email:
        errors.append(RowError(line, "email", "", "required value is empty"))
    else:
        try:
            fields["email"] = validate_email(email, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            errors.append(RowError(line, "email", email, str(exc)))
    if "segment" in fields:
        seg = fields["segment"].lower().replace(" ", "_")
        if SEGMENT_RE.match(seg):
            fields["segment"] = seg
        else:
            errors.append(RowError(line, "segment", fields["segment"],
                                   "use letters, digits, '-' or '_'"))
    business = fields.get("business") or default_business
    if business is not None:
        if business not in config.businesses:
            errors.append(RowError(line, "business", business,
                                   "not a business declared in atlas.toml"))
        fields["business"] = business
    if "status" in fields:
        status = fields["status"].lower()
        if status in STATUSES:
            fields["status"] = status
        else:
            errors.append(RowError(line, "status", fields["status"],
                                   f"must be one of {', '.join(STATUSES)}"))
    return (None if errors else LeadRow(line, fields)), errors


def _diff_events(conn: sqlite3.Connection, rows: list[LeadRow], actor: str, source: str,
                 update_status: bool, kept: list[int]) -> tuple[list[NewEvent], int, int, int]:
    """The events that bring the leads to the file's rows. An existing lead's status is
    the work done on it since (contacted, replied...): a file changes it only with
    ``update_status``; otherwise the lead's id goes to ``kept``."""
    created = updated = unchanged = 0
    events: list[NewEvent] = []
    cur = conn.execute("SELECT id, email_key, name, company, segment, business, source, status"
                       " FROM leads")
    existing = {r[1]: r for r in cur}
    for row in rows:
        f = dict(row.fields)
        f.setdefault("source", source)
        found = existing.get(f["email"].casefold())
        if found is None:
            f.setdefault("status", "new")
            events.append(NewEvent("lead.created", actor, f, subject=f"lead:{f['email']}"))
            created += 1
            continue
        current = dict(zip(("name", "company", "segment", "business", "source", "status"),
                           found[2:], strict=True))
        changes = {k: v for k, v in f.items()
                   if k in current and k != "source" and current[k] != v}
        if "status" in changes and not update_status:
            del changes["status"]
            kept.append(found[0])
        if changes:
            events.append(NewEvent("lead.updated", actor, {"id": found[0], "changes": changes},
                                   subject=f"lead:{found[0]}"))
            updated += 1
        else:
            unchanged += 1
    return events, created, updated, unchanged


def import_csv(ledger: Ledger, config: Config, path: Path, *, actor: str,
               business: str | None = None, skip_invalid: bool = False,
               update_status: bool = False) -> ImportReport:
    started = utc_now()
    path = Path(path)
    valid, errors, ignored, digest, count = parse_csv(path, config, business)
    report = ImportReport(file=display_name(path), sha256=digest, rows=count,
                          ignored_columns=ignored)
    if errors and not skip_invalid:
        raise ImportRejected(
            f"{path}: {len(errors)} invalid value(s) in {len({e.row for e in errors})} row(s); "
            "nothing was imported",
            errors=[asdict(e) for e in errors],
        )
    report.skipped = errors

    name = display_name(path.name)  # a file name that is not UTF-8 is still recordable

    def build(conn: sqlite3.Connection) -> list[NewEvent]:
        events = businesses.sync_events(conn, config, actor)
        report.status_kept = []
        lead_events, report.created, report.updated, report.unchanged = _diff_events(
            conn, valid, actor, f"csv:{name}", update_status, report.status_kept)
        if not lead_events:
            return events
        receipt = Receipt(
            kind="leads.import", subject=name, actor=actor, started_at=started,
            finished_at=utc_now(), outcome="ok",
            summary=(f"{report.created} new and {report.updated} updated leads from {name}"
                     f" are in the ledger; {report.unchanged} unchanged,"
                     f" {len({e.row for e in errors})} rows skipped."),
            evidence={"sha256": digest, "rows": count, "skipped_rows": sorted({e.row for e in
                                                                                errors})},
        )
        return events + lead_events + [receipt.as_event()]

    appended = ledger.transact(build)
    if appended and appended[-1].kind == "receipt.recorded":
        report.receipt_id = appended[-1].id
    return report


def list_leads(ledger: Ledger, *, segment: str | None = None, business: str | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT id, email, name, company, segment, business, source, status, created_at,"
           " updated_at FROM leads WHERE 1=1")
    args: list[Any] = []
    if segment:
        sql += " AND segment = ?"
        args.append(segment.lower())
    if business:
        sql += " AND business = ?"
        args.append(business)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [dict(r) for r in ledger.query(sql, args)]


__all__ = ["COLUMNS", "STATUSES", "ImportReport", "RowError", "import_csv", "list_leads",
           "parse_csv"]
