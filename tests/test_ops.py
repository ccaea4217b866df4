"""Operations with real processes: a real HTTP app in a subprocess behind a bearer
token, runbooks that rebuild and restart it, jobs as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import owner_token, write_csv
from tests.smtp_servers import free_port

TOKEN = "site-secret-token-1234"
SITE = [sys.executable, "-m", "atlasops.demo_site"]


def site(action: str, root: Path, port: int) -> None:
    subprocess.run([*SITE, action, "--dir", str(root), "--port", str(port)], check=True,
                   env={**os.environ, "DEMO_SITE_TOKEN": TOKEN})


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The web app, started without its build: /wimper/releases answers 500."""
    root, port = tmp_path / "site", free_port()
    monkeypatch.setenv("DEMO_SITE_TOKEN", TOKEN)
    site("start", root, port)
    try:
        yield {"root": root, "port": port}
    finally:
        site("stop", root, port)


def configure(ws: Workspace, app: dict[str, Any], steps: str, **route: str) -> Workspace:
    py = sys.executable
    extra = route.get("extra", "")
    text = f"""
[routes.releases]
url = "http://127.0.0.1:{app['port']}/wimper/releases"
auth = {{ type = "bearer", env = "DEMO_SITE_TOKEN" }}
must_contain = ["WIMPER Releases"]
healthy_after = 2
readback_deadline = 4
readback_interval = 0.2
runbook = "rebuild"
user_can = "open the WIMPER releases page as an authenticated user"
{extra}

[routes.releases-anonymous]
url = "http://127.0.0.1:{app['port']}/wimper/releases"
must_contain = ["WIMPER Releases"]

[runbooks.rebuild]
steps = [
{steps.format(py=py, root=app['root'], port=app['port'])}
]
"""
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(text)
    return Workspace.open(ws.home)


BUILD = '{{ name = "build", command = "{py} -m atlasops.demo_site build --dir {root}" }},'
RESTART = ('{{ name = "restart", command = "{py} -m atlasops.demo_site restart --dir {root} '
           '--port {port}", timeout = 30 }},')


def test_check_routes_reads_the_real_page(cli: Any, ws: Workspace, app: dict[str, Any]) -> None:
    configure(ws, app, BUILD + RESTART)
    r = cli("check", "routes", "releases", "--json")
    assert r.exit_code == 1
    reading = r.json()[0]
    assert reading["status"] == 500 and reading["passed"] is False
    assert "Internal Server Error" in reading["snippet"]
    receipt = cli("receipts", "show", str(reading["receipt_id"]), "--json").json()
    assert receipt["kind"] == "route.check" and receipt["outcome"] == "failed"
    assert "GET /wimper/releases returns 200 for an authenticated user" in receipt["summary"]
    assert TOKEN not in json.dumps(receipt)


def test_a_login_page_with_200_is_not_healthy(cli: Any, ws: Workspace,
                                               app: dict[str, Any]) -> None:
    configure(ws, app, BUILD + RESTART)
    site("build", app["root"], app["port"])
    site("restart", app["root"], app["port"])
    r = cli("check", "routes", "releases-anonymous", "--json")
    reading = r.json()[0]
    assert reading["status"] == 200  # the login page, after a redirect
    assert reading["passed"] is False and r.exit_code == 1
    failed = [c["name"] for c in reading["checks"] if not c["passed"]]
    assert failed == ["contains 'WIMPER Releases'"]
    assert cli("check", "routes", "releases").exit_code == 0


