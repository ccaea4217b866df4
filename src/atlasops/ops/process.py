"""Run a command the way operations need it: in its own process group, killed
whole at its timeout, its output kept as a bounded tail with secrets redacted."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAIL_BYTES = 8 * 1024
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASS|KEY|PRIVATE|COOKIE|CREDENTIAL|AUTH)",
                         re.IGNORECASE)
BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "[REDACTED]"


@dataclass
class Ran:
    exit_code: int | None  # None when it was killed at its timeout
    ms: float
    output_tail: str
    output_bytes: int
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def secret_values(env: Mapping[str, str], names: Iterable[str] = ()) -> list[str]:
    """The values to hide: those of the named variables and of any variable whose name
    says it holds a secret. Very short values are left alone (they would hide words)."""
    wanted = set(names)
    values: set[str] = set()
    for k, v in env.items():
        if (k in wanted or SECRET_NAME.search(k)) and len(v) >= 6:
            values.add(v)
            # the spellings a secret takes in error messages and headers
            values.add(repr(v)[1:-1])
            values.add(base64.b64encode(v.encode()).decode())
            values.update(part for part in re.split(r"[:=;\s]", v) if len(part) >= 6)
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


def run(command: str | list[str], *, cwd: Path | None = None, env: Mapping[str, str],
        timeout: float, secrets: Iterable[str] = (), tail_bytes: int = TAIL_BYTES) -> Ran:
    """Run ``command`` (a shell string or an argv list) and wait at most ``timeout``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command, shell=isinstance(command, str), cwd=cwd, env=dict(env),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    tail: deque[bytes] = deque()
    kept = [0, 0]  # bytes in tail, total bytes

    def pump() -> None:
        stream = proc.stdout
        assert stream is not None
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            kept[1] += len(chunk)
            tail.append(chunk)
            kept[0] += len(chunk)
            while kept[0] - len(tail[0]) >= tail_bytes:
                kept[0] -= len(tail.popleft())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    raw = b"".join(tail)[-tail_bytes:]
    text = redact(raw.decode("utf-8", "replace"), secrets)
    ms = round((time.perf_counter() - t0) * 1000, 3)
    return Ran(None if timed_out else proc.returncode, ms, text, kept[1], timed_out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # children in the group may outlive the leader: make sure they are gone
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        except subprocess.TimeoutExpired:
            continue


__all__ = ["Ran", "config_secret_names", "redact", "run", "secret_values"]
