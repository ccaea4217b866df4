"""Snapshots (outputs of read-only lanes, with provenance), content items, deploys.

What is a side effect here, and what is a record:

- a **snapshot** is a record: any work may write one, a read-only job included;
- adding a content **draft** is a record (it is reviewable and nobody sees it);
  **publishing** is a side effect of lane ``social.post`` and goes through the effects
  module;
- recording a **deploy** is a record of something a provider already did, but it is
  checked like a side effect: a read-only context, or a job without the ``deploy``
  capability, is refused (with a receipt), so a job cannot quietly claim deploys.

Work that says it belongs to a job run (``ATLAS_JOB_RUN``) is checked against the ledger
before its records carry that run id.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..businesses import sync_events
from ..config import Channel, Config
from ..errors import Conflict, InputError, NotFound
from ..fsutil import fsync_dir, write_all
from ..gates.effects import Capabilities, Deliver, Effect, authorize, perform, refuse, running_job
from ..gates.lanes import fmt_ts
from ..ledger import Ledger, NewEvent, canonical_json, utc_now
from ..receipts import Receipt
from .process import config_secret_names, cut_tail, redact, secret_values

CONTENT_STATES = ("draft", "review", "approved", "published", "archived")
ADDABLE = ("draft", "review")  # approving and publishing are decisions, not inputs
PUBLISHABLE = ("draft", "review", "approved")
MAX_BYTES = 5 * 1024 * 1024
PROVIDER_TEXT = 4000  # characters of a text provider output kept as evidence
MAX_DEPTH = 100  # levels of nesting kept in a JSON file (SQLite's JSON allows 1000)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:
        raise InputError(f"{path} is larger than {MAX_BYTES} bytes")
    return data


def _load_json(raw: bytes, path: Path) -> Any:
    """The JSON in ``raw``, if it is JSON the ledger can keep: finite numbers, text that is
    valid Unicode (no lone surrogate such as ``"\\ud800"``), nested at most MAX_DEPTH
    levels. Raises ValueError when ``raw`` is not JSON at all, and :class:`InputError`
    when it is JSON that Atlas refuses to keep."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise InputError(f"{path} is nested more than {MAX_DEPTH} levels deep") from exc
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:  # not recursive: the data may be as deep as the parser allowed
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InputError(f"{path} holds a number that is not finite ({item}): NaN, "
                             "Infinity and numbers too large for a double are refused")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"{path} holds text that is not valid Unicode (a lone "
                                 f"surrogate: {item[exc.start:exc.end]!a})") from exc
        children = [*item, *item.values()] if isinstance(item, dict) else (
            item if isinstance(item, list) else [])
        if children and depth >= MAX_DEPTH:
            raise InputError(f"{path} is nested more than {MAX_DEPTH} levels deep")
        stack += [(child, depth + 1) for child in children]
    return value


def parse_since(value: str | None) -> str | None:
    """An ISO date or time as the ledger's UTC timestamp (a time without an offset is
    taken as UTC; one with an offset is converted)."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"--since {value!r} is not an ISO date") from exc
    return fmt_ts(dt if dt.tzinfo else dt.replace(tzinfo=UTC))


def _job_run(ledger: Ledger, job_run: str | None) -> str | None:
    """A job run id that a record may carry: one that exists and is running."""
    return None if job_run is None else running_job(ledger, job_run).run_id


# -- snapshots ----------------------------------------------------------------

def record_snapshot(ledger: Ledger, config: Config, *, name: str, path: Path, actor: str,
                    business: str | None = None, job_run: str | None = None) -> dict[str, Any]:
    raw = _read(path)
    try:
        data = _load_json(raw, path)
    except ValueError as exc:
        raise InputError(f"{path} is not JSON: {exc}") from exc
    if business is not None and business not in config.businesses:
        raise InputError(f"unknown business {business!r}")
    job_run = _job_run(ledger, job_run)
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
                actor: str, status: str = "draft", job_run: str | None = None
                ) -> dict[str, Any]:
    if business not in config.businesses:
        raise InputError(f"unknown business {business!r}")
    if status not in ADDABLE:
        raise InputError(f"--status must be one of {', '.join(ADDABLE)}; a content item is "
                         "published through `atlas content publish` (a side effect that goes "
                         "through its lane), never added as approved or published")
    if not title.strip():
        raise InputError("the title is empty")
    try:
        body = _read(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8") from exc
    job_run = _job_run(ledger, job_run)
    now = utc_now()
    receipt = Receipt(kind="content.add", subject=f"content:{title}", actor=actor,
                      started_at=now, finished_at=now, outcome="ok",
                      summary=f"{config.businesses[business].name} has a new {status} "
                              f"content item: {title!r} ({len(body.split())} words).",
                      evidence={"business": business, "file": str(path), "job_run": job_run})
    added = NewEvent("content.added", actor, {
        "business": business, "title": title, "body": body, "status": status,
        "sha256": hashlib.sha256(body.encode()).hexdigest(), "job_run": job_run},
        subject=f"business:{business}")
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


def _to_directory(item: dict[str, Any]) -> Deliver:
    """Publishing into a ``directory`` channel: the item's text becomes
    ``<dir>/<id>-<slug>.md``, written once (never overwritten) and synced to disk."""

    def deliver(_name: str, channel: Channel, home: Path) -> str:
        root = Path(str(channel.path))
        root = root if root.is_absolute() else home / root
        root.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", str(item["title"]).lower()).strip("-")[:60]
        path = root / f"{item['id']}-{slug or 'item'}.md"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as exc:
            raise Conflict(f"{path} already exists: content #{item['id']} was published "
                           "there before") from exc
        try:
            write_all(fd, str(item["body"]).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(root)
        return f"written to {path}"

    return deliver


def publish_content(ledger: Ledger, config: Config, home: Path, content_id: int, *,
                    lane: str, actor: str, by_owner: bool, caps: Capabilities,
                    env: Mapping[str, str]) -> dict[str, Any]:
    """Publish a content item through its lane: a side effect, checked by the effects
    module (capabilities, lane open, a ``directory`` channel). While the lane needs
    approval, only the owner may publish: running the command is the owner's decision."""
    item = get_content(ledger, content_id)
    if item["status"] not in PUBLISHABLE:
        raise Conflict(f"content #{content_id} is {item['status']}; only "
                       f"{', '.join(PUBLISHABLE)} items can be published")
    effect = Effect("post", lane, f"publish content #{content_id} {item['title']!r}",
                    detail={"content": content_id, "sha256": item["sha256"]},
                    deliver=_to_directory(item))
    caps = authorize(ledger, actor, caps, effect)
    settings = config.all_lanes().get(lane)
    if settings is not None and settings.needs_approval and not by_owner:
        refuse(ledger, actor, caps, effect, f"Lane {lane} needs the owner's decision: only "
               "the owner (ATLAS_TOKEN with role owner) may publish while it needs approval.")
    started = utc_now()
    reply, counters = perform(ledger, config, home, actor=actor, caps=caps, effect=effect,
                              env=env)
    business = config.businesses.get(item["business"])
    receipt = Receipt(
        kind="content.publish", subject=f"content:{content_id}", actor=actor,
        started_at=started, finished_at=utc_now(), outcome="ok",
        summary=(f"{business.name if business else item['business']} published "
                 f"{item['title']!r} through lane {lane}: {reply}."),
        effects=counters,
        evidence={"content": content_id, "sha256": item["sha256"], "lane": lane,
                  "reply": reply, "job_run": caps.job_run})
    events = ledger.append_many([
        NewEvent("content.status_changed", actor, {"id": content_id, "status": "published"},
                 subject=f"content:{content_id}"),
        receipt.as_event()])
    return {**receipt.body(), "receipt_id": events[-1].id}


