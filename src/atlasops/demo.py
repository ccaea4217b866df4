"""``atlas demo``: a small, realistic portfolio workspace that shows every capability."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from . import businesses
from .auth import Principal, authenticate, bootstrap_owner_token
from .chronicle.compose import compose
from .chronicle.render import write
from .config import Business
from .durability import RecoveryResult, recover
from .errors import Conflict
from .gates import drafts, lanes, outbox, packets
from .gates.effects import Capabilities, acting_run
from .gates.status import gate_status
from .integrity import replay_check, verify_workspace
from .leads import ImportReport, import_csv, list_leads
from .ledger import Ledger
from .ops.jobs import run_job
from .ops.records import add_content, record_deploy, record_snapshot
from .ops.repair import repair
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


DEMO_GATES = """
[channels.zoho]  # the one allowed path for prospect email; never reached while closed
type = "smtp"
host = "smtp.zoho.example"
port = 587
tls = "starttls"
user_env = "ZOHO_USER"
password_env = "ZOHO_PASSWORD"
from_address = "matt@wimper.example"

[lanes."outbound.prospect"]
channel = "zoho"
daily_cap = 50
cooldown_hours = 336
footer = "Reply STOP to opt out."
posture_max_age_days = 30
"""

PITCH = """Hi {first},

I run WIMPER. Many of your clients with 10-50 employees qualify for a wellness plan
that lowers payroll taxes without changing take-home pay. Would a 15-minute walkthrough
for your team be useful?

Matt

Reply STOP to opt out."""


@dataclass
class GateScene:
    drafts: int
    approved_held: int
    touches_due: int
    packet: dict[str, object]
    outbox_summary: list[str]
    emails_sent: int
    status: dict[str, object]
    owner_token_file: str


DEMO_OPS = """
[routes.wimper-releases]
url = "http://127.0.0.1:{port}/wimper/releases"
auth = {{ type = "bearer", env = "DEMO_SITE_TOKEN" }}
must_contain = ["WIMPER Releases"]
healthy_after = 2
readback_deadline = 20
readback_interval = 0.2
runbook = "wimper-rebuild"
user_can = "open the WIMPER releases page as an authenticated user"

[[runbooks.wimper-rebuild.steps]]
name = "build"
command = "{py} -m atlasops.demo_site build --dir {site}"

[[runbooks.wimper-rebuild.steps]]
name = "restart"
command = "{py} -m atlasops.demo_site restart --dir {site} --port {port}"
timeout = 30

[jobs.revenue-radar]
entry = "atlasops.demo:radar_job"
business = "wimper"
read_only = true
timeout = 120

[chronicle]
repos = [{{ path = "repos/wimper", name = "wimper" }}]
agent_authors = ["atlas-agent@wimper.example"]
status_files = ["STATUS.md"]
worklog_file = "worklog/2026.md"   # not there today: the chronicle says so
"""

STATUS = """# Status

