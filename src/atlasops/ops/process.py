"""Run a command the way operations need it: in a session of its own, its output
spooled to a temporary file, the clock stopped when the command itself exits,
killed whole at its timeout, its output kept as a bounded tail with secrets
redacted.

Output goes to a file, not a pipe: a process the command leaves running (a
server a runbook step restarts) keeps writing to it instead of dying on a
closed pipe, and the command's duration never waits for it. Whether such
processes may stay is the caller's choice (``leave_running``): runbook steps
may leave a daemon, jobs may not. Processes are found by their session (and
process group), read from ``/proc``: a process that starts a session of its own
(``setsid``) is out of reach, by design of the operating system.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

TAIL_BYTES = 8 * 1024
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASS|KEY|PRIVATE|COOKIE|CREDENTIAL|AUTH)",
                         re.IGNORECASE)
BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "[REDACTED]"
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Ran:
    exit_code: int | None  # None when it was killed (timeout, interrupted)
    ms: float  # until the command itself exited (or was stopped)
    output_tail: str
    output_bytes: int
    timed_out: bool
    left: list[int] = field(default_factory=list)  # its processes running when it exited
    killed: int = 0  # processes Atlas killed (at the timeout, on interrupt, or left by a job)
    interrupted: str | None = None  # the signal that stopped the runner, if one did

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Interrupted(Exception):
    """The runner was told to stop (SIGTERM, SIGHUP, Ctrl-C) while a command ran."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class _Stop:
    """A stop signal is kept (``pending``) until the context that installed the handler
    ends; it raises only inside an :func:`interruptible` wait (:func:`run` waiting for its
    command), so one arriving at any other moment (a ledger write) is taken up by the next
    wait."""

    armed = False
    pending: str | None = None


@contextmanager
def stop_signals_interrupt(signals: tuple[signal.Signals, ...] = STOP_SIGNALS
                           ) -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP (or the ``signals`` given; Ctrl-C raises
    KeyboardInterrupt unless SIGINT is among them) stop :func:`run`'s command, so it can
    kill what it started and the caller can still write its receipt. Elsewhere than in
    an :func:`interruptible` wait, a signal is only noted (:func:`stop_requested`). Only
    the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        _Stop.pending = name
        if _Stop.armed:
            raise Interrupted(name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _Stop.pending = None


@contextmanager
def interruptible() -> Iterator[None]:
    """A wait that a stop signal may cut short: inside, the signal raises
    :class:`Interrupted` at once (one that came before raises on entry)."""
    if _Stop.pending is not None:
        raise Interrupted(_Stop.pending)
    _Stop.armed = True
    try:
        yield
    finally:
        _Stop.armed = False


def stop_requested() -> str | None:
    """The stop signal received inside :func:`stop_signals_interrupt`, if one was."""
    return _Stop.pending


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    with interruptible():
        proc.wait(timeout=timeout)


def secret_values(env: Mapping[str, str], names: Iterable[str] = ()) -> list[str]:
    """The values to hide: those of the named variables and of any variable whose name
    says it holds a secret. Very short values are left alone (they would hide words).
    For ``user:password`` and ``name=value`` values, the part after the first ``:`` or
    ``=`` is hidden too, but not the user or cookie name."""
    wanted = set(names)
    values: set[str] = set()
    for k, v in env.items():
        if (k in wanted or SECRET_NAME.search(k)) and len(v) >= 6:
            values.add(v)
            # the spellings a secret takes in error messages and headers
            values.add(repr(v)[1:-1])
            values.add(base64.b64encode(v.encode()).decode())
            for part in re.split(r"[;\s]+", v):
                sep = re.search(r"[:=]", part)
                if sep and len(part) - sep.end() >= 6:
                    values.add(part[sep.end():])
    return sorted(values, key=len, reverse=True)


def config_secret_names(config: Any) -> list[str]:
    """The environment variables atlas.toml names as holding secrets."""
    names: list[str] = []
    for route in config.routes.values():
        if route.auth is not None:
            names.append(route.auth.env)
    for channel in config.all_channels().values():
        names += [n for n in (channel.user_env, channel.password_env) if n]
    return names


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        text = text.replace(s, REDACTED)
    return BEARER.sub(lambda m: m.group(1) + REDACTED, text)


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` or process group ``sid`` (zombies excluded)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path("/proc", entry.name, "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
        if state not in ("Z", "X") and sid in (pgrp, session):
            found.append(int(entry.name))
    return found


def kill_session(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM every process of the command's session, then SIGKILL what is left.
    Returns how many processes were signalled."""
    seen: set[int] = set()
    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 5.0)):
        members = session_members(proc.pid)
        if not members:
            break
        seen.update(members)
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so it does not linger as a zombie
            if not session_members(proc.pid):
                break
            time.sleep(0.02)
    proc.poll()
    return len(seen)


def read_tail(spool: IO[bytes], tail_bytes: int, secrets: list[str]) -> tuple[int, str]:
    """(total bytes, the redacted last ``tail_bytes`` characters). Redaction happens
    before the cut, over a margin wide enough to hold any secret that crosses it; when the
    tail is cut, its first (partial) line is dropped, so no fragment of a token survives."""
    size = os.fstat(spool.fileno()).st_size
    margin = max((len(s.encode()) for s in secrets), default=0) + 256
    start = max(0, size - tail_bytes - margin)
    spool.seek(start)
    text = redact(spool.read(size - start).decode("utf-8", "replace"), secrets)
    return size, cut_tail(text, tail_bytes, cut_before=start > 0)


def cut_tail(text: str, limit: int, *, cut_before: bool = False) -> str:
    """The last ``limit`` characters of already-redacted text; when anything before them
    is dropped, so is their first, partial line (a token cut in half is still a secret)."""
    if not cut_before and len(text) <= limit:
        return text
    text = text[-limit:]
    newline = text.find("\n")
    return text[newline + 1:] if 0 <= newline < len(text) - 1 else text


def run(command: str | list[str], *, cwd: Path | None = None, env: Mapping[str, str],
        timeout: float, secrets: Iterable[str] = (), tail_bytes: int = TAIL_BYTES,
        leave_running: bool = False) -> Ran:
    """Run ``command`` (a shell string or an argv list) and wait at most ``timeout``.

    When the command exits, processes it left in its session are killed, unless
    ``leave_running`` (a runbook step that starts a server). At the timeout, or when the
    runner is interrupted (:func:`stop_signals_interrupt`), the whole session is killed.
    """
    hidden = list(secrets)
    with tempfile.TemporaryFile(prefix="atlas-output-") as spool:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            command, shell=isinstance(command, str), cwd=cwd, env=dict(env),
            stdin=subprocess.DEVNULL, stdout=spool, stderr=subprocess.STDOUT,
            start_new_session=True)
        timed_out, interrupted = False, None
        try:
            _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except Interrupted as exc:
            interrupted = exc.signame
        except KeyboardInterrupt:
            interrupted = "SIGINT"
        ms = round((time.perf_counter() - t0) * 1000, 3)
        stopped = timed_out or interrupted is not None
        left = [] if stopped else session_members(proc.pid)
        killed = kill_session(proc) if stopped or (left and not leave_running) else 0
        output_bytes, tail = read_tail(spool, tail_bytes, hidden)
    return Ran(None if stopped else proc.returncode, ms, tail, output_bytes, timed_out,
               left, killed, interrupted)


__all__ = ["Interrupted", "Ran", "config_secret_names", "cut_tail", "interruptible",
           "kill_session", "read_tail", "redact", "run", "secret_values", "session_members",
           "stop_requested", "stop_signals_interrupt"]
