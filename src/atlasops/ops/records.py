"""Snapshots (outputs of read-only lanes, with provenance), content items, deploys."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..businesses import sync_events
from ..config import Config
from ..errors import InputError, NotFound
from ..ledger import Ledger, NewEvent, canonical_json, utc_now
from ..receipts import Receipt

CONTENT_STATES = ("draft", "review", "approved", "published", "archived")
MAX_BYTES = 5 * 1024 * 1024


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:
        raise InputError(f"{path} is larger than {MAX_BYTES} bytes")
    return data


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"--since {value!r} is not an ISO date") from exc
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- snapshots ----------------------------------------------------------------

def record_snapshot(ledger: Ledger, config: Config, *, name: str, path: Path, actor: str,
                    business: str | None = None, job_run: str | None = None) -> dict[str, Any]:
    raw = _read(path)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"{path} is not JSON: {exc}") from exc
    if business is not None and business not in config.businesses:
        raise InputError(f"unknown business {business!r}")
    digest = hashlib.sha256(canonical_json(data).encode()).hexdigest()
    snap = NewEvent("snapshot.recorded", actor, {
        "name": name, "business": business, "sha256": digest, "data": data,
        "job_run": job_run, "source_file": str(path)}, subject=f"snapshot:{name}")
    events = ledger.transact(lambda conn: [*sync_events(conn, config, actor), snap])
    return get_snapshot(ledger, events[-1].id)


def get_snapshot(ledger: Ledger, snapshot_id: int) -> dict[str, Any]:
    rows = ledger.query("SELECT * FROM snapshots WHERE id=?", (snapshot_id,))
    if not rows:
        raise NotFound(f"no snapshot with id {snapshot_id}")
    out = dict(rows[0])
    out["data"] = json.loads(out["data"])
    return out


def list_snapshots(ledger: Ledger, name: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, name, business, sha256, job_run, recorded_at, actor FROM snapshots"
    args: list[Any] = []
    if name:
        sql += " WHERE name=?"
        args.append(name)
    return [dict(r) for r in ledger.query(sql + " ORDER BY id", args)]


# -- content ------------------------------------------------------------------

def add_content(ledger: Ledger, config: Config, *, business: str, title: str, path: Path,
                actor: str, status: str = "draft") -> dict[str, Any]:
    if business not in config.businesses:
        raise InputError(f"unknown business {business!r}")
    if status not in CONTENT_STATES:
        raise InputError(f"status must be one of {', '.join(CONTENT_STATES)}")
    if status == "published":
        raise InputError("content is published through `atlas content publish` (a side "
                         "effect that goes through its lane), not added as published")
    if not title.strip():
        raise InputError("the title is empty")
    try:
        body = _read(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8") from exc
    now = utc_now()
    receipt = Receipt(kind="content.add", subject=f"content:{title}", actor=actor,
                      started_at=now, finished_at=now, outcome="ok",
                      summary=f"{config.businesses[business].name} has a new {status} "
                              f"content item: {title!r} ({len(body.split())} words).",
                      evidence={"business": business, "file": str(path)})
    added = NewEvent("content.added", actor, {
        "business": business, "title": title, "body": body, "status": status,
        "sha256": hashlib.sha256(body.encode()).hexdigest()}, subject=f"business:{business}")
    events = ledger.transact(lambda conn: [*sync_events(conn, config, actor), added,
                                           receipt.as_event()])
    return get_content(ledger, events[-2].id)


def get_content(ledger: Ledger, content_id: int) -> dict[str, Any]:
    rows = ledger.query("SELECT * FROM content WHERE id=?", (content_id,))
    if not rows:
        raise NotFound(f"no content item with id {content_id}")
    return dict(rows[0])


def list_content(ledger: Ledger, business: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT id, business, title, status, sha256, created_at, updated_at, actor "
           "FROM content")
    args: list[Any] = []
    if business:
        sql += " WHERE business=?"
        args.append(business)
    return [dict(r) for r in ledger.query(sql + " ORDER BY id", args)]


# -- deploys ------------------------------------------------------------------

def record_deploy(ledger: Ledger, *, site: str, provider: str, url: str, actor: str,
                  commit: str | None = None, evidence_file: Path | None = None,
                  job_run: str | None = None) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise InputError("--url must start with http:// or https://")
    evidence: dict[str, Any] = {}
    if evidence_file is not None:
        raw = _read(evidence_file)
        try:
            evidence = {"provider_output": json.loads(raw)}
        except ValueError:
            evidence = {"provider_output": raw.decode("utf-8", "replace")[-4000:]}
        evidence["sha256"] = hashlib.sha256(raw).hexdigest()
    now = utc_now()
    receipt = Receipt(kind="deploy", subject=f"site:{site}", actor=actor, started_at=now,
                      finished_at=now, outcome="ok",
                      summary=f"{site} was deployed by {provider} to {url}"
                              + (f" at commit {commit[:12]}" if commit else "") + ".",
                      evidence={**evidence, "url": url, "provider": provider,
                                "commit": commit, "job_run": job_run})
    events = ledger.append_many([
        NewEvent("deploy.recorded", actor, {"site": site, "provider": provider, "url": url,
                                            "commit": commit, "evidence": evidence},
                 subject=f"site:{site}"),
        receipt.as_event()])
    return {"id": events[0].id, "receipt_id": events[1].id, "site": site,
            "provider": provider, "url": url, "commit": commit}


def list_deploys(ledger: Ledger, since: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, site, provider, url, git_commit, recorded_at, actor FROM deploys"
    args: list[Any] = []
    cutoff = _since(since)
    if cutoff:
        sql += " WHERE recorded_at >= ?"
        args.append(cutoff)
    return [dict(r) for r in ledger.query(sql + " ORDER BY id", args)]


__all__ = ["CONTENT_STATES", "add_content", "get_content", "get_snapshot", "list_content",
           "list_deploys", "list_snapshots", "record_deploy", "record_snapshot"]
