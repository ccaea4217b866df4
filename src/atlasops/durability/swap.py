"""The last step of a recovery: swap the verified ledger and journal into place.

Every function here can be repeated after a crash at any point and ends in the
same place; the plan they follow is ``data/db/recovery-pending.json``, written
(durably) before the first change. While it exists no other command opens the
workspace, so a half-done swap is never used.

* The database is swapped with one ``rename`` over the live name.
* The journal directory is swapped with ``renameat2(RENAME_EXCHANGE)`` where the
  kernel and file system offer it: the two directories change places at once,
  so there is never a moment without ``data/journal/``. Elsewhere it takes two
  renames, and the pending file covers the moment between them.
* Quarantined files are copies, never links: nothing can write to them through
  a live name. A live file that changed after its copy was taken is kept too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..fsutil import fsync_dir, fsync_file
from . import checks as ck

DB_SUFFIXES = ("", "-wal", "-shm")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)


def identity(path: Path) -> list[int] | None:
    """What tells a file's version apart: device, inode, size, mtime (ns)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def same_inode(path: Path, ident: list[int] | None) -> bool:
    now = identity(path)
    return now is not None and ident is not None and now[:2] == ident[:2]


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2`` with RENAME_EXCHANGE).
    False when this system cannot, and nothing was changed."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a))


def copy_and_hash(src: Path, dst: Path) -> dict[str, Any]:
    """Copy ``src`` to a new private file ``dst`` (in the kernel), hashing ``src`` in a
    thread meanwhile. Not fsynced: :func:`seal` does that (and checks the hash of the
    copy) before anything depends on it. The caller makes sure ``src`` did not change
    during the copy (:func:`identity` before and after)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(ck.sha256_file, src)
        shutil.copyfile(src, dst)
        return {"path": str(dst), "sha256": digest.result(), "size": dst.stat().st_size}


def quarantine(db: Path, qdir: Path) -> tuple[dict[str, Any], dict[str, list[int] | None]]:
    """Copy the damaged files (db, -wal, -shm) into ``qdir`` with their sha256. Returns
    (the files, each live file's identity when it was copied). :func:`seal` makes the
    copies durable."""
    files: dict[str, Any] = {}
    seen: dict[str, list[int] | None] = {}
    for suffix in DB_SUFFIXES:
        src = Path(str(db) + suffix)
        seen[src.name] = identity(src)
        if seen[src.name] is None:
            continue
        files[src.name] = copy_and_hash(src, qdir / src.name)
        # (-shm is SQLite's shared index, touched by any reader: its copy is a courtesy)
        if suffix != "-shm" and identity(src) != seen[src.name]:
            raise OSError(f"{src} changed while it was being copied into quarantine")
    return files, seen


def swap_db(new_db: Path, live_db: Path, qdir: Path, seen: dict[str, list[int] | None]
            ) -> list[str]:
    """Put ``new_db`` in place of ``live_db`` (removing its -wal/-shm). A live db or -wal
    that is not the one quarantined (it changed, or appeared, since) is copied into the
    quarantine as ``<name>.at-swap`` first. Returns notes; repeatable."""
    notes: list[str] = []
    if not new_db.exists():
        return [f"{live_db.name} was already in place (an earlier run swapped it)"]
    for suffix in DB_SUFFIXES:
        live = Path(str(live_db) + suffix)
        now = identity(live)
        if now is None:
            continue
        if suffix != "-shm" and now != seen.get(live.name):
            keep = qdir / f"{live.name}.at-swap"
            keep.unlink(missing_ok=True)  # a copy an interrupted run may have started
            copied = copy_and_hash(live, keep)
            fsync_file(keep)
            notes.append(f"{live.name} changed after it was quarantined: copied as "
                         f"{keep.name} (sha256 {copied['sha256']})")
        if suffix and live.exists():
            live.unlink()
    fsync_file(new_db)
    os.replace(new_db, live_db)
    fsync_dir(live_db.parent)
    fsync_dir(qdir)
    return notes


def swap_journal(new: Path, live: Path, old_dest: Path, new_ident: list[int] | None) -> str:
    """Put the journal directory ``new`` in place of ``live``; the old one goes to
    ``old_dest``. Repeatable: the inode of ``new`` says whether the swap happened."""
    if same_inode(live, new_ident):  # done; an exchange may have left the old one at `new`
        if new.exists() and not old_dest.exists():
            os.rename(new, old_dest)
        how = "already in place (an earlier run swapped it)"
    elif not live.exists():
        os.rename(new, live)
        how = "renamed into place (there was no journal directory)"
    elif exchange(new, live):
        os.rename(new, old_dest)
        how = "exchanged atomically with the old one (renameat2), which went to quarantine"
    else:  # two renames; recovery-pending.json covers the moment between them
        os.rename(live, old_dest)
        os.rename(new, live)
        how = "renamed into place after the old one went to quarantine"
    fsync_dir(live.parent)
    fsync_dir(old_dest.parent)
    return how


def seal(files: dict[str, Any]) -> str:
    """fsync the quarantined copies (and their directory), then hash them again: they
    must be the bytes recorded. Raises if they are not: nothing may be swapped then."""
    changed = []
    for name, f in files.items():
        path = Path(f["path"])
        fsync_file(path)
        if ck.sha256_file(path) != f["sha256"]:
            changed.append(name)
    if files:
        fsync_dir(Path(next(iter(files.values()))["path"]).parent)
    if changed:
        raise OSError(f"the quarantined copies of {', '.join(changed)} are not the bytes "
                      "recorded")
    return (f"fsynced {', '.join(files)}; sha256 of each copy again: as recorded" if files
            else "nothing was quarantined")


__all__ = ["copy_and_hash", "exchange", "identity", "quarantine", "same_inode", "seal",
           "swap_db", "swap_journal"]
