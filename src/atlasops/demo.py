"""``atlas demo``: a small, realistic portfolio workspace that shows every capability."""

from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import businesses
from .config import Business
from .durability import RecoveryResult, recover, take_backup
from .errors import Conflict
from .integrity import replay_check, verify_workspace
from .leads import ImportReport, import_csv, list_leads
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
    recovery: RecoveryResult | None = None


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
    recovery = _recovery_scene(ws, actor, receipts)
    return DemoResult(ws, imported, receipts, recovery)


def _recovery_scene(ws: Workspace, actor: str, receipts: list[int]) -> RecoveryResult:
    """A validated backup, more work after it, then the live file is damaged: recover."""
    with Ledger.for_workspace(ws) as ledger:
        _info, backup_receipt = take_backup(ws, ledger, actor=actor, label="hourly")
        receipts.append(backup_receipt)
        leads = list_leads(ledger, segment="cpa", limit=25)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "agent-status-updates.csv"
            with open(path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["email", "status"])
                writer.writerows([lead["email"], "contacted"] for lead in leads)
            after = import_csv(ledger, ws.config, path, actor="agent:outreach")
        if after.receipt_id is not None:
            receipts.append(after.receipt_id)
    # The day's incident: pages in the middle of leads.db are overwritten.
    size = ws.db_path.stat().st_size
    with open(ws.db_path, "r+b") as fh:
        fh.seek((size // 2) // 4096 * 4096)
        fh.write(b"\0" * 4096 * 8)
    result = recover(ws, actor=actor)
    if result.receipt_id is not None:
        receipts.append(result.receipt_id)
    return result


__all__ = ["DEMO_BUSINESSES", "DEMO_OWNER", "DemoResult", "reset_demo", "run_demo"]
