"""The journal: append-only, plain-text, the write-ahead truth of the ledger.

One record per line::

    <crc32 of the JSON, 8 hex digits> <the event as canonical JSON>\\n

Segments are files named after the id of their first event
(``000000000001.journal``) and rotated when they pass ``segment_bytes``.
A person can read them with ``less`` and search them with ``grep``.

The journal never rewrites a record. The only change it makes to bytes
already on disk is :meth:`Journal.set_aside_tail`, which copies an invalid
tail (a write torn by a crash) into ``torn/`` *before* truncating it, so
nothing is ever silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..errors import StorageError
from ..fsutil import fsync_dir, write_all, write_synced
from .events import Event, StoredEvent, record_json

_T = TypeVar("_T", Event, StoredEvent)

SUFFIX = ".journal"
FILE_MODE = 0o600
_TAIL_CHUNK = 64 * 1024


def encode_record(event: Event) -> bytes:
    body = record_json(event).encode("utf-8")
    return b"%08x " % zlib.crc32(body) + body + b"\n"


class RecordError(ValueError):
    """A line that is not a valid record."""


def decode_record(line: bytes) -> Event:
    """Parse one line (without its newline); raise :class:`RecordError` if invalid."""
    body = _check_crc(line)
    try:
        return Event.from_dict(json.loads(body))
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"checksum matches but the record does not parse: {exc}") from exc


def _check_crc(line: bytes) -> bytes:
    if len(line) < 10 or line[8:9] != b" ":
        raise RecordError("line is too short or has no checksum prefix")
    try:
        expected = int(line[:8], 16)
    except ValueError as exc:
        raise RecordError("checksum prefix is not hexadecimal") from exc
    body = line[9:]
    actual = zlib.crc32(body)
    if actual != expected:
        raise RecordError(f"checksum mismatch (stored {expected:08x}, computed {actual:08x})")
    return body


def _json_str(raw: bytes) -> str | None:
    """A JSON string token as canonical_json writes it, when it has no escapes."""
    if len(raw) < 2 or raw[0] != 0x22 or raw[-1] != 0x22:
        return None
    inner = raw[1:-1]
    if b"\\" in inner or b'"' in inner:
        return None  # escapes (or not one token): leave it to the full decoder
    try:
        return inner.decode("utf-8")
    except UnicodeDecodeError:
        return None


_A, _H, _I, _K, _P = b'{"actor":', b'","hash":"', b'","id":', b',"kind":', b'","payload":'
_PH, _S, _TS = b',"prev_hash":"', b'","subject":', b',"ts":'


def _fast_stored(body: bytes) -> StoredEvent | None:
    """Split a record's canonical JSON into its fields without decoding the payload, and
    prove it: the event hash must verify over those fields *and* the fields must
    re-serialise to exactly ``body``. Then the full decoder would have read the same
    event and found its hash correct. Anything else returns None (use the full path)."""
    if not body.startswith(_A) or not body.endswith(b'"}'):
        return None
    a_end = body.find(_H, len(_A))  # the first '","' after the actor closes it
    if a_end < 0:
        return None
    h0 = a_end + len(_H)
    if body[h0 + 64:h0 + 64 + len(_I)] != _I:
        return None
    i0 = h0 + 64 + len(_I)
    k = body.find(_K, i0)
    digits = body[i0:k]
    if k < 0 or not digits.isdigit() or (digits[:1] == b"0" and digits != b"0"):
        return None
    k_end = body.find(_P, k + len(_K))
    ph = body.rfind(_PH)
    t = body.rfind(_TS)
    if k_end < 0 or ph < k_end or t < ph:
        return None
    if body[ph + len(_PH) + 64:ph + len(_PH) + 64 + len(_S)] != _S:
        return None
    actor = _json_str(body[len(_A):a_end + 1])
    kind = _json_str(body[k + len(_K):k_end + 1])
    ts = _json_str(body[t + len(_TS):-1])
    raw_subject = body[ph + len(_PH) + 64 + len(_S):t]
    subject = None if raw_subject == b"null" else _json_str(raw_subject)
    if actor is None or kind is None or ts is None or (
            subject is None and raw_subject != b"null"):
        return None
    try:
        record_hash = body[h0:h0 + 64].decode("ascii")
        prev_hash = body[ph + len(_PH):ph + len(_PH) + 64].decode("ascii")
        payload = body[k_end + len(_P):ph].decode("utf-8")
    except UnicodeDecodeError:
        return None
    head = '{"actor":' + encode_basestring(actor) + ","
    rest = "".join((
        '"id":', str(int(digits)), ',"kind":', encode_basestring(kind), ',"payload":',
        payload, ',"prev_hash":', encode_basestring(prev_hash), ',"subject":',
        "null" if subject is None else encode_basestring(subject), ',"ts":',
        encode_basestring(ts), "}"))
    hashed = (head + rest).encode("utf-8")
    if hashlib.sha256(hashed).hexdigest() != record_hash:
        return None
    if (head + '"hash":"' + record_hash + '",' + rest).encode("utf-8") != body:
        return None
    return StoredEvent(int(digits), ts, kind, actor, subject, payload, prev_hash,
                       record_hash, verified=True)


def decode_stored(line: bytes) -> StoredEvent:
    """Like :func:`decode_record`, for verification: the payload stays JSON text.

    The CRC is checked first, exactly as :func:`decode_record` does. A record Atlas
    wrote (canonical JSON whose hash verifies) is split without decoding its payload
    and comes back ``verified``; any other record goes through :func:`decode_record`
    (same errors) and its hash is left to :meth:`StoredEvent.hash_ok`."""
    body = _check_crc(line)
    fast = _fast_stored(body)
    if fast is not None:
        return fast
    return StoredEvent.from_event(decode_record(line))


@dataclass(frozen=True)
class Problem:
    """A place in the journal that is not a valid record."""

    segment: str
    offset: int
    line: int  # -1 when unknown (the tail is read from the end of the segment)
    reason: str
    torn: bool = False  # an unterminated final line: a write that never completed

    def describe(self) -> str:
        where = f"line {self.line}, byte {self.offset}" if self.line >= 0 else f"byte {self.offset}"
        return f"{self.segment} ({where}): {self.reason}"


@dataclass(frozen=True)
class Tail:
    """Where the journal ends: the last valid record, and any invalid bytes after it."""

    last_id: int
    last_hash: str | None
    segment: Path | None
    valid_size: int  # size of ``segment`` up to the end of its last valid record
    size: int  # actual size of ``segment``
    problem: Problem | None = None

    @property
    def clean(self) -> bool:
        return self.problem is None and self.valid_size == self.size


@dataclass(frozen=True)
class Located:
    event: Event
    segment: str
    offset: int
    line: int


@dataclass(frozen=True)
class LocatedStored:
    """A record read for verification (:meth:`Journal.scan_stored`)."""

    event: StoredEvent
    segment: str
    offset: int
    line: int


class Journal:
    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes

    # -- layout ------------------------------------------------------------

    def segments(self) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError as exc:
            raise StorageError(f"the journal directory {self.directory} is missing") from exc
        return sorted(self.directory / n for n in names if n.endswith(SUFFIX))

    @staticmethod
    def segment_name(first_id: int) -> str:
        return f"{first_id:012d}{SUFFIX}"

    @staticmethod
    def first_id_of(segment: Path) -> int:
        return int(segment.name[: -len(SUFFIX)])

    # -- reading -----------------------------------------------------------

    def tail(self) -> Tail:
        """Find the last valid record by reading the newest segment from its end.

        Invalid bytes *after* the last valid record are the tail problem (a torn
        write); damage earlier in the journal is left to :func:`verify` to report.
        """
        segments = self.segments()
        # Walk back over empty segments (a rotation that crashed before its first write).
        while len(segments) > 1 and segments[-1].stat().st_size == 0:
            segments.pop()
        if not segments:
            return Tail(0, None, None, 0, 0)
        seg = segments[-1]
        size = seg.stat().st_size
        chunk = _TAIL_CHUNK
        with open(seg, "rb") as fh:
            while True:
                start = max(0, size - chunk)
                fh.seek(start)
                data = fh.read(size - start)
                if start > 0:
                    cut = data.find(b"\n")
                    data = data[cut + 1:] if cut != -1 else b""
                    start = size - len(data)
                found = _last_valid(data, start)
                if found is not None or start == 0:
                    break
                chunk *= 4
        if found is None:
            problem = None
            if size:
                problem = Problem(seg.name, 0, -1, _first_reason(data), not data.endswith(b"\n"))
            if len(segments) > 1:
                prev = self._last_record_of(segments[-2])
                return Tail(prev.id, prev.hash, seg, 0, size, problem)
            return Tail(0, None, seg, 0, size, problem)
        last, valid_end = found
        problem = None
        if valid_end < size:
            rest = data[valid_end - start:]
            problem = Problem(seg.name, valid_end, -1, _first_reason(rest),
                              not rest.endswith(b"\n"))
        return Tail(last.id, last.hash, seg, valid_end, size, problem)

    def _last_record_of(self, seg: Path) -> Event:
        size = seg.stat().st_size
        with open(seg, "rb") as fh:
            data = _read_back_lines(fh, size)
        lines = [ln for ln in data.split(b"\n") if ln]
        try:
            return decode_record(lines[-1])
        except (RecordError, IndexError) as exc:
            raise StorageError(f"the last record of {seg} is damaged: {exc}") from exc

    def segments_from(self, after_id: int) -> list[Path]:
        """The segments that can hold records with ``id > after_id`` (all of them for 0)."""
        segments = self.segments()
        if after_id > 0:
            firsts = [self.first_id_of(s) for s in segments]
            keep = [i for i, f in enumerate(firsts) if f <= after_id + 1]
            if keep:
                segments = segments[keep[-1]:]
        return segments

    def scan(self, after_id: int = 0) -> Iterator[Located | Problem]:
        """Every record with ``id > after_id`` in order, and every problem met on the way."""
        for seg in self.segments_from(after_id):
            yield from self._scan_segment(seg, after_id)

    def scan_stored(self, after_id: int = 0) -> Iterator[LocatedStored | Problem]:
        """:meth:`scan` for verification: the same records and problems, each record as
        a :class:`StoredEvent` whose payload is not decoded (see :func:`decode_stored`)."""
        for seg in self.segments_from(after_id):
            yield from self.scan_segment_stored(seg, after_id)

    def _scan_segment(self, seg: Path, after_id: int) -> Iterator[Located | Problem]:
        for item in _records(seg, after_id, decode_record):
            yield item if isinstance(item, Problem) else Located(*item)

    def scan_checked(self, upto: Tail | None = None
                     ) -> Iterator[tuple[bytes, str, int, int] | Problem]:
        """Every line whose CRC matches, as ``(line, segment, offset, number)``, not yet
        decoded (:func:`decode_stored` decodes it), and every problem before that.

        With ``upto`` (a :meth:`tail` taken earlier), only the records up to that tail's
        last valid one: what writers appended since, and any torn bytes after it, are
        not read."""
        for seg in self.segments():
            end: int | None = None
            if upto is not None:
                if upto.segment is None or self.first_id_of(seg) > self.first_id_of(
                        upto.segment):
                    return
                end = upto.valid_size if seg == upto.segment else None
            offset = 0
            with open(seg, "rb") as fh:
                for number, raw in enumerate(fh, start=1):
                    if end is not None and offset >= end:
                        break
                    if not raw.endswith(b"\n"):
                        yield Problem(seg.name, offset, number,
                                      "unterminated final line (torn write)", True)
                        break
                    try:
                        _check_crc(raw[:-1])
                    except RecordError as exc:
                        yield Problem(seg.name, offset, number, str(exc))
                    else:
                        yield raw[:-1], seg.name, offset, number
                    offset += len(raw)

    def scan_segment_stored(self, seg: Path, after_id: int = 0
                            ) -> Iterator[LocatedStored | Problem]:
        for item in _records(seg, after_id, decode_stored):
            yield item if isinstance(item, Problem) else LocatedStored(*item)

    # -- writing -----------------------------------------------------------

    def append(self, events: list[Event], tail: Tail) -> Tail:
        """Write ``events`` after ``tail`` with one write and one fdatasync."""
        if not events:
            return tail
        payload = b"".join(encode_record(e) for e in events)
        seg = tail.segment
        new_segment = seg is None or tail.size >= self.segment_bytes
        if new_segment:
            seg = self.directory / self.segment_name(events[0].id)
        assert seg is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        base = 0 if new_segment else tail.size
        try:
            fd = os.open(seg, flags, FILE_MODE)
        except OSError as exc:
            raise StorageError(
                f"cannot open the journal segment {seg}: {exc.strerror or exc}",
                hint="Free disk space or fix permissions on data/journal/; nothing was recorded.",
            ) from exc
        try:
            write_all(fd, payload)
            os.fdatasync(fd)
        except OSError as exc:
            # Take back whatever part of the batch reached the file: the caller is told
            # that nothing was recorded, so nothing may stay behind to be replayed later.
            try:
                os.ftruncate(fd, base)
                os.fsync(fd)
            except OSError:
                pass
            raise StorageError(
                f"cannot write the journal at {seg}: {exc.strerror or exc}",
                hint="Free disk space or fix permissions on data/journal/; nothing was recorded.",
            ) from exc
        finally:
            os.close(fd)
        if new_segment:
            fsync_dir(self.directory)
        end = base + len(payload)
        return Tail(events[-1].id, events[-1].hash, seg, end, end)

    def set_aside_tail(self, tail: Tail) -> Path | None:
        """Copy the invalid bytes after the last valid record to ``torn/``, then truncate."""
        if tail.segment is None or tail.clean:
            return None
        torn_dir = self.directory / "torn"
        torn_dir.mkdir(mode=0o700, exist_ok=True)
        target = torn_dir / f"{tail.segment.name}.{tail.valid_size}.torn"
        with open(tail.segment, "rb") as src:
            src.seek(tail.valid_size)
            data = src.read()
        write_synced(target, data, FILE_MODE)
        if target.stat().st_size != len(data):
            raise StorageError(f"could not copy the torn journal tail to {target}; "
                               "the journal was left as it was")
        fsync_dir(torn_dir)
        with open(tail.segment, "r+b") as fh:
            fh.truncate(tail.valid_size)
            fh.flush()
            os.fsync(fh.fileno())
        return target


def _records(seg: Path, after_id: int, decode: Callable[[bytes], _T]
             ) -> Iterator[tuple[_T, str, int, int] | Problem]:
    offset = 0
    with open(seg, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                yield Problem(seg.name, offset, number, "unterminated final line (torn write)",
                              True)
                return
            try:
                event = decode(raw[:-1])
            except RecordError as exc:
                yield Problem(seg.name, offset, number, str(exc))
            else:
                if event.id > after_id:
                    yield event, seg.name, offset, number
            offset += len(raw)


def _last_valid(data: bytes, start: int) -> tuple[Event, int] | None:
    """The last valid record in ``data`` (which begins at a line boundary at file
    offset ``start``) and the file offset just after it."""
    end = len(data)
    while end > 0:
        nl = data.rfind(b"\n", 0, end)
        if nl == -1:
            return None
        begin = data.rfind(b"\n", 0, nl) + 1
        try:
            event = decode_record(data[begin:nl])
        except RecordError:
            end = begin
            continue
        return event, start + nl + 1
    return None


def _first_reason(rest: bytes) -> str:
    nl = rest.find(b"\n")
    if nl == -1:
        return "unterminated final line (torn write)"
    try:
        decode_record(rest[:nl])
    except RecordError as exc:
        return str(exc)
    return "invalid bytes after the last valid record"


def _read_back_lines(fh: BinaryIO, size: int) -> bytes:
    """Read enough of the end of a file to hold its last complete line."""
    chunk = _TAIL_CHUNK
    while True:
        start = max(0, size - chunk)
        fh.seek(start)
        data = fh.read(size - start)
        if start == 0:
            return data
        cut = data.find(b"\n")
        if cut != -1 and data.count(b"\n", cut + 1) >= 1:
            return data[cut + 1:]
        chunk *= 4




__all__ = ["Journal", "Located", "LocatedStored", "Problem", "RecordError", "Tail",
           "decode_record", "decode_stored", "encode_record"]
