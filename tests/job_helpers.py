"""Entry points for the job tests (run as `entry = "tests.job_helpers:NAME"`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atlasops.gates.effects import EffectRefused
from atlasops.ledger import Ledger
from atlasops.ops.records import record_deploy
from atlasops.ops.repair import repair
from atlasops.workspace import Workspace


def chatty() -> None:
    """Print 3 MiB, then 'done'."""
    chunk = "x" * 1023 + "\n"
    for _ in range(3 * 1024):
        sys.stdout.write(chunk)
    sys.stdout.write("done\n")
    sys.stdout.flush()


def library_side_effects() -> None:
    """What an entry-point job can do with Atlas's library without passing capabilities:
    record a deploy and repair route ``dead``. Prints what became of each."""
    ws = Workspace.open(Path(os.environ["ATLAS_HOME"]))
    who = os.environ["ATLAS_ACTOR"]
    with Ledger.for_workspace(ws) as ledger:
        calls: dict[str, Callable[[], Any]] = {
            "deploy": lambda: record_deploy(ledger, ws.config, site="s", provider="p",
                                            url="https://s.example", actor=who),
            "repair": lambda: repair(ledger, ws.config, ws.home, "dead", actor=who,
                                     env=os.environ),
        }
        for name, call in calls.items():
            try:
                call()
                print(name, "done")
            except EffectRefused as exc:
                print(name, "refused:", exc.message)
