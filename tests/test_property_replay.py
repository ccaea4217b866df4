"""Property: any sequence of appends, replayed from the journal into an empty
database, reproduces identical tables; and after a declared gap, every replay of
the same journal and gaps gives the same tables, skipping exactly the events that
named the lost one."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from atlasops.ledger import Event, Journal, Ledger, NewEvent, dump_tables, rebuild, verify
from atlasops.ledger.chain import Gap, write_gaps
from atlasops.ledger.events import GENESIS_HASH

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


def lose(journal_dir: Path, events: list[Event], index: int) -> Event:
    """Cut the journal record of ``events[index]`` and declare the gap it leaves."""
    lost = events[index]
    (segment,) = journal_dir.glob("*.journal")
    lines = segment.read_bytes().split(b"\n")
    segment.write_bytes(b"\n".join(line for line in lines
                                    if f'"id":{lost.id},'.encode() not in line))
    prev = events[index - 1].hash if index else GENESIS_HASH
    write_gaps(journal_dir, [Gap(lost.id, lost.id, prev, lost.hash, "test")])
    return lost


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(op, max_size=6), min_size=1, max_size=8),
       pick=st.integers(0, 10**6))
def test_replay_after_a_declared_gap_is_the_same_every_time(
        batches: list[list[tuple[object, ...]]], pick: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "journal").mkdir()
        led = Ledger(root / "live.db", root / "journal", root / "lock", 1 << 20).open()
        try:
            events = [e for batch in batches for e in led.append_many(to_events(batch, led))]
        finally:
            led.close()
        assume(len(events) >= 2)
        lost = lose(root / "journal", events, pick % (len(events) - 1))
        # ground truth from what was appended: the updates that named a lost lead
        expected = {e.id for e in events if lost.kind == "lead.created"
                    and e.kind == "lead.updated" and e.payload["id"] == lost.id}
        journal = Journal(root / "journal", 1 << 20)
        first, again = rebuild(journal, root / "a.db"), rebuild(journal, root / "b.db")
        assert dump_tables(root / "a.db") == dump_tables(root / "b.db")
        assert {u["id"] for u in first.unapplied} == {u["id"] for u in again.unapplied
                                                      } == expected
        assert verify(root / "a.db", journal).ok
        # the catch-up that rebuilds a missing database on open agrees (its own notice
        # of the rebuild aside)
        Ledger(root / "c.db", root / "journal", root / "lock", 1 << 20).open().close()
        replayed, caught_up = dump_tables(root / "a.db"), dump_tables(root / "c.db")
        assert caught_up.pop("events")[:-1] == replayed.pop("events")
        assert caught_up == replayed
