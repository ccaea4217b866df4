"""Status files (``STATUS.md``) and the external work-log file, read by path.

Text that is not UTF-8 is shown with the undecodable bytes replaced, and the
source says so. A status file unchanged for a week is read but marked stale:
it may no longer describe the day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from ..config import ChronicleSettings
from ..workspace import Workspace
from .sources import SourceInfo

STALE_DAYS = 7
NOT_UTF8 = "not UTF-8: undecodable bytes shown as \ufffd"


@dataclass
class StatusFile:
    path: str
    text: str
    notes: list[str]


def _resolve(ws: Workspace, raw: str) -> Path:
    path = Path(raw)
    return path if path.is_absolute() else ws.home / path


def _read_text(path: Path, info: SourceInfo) -> str | None:
    """The file's text, or None with the reason on ``info``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        info.fail("file not found")
        return None
    except OSError as exc:
        info.fail(f"cannot be read: {exc.strerror or exc}")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        info.note(NOT_UTF8)
        return data.decode("utf-8", errors="replace")


def read_status_files(ws: Workspace, settings: ChronicleSettings
                      ) -> tuple[list[StatusFile], list[SourceInfo]]:
    files, infos = [], []
    for raw in settings.status_files:
        path = _resolve(ws, raw)
        info = SourceInfo(f"status:{path.name}", "status file", str(path), True)
        infos.append(info)
        text = _read_text(path, info)
        if text is None:
            continue
        age = datetime.now(UTC).timestamp() - path.stat().st_mtime
        if age > STALE_DAYS * 86400:
            info.note(f"stale: last changed {age / 86400:.0f} days ago", degrade=True)
        files.append(StatusFile(str(path), text, list(info.notes)))
    return files, infos


def read_worklog_file(ws: Workspace, day: date, settings: ChronicleSettings
                      ) -> tuple[list[str] | None, SourceInfo | None]:
    """Lines of the external work log that start with the day's date."""
    if settings.worklog_file is None:
        return None, None
    path = _resolve(ws, settings.worklog_file)
    info = SourceInfo("worklog", "work log", str(path), True)
    text = _read_text(path, info)
    if text is None:
        return None, info
    prefix = day.isoformat()
    entries = [ln[len(prefix):].strip(" :-\t") for ln in text.splitlines()
               if ln.startswith(prefix)]
    return entries, info


__all__ = ["StatusFile", "read_status_files", "read_worklog_file"]
