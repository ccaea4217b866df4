"""``atlas demo``: a small, realistic portfolio workspace that shows every capability."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import businesses
from .config import Business
from .errors import Conflict
from .integrity import replay_check, verify_workspace
from .leads import ImportReport, import_csv
from .ledger import Ledger
from .workspace import CONFIG_NAME, Workspace

DEMO_OWNER = "matt@owner.atlas-demo.example"
DEMO_BUSINESSES = {
    "wimper": Business(name="WIMPER", sites=["wimper.example"]),
    "businessbrokerhawaii": Business(name="Business Broker Hawaii",
                                     sites=["businessbrokerhawaii.example"]),
    "selllifeinsurancepolicyflorida": Business(name="Life Settlement Florida",
                                               sites=["selllifeinsurancepolicyflorida.example"]),
    "humannaturefile": Business(name="HumanNatureFile", sites=["humannaturefile.example"]),
}


@dataclass
class DemoResult:
    workspace: Workspace
    imported: ImportReport
    receipts: list[int]


def reset_demo(home: Path) -> None:
    """Delete a previous demo workspace, and only a demo workspace."""
    if not home.exists():
        return
    config = home / CONFIG_NAME
    text = config.read_text(encoding="utf-8") if config.exists() else ""
    if "demo = true" not in text:
        raise Conflict(f"{home} exists and is not a demo workspace; --reset only deletes "
                       "workspaces that `atlas demo` created",
                       hint="Choose another --home for the demo.")
    shutil.rmtree(home)


def run_demo(home: Path, *, actor: str, reset: bool = False) -> DemoResult:
    home = Path(home)
    if reset:
        reset_demo(home)
    ws = Workspace.init(home, DEMO_OWNER, "Matt", DEMO_BUSINESSES, demo=True)
    receipts: list[int] = []
    with Ledger.for_workspace(ws) as ledger:
        businesses.sync(ledger, ws.config, actor)
        source = resources.files("atlasops") / "data" / "demo_leads.csv"
        with resources.as_file(source) as csv_path:
            imported = import_csv(ledger, ws.config, csv_path, actor=actor)
        if imported.receipt_id is not None:
            receipts.append(imported.receipt_id)
        receipts.append(replay_check(ws, ledger, actor))
    verified = verify_workspace(ws, actor)
    if verified.receipt_id is not None:
        receipts.append(verified.receipt_id)
    return DemoResult(ws, imported, receipts)


__all__ = ["DEMO_BUSINESSES", "DEMO_OWNER", "DemoResult", "reset_demo", "run_demo"]
