"""Durability: validated backups, corruption detection, honest recovery."""

from .backup import (
    BackupInfo,
    find_backup,
    list_backups,
    plan_prune,
    prune,
    take_backup,
    verify_backup,
)
from .detect import db_check, record_detection
from .recovery import RecoveryFailed, RecoveryResult, diagnose, recover

__all__ = [
    "BackupInfo",
    "RecoveryFailed",
    "RecoveryResult",
    "db_check",
    "diagnose",
    "find_backup",
    "list_backups",
    "plan_prune",
    "prune",
    "recover",
    "record_detection",
    "take_backup",
    "verify_backup",
]
