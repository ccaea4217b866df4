"""Tables are projections of events: one function per event kind.

:func:`apply` is the only code that writes the domain tables. It must be a
pure function of the event (no clock, no randomness, no outside reads), so
that replaying the journal into an empty database reproduces the same tables.
Kinds without a projection (``journal.tail_set_aside``, ...) live only in
the ``events`` table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from ..errors import InputError
from .events import Event, canonical_json

Projection = Callable[[sqlite3.Connection, Event], None]
PROJECTIONS: dict[str, Projection] = {}

LEAD_FIELDS = ("email", "name", "company", "segment", "business", "source", "status")


def projection(kind: str) -> Callable[[Projection], Projection]:
    def register(fn: Projection) -> Projection:
        PROJECTIONS[kind] = fn
        return fn

    return register


def insert_event(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "INSERT INTO events(id, ts, kind, actor, subject, payload, prev_hash, hash)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (event.id, event.ts, event.kind, event.actor, event.subject,
         event.stored_payload(), event.prev_hash, event.hash),
    )


def apply(conn: sqlite3.Connection, event: Event) -> None:
    """Insert the event row and apply it to the tables (inside the caller's transaction).

    A payload its projection cannot apply (a missing key, a wrong type) is bad input: it
    raises :class:`InputError` before anything reaches the journal."""
    insert_event(conn, event)
    project(conn, event)


def project(conn: sqlite3.Connection, event: Event) -> None:
    """Apply an event whose row is inserted to the tables (see :func:`apply`)."""
    fn = PROJECTIONS.get(event.kind)
    if fn is not None:
        try:
            fn(conn, event)
        except KeyError as exc:
            raise InputError(f"event {event.kind}: the payload lacks the key {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"event {event.kind}: the payload cannot be applied: {exc}"
                             ) from exc
    if event.kind == "receipt.recorded" and event.payload.get("kind") == "job.run":
        conn.execute("UPDATE job_runs SET receipt_id=?, outcome=? WHERE run_id=?",
                     (event.id, event.payload["outcome"],
                      event.payload.get("evidence", {}).get("run_id")))


@projection("business.upserted")
def _business_upserted(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO businesses(slug, name, sites, updated_event) VALUES (?,?,?,?)"
        " ON CONFLICT(slug) DO UPDATE SET name=excluded.name, sites=excluded.sites,"
        " updated_event=excluded.updated_event",
        (p["slug"], p["name"], json.dumps(p.get("sites", [])), e.id),
    )


@projection("lead.created")
def _lead_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO leads(id, email, email_key, name, company, segment, business, source,"
        " status, created_at, updated_at, updated_event) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (e.id, p["email"], p["email"].casefold(), p.get("name", ""), p.get("company", ""),
         p.get("segment", ""), p.get("business"), p.get("source", ""), p.get("status", "new"),
         e.ts, e.ts, e.id),
    )


@projection("lead.updated")
def _lead_updated(conn: sqlite3.Connection, e: Event) -> None:
    changes = {k: v for k, v in e.payload["changes"].items() if k in LEAD_FIELDS}
    if not changes:
        raise ValueError(f"no lead field to change (fields: {', '.join(LEAD_FIELDS)})")
    sets = ", ".join(f"{k}=?" for k in changes)
    values: list[object] = list(changes.values())
    if "email" in changes:
        sets += ", email_key=?"
        values.append(str(changes["email"]).casefold())
    cur = conn.execute(
        f"UPDATE leads SET {sets}, updated_at=?, updated_event=? WHERE id=?",
        (*values, e.ts, e.id, e.payload["id"]),
    )
    if cur.rowcount != 1:
        raise ValueError(f"there is no lead with id {e.payload['id']!r}")


EFFECT_COUNTERS = ("emails_sent", "public_posts", "cta_changes", "spend_cents")


@projection("receipt.recorded")
def _receipt_recorded(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    effects = p["effects"]
    if not all(isinstance(effects.get(c), int) for c in EFFECT_COUNTERS):
        raise ValueError(f"a receipt's effects must count {', '.join(EFFECT_COUNTERS)}")
    conn.execute(
        "INSERT INTO receipts(id, kind, subject, actor, started_at, finished_at, outcome,"
        " summary, body) VALUES (?,?,?,?,?,?,?,?,?)",
        (e.id, p["kind"], p.get("subject"), p["actor"], p["started_at"], p["finished_at"],
         p["outcome"], p["summary"], e.stored_payload()),
    )


@projection("token.created")
def _token_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute("INSERT INTO tokens(name, role, sha256, created_event) VALUES (?,?,?,?)",
                 (p["name"], p["role"], p["sha256"], e.id))


@projection("token.revoked")
def _token_revoked(conn: sqlite3.Connection, e: Event) -> None:
    conn.execute("UPDATE tokens SET revoked_event=? WHERE name=?", (e.id, e.payload["name"]))


def _lane_change(conn: sqlite3.Connection, e: Event, is_open: bool) -> None:
    conn.execute(
        "INSERT INTO lane_state(lane, open, reason, actor, changed_at, event_id)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT(lane) DO UPDATE SET open=excluded.open,"
        " reason=excluded.reason, actor=excluded.actor, changed_at=excluded.changed_at,"
        " event_id=excluded.event_id",
        (e.payload["lane"], int(is_open), e.payload.get("reason", ""), e.actor, e.ts, e.id))


@projection("lane.opened")
def _lane_opened(conn: sqlite3.Connection, e: Event) -> None:
    _lane_change(conn, e, True)


@projection("lane.closed")
def _lane_closed(conn: sqlite3.Connection, e: Event) -> None:
    _lane_change(conn, e, False)


@projection("lane.posture_recorded")
def _posture(conn: sqlite3.Connection, e: Event) -> None:
    conn.execute("INSERT INTO lane_posture(event_id, lane, recorded_at, detail) VALUES (?,?,?,?)",
                 (e.id, e.payload["lane"], e.ts, canonical_json(e.payload.get("detail", {}))))


@projection("suppression.added")
def _suppressed(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO suppressions(email_key, email, reason, added_at, event_id) VALUES (?,?,?,?,?)"
        " ON CONFLICT(email_key) DO NOTHING",
        (p["email"].casefold(), p["email"], p.get("reason", ""), e.ts, e.id))


@projection("draft.created")
def _draft_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO drafts(id, lane, channel, to_addr, to_key, subject, body, business,"
        " lead_id, state, problems, created_by, created_at, updated_at, version)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
        (e.id, p["lane"], p.get("channel"), p["to"], p["to"].casefold(), p["subject"],
         p["body"], p.get("business"), p.get("lead_id"), p["state"],
         canonical_json(p.get("problems", [])), e.actor, e.ts, e.ts))


@projection("draft.edited")
def _draft_edited(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "UPDATE drafts SET to_addr=?, to_key=?, subject=?, body=?, state=?, problems=?,"
        " updated_at=?, version=version+1, approval_hash=NULL, approved_by=NULL,"
        " approved_at=NULL, expires_at=NULL WHERE id=?",
        (p["to"], p["to"].casefold(), p["subject"], p["body"], p["state"],
         canonical_json(p.get("problems", [])), e.ts, p["id"]))


def _set_state(conn: sqlite3.Connection, e: Event, state: str, **cols: object) -> None:
    sets = ", ".join(f"{k}=?" for k in cols)
    conn.execute(f"UPDATE drafts SET state=?, updated_at=?{', ' + sets if sets else ''}"
                 " WHERE id=?", (state, e.ts, *cols.values(), e.payload["id"]))


@projection("draft.withdrawn")
def _draft_withdrawn(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "withdrawn", reason=e.payload.get("reason", ""))


@projection("draft.rejected")
def _draft_rejected(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "rejected", reason=e.payload.get("reason", ""))


@projection("draft.approved")
def _draft_approved(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    _set_state(conn, e, "approved", approval_hash=p["approval_hash"], approved_by=e.actor,
               approved_at=e.ts, expires_at=p["expires_at"], attempts=0, next_attempt_at=None,
               reason=None)


@projection("draft.approval_voided")
def _draft_voided(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, e.payload.get("state", "send_ready"), approval_hash=None,
               approved_by=None, approved_at=None, expires_at=None,
               reason=e.payload.get("reason", ""))


@projection("draft.queued")
def _draft_queued(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "queued")


@projection("draft.sending")
def _draft_sending(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "sending", message_id=e.payload["message_id"],
               attempts=e.payload["attempt"])


@projection("draft.sent")
def _draft_sent(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    _set_state(conn, e, "sent", sent_at=e.ts, server_reply=p.get("reply", ""),
               content_sha256=p["content_sha256"], message_id=p["message_id"])


@projection("draft.retry")
def _draft_retry(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "approved", next_attempt_at=e.payload["next_attempt_at"],
               attempts=int(e.payload.get("attempts", 0)), reason=e.payload.get("reason", ""))


@projection("draft.failed")
def _draft_failed(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "failed", reason=e.payload.get("reason", ""))


@projection("draft.ambiguous")
def _draft_ambiguous(conn: sqlite3.Connection, e: Event) -> None:
    _set_state(conn, e, "ambiguous", reason=e.payload.get("reason", ""))


@projection("draft.resolved")
def _draft_resolved(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    if p["sent"]:  # when it really left is unknown: sent_at stays empty
        _set_state(conn, e, "sent", reason=f"resolved as sent by {e.actor} at {e.ts}; the "
                   f"send time is unknown. {p.get('note', '')}".strip(),
                   content_sha256=p.get("content_sha256"))
    else:
        _set_state(conn, e, "send_ready", approval_hash=None, approved_by=None,
                   approved_at=None, expires_at=None, reason=p.get("note", ""))


@projection("touch.created")
def _touch_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute("INSERT INTO touches(id, lead_id, sequence, step, due_at, lane, status)"
                 " VALUES (?,?,?,?,?,?,'due')",
                 (e.id, p["lead_id"], p["sequence"], p["step"], p["due_at"], p["lane"]))


@projection("touch.done")
def _touch_done(conn: sqlite3.Connection, e: Event) -> None:
    conn.execute("UPDATE touches SET status=?, draft_id=? WHERE id=?",
                 (e.payload.get("status", "done"), e.payload.get("draft_id"), e.payload["id"]))


@projection("packet.created")
def _packet_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute("INSERT INTO packets(name, business, segments, lead_ids, draft_ids,"
                 " created_event) VALUES (?,?,?,?,?,?)",
                 (p["name"], p.get("business"), canonical_json(p["segments"]),
                  canonical_json(p["lead_ids"]), canonical_json(p["draft_ids"]), e.id))


@projection("packet.review_sent")
def _packet_reviewed(conn: sqlite3.Connection, e: Event) -> None:
    conn.execute("UPDATE packets SET review_event=? WHERE name=?", (e.id, e.payload["name"]))


@projection("snapshot.recorded")
def _snapshot(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute("INSERT INTO snapshots(id, name, business, sha256, data, job_run,"
                 " recorded_at, actor) VALUES (?,?,?,?,?,?,?,?)",
                 (e.id, p["name"], p.get("business"), p["sha256"], canonical_json(p["data"]),
                  p.get("job_run"), e.ts, e.actor))


@projection("content.added")
def _content_added(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute("INSERT INTO content(id, business, title, body, sha256, status, created_at,"
                 " updated_at, actor) VALUES (?,?,?,?,?,?,?,?,?)",
                 (e.id, p["business"], p["title"], p["body"], p["sha256"], p["status"], e.ts,
                  e.ts, e.actor))


@projection("content.status_changed")
def _content_status(conn: sqlite3.Connection, e: Event) -> None:
    conn.execute("UPDATE content SET status=?, updated_at=? WHERE id=?",
                 (e.payload["status"], e.ts, e.payload["id"]))


@projection("deploy.recorded")
def _deploy(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute("INSERT INTO deploys(id, site, provider, url, git_commit, evidence,"
                 " recorded_at, actor) VALUES (?,?,?,?,?,?,?,?)",
                 (e.id, p["site"], p["provider"], p["url"], p.get("commit"),
                  canonical_json(p.get("evidence", {})), e.ts, e.actor))


@projection("job.started")
def _job_started(conn: sqlite3.Connection, e: Event) -> None:
    conn.execute("INSERT INTO job_runs(run_id, name, started_event, started_at)"
                 " VALUES (?,?,?,?)", (e.payload["run_id"], e.payload["name"], e.id, e.ts))


@projection("ledger.gap_declared")
def _gap_declared(conn: sqlite3.Connection, e: Event) -> None:
    """A recovery declared events first..last lost (see ``chain.Gap``). Kept in the
    ledger, so every backup holds the gaps declared before it."""
    p = e.payload
    conn.execute(
        "INSERT INTO ledger_gaps(first, last, prev_hash, next_prev_hash, reason, event_id)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT(first) DO UPDATE SET last=excluded.last,"
        " prev_hash=excluded.prev_hash, next_prev_hash=excluded.next_prev_hash,"
        " reason=excluded.reason, event_id=excluded.event_id",
        (int(p["first"]), int(p["last"]), str(p["prev_hash"]), str(p["next_prev_hash"]),
         str(p.get("reason", "")), e.id))


PROJECTED_TABLES = ("events", "businesses", "leads", "receipts", "tokens", "lane_state",
                    "lane_posture", "suppressions", "drafts", "touches", "packets",
                    "snapshots", "content", "deploys", "job_runs", "ledger_gaps")

__all__ = ["LEAD_FIELDS", "PROJECTED_TABLES", "PROJECTIONS", "apply", "insert_event",
           "project", "projection"]
