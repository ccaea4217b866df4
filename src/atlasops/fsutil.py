"""Durable file operations: the fsyncs that make a rename or a write survive a crash."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a new file, a rename) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (a short write is not an error by itself)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_synced(path: Path, data: bytes, mode: int = PRIVATE, *,
                 exclusive: bool = False) -> None:
    """Write ``data`` as the whole of ``path`` (created with ``mode``; with ``exclusive``
    it must not exist yet) and fsync it. The directory entry is the caller's to sync."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """Write to a temporary file, fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, data, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def display_name(name: str | os.PathLike[str]) -> str:
    """A file name as text that can be recorded: bytes that are not UTF-8 (which Python
    keeps as lone surrogates) are shown as backslash escapes instead."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


__all__ = ["display_name", "fsync_dir", "fsync_file", "replace_durably", "write_all",
           "write_synced"]