def test_repair_is_fixed_only_after_the_readback(cli: Any, ws: Workspace,
                                                 app: dict[str, Any]) -> None:
    configure(ws, app, BUILD + RESTART)
    r = cli("repair", "releases", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    rec = r.json()
    assert rec["outcome"] == "fixed"
    assert rec["summary"] == ("Fixed: users can open the WIMPER releases page as an "
                              "authenticated user.")
    assert rec["symptom"]["status"] == 500
    assert [a["name"] for a in rec["actions"]] == ["build", "restart"]
    assert all(a["exit_code"] == 0 for a in rec["actions"])
    assert rec["readback"]["passed"] is True
    last = rec["readback"]["readings"][-1]
    assert last["status"] == 200 and "WIMPER Releases" in last["snippet"]
    # and the page really is up now, read independently of Atlas
    import httpx

    page = httpx.get(f"http://127.0.0.1:{app['port']}/wimper/releases",
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200 and "WIMPER Releases" in page.text


def test_runbook_that_succeeds_but_leaves_the_page_broken_is_not_fixed(
        cli: Any, ws: Workspace, app: dict[str, Any]) -> None:
    configure(ws, app, BUILD)  # rebuilds but never restarts: the server keeps serving 500
    r = cli("repair", "releases", "--json")
    assert r.exit_code == 1
    rec = r.json()
    assert rec["outcome"] == "not_fixed"
    assert rec["actions"][0]["exit_code"] == 0
    assert "every runbook step succeeded but the readback still fails" in rec["summary"]
    assert rec["evidence"]["readback_status"] == 500


def test_healthy_route_is_not_broken_and_nothing_runs(cli: Any, ws: Workspace,
                                                      app: dict[str, Any],
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    configure(ws, app, '{{ name = "mark", command = "touch ' + str(marker) + '" }},')
    site("build", app["root"], app["port"])
    site("restart", app["root"], app["port"])
    r = cli("repair", "releases", "--json")
    assert r.exit_code == 0 and r.json()["outcome"] == "not_broken"
    assert not marker.exists()
    r = cli("repair", "releases", "--dry-run", "--json")
    assert r.json()["would_run"] is False and not marker.exists()
    r = cli("repair", "releases", "--force", "--json")
    assert marker.exists() and r.json()["outcome"] == "not_broken"
    assert "--force" in r.json()["summary"]


def test_failing_step_stops_the_runbook(cli: Any, ws: Workspace, app: dict[str, Any],
                                        tmp_path: Path) -> None:
    marker = tmp_path / "after"
    configure(ws, app, '{{ name = "fails", command = "echo boom; exit 3" }},'
              '{{ name = "after", command = "touch ' + str(marker) + '" }},')
    r = cli("repair", "releases", "--json")
    rec = r.json()
    assert rec["outcome"] == "not_fixed" and r.exit_code == 1
    assert [a["name"] for a in rec["actions"]] == ["fails"]
    assert rec["actions"][0]["exit_code"] == 3 and "boom" in rec["actions"][0]["output_tail"]
    assert not marker.exists()


def test_hanging_step_is_killed_with_its_process_group(cli: Any, ws: Workspace,
                                                       app: dict[str, Any],
                                                       tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    configure(ws, app, '{{ name = "hangs", timeout = 1, command = "sleep 300 & echo $! > '
              + str(pidfile) + '; wait" }},')
    r = cli("repair", "releases", "--json")
    rec = r.json()
    assert rec["actions"][0]["result"].startswith("timed out")
    assert rec["actions"][0].get("exit_code") is None
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not alive(child), "the step's child outlived the timeout"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not there does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_secrets_in_step_output_are_redacted(cli: Any, ws: Workspace, app: dict[str, Any]
                                             ) -> None:
    configure(ws, app, '{{ name = "leaky", command = "echo token=$DEMO_SITE_TOKEN; '
              'echo Authorization: Bearer abcdefghijklmnop; exit 1" }},')
    rec = cli("repair", "releases", "--json").json()
    tail = rec["actions"][0]["output_tail"]
    assert TOKEN not in tail and "abcdefghijklmnop" not in tail
    assert "[REDACTED]" in tail


def test_unreachable_route(cli: Any, ws: Workspace) -> None:
    with open(ws.config_path, "a") as fh:
        fh.write(f'\n[routes.gone]\nurl = "http://127.0.0.1:{free_port()}/"\ntimeout = 2\n')
    r = cli("check", "routes", "--json")
    reading = r.json()[0]
    assert r.exit_code == 1 and reading["status"] is None
    assert reading["checks"][0]["name"] == "reachable" and not reading["checks"][0]["passed"]


def test_missing_route_credentials_is_a_clear_error(cli: Any, ws: Workspace,
                                                    app: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    configure(ws, app, BUILD)
    monkeypatch.delenv("DEMO_SITE_TOKEN")
    r = cli("check", "routes", "--json")  # every route still gets its reading
    readings = {x["route"]: x for x in r.json()}
    assert r.exit_code == 1 and set(readings) == {"releases", "releases-anonymous"}
    cred = readings["releases"]["checks"][0]
    assert cred["name"] == "credentials" and "DEMO_SITE_TOKEN" in cred["detail"]
    assert readings["releases-anonymous"]["status"] == 200  # read, although it fails


# -- jobs ---------------------------------------------------------------------

def add_jobs(ws: Workspace, text: str) -> Workspace:
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(text)
    return Workspace.open(ws.home)


def test_read_only_job_that_tries_to_send_is_refused_and_marked(cli: Any, ws: Workspace,
                                                                tmp_path: Path) -> None:
    rows = [[f"c{i}@cpa{i}.example", f"C{i}", "", "cpa", "wimper"] for i in range(3)]
    assert cli("leads", "import", str(write_csv(tmp_path / "l.csv", rows))).exit_code == 0
    assert cli("packet", "create", "p", "--segment", "cpa").exit_code == 0
    atlas = f"{sys.executable} -m atlasops"
    add_jobs(ws, f'\n[jobs.radar]\ncommand = "{atlas} packet send-review p"\nread_only = true\n'
             'business = "wimper"\n')
    r = cli("jobs", "run", "radar", "--json")
    assert r.exit_code == 1
    rec = r.json()
    assert rec["evidence"]["violation"] is True and rec["evidence"]["refused_attempts"] == 1
    assert rec["effects"] == {"emails_sent": 0, "public_posts": 0, "cta_changes": 0,
                              "spend_cents": 0}
    assert "VIOLATION" in rec["summary"]
    refused = cli("receipts", "list", "--kind", "effect.refused", "--json").json()
    shown = cli("receipts", "show", str(refused[0]["id"]), "--json").json()
    assert shown["evidence"]["job_run"] == rec["evidence"]["run_id"]
    assert not (ws.home / "data/maildir/owner").exists()


def test_read_only_job_records_snapshots_with_zero_side_effects(cli: Any, ws: Workspace,
                                                                tmp_path: Path) -> None:
    data = tmp_path / "portfolio.json"
    data.write_text(json.dumps({"date": "2026-06-27", "mrr_cents": 123400}))
    atlas = f"{sys.executable} -m atlasops"
    add_jobs(ws, f'\n[jobs.revenue-radar]\ncommand = "{atlas} snapshot record portfolio '
             f'--file {data}"\nread_only = true\n')
    r = cli("jobs", "run", "revenue-radar", "--json")
    assert r.exit_code == 0, r.stdout
    rec = r.json()
    assert rec["outcome"] == "ok" and rec["evidence"]["violation"] is False
    assert rec["summary"].startswith("Job revenue-radar finished")
    assert "0 emails sent, 0 public posts, 0 cta changes, 0 spend cents" in rec["summary"]
    snaps = cli("snapshot", "list", "--json").json()
    assert snaps[0]["job_run"] == rec["evidence"]["run_id"]
    shown = cli("snapshot", "show", str(snaps[0]["id"]), "--json").json()
    assert shown["data"]["mrr_cents"] == 123400
    runs = cli("jobs", "runs", "--json").json()
    assert [x["run_id"] for x in runs] == [rec["evidence"]["run_id"]]
    assert runs[0]["outcome"] == "ok"


def test_job_timeout_and_output_bounds(cli: Any, ws: Workspace) -> None:
    py = sys.executable
    add_jobs(ws, f"""
[jobs.chatty]
entry = "tests.job_helpers:chatty"
cwd = "{Path(__file__).resolve().parents[1]}"

[jobs.slow]
command = "{py} -c 'import time; time.sleep(60)'"
timeout = 1

[jobs.short]
command = "{py} -c 'import time; time.sleep(0.3)'"
""")
    r = cli("jobs", "run", "chatty", "--json")
    rec = r.json()
    assert rec["evidence"]["output_bytes"] == 3 * 1024 * 1024 + len("done\n")
    assert len(rec["evidence"]["output_tail"]) <= 8 * 1024
    assert rec["evidence"]["output_tail"].endswith("done\n")
    r = cli("jobs", "run", "slow", "--json")
    rec = r.json()
    assert r.exit_code == 1 and rec["evidence"]["timed_out"] is True
    assert "killed at its 1 s timeout" in rec["summary"]
    t0 = time.perf_counter()
    rec = cli("jobs", "run", "short", "--json").json()
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert 300 <= rec["evidence"]["ms"] <= elapsed_ms
    assert rec["evidence"]["exit_code"] == 0


def test_builtin_jobs_are_jobs(cli: Any, ws: Workspace) -> None:
    names = {j["name"] for j in cli("jobs", "list", "--json").json()}
    assert {"backup", "db-check", "route-checks", "backup-prune"} <= names
    r = cli("jobs", "run", "db-check", "--json")
    assert r.exit_code == 0 and r.json()["outcome"] == "ok"
    assert len(cli("jobs", "runs", "--json").json()) == 1
    assert cli("jobs", "run", "nope").exit_code == 6


def test_content_and_deploys(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    article = tmp_path / "a.md"
    article.write_text("# Selling a retail business in Hawaii\n\nSteps...")
    r = cli("content", "add", "--business", "bbh", "--title", "Retail sellers guide",
            "--file", str(article), "--json")
    assert r.exit_code == 0 and r.json()["status"] == "draft"
    assert cli("content", "add", "--business", "nope", "--title", "x", "--file",
               str(article)).exit_code == 2
    assert "Retail sellers guide" in cli("content", "list").stdout
    r = cli("content", "publish", str(r.json()["id"]))
    assert r.exit_code == 8 and "closed" in r.stderr
    out = tmp_path / "cf.json"
    out.write_text(json.dumps({"success": True, "id": "abc123"}))
    r = cli("deploy", "record", "--site", "businessbrokerhawaii", "--provider", "cloudflare",
            "--url", "https://businessbrokerhawaii.example", "--commit", "a1b2c3d4e5f6",
            "--file", str(out), "--json")
    assert r.exit_code == 0
    receipt = cli("receipts", "show", str(r.json()["receipt_id"]), "--json").json()
    assert receipt["kind"] == "deploy"
    assert receipt["evidence"]["provider_output"] == {"success": True, "id": "abc123"}
    assert len(cli("deploy", "list", "--since", "2020-01-01", "--json").json()) == 1
    assert cli("deploy", "list", "--since", "2999-01-01", "--json").json() == []
    assert cli("deploy", "list", "--since", "yesterday").exit_code == 2
    assert cli("deploy", "record", "--site", "s", "--provider", "p", "--url", "ftp://x"
               ).exit_code == 2


def test_a_job_never_inherits_the_owners_token_or_escapes_its_parent(
        cli: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Ledger.for_workspace(ws) as led:
        token = owner_token(led)
    monkeypatch.setenv("ATLAS_TOKEN", token)
    atlas = f"{sys.executable} -m atlasops"
    add_jobs(ws, f"""
[jobs.opener]
command = "{atlas} lane open social.post --reason sneaky"
lanes = ["social.post"]

[jobs.outer]
command = "{atlas} jobs run opener"
read_only = true
""")
    rec = cli("jobs", "run", "opener", "--json").json()
    assert rec["outcome"] == "failed" and "only the owner" in rec["evidence"]["output_tail"]
    lanes = {x["name"]: x for x in cli("lane", "list", "--json").json()}
    assert lanes["social.post"]["open"] is False
    outer = cli("jobs", "run", "outer", "--json").json()
    runs = cli("jobs", "runs", "--json").json()
    inner = [r for r in runs if r["name"] == "opener"][-1]
    started = cli("events", "list", "--kind", "job.started", "--json").json()
    caps = {e["payload"]["run_id"]: e["payload"] for e in started}
    assert caps[inner["run_id"]]["capabilities"] == "read_only"  # narrowed by its parent
    assert caps[inner["run_id"]]["parent_run"] == outer["evidence"]["run_id"]


def test_configured_secrets_are_redacted_in_job_output(cli: Any, ws: Workspace,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOHO_APP_LOGIN", "zoho-app-pw-777")
    with open(ws.config_path, "a") as fh:
        fh.write('\n[channels.zoho]\ntype = "smtp"\nhost = "smtp.example"\n'
                 'from_address = "a@b.example"\nuser_env = "ZOHO_USER"\n'
                 'password_env = "ZOHO_APP_LOGIN"\n'
                 '\n[jobs.leak]\ncommand = "echo pw=$ZOHO_APP_LOGIN"\n')
    rec = cli("jobs", "run", "leak", "--json").json()
    assert "zoho-app-pw-777" not in json.dumps(rec)
    assert "[REDACTED]" in rec["evidence"]["output_tail"]


def test_a_step_that_cannot_start_still_leaves_a_receipt(cli: Any, ws: Workspace,
                                                         app: dict[str, Any]) -> None:
    configure(ws, app, '{{ name = "nowhere", cwd = "/nonexistent/dir", command = "true" }},')
    r = cli("repair", "releases", "--json")
    rec = r.json()
    assert r.exit_code == 1 and rec["outcome"] == "not_fixed"
    assert rec["actions"][0]["result"].startswith("could not start")
    assert rec["receipt_id"]
