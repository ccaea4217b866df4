"""Validated backups: an online snapshot, checked on the copy, described by a manifest.

A backup is written into ``backups/.tmp-<name>/``, validated there, and only
then renamed to ``backups/<name>/``: a backup killed half-way is never
mistaken for a finished one. "Validated" means every check in the manifest
passed; a backup that failed a check keeps its directory, marked failed, and
is never used by ``atlas recover``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..config import BackupSettings
from ..errors import DatabaseCorrupt, InputError, NotFound, StorageError
from ..fsutil import fsync_dir, fsync_file, replace_durably
from ..ledger import Ledger, utc_now
from ..ledger.chain import Gap, gaps_in, merge_gaps, read_gaps
from ..receipts import Action, Check, Receipt, record
from ..workspace import Workspace
from . import checks as ck
from .detect import confirm_damage, file_id, record_detection

LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
MANIFEST = "manifest.json"
DB_NAME = "leads.db"
TMP_PREFIX = ".tmp-"
STAMP = "%Y%m%dT%H%M%SZ"
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass
class BackupInfo:
    name: str
    path: Path
    status: str  # validated | failed | incomplete
    created_at: str | None = None
    hwm_event_id: int | None = None
    hwm_ts: str | None = None
    hwm_hash: str | None = None
    sha256: str | None = None
    size: int | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def validated(self) -> bool:
        return self.status == "validated"

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    def created(self) -> datetime | None:
        if not self.created_at:
            return None
        return datetime.strptime(self.created_at, CREATED_FORMAT).replace(tzinfo=UTC)

    def to_dict(self) -> dict[str, Any]:
        created = self.created()
        age = None if created is None else (datetime.now(UTC) - created).total_seconds()
        return {"name": self.name, "path": str(self.path), "status": self.status,
                "validated": self.validated, "created_at": self.created_at,
                "age_seconds": None if age is None else round(age),
                "hwm_event_id": self.hwm_event_id, "hwm_ts": self.hwm_ts,
                "sha256": self.sha256, "size": self.size, "problem": self.problem}


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    replace_durably(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def validate_copy(db: Path, journal_dir: Path) -> tuple[list[Check], ck.Facts | None, str | None]:
    """Run every check on a database copy, in parallel. Returns (checks, facts, sha256).

    The hash chain is checked with the gaps the copy itself holds (``ledger_gaps``),
    and those in the journal's ``gaps.jsonl`` (declared before the table existed)."""
    gaps = merge_gaps(_gaps_of(db), read_gaps(journal_dir))
    quick, integrity, fk, sha, facts_o, chain = ck.run_parallel([
        lambda: ck.sqlite_check(db, "quick_check", immutable=True),
        lambda: ck.sqlite_check(db, "integrity_check", immutable=True),
        lambda: ck.foreign_key_check(db, immutable=True),
        lambda: ck.sha256_check(db),
        lambda: ck.facts_check(db, immutable=True),
        # one process: on 2 CPUs a split over processes was slower (see docs/benchmarks.md)
        lambda: ck.chain_check(db, gaps, immutable=True),
    ])
    facts = facts_o.value if facts_o.check.passed else None
    digest = sha.value if sha.check.passed else None
    checks = [quick.check, integrity.check, fk.check, sha.check, facts_o.check, chain.check]
    return checks, facts, digest


