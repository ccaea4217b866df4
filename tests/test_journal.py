from __future__ import annotations

from pathlib import Path

import pytest

from atlasops.ledger import Event, Journal, Ledger, NewEvent, verify
from atlasops.ledger.journal import Located, Problem, RecordError, decode_record, encode_record


def sample(i: int, prev: str = "0" * 64) -> Event:
    new = NewEvent("note.added", "t", {"i": i, "text": "héllo"})
    return Event.seal(new, i, "2026-06-27T00:00:00Z", prev)


def test_record_round_trip_and_checksum() -> None:
    e = sample(1)
    line = encode_record(e)
    assert line.endswith(b"\n") and line[8:9] == b" "
    assert decode_record(line[:-1]) == e
    flipped = bytearray(line[:-1])
    flipped[30] ^= 0x01
    with pytest.raises(RecordError, match="checksum mismatch"):
        decode_record(bytes(flipped))


def test_journal_is_plain_greppable_text(ledger: Ledger) -> None:
    ledger.append("note.added", "tester", {"text": "find me"})
    text = "".join(p.read_text("utf-8") for p in ledger.journal.segments())
    assert '"text":"find me"' in text
    assert all(len(line) > 9 for line in text.splitlines())


def test_segments_rotate_by_size(tmp_path: Path) -> None:
    root = tmp_path / "w"
    (root / "journal").mkdir(parents=True)
    led = Ledger(root / "l.db", root / "journal", root / "lock", segment_bytes=4096).open()
    try:
        for i in range(60):
            led.append("note.added", "t", {"i": i, "pad": "x" * 200})
        segs = led.journal.segments()
        assert len(segs) > 2
        assert [Journal.first_id_of(s) for s in segs][0] == 1
        # each segment starts with the id in its name
        for s in segs:
            first = next(iter(Journal(root / "journal", 4096)._scan_segment(s, 0)))
            assert isinstance(first, Located) and first.event.id == Journal.first_id_of(s)
        tail = led.journal.tail()
        assert tail.last_id == 60 and tail.clean
        assert verify(root / "l.db", led.journal).ok
    finally:
        led.close()


def test_corrupt_record_in_the_middle_is_reported(ledger: Ledger) -> None:
    for i in range(5):
        ledger.append("note.added", "t", {"i": i})
    seg = ledger.journal.segments()[0]
    lines = seg.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')
    seg.write_bytes(b"\n".join(lines))
    problems = [p for p in ledger.journal.scan() if isinstance(p, Problem)]
    assert len(problems) == 1
    assert problems[0].line == 3 and "checksum mismatch" in problems[0].reason
    report = verify(ledger.db_path, ledger.journal)
    assert not report.ok
    assert "line 3" in report.discrepancies[0].problem