# -- deploys ------------------------------------------------------------------

def _redacted(value: Any, secrets: list[str]) -> Any:
    """Every string in a JSON value (keys too) with the secrets redacted."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [_redacted(v, secrets) for v in value]
    if isinstance(value, dict):
        return {redact(str(k), secrets): _redacted(v, secrets) for k, v in value.items()}
    return value


def record_deploy(ledger: Ledger, config: Config | None = None, *, site: str, provider: str,
                  url: str, actor: str, caps: Capabilities | None = None,
                  env: Mapping[str, str] | None = None, commit: str | None = None,
                  evidence_file: Path | None = None) -> dict[str, Any]:
    """Record a deploy a provider performed, with its output (secrets redacted: the
    journal is append-only, so nothing unredacted may ever reach it). The secrets are those
    of ``env`` (default: this process's environment) and the variables ``config`` names.
    ``caps`` default to what ``env`` declares (``ATLAS_JOB_RUN``, ``ATLAS_CAPABILITIES``),
    checked against the ledger like every capability: a job's library call is its run's."""
    if not url.startswith(("http://", "https://")):
        raise InputError("--url must start with http:// or https://")
    env = os.environ if env is None else env
    secrets = secret_values(env, config_secret_names(config) if config is not None else [])
    evidence: dict[str, Any] = {}
    if evidence_file is not None:  # read, checked and redacted before anything is recorded
        raw = _read(evidence_file)
        try:
            evidence["provider_output"] = _redacted(_load_json(raw, evidence_file), secrets)
        except ValueError:  # not JSON: kept as text
            text = redact(raw.decode("utf-8", "replace"), secrets)
            evidence["provider_output"] = cut_tail(text, PROVIDER_TEXT)
        evidence["sha256"] = hashlib.sha256(raw).hexdigest()
    effect = Effect("deploy", "deploy", f"record a deploy of {site} by {provider}",
                    detail={"site": site, "provider": provider, "url": redact(url, secrets)})
    caps = authorize(ledger, actor, Capabilities.from_env(env) if caps is None else caps,
                     effect)
    url = redact(url, secrets)
    now = utc_now()
    receipt = Receipt(kind="deploy", subject=f"site:{site}", actor=actor, started_at=now,
                      finished_at=now, outcome="ok",
                      summary=f"{site} was deployed by {provider} to {url}"
                              + (f" at commit {commit[:12]}" if commit else "") + ".",
                      evidence={**evidence, "url": url, "provider": provider,
                                "commit": commit, "job_run": caps.job_run})
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
    cutoff = parse_since(since)
    if cutoff:
        sql += " WHERE recorded_at >= ?"
        args.append(cutoff)
    return [dict(r) for r in ledger.query(sql + " ORDER BY id", args)]


__all__ = ["CONTENT_STATES", "add_content", "get_content", "get_snapshot", "list_content",
           "list_deploys", "list_snapshots", "parse_since", "publish_content", "record_deploy",
           "record_snapshot"]