def _gaps_of(db: Path) -> list[Gap]:
    """The gaps a database copy holds; none when it cannot be read (its checks say why)."""
    try:
        conn = ck.open_ro(db, immutable=True)
        try:
            return gaps_in(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return []


# What a manifest claims about its file that the file itself can show: (key, label).
MANIFEST_FACTS = (("hwm_event_id", "high-water mark"), ("hwm_hash", "high-water mark hash"),
                  ("hwm_ts", "high-water mark time"), ("page_size", "page size"),
                  ("page_count", "page count"), ("schema_version", "schema version"),
                  ("size", "size"))


def manifest_drift(manifest: dict[str, Any], facts: ck.Facts) -> list[str]:
    """Each claim of ``manifest`` the file (read into ``facts``) contradicts. Row counts
    are compared only when ``facts`` holds them."""
    drift = [f"{label} drift: manifest {manifest.get(key)}, file {getattr(facts, key)}"
             for key, label in MANIFEST_FACTS if manifest.get(key) != getattr(facts, key)]
    if facts.row_counts and facts.row_counts != manifest.get("row_counts"):
        drift.append(f"row counts drift: manifest {manifest.get('row_counts')}, "
                     f"file {facts.row_counts}")
    return drift


def _snapshot(src_path: Path, dst_path: Path) -> None:
    """SQLite's online backup API: a consistent copy while writers keep working (WAL)."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
    dst = sqlite3.connect(dst_path)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    os.chmod(dst_path, 0o600)
    fsync_file(dst_path)


def take_backup(ws: Workspace, ledger: Ledger, *, actor: str, label: str = "manual"
                ) -> tuple[BackupInfo, int]:
    """Snapshot the live ledger, validate the copy, write the manifest, leave a receipt."""
    if not LABEL_RE.match(label):
        raise InputError(f"backup label {label!r} must be lowercase letters, digits, - or _")
    started = utc_now()
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    name = f"{label}-{now.strftime(STAMP)}"
    n = 2
    while (ws.backups_dir / name).exists() or (ws.backups_dir / (TMP_PREFIX + name)).exists():
        name = f"{label}-{now.strftime(STAMP)}-{n}"
        n += 1
    tmp = ws.backups_dir / (TMP_PREFIX + name)
    tmp.mkdir(mode=0o700)
    copy = tmp / DB_NAME
    t_snap = time.perf_counter()
    try:
        _snapshot(ws.db_path, copy)
        snap = Check(name="online_backup", passed=True, detail=f"SQLite backup API -> {copy.name}",
                     ms=round((time.perf_counter() - t_snap) * 1000, 3))
        checks, facts, digest = validate_copy(copy, ws.journal_dir)
    except sqlite3.Error as exc:
        snap = Check(name="online_backup", passed=False, detail=f"{exc}",
                     ms=round((time.perf_counter() - t_snap) * 1000, 3))
        checks, facts, digest = [], None, None
    checks = [snap, *checks]
    validated = all(c.passed for c in checks)
    created_at = now.strftime(CREATED_FORMAT)
    manifest: dict[str, Any] = {
        "name": name, "label": label, "created_at": created_at, "source": str(ws.db_path),
        "file": DB_NAME, "validated": validated,
        "status": "validated" if validated else "failed",
        "sha256": digest, "size": copy.stat().st_size if copy.exists() else 0,
        "checks": [c.model_dump() for c in checks],
    }
    if facts is not None:
        manifest.update({
            "page_size": facts.page_size, "page_count": facts.page_count,
            "schema_version": facts.schema_version, "row_counts": facts.row_counts,
            "hwm_event_id": facts.hwm_event_id, "hwm_ts": facts.hwm_ts,
            "hwm_hash": facts.hwm_hash,
        })
    write_json_durably(tmp / MANIFEST, manifest)
    final = ws.backups_dir / name
    os.rename(tmp, final)
    fsync_dir(ws.backups_dir)
    info = read_backup(final)
    if not validated:
        _refuse_if_live_damaged(ws, name, checks)
    failed = [c for c in checks if not c.passed]
    summary = (
        f"Validated backup {name} holds events 1..{info.hwm_event_id} (to {info.hwm_ts}); "
        "`atlas recover` can restore from it." if validated else
        f"Backup {name} FAILED validation ({failed[0].name}: {failed[0].detail}); "
        "it is marked failed and will never be used for recovery."
    )
    receipt = Receipt(
        kind="backup", subject=name, actor=actor, started_at=started, finished_at=utc_now(),
        outcome="ok" if validated else "failed", summary=summary, checks=checks,
        actions=[Action(name="snapshot", result="ok" if snap.passed else "failed",
                        ms=snap.ms, command="sqlite3 backup API")],
        evidence={"path": str(final), "sha256": digest, "size": manifest["size"],
                  "hwm_event_id": info.hwm_event_id,
                  "total_ms": round((time.perf_counter() - t0) * 1000, 3)},
    )
    event = record(ledger, receipt)
    return info, event.id


def _refuse_if_live_damaged(ws: Workspace, name: str, checks: list[Check]) -> None:
    """A copy that fails SQLite's checks may be a copy of a damaged live file. If SQLite
    finds the live file damaged too (twice: :func:`confirm_damage`; a quick_check that
    could not run proves nothing), record the detection (journal only: the database is
    not written to) and stop with the next step, instead of writing a receipt into it."""
    if all(c.passed for c in checks
           if c.name in ("online_backup", "quick_check", "integrity_check")):
        return
    seen = file_id(ws)
    live = confirm_damage(ws)
    if live is None:
        return
    symptom: dict[str, Any] = {
        "summary": f"quick_check: {live.check.detail}",
        "detected_by": f"atlas backup (the copy {name} failed validation)",
        "checks": [live.check.model_dump()]}
    if live.value is None:  # quick_check raised: say what can be said
        symptom["damage"] = ck.describe_damage(ws.db_path)
    event, why = record_detection(ws, symptom, seen=seen)
    raise DatabaseCorrupt(
        f"the live database {ws.db_path} is damaged (quick_check: {live.check.detail}); "
        f"the backup {name} copied that damage and is marked failed",
        path=str(ws.db_path), event_id=event.id if event else None, not_recorded=why)


class _ManifestCheck(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str
    passed: bool


class Manifest(BaseModel):
    """The shape a ``manifest.json`` must have (what :func:`take_backup` writes). A
    manifest without it (a JSON list, ``"created_at": 5``) makes its backup ``failed``."""

    model_config = ConfigDict(strict=True, extra="allow")
    created_at: str
    validated: bool
    checks: list[_ManifestCheck]
    sha256: str | None = None
    size: int | None = None
    page_size: int | None = None
    page_count: int | None = None
    schema_version: int | None = None
    row_counts: dict[str, int] | None = None
    hwm_event_id: int | None = None
    hwm_ts: str | None = None
    hwm_hash: str | None = None

    @field_validator("created_at")
    @classmethod
    def _utc_time(cls, value: str) -> str:
        datetime.strptime(value, CREATED_FORMAT)  # ValueError: not the time Atlas writes
        return value


def _malformed(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the top level"
    return f"manifest.json is malformed ({where}: {first['msg']})"


def read_backup(path: Path) -> BackupInfo:
    name = path.name
    if name.startswith(TMP_PREFIX):
        return BackupInfo(name=name, path=path, status="incomplete",
                          problem="the backup never finished (killed or crashed mid-way)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BackupInfo(name=name, path=path, status="incomplete", problem="no manifest.json")
    except (OSError, ValueError) as exc:
        return BackupInfo(name=name, path=path, status="incomplete",
                          problem=f"manifest.json unreadable: {exc}")
    try:
        m = Manifest.model_validate(manifest)
    except ValidationError as exc:
        return BackupInfo(name=name, path=path, status="failed", problem=_malformed(exc))
    all_passed = bool(m.checks) and all(c.passed for c in m.checks)
    status = "validated" if m.validated and all_passed else "failed"
    problem = None if status == "validated" else "manifest says validation failed"
    if status == "validated" and not (path / DB_NAME).is_file():
        status, problem = "failed", f"{DB_NAME} is missing"
    return BackupInfo(
        name=name, path=path, status=status, created_at=m.created_at,
        hwm_event_id=m.hwm_event_id, hwm_ts=m.hwm_ts, hwm_hash=m.hwm_hash, sha256=m.sha256,
        size=m.size, manifest=manifest, problem=problem,
    )


NAME_STAMP_RE = re.compile(r"-(\d{8}T\d{6}Z)(?:-(\d+))?$")


def _newest_first(b: BackupInfo) -> tuple[str, int, str, str]:
    """Order by the UTC stamp Atlas puts in every backup's directory name, so that a
    backup whose manifest cannot be read, or one interrupted, sorts by when it was
    taken too; within one second, by the manifest's time. A name without a stamp sorts
    by its manifest's time."""
    created = b.created_at or ""
    found = NAME_STAMP_RE.search(b.name)
    if found is not None:
        when = datetime.strptime(found[1], STAMP).strftime("%Y-%m-%dT%H:%M:%S")
        return when, int(found[2] or 1), created, b.name
    return created[:19], 0, created, b.name


def list_backups(ws: Workspace) -> list[BackupInfo]:
    """Every backup directory, newest first (incomplete and failed ones included,
    flagged)."""
    if not ws.backups_dir.is_dir():
        return []
    infos = [read_backup(p) for p in ws.backups_dir.iterdir() if p.is_dir()]
    return sorted(infos, key=_newest_first, reverse=True)


def find_backup(ws: Workspace, name: str) -> BackupInfo:
    path = ws.backups_dir / name
    if "/" in name or not path.is_dir():
        raise NotFound(f"no backup named {name!r}", hint="`atlas backups list` shows them.")
    return read_backup(path)


@dataclass
class BackupVerification:
    name: str
    ok: bool
    checks: list[Check]
    drift: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "drift": self.drift,
                "checks": [c.model_dump() for c in self.checks]}