- WIMPER partner lane: packet ready for Matt's review; lane closed.
- Releases page: rebuilt and read back healthy.
- Next: turn the packet into an approved Zoho-only test.
"""

ARTICLES = [
    ("businessbrokerhawaii", "What a retail seller should prepare before listing in Hawaii",
     "# What a retail seller should prepare\n\nThree years of books, the lease, ..."),
    ("selllifeinsurancepolicyflorida", "Florida life settlement market data, 2025",
     "# 2025 market data\n\nSettlement volumes, average offers by age band, ..."),
]


@dataclass
class OpsScene:
    check_before: dict[str, object]
    repair: dict[str, object]
    radar: dict[str, object]
    content: list[int]
    deploys: list[int]


@dataclass
class DemoResult:
    workspace: Workspace
    imported: ImportReport
    receipts: list[int]
    recovery: RecoveryResult | None = None
    gates: GateScene | None = None
    ops: OpsScene | None = None
    chronicle: list[str] | None = None


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
    port = _free_port()
    ops_config = DEMO_OPS.format(port=port, py=sys.executable,
                                 site=(home / "site").resolve())
    ws = Workspace.init(home, DEMO_OWNER, "Matt", DEMO_BUSINESSES, demo=True,
                        extra_config=DEMO_GATES + ops_config)
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
    gates = _gate_scene(ws, receipts)
    ops = _ops_scene(ws, actor, receipts)
    recovery = _recovery_scene(ws, actor, receipts)
    chronicle = _chronicle_scene(ws)
    return DemoResult(ws, imported, receipts, recovery, gates, ops, chronicle)


def _git(repo: Path, *args: str, who: tuple[str, str] | None = None) -> None:
    cmd = ["git", "-C", str(repo)]
    if who is not None:
        cmd += ["-c", f"user.name={who[0]}", "-c", f"user.email={who[1]}"]
    subprocess.run([*cmd, *args], check=True, capture_output=True)


def _chronicle_scene(ws: Workspace) -> list[str]:
    """Today's commits (by Matt and an agent), a status file, and the chronicle."""
    (ws.home / "STATUS.md").write_text(STATUS, encoding="utf-8")
    repo = ws.home / "repos" / "wimper"
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    matt = ("Matt", "matt@wimper.example")
    agent = ("Atlas agent", "atlas-agent@wimper.example")
    for who, path, message in ((matt, "releases.md", "Releases page: list June releases"),
                               (matt, "partners.md", "Partner packet: CPA and broker copy"),
                               (agent, "snapshots.md", "Radar: note refreshed snapshots")):
        (repo / path).write_text(message + "\n", encoding="utf-8")
        _git(repo, "add", path)
        _git(repo, "commit", "-q", "-m", message, who=who)
    data = compose(ws, datetime.now(UTC).date())
    return [str(p) for p in write(ws, data, ["md", "html", "json"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def radar_job() -> None:
    """The demo's read-only job: refresh four revenue-radar snapshots (no side effects)."""
    ws = Workspace.open(Path(os.environ["ATLAS_HOME"]))
    with Ledger.for_workspace(ws) as ledger, tempfile.TemporaryDirectory() as tmp:
        run = acting_run(ledger, Capabilities.from_env(os.environ).job_run)
        who, job_run = (run.actor, run.run_id) if run else ("agent:radar", None)
        leads = list_leads(ledger)
        outputs = {
            "portfolio": {"date": "2026-06-27", "businesses": len(ws.config.businesses),
                          "leads": len(leads)},
            "attribution": {"channels": {"DIRECT": 61, "Instabrain": 39}},
            "cross-sell": {"candidates": [lead["id"] for lead in leads[:100]]},
            "identity-metrics": {"business": "humannaturefile", "profiles": 1240},
        }
        for name, data in outputs.items():
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(data), encoding="utf-8")
            record_snapshot(ledger, ws.config, name=name, path=path,
                            actor=who, job_run=job_run,
                            business="wimper" if name != "identity-metrics"
                            else "humannaturefile")
    print(f"refreshed {len(outputs)} snapshots")


def _scheduled(ledger: Ledger, ws: Workspace, job: str, actor: str, env: dict[str, str],
               receipts: list[int], *kinds: str) -> list[dict[str, Any]]:
    """Scheduled work runs as a built-in job (so the day's job count is honest): run it,
    keep its job-run receipt and the receipts of ``kinds`` it wrote."""
    run = run_job(ledger, ws.config, ws.home, job, actor=actor, env=env)
    rows = ledger.query("SELECT id, body FROM receipts WHERE id > ? AND id < ? AND kind IN "
                        f"({','.join('?' * len(kinds))}) ORDER BY id",
                        [_started_event(ledger, str(run["evidence"]["run_id"])),
                         run["receipt_id"], *kinds])
    receipts.extend([*(int(r["id"]) for r in rows), int(run["receipt_id"])])
    return [{"receipt_id": r["id"], **json.loads(r["body"])} for r in rows]


def _started_event(ledger: Ledger, run_id: str) -> int:
    return int(ledger.query("SELECT started_event FROM job_runs WHERE run_id=?",
                            (run_id,))[0]["started_event"])


def _ops_scene(ws: Workspace, actor: str, receipts: list[int]) -> OpsScene:
    """A route breaks when its build output is removed; repair earns `fixed` by readback."""
    site = ws.home / "site"
    env = {**os.environ, "DEMO_SITE_TOKEN": secrets.token_urlsafe(16)}
    port = int(ws.config.routes["wimper-releases"].url.split(":")[2].split("/")[0])

    def site_cmd(action: str) -> None:
        subprocess.run([sys.executable, "-m", "atlasops.demo_site", action, "--dir",
                        str(site), "--port", str(port)], check=True, env=env)

    site_cmd("build")
    site_cmd("start")
    try:
        site_cmd("break")      # the production build artifacts go missing...
        site_cmd("restart")    # ...and the process restarts without them
        with Ledger.for_workspace(ws) as ledger:
            checked = _scheduled(ledger, ws, "route-checks", actor, env, receipts,
                                 "route.check")[0]
            before = {"receipt_id": checked["receipt_id"], "outcome": checked["outcome"],
                      **checked["evidence"]}
            fixed = repair(ledger, ws.config, ws.home, "wimper-releases", actor=actor,
                           env=env)
            receipts.append(int(fixed["receipt_id"]))
            radar = run_job(ledger, ws.config, ws.home, "revenue-radar", actor=actor,
                            env=env)
            receipts.append(int(radar["receipt_id"]))
            content_ids = []
            with tempfile.TemporaryDirectory() as tmp:
                for business, title, text in ARTICLES:
                    path = Path(tmp) / "article.md"
                    path.write_text(text, encoding="utf-8")
                    item = add_content(ledger, ws.config, business=business, title=title,
                                       path=path, actor="agent:content")
                    content_ids.append(int(item["id"]))
            deploy_ids = []
            for business in ("businessbrokerhawaii", "selllifeinsurancepolicyflorida"):
                d = record_deploy(ledger, ws.config, site=business, provider="cloudflare",
                                  url=f"https://{business}.example", actor="agent:deploy",
                                  caps=Capabilities(), env=env,
                                  commit=hashlib.sha1(business.encode()).hexdigest())
                deploy_ids.append(int(d["receipt_id"]))
            receipts.extend(deploy_ids)
    finally:
        site_cmd("stop")
    return OpsScene(before, fixed, radar, content_ids, deploy_ids)


def _gate_scene(ws: Workspace, receipts: list[int]) -> GateScene:
    """Drafts held behind the closed prospect lane; a packet goes to the owner for review."""
    agent = Principal("agent", "outreach")
    caps = Capabilities()
    with Ledger.for_workspace(ws) as ledger:
        minted = bootstrap_owner_token(ledger, name="demo-owner", actor="system:demo")
        assert minted is not None  # a fresh demo workspace has no owner token yet
        # It's a demo: the owner's token is kept for the user in a private file.
        token_file = ws.home / "owner-token.txt"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(minted[0] + "\n")
        owner = authenticate(ledger, ws.config, minted[0])
        partners = [lead for lead in list_leads(ledger, business="wimper")
                    if lead["segment"] in ("cpa", "broker", "fractional_cfo")][:60]
        ids = []
        for lead in partners:
            first = str(lead["name"]).split(" ")[0] or "there"
            d = drafts.create(ledger, ws.config, agent, to=lead["email"],
                              subject="Payroll tax savings for your clients",
                              body=PITCH.format(first=first), business="wimper",
                              lead_id=lead["id"])
            ids.append(d["id"])
        packets.add_touches(ledger, ws.config, agent, [
            {"lead": lead["id"], "due": "2026-06-27", "sequence": "partner-intro", "step": 1}
            for lead in partners])
        lanes.record_posture(ledger, ws.config, owner, "outbound.prospect",
                             {"spf": "pass", "dkim": "pass", "dmarc": "pass",
                              "note": "Zoho-only path checked"})
        receipts.append(lanes.set_lane(ledger, ws.config, owner, "outbound.prospect",
                                       open_=True, reason="review a Zoho-only test batch"))
        drafts.approve(ledger, ws.config, owner, ids[:40])
        receipts.append(lanes.set_lane(ledger, ws.config, owner, "outbound.prospect",
                                       open_=False, reason="reply drought: pause prospect "
                                       "sends until the partner packet is reviewed"))
        report = outbox.run_once(ws, ledger, actor=agent.actor, caps=caps, env={})
        if report.receipt_id is not None:
            receipts.append(report.receipt_id)
        packets.create_packet(ledger, ws.config, agent, "wimper-partners",
                              segments=["cpa", "broker", "fractional_cfo"], limit=10,
                              business="wimper")
        review = packets.send_review(ws, ledger, agent, "wimper-partners", caps=caps, env={})
        receipts.append(int(review["receipt_id"]))
        status = gate_status(ledger, ws.config)
        due = len(packets.due_touches(ledger))
        packet = packets.get_packet(ledger, "wimper-partners")
    return GateScene(len(ids), sum(len(v) for v in report.held.values()), due,
                     {"name": packet["name"], "contacts": len(packet["lead_ids"]),
                      "drafts": len(packet["draft_ids"]), "to": review["to"],
                      "maildir": str(ws.home / "data/maildir/owner")},
                     report.hold_lines(), report.emails_sent, status, str(token_file))


def _recovery_scene(ws: Workspace, actor: str, receipts: list[int]) -> RecoveryResult:
    """A validated backup, more work after it, then the live file is damaged: recover."""
    with Ledger.for_workspace(ws) as ledger:
        _scheduled(ledger, ws, "backup", actor, dict(os.environ), receipts, "backup")
        leads = list_leads(ledger, segment="cpa", limit=25)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "agent-status-updates.csv"
            with open(path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["email", "status"])
                writer.writerows([lead["email"], "contacted"] for lead in leads)
            after = import_csv(ledger, ws.config, path, actor="agent:outreach",
                               update_status=True)
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
