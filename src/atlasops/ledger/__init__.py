"""The ledger: events, the journal, the SQLite projection, verification."""

from .events import GENESIS_HASH, Event, NewEvent, canonical_json, utc_now
from .journal import Journal
from .store import Ledger, OpenReport
from .verify import RebuildReport, VerifyReport, compare_tables, dump_tables, rebuild, verify

__all__ = [
    "GENESIS_HASH",
    "Event",
    "Journal",
    "Ledger",
    "NewEvent",
    "OpenReport",
    "RebuildReport",
    "VerifyReport",
    "canonical_json",
    "compare_tables",
    "dump_tables",
    "rebuild",
    "utc_now",
    "verify",
]