def verify_backup(info: BackupInfo, journal_dir: Path) -> BackupVerification:
    """Recompute the hash and every check; compare with the manifest."""
    if info.status == "incomplete":
        return BackupVerification(info.name, False, [], [info.problem or "incomplete"])
    if not info.db_path.exists():
        return BackupVerification(info.name, False, [], [f"{DB_NAME} is missing"])
    checks, facts, digest = validate_copy(info.db_path, journal_dir)
    drift: list[str] = []
    if not info.validated:
        drift.append(f"not validated: {info.problem}")
    if digest != info.sha256:
        drift.append(f"sha256 drift: manifest {info.sha256}, file {digest}")
    for c in checks:
        if not c.passed:
            drift.append(f"{c.name} fails: {c.detail}")
    if facts is not None:
        drift += manifest_drift(info.manifest, facts)
    return BackupVerification(info.name, not drift, checks, drift)


@dataclass
class PrunePlan:
    keep: list[tuple[str, str]]
    delete: list[tuple[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {"keep": [{"name": n, "why": w} for n, w in self.keep],
                "delete": [{"name": n, "why": w} for n, w in self.delete]}


def plan_prune(backups: list[BackupInfo], policy: BackupSettings,
               now: datetime | None = None) -> PrunePlan:
    """Grandfather-father-son retention. The newest validated backup is always kept."""
    now = now or datetime.now(UTC)
    validated = [b for b in backups if b.validated and b.created() is not None]
    validated.sort(key=lambda b: b.created() or now, reverse=True)
    keep: dict[str, str] = {}
    if validated:
        keep[validated[0].name] = "newest validated backup"
    def week(d: datetime) -> str:
        year, number, _ = d.isocalendar()
        return f"{year}-W{number:02d}"

    rules: list[tuple[str, int, Callable[[datetime], str]]] = [
        ("hourly", policy.keep_hourly, lambda d: d.strftime("%Y-%m-%dT%H")),
        ("daily", policy.keep_daily, lambda d: d.strftime("%Y-%m-%d")),
        ("weekly", policy.keep_weekly, week),
    ]
    for why, count, bucket in rules:
        seen: list[str] = []
        for b in validated:
            created = b.created()
            assert created is not None
            key = bucket(created)
            if key in seen:
                continue
            seen.append(key)
            if len(seen) > count:
                break
            keep.setdefault(b.name, f"{why} {key}")
    delete: list[tuple[str, str]] = []
    for b in backups:
        if b.name in keep:
            continue
        if b.status == "incomplete":
            mtime = datetime.fromtimestamp(b.path.stat().st_mtime, UTC)
            if now - mtime < timedelta(hours=1):
                continue  # may still be running
            delete.append((b.name, f"incomplete: {b.problem}"))
        elif b.status == "failed":
            delete.append((b.name, "failed validation"))
        else:
            delete.append((b.name, "outside the retention policy"))
    return PrunePlan(sorted(keep.items()), delete)


def prune(ws: Workspace, ledger: Ledger | None, *, actor: str, dry_run: bool) -> PrunePlan:
    plan = plan_prune(list_backups(ws), ws.config.backups)
    if dry_run or ledger is None:
        return plan
    started = utc_now()
    for name, _why in plan.delete:
        target = ws.backups_dir / name
        if target.parent != ws.backups_dir:
            raise StorageError(f"refusing to delete {target}")
        shutil.rmtree(target)
    if plan.delete:
        fsync_dir(ws.backups_dir)
        record(ledger, Receipt(
            kind="backup.prune", subject="backups", actor=actor, started_at=started,
            finished_at=utc_now(), outcome="ok",
            summary=(f"Pruned {len(plan.delete)} backup(s); {len(plan.keep)} kept, "
                     "including the newest validated one."),
            actions=[Action(name=f"delete {n}", result=f"deleted ({w})")
                     for n, w in plan.delete],
            evidence={"kept": [n for n, _ in plan.keep]},
        ))
    return plan


__all__ = ["BackupInfo", "BackupVerification", "Manifest", "PrunePlan", "find_backup",
           "list_backups", "manifest_drift", "plan_prune", "prune", "read_backup", "take_backup",
           "validate_copy", "verify_backup", "write_json_durably"]
