"""Property: any sequence of appends, replayed from the journal into an empty
database, reproduces identical tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlasops.ledger import Ledger, NewEvent, dump_tables, rebuild, verify

emails = st.sampled_from([f"{n}@{d}.example" for n in ("ann", "Bob", "cy") for d in ("a", "b")])
text = st.text(max_size=12)
field_values = st.fixed_dictionaries({}, optional={
    "name": text, "company": text, "segment": st.sampled_from(["cpa", "broker", ""]),
    "status": st.sampled_from(["new", "contacted", "won"]),
})
op = st.one_of(
    st.tuples(st.just("lead"), emails, field_values),
    st.tuples(st.just("update"), st.integers(0, 10), field_values),
    st.tuples(st.just("business"), st.sampled_from(["wimper", "bbh"]), text),
    st.tuples(st.just("receipt"), text, st.sampled_from(["ok", "failed", "held"])),
    st.tuples(st.just("note"), st.dictionaries(text, st.integers() | text, max_size=3)),
)


def to_events(ops: list[tuple[object, ...]], led: Ledger) -> list[NewEvent]:
    out: list[NewEvent] = []
    known = {r["email_key"] for r in led.query("SELECT email_key FROM leads")}
    ids = [int(r["id"]) for r in led.query("SELECT id FROM leads ORDER BY id")]
    for item in ops:
        kind = item[0]
        if kind == "lead":
            email, fields = str(item[1]), dict(item[2])  # type: ignore[call-overload]
            if email.casefold() in known:
                continue
            known.add(email.casefold())
            out.append(NewEvent("lead.created", "prop", {"email": email, **fields}))
        elif kind == "update" and ids and item[2]:
            lead_id = ids[int(item[1]) % len(ids)]  # type: ignore[call-overload]
            out.append(NewEvent("lead.updated", "prop", {"id": lead_id, "changes": item[2]}))
        elif kind == "business":
            out.append(NewEvent("business.upserted", "prop",
                                {"slug": item[1], "name": item[2] or "x", "sites": []}))
        elif kind == "receipt":
            out.append(NewEvent("receipt.recorded", "prop", {
                "kind": "test.op", "actor": "prop", "started_at": "t0", "finished_at": "t1",
                "outcome": item[2], "summary": item[1] or "s",
                "effects": {"emails_sent": 0, "public_posts": 0, "cta_changes": 0,
                            "spend_cents": 0}}))
        elif kind == "note":
            out.append(NewEvent("note.added", "prop", {"data": item[1]}))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(op, max_size=6), max_size=8),
       segment_bytes=st.sampled_from([4096, 1 << 20]))
def test_replaying_the_journal_reproduces_identical_tables(
        batches: list[list[tuple[object, ...]]], segment_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "journal").mkdir()
        led = Ledger(root / "live.db", root / "journal", root / "lock", segment_bytes).open()
        try:
            for batch in batches:
                led.append_many(to_events(batch, led))
            journal = led.journal
        finally:
            led.close()
        rebuild(journal, root / "replayed.db")
        assert dump_tables(root / "replayed.db") == dump_tables(root / "live.db")
        assert verify(root / "live.db", journal).ok
