"""Entry points for the job tests (run as `entry = "tests.job_helpers:NAME"`)."""

from __future__ import annotations

import sys


def chatty() -> None:
    """Print 3 MiB, then 'done'."""
    chunk = "x" * 1023 + "\n"
    for _ in range(3 * 1024):
        sys.stdout.write(chunk)
    sys.stdout.write("done\n")
    sys.stdout.flush()
