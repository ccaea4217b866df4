"""Run a command the way operations need it: in a session of its own, its output
spooled to a temporary file, the clock stopped when the command itself exits,
killed whole at its timeout, its output kept as a bounded tail with secrets
redacted.

Output goes to a file, not a pipe: a process the command leaves running (a
server a runbook step restarts) keeps writing to it instead of dying on a
closed pipe, and the command's duration never waits for it. Whether such
processes may stay is the caller's choice (``leave_running``): runbook steps
may leave a daemon, jobs may not. Processes are found in ``/proc`` by their session
(and process group) and by descent (``PPid``): a nested job's processes, in a session
of their own, are its runner's descendants and are killed with it. A process that
leaves the session *and* whose parent has exited (a daemon that forks twice) is out
of reach, by design of the operating system.
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


def pause(seconds: float) -> None:
    """Sleep; inside :func:`stop_signals_interrupt`, a stop signal raises
    :class:`Interrupted` instead (also one that arrived while the caller was busy)."""
    with interruptible():
        time.sleep(seconds)


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


@dataclass(frozen=True)
class Proc:
    """One line of ``/proc/<pid>/stat``. ``start`` (clock ticks after boot) and ``pid``
    together name one process for good: a reused pid has another start time."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie has exited, only not been reaped


def proc_stat(pid: int) -> Proc | None:
    """The process ``pid`` as ``/proc`` shows it now; None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (or it exited while we looked)
        return None
    f = text.rsplit(")", 1)[1].split()  # the name, in parentheses, may hold anything
    return Proc(pid, f[0], int(f[1]), int(f[2]), int(f[3]), int(f[19]))


def still_running(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` (None: any start) is alive."""
    p = proc_stat(pid)
    return p is not None and p.alive and (start is None or p.start == start)


def ancestry(pid: int) -> list[Proc]:
    """The process and its ancestors, nearest first."""
    chain: list[Proc] = []
    while pid > 0 and all(p.pid != pid for p in chain):
        p = proc_stat(pid)
        if p is None:
            break
        chain.append(p)
        pid = p.ppid
    return chain


def _processes() -> list[Proc]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (p := proc_stat(int(entry.name))) is not None:
            found.append(p)
    return found


def tree_members(sid: int) -> dict[int, int]:
    """Live processes of session ``sid`` or process group ``sid``, and every descendant
    of theirs wherever it runs (a nested job's own session): pid -> start time."""
    procs = _processes()
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found: dict[int, int] = {}
    frontier = [p for p in procs if sid in (p.pgrp, p.session)]
    while frontier:
        p = frontier.pop()
        if p.pid not in found:
            if p.alive:
                found[p.pid] = p.start
            frontier += children.get(p.pid, [])
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM every process of the command's session and their descendants, then SIGKILL
    what is left. A process seen once stays a target even after its parent dies (it is
    then no longer anyone's descendant). Returns how many processes were signalled."""
    seen: dict[int, int] = {}

    def live() -> list[int]:
        seen.update(tree_members(proc.pid))
        return [pid for pid, start in seen.items() if still_running(pid, start)]

    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 5.0)):
        targets = live()
        if not targets:
            break
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so it does not linger as a zombie
            if not live():
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

    When the command exits, processes it left (in its session, or descended from it) are
    killed, unless ``leave_running`` (a runbook step that starts a server). At the
    timeout, or when the runner is interrupted (:func:`stop_signals_interrupt`), all of
    them are killed.
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
        left = [] if stopped else sorted(tree_members(proc.pid))
        killed = kill_tree(proc) if stopped or (left and not leave_running) else 0
        output_bytes, tail = read_tail(spool, tail_bytes, hidden)
    return Ran(None if stopped else proc.returncode, ms, tail, output_bytes, timed_out,
               left, killed, interrupted)


__all__ = ["Interrupted", "Proc", "Ran", "ancestry", "config_secret_names", "cut_tail",
           "interruptible", "kill_tree", "pause", "proc_stat", "read_tail", "redact", "run",
           "secret_values", "still_running", "stop_requested", "stop_signals_interrupt",
           "tree_members"]
