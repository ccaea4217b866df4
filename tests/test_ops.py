"""Operations with real processes: a real HTTP app in a subprocess behind a bearer
token, runbooks that rebuild and restart it, jobs as subprocesses."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from atlasops.config import BUILTIN_JOBS
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
    assert failed == ["redirect", "contains 'WIMPER Releases'"]
    assert reading["final_url"].endswith("/login")
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
    # the page was read after the failing step, and the summary says what it read
    assert rec["readback"]["readings"][0]["status"] == 500
    assert rec["summary"].startswith("Not fixed: runbook step 'fails' failed (exit 3); GET "
                                     "/wimper/releases returns 200 for an authenticated user: "
                                     "it still does NOT (status: 500 (expected 200))")


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

def add_config(ws: Workspace, text: str) -> Workspace:
    with open(ws.config_path, "a", encoding="utf-8") as fh:
        fh.write(text)
    return Workspace.open(ws.home)


def test_read_only_job_that_tries_to_send_is_refused_and_marked(cli: Any, ws: Workspace,
                                                                tmp_path: Path) -> None:
    rows = [[f"c{i}@cpa{i}.example", f"C{i}", "", "cpa", "wimper"] for i in range(3)]
    assert cli("leads", "import", str(write_csv(tmp_path / "l.csv", rows))).exit_code == 0
    assert cli("packet", "create", "p", "--segment", "cpa").exit_code == 0
    atlas = f"{sys.executable} -m atlasops"
    add_config(ws, f'\n[jobs.radar]\ncommand = "{atlas} packet send-review p"\nread_only = true\n'
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
    add_config(ws, f'\n[jobs.revenue-radar]\ncommand = "{atlas} snapshot record portfolio '
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
    add_config(ws, f"""
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
    listed = {j["name"]: j for j in cli("jobs", "list", "--json").json()}
    assert {n for n, j in listed.items() if j["builtin"]} == {
        "backup", "db-check", "route-checks", "backup-prune", "chronicle"}
    r = cli("jobs", "run", "db-check", "--json")
    assert r.exit_code == 0 and r.json()["outcome"] == "ok"
    assert r.json()["evidence"]["builtin"] is True
    runs = cli("jobs", "runs", "--json").json()
    assert len(runs) == 1 and runs[0]["builtin"] is True and runs[0]["state"] == "ok"
    assert cli("jobs", "run", "nope").exit_code == 6
    # a built-in's timeout is configurable
    add_config(ws, "\n[builtin_jobs.db-check]\ntimeout = 0.01\n")
    assert {j["name"]: j for j in cli("jobs", "list", "--json").json()}[
        "db-check"]["timeout"] == 0.01
    rec = cli("jobs", "run", "db-check", "--json").json()
    assert rec["evidence"]["timed_out"] is True and "0.01 s timeout" in rec["summary"]
    with open(ws.config_path, "a") as fh:
        fh.write("\n[builtin_jobs.nope]\ntimeout = 1\n")
    r = cli("jobs", "list")
    assert r.exit_code == 4 and "builtin_jobs.nope" in r.stderr
    # a [jobs.NAME] section cannot shadow a built-in: every built-in name is reserved
    for name in BUILTIN_JOBS:
        text = ws.config_path.read_text().replace("\n[builtin_jobs.nope]\ntimeout = 1\n", "")
        ws.config_path.write_text(text + f'\n[jobs.{name}]\ncommand = "echo mine"\n')
        r = cli("jobs", "run", name)
        assert r.exit_code == 4 and f"jobs.{name}" in r.stderr and "reserved" in r.stderr
        ws.config_path.write_text(text)


def test_content_and_deploys(cli: Any, ws: Workspace, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    article = tmp_path / "a.md"
    article.write_text("# Selling a retail business in Hawaii\n\nSteps...")
    r = cli("content", "add", "--business", "bbh", "--title", "Retail sellers guide",
            "--file", str(article), "--json")
    assert r.exit_code == 0 and r.json()["status"] == "draft"
    assert cli("content", "add", "--business", "nope", "--title", "x", "--file",
               str(article)).exit_code == 2
    assert "Retail sellers guide" in cli("content", "list").stdout
    item = r.json()["id"]
    r = cli("content", "publish", str(item))
    assert r.exit_code == 8 and "only the owner" in r.stderr
    with Ledger.for_workspace(ws) as led:
        token = owner_token(led)
    monkeypatch.setenv("ATLAS_TOKEN", token)
    r = cli("content", "publish", str(item))
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
    add_config(ws, f"""
[jobs.opener]
command = "{atlas} lane open social.post --reason sneaky"
lanes = ["social.post"]

[jobs.outer]
command = "{atlas} jobs run opener"
read_only = true

[jobs.dropping-outer]
command = "env -u ATLAS_JOB_RUN -u ATLAS_CAPABILITIES {atlas} jobs run opener"
read_only = true
""")
    rec = cli("jobs", "run", "opener", "--json").json()
    assert rec["outcome"] == "failed" and "only the owner" in rec["evidence"]["output_tail"]
    lanes = {x["name"]: x for x in cli("lane", "list", "--json").json()}
    assert lanes["social.post"]["open"] is False
    # a nested job is narrowed by its parent, also when it dropped the parent's variables
    for name in ("outer", "dropping-outer"):
        outer = cli("jobs", "run", name, "--json").json()
        runs = cli("jobs", "runs", "--json").json()
        inner = [r for r in runs if r["name"] == "opener"][-1]
        started = cli("events", "list", "--kind", "job.started", "--json").json()
        caps = {e["payload"]["run_id"]: e["payload"] for e in started}
        assert caps[inner["run_id"]]["capabilities"] == "read_only", name
        assert caps[inner["run_id"]]["parent_run"] == outer["evidence"]["run_id"], name


def test_configured_secrets_are_redacted_in_job_output(cli: Any, ws: Workspace,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOHO_APP_LOGIN", "zoho-app-pw-777")
    with open(ws.config_path, "a") as fh:  # the job's lane uses the channel: it gets the
        fh.write('\n[channels.zoho]\ntype = "smtp"\nhost = "smtp.example"\n'  # password
                 'from_address = "a@b.example"\nuser_env = "ZOHO_USER"\n'
                 'password_env = "ZOHO_APP_LOGIN"\n'
                 '\n[lanes."outbound.prospect"]\nchannel = "zoho"\n'
                 '\n[jobs.leak]\ncommand = "echo pw=$ZOHO_APP_LOGIN"\n'
                 'lanes = ["outbound.prospect"]\n')
    rec = cli("jobs", "run", "leak", "--json").json()
    assert "zoho-app-pw-777" not in json.dumps(rec)
    assert "[REDACTED]" in rec["evidence"]["output_tail"]



def test_a_job_gets_only_the_credentials_its_capabilities_use(
        cli: Any, ws: Workspace, pages: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"ZOHO_USER": "zoho-user-name-1", "ZOHO_PASS": "zoho-pass-4242",
               "SITE_TOKEN": "site-token-5151"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    seen = tmp_path / "seen"
    seen.mkdir()
    # each job writes what it was given to a file of its own: the ground truth
    peek = " ".join(f"{k}=${{{k}:-unset}}" for k in secrets)
    jobs = {"ro": "read_only = true", "mailer": 'lanes = ["outbound.prospect"]',
            "reviewer": 'lanes = ["outbound.review"]', "fixer": 'lanes = ["repair"]'}
    add_config(ws, f"""
[channels.zoho]
type = "smtp"
host = "smtp.example"
from_address = "a@wimper.example"
user_env = "ZOHO_USER"
password_env = "ZOHO_PASS"

[lanes."outbound.prospect"]
channel = "zoho"

[routes.site]
url = "{pages}/reflect"
auth = {{ type = "bearer", env = "SITE_TOKEN" }}
must_contain = ["Releases"]
""" + "".join(f'\n[jobs.{n}]\ncommand = "echo {peek} > {seen / n}"\n{c}\n'
              for n, c in jobs.items()))
    for name in jobs:
        assert cli("jobs", "run", name).exit_code == 0
    given = {n: dict(kv.split("=", 1) for kv in (seen / n).read_text().split())
             for n in jobs}
    unset = dict.fromkeys(secrets, "unset")
    assert given["ro"] == unset and given["reviewer"] == unset
    assert given["mailer"] == {**unset, "ZOHO_USER": secrets["ZOHO_USER"],
                               "ZOHO_PASS": secrets["ZOHO_PASS"]}
    assert given["fixer"] == {**unset, "SITE_TOKEN": secrets["SITE_TOKEN"]}
    # the built-in route-checks job reads the route with its credentials
    rec = cli("jobs", "run", "route-checks", "--json").json()
    assert rec["outcome"] == "ok", rec["evidence"]["output_tail"]
    check_receipt = cli("receipts", "list", "--kind", "route.check", "--json").json()[-1]
    assert check_receipt["outcome"] == "ok"

def test_a_step_that_cannot_start_still_leaves_a_receipt(cli: Any, ws: Workspace,
                                                         app: dict[str, Any]) -> None:
    configure(ws, app, '{{ name = "nowhere", cwd = "/nonexistent/dir", command = "true" }},')
    r = cli("repair", "releases", "--json")
    rec = r.json()
    assert r.exit_code == 1 and rec["outcome"] == "not_fixed"
    assert rec["actions"][0]["result"].startswith("could not start")
    assert rec["receipt_id"]


# -- pages that go wrong: a real server in a subprocess (tests/route_server.py) ----------

ROOT = Path(__file__).resolve().parents[1]
ATLAS = f"{sys.executable} -m atlasops"


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the test server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the test server did not listen")


@contextmanager
def route_server(*tls: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.route_server", str(port), *tls],
                            cwd=ROOT)
    try:
        wait_listening(port, proc)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def pages() -> Iterator[str]:
    with route_server() as base:
        yield base


def routes(ws: Workspace, **sections: str) -> Workspace:
    return add_config(ws, "".join(f"\n[routes.{name}]\n{body}\n"
                                  for name, body in sections.items()))


def check(cli: Any, name: str) -> dict[str, Any]:
    r = cli("check", "routes", name, "--json")
    reading: dict[str, Any] = r.json()[0]
    assert r.exit_code == (0 if reading["passed"] else 1)
    return reading


def failed_checks(reading: dict[str, Any]) -> list[str]:
    return [c["name"] for c in reading["checks"] if not c["passed"]]


def test_redirects_are_evidence_and_fail_unless_allowed(cli: Any, ws: Workspace,
                                                        pages: str) -> None:
    routes(ws, login=f'url = "{pages}/login-redirect"',
           login_allowed=f'url = "{pages}/login-redirect"\nallow_redirect_to = ["/login"]',
           elsewhere=f'url = "{pages}/other-host"')
    reading = check(cli, "login")
    assert reading["status"] == 200 and failed_checks(reading) == ["redirect"]
    assert reading["final_url"] == f"{pages}/login"
    assert reading["redirects"] == [{"status": 302, "url": f"{pages}/login-redirect"}]
    receipt = cli("receipts", "show", str(cli("receipts", "list", "--kind", "route.check",
                                              "--json").json()[0]["id"]), "--json").json()
    assert receipt["evidence"]["final_url"] == f"{pages}/login"
    assert "it does NOT (redirect" in receipt["summary"]
    assert check(cli, "login_allowed")["passed"] is True
    reading = check(cli, "elsewhere")
    assert failed_checks(reading) == ["redirect"]
    assert reading["final_url"].startswith("http://localhost:")



def test_a_redirect_must_stay_on_the_routes_origin(cli: Any, ws: Workspace,
                                                   pages: str) -> None:
    """Scheme, host and port are compared exactly; an allowed path means the route's own
    origin; an allowed URL prefix ends at a path boundary; the query counts."""
    port = pages.rsplit(":", 1)[1]
    with route_server() as other:  # the same host name, another port
        cases = {
            "port": (f"/page?redirect={other}/page", []),
            "query": ("/page?redirect=/page%3Fstate%3Dexpired", []),
            "path_other_host": (f"/x?redirect=http://localhost:{port}/login", ["/login"]),
            "no_boundary": ("/x?redirect=/login", [f"{pages}/log"]),
            "prefix_other_port": (f"/x?redirect={other}/login", [pages]),
            "host_prefix": (f"/x?redirect=http://localhost:{port}/page",
                            ["http://localhost"]),
        }
        allowed = {
            "slash": ("/dir", []),  # a trailing slash is not a move
            "same_origin_path": ("/x?redirect=/login%3Fnext%3D/x", ["/login"]),
            "prefix": ("/x?redirect=/login/done", [f"{pages}/login"]),
        }
        for name, (path, allow) in {**cases, **allowed}.items():
            routes(ws, **{name: f'url = "{pages}{path}"\nallow_redirect_to = {json.dumps(allow)}'})
        for name in cases:
            reading = check(cli, name)
            assert reading["redirects"] and failed_checks(reading)[:1] == ["redirect"], name
        for name in allowed:
            reading = check(cli, name)
            assert reading["redirects"] and "redirect" not in failed_checks(reading), (
                name, reading["checks"])

def test_routes_that_cannot_be_judged_are_refused_at_load(cli: Any, ws: Workspace) -> None:
    base = ws.config_path.read_text()
    with open(ws.config_path, "a") as fh:
        fh.write('\n[routes.head]\nurl = "http://127.0.0.1:1/"\nmethod = "HEAD"\n'
                 'must_contain = ["Releases"]\n')
    r = cli("check", "routes")
    assert r.exit_code == 4 and "HEAD route has no body" in r.stderr
    text = ws.config_path.read_text().replace('method = "HEAD"\nmust_contain = ["Releases"]',
                                              'auth = { type = "bearer", env = "T" }')
    ws.config_path.write_text(text)
    r = cli("check", "routes")
    assert r.exit_code == 4 and "a route with auth needs must_contain" in r.stderr
    # HEAD has no body to tell the signed-in page from a login page: refused with auth
    ws.config_path.write_text(text.replace('auth = { type = "bearer", env = "T" }',
                                           'auth = { type = "bearer", env = "T" }\n'
                                           'method = "HEAD"'))
    r = cli("check", "routes")
    assert r.exit_code == 4 and "a route with auth cannot use HEAD" in r.stderr

    # allow_redirect_to entries that could never match, and urls that cannot be read
    never = {'"login"': 'entry \'login\' can never match: it is neither an absolute path',
             '"/done?x=1"': "entry '/done?x=1' can never match: it is a path with a query",
             '"/done#top"': "entry '/done#top' can never match: it is a path with a query or "
                            "fragment",
             '"ftp://a.example/x"': "entry 'ftp://a.example/x' can never match: it is not an "
                                    "http:// or https:// URL",
             '"https:///x"': "entry 'https:///x' can never match: it has no host",
             '"https://a.example:99999/x"': "it has an invalid port (Port out of range"}
    for entry, why in never.items():
        ws.config_path.write_text(base + f'\n[routes.r]\nurl = "http://127.0.0.1:1/"\n'
                                  f"allow_redirect_to = [\"/ok\", {entry}]\n")
        r = cli("check", "routes")
        assert r.exit_code == 4 and "key routes.r.allow_redirect_to" in r.stderr, r.stderr
        assert why in r.stderr, (entry, r.stderr)
    for url, why in {"http://:8080/x": "has no host", "http://a.example:0/": "has port 0",
                     "mailto:a@example.com": "is not an http:// or https:// URL"}.items():
        ws.config_path.write_text(base + f'\n[routes.r]\nurl = "{url}"\n')
        r = cli("check", "routes")
        assert r.exit_code == 4 and "key routes.r.url: " in r.stderr and why in r.stderr, url
    ws.config_path.write_text(base + '\n[routes.r]\nurl = "http://127.0.0.1:1/"\n'
                              'allow_redirect_to = ["/done", "https://sso.example/app?x=1"]\n')
    assert cli("check", "routes", "r").exit_code == 1  # accepted: read (and unreachable)


def test_tls_errors_timeouts_and_latency(cli: Any, ws: Workspace, pages: str,
                                         tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with route_server(str(cert), str(key)) as tls:
        routes(ws, tls=f'url = "{tls}/page"\nmust_contain = ["Releases"]',
               slow=f'url = "{pages}/slow?ms=3000"\ntimeout = 0.5',
               sluggish=f'url = "{pages}/slow?ms=300"\nmax_latency_ms = 100')
        reading = check(cli, "tls")
    assert reading["status"] is None and failed_checks(reading) == ["reachable"]
    assert "CERTIFICATE_VERIFY_FAILED" in reading["checks"][0]["detail"]
    reading = check(cli, "slow")
    assert reading["status"] is None and "timed out after 0.5 s" in reading["error"]
    reading = check(cli, "sluggish")
    assert reading["status"] == 200 and failed_checks(reading) == ["latency"]
    assert reading["ms"] >= 300  # the server really waited that long


def test_route_auth_kinds_and_redaction(cli: Any, ws: Workspace, pages: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_BASIC", "operator:basic-password-99")
    monkeypatch.setenv("SITE_SESSION", "sid=cookie-value-12345")
    routes(ws, basic=f'url = "{pages}/reflect"\nauth = {{ type = "basic", env = "SITE_BASIC" }}'
                     '\nmust_contain = ["Releases"]',
           cookie=f'url = "{pages}/reflect"\nauth = {{ type = "cookie", env = "SITE_SESSION" }}'
                  '\nmust_contain = ["Releases"]')
    basic = check(cli, "basic")
    assert basic["passed"] is True
    credential = base64.b64encode(b"operator:basic-password-99").decode()
    assert "basic-password-99" not in basic["snippet"] and credential not in basic["snippet"]
    assert "user=operator" in basic["snippet"]  # the user name is not a secret
    cookie = check(cli, "cookie")
    assert cookie["passed"] is True and "cookie-value-12345" not in cookie["snippet"]
    assert "Cookie=[REDACTED]" in cookie["snippet"]



def test_a_cookie_follows_redirects_on_its_origin_only(cli: Any, ws: Workspace, pages: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A cookie credential is re-sent on every redirect hop back to the route's origin (the
    trailing-slash one included), so a signed-in page behind a redirect reads as signed
    in, in a check and in a repair's readback; it is never sent to another host or port.
    The server says what it received: `must_contain` on the cookie's name proves it."""
    monkeypatch.setenv("SITE_SESSION", "sid=cookie-value-12345")
    cookie = '\nauth = { type = "cookie", env = "SITE_SESSION" }'
    port = pages.rsplit(":", 1)[1]
    add_config(ws, NOOP)
    with route_server() as other:
        away = {"other_host": f"http://localhost:{port}/reflect", "other_port": f"{other}/reflect"}
        routes(ws, slash=f'url = "{pages}/dir"{cookie}\nmust_contain = ["Cookie=sid="]',
               hop=f'url = "{pages}/x?redirect=/reflect"{cookie}\nmust_contain = ["Cookie=sid="]'
                   '\nallow_redirect_to = ["/reflect"]\nrunbook = "noop"\nhealthy_after = 2'
                   '\nreadback_interval = 0.05',
               **{name: f'url = "{pages}/x?redirect={url}"{cookie}\nmust_contain = ["Releases"]'
                        f'\nallow_redirect_to = ["{url}"]' for name, url in away.items()})
        for name in ("slash", "hop"):
            reading = check(cli, name)
            assert reading["passed"] is True and reading["redirects"], (name, reading["checks"])
            assert "Cookie=[REDACTED]" in reading["snippet"], name
        for name in away:
            reading = check(cli, name)
            assert reading["passed"] is True and reading["redirects"], (name, reading["checks"])
            assert "Cookie= user=" in reading["snippet"], name  # nothing was sent there
    # the readback's client (one for all readings) sends it on each hop too
    rec = cli("repair", "hop", "--force", "--json").json()
    assert rec["outcome"] == "not_broken", rec["summary"]
    assert [r["passed"] for r in rec["readback"]["readings"]] == [True, True]

NOOP = '\n[runbooks.noop]\nsteps = [{ name = "noop", command = "true" }]\n'


def test_readback_count_restarts_after_a_failed_reading(cli: Any, ws: Workspace,
                                                        pages: str) -> None:
    # the symptom read fails (F); then the page answers pass, fail, pass, pass
    add_config(ws, NOOP)
    routes(ws, flappy=f'url = "{pages}/flap/FPFPP"\nmust_contain = ["Releases"]\n'
                      'healthy_after = 2\nreadback_interval = 0.05\nrunbook = "noop"')
    rec = cli("repair", "flappy", "--json").json()
    assert rec["outcome"] == "fixed"
    assert [r["status"] for r in rec["readback"]["readings"]] == [200, 500, 200, 200]


def test_readback_never_waits_past_its_deadline(cli: Any, ws: Workspace, pages: str) -> None:
    """Structural, not timed: the route allows 30 s per reading and the readback 1 s in
    all. Every reading but the last completed, so each took at least the server's 0.3 s
    plus the 0.05 s interval: the last one may wait only for what is left after them."""
    add_config(ws, NOOP)
    routes(ws, slowfix=f'url = "{pages}/slow?ms=300"\ntimeout = 30\nreadback_deadline = 1\n'
                       'readback_interval = 0.05\nrunbook = "noop"\nmax_latency_ms = 100000\n'
                       'must_contain = ["nope"]')
    rec = cli("repair", "slowfix", "--json").json()
    assert rec["outcome"] == "not_fixed"
    taken, shown = rec["evidence"]["readings"], rec["readback"]["readings"]
    assert 1 <= taken <= 3 and len(shown) == taken  # at most 3 fit in 1 s at 0.35 s each
    assert all(r["timeout"] <= 1.0 for r in shown)
    assert (taken - 1) * 0.35 + shown[-1]["timeout"] <= 1.0 + 1e-6


def test_dry_run_on_a_broken_route_runs_nothing(cli: Any, ws: Workspace, app: dict[str, Any],
                                                tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    configure(ws, app, '{{ name = "mark", command = "touch ' + str(marker) + '" }},')
    before = len(cli("receipts", "list", "--json").json())
    r = cli("repair", "releases", "--dry-run", "--json")
    assert r.exit_code == 0
    plan = r.json()
    assert plan["broken"] is True and plan["would_run"] is True
    assert plan["symptom"]["status"] == 500 and plan["plan"][0]["name"] == "mark"
    assert not marker.exists() and len(cli("receipts", "list", "--json").json()) == before


def test_repair_without_credentials_leaves_a_not_fixed_receipt(
        cli: Any, ws: Workspace, app: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    configure(ws, app, '{{ name = "mark", command = "touch ' + str(marker) + '" }},')
    monkeypatch.delenv("DEMO_SITE_TOKEN")
    plan = cli("repair", "releases", "--dry-run", "--json").json()  # says what the run does
    assert plan["would_run"] is False and "DEMO_SITE_TOKEN" in plan["why_not"]
    printed = cli("repair", "releases", "--dry-run").stdout
    assert "Nothing would run: " in printed and "would run mark" not in printed
    r = cli("repair", "releases", "--json")
    rec = r.json()
    assert r.exit_code == 1 and rec["outcome"] == "not_fixed" and rec["receipt_id"]
    assert "nothing was run" in rec["summary"] and "DEMO_SITE_TOKEN" in rec["summary"]
    assert not marker.exists()


def test_repair_after_a_failing_step_reads_the_page_once(cli: Any, ws: Workspace,
                                                          app: dict[str, Any]) -> None:
    configure(ws, app, BUILD + RESTART + '{{ name = "notify", command = "echo could not '
              'reach slack; exit 7" }},')
    r = cli("repair", "releases", "--json")
    rec = r.json()
    assert r.exit_code == 1 and rec["outcome"] == "not_fixed"
    assert rec["summary"] == ("Not fixed: runbook step 'notify' failed (exit 7); the page now "
                              "answers 200 — read back once, not counted as fixed because the "
                              "runbook did not complete.")
    assert [x["status"] for x in rec["readback"]["readings"]] == [200]
    assert rec["evidence"]["readback_status"] == 200
    import httpx

    page = httpx.get(f"http://127.0.0.1:{app['port']}/wimper/releases",
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200  # what the receipt says is what the page does


def test_a_step_may_leave_a_server_running(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    www, pidfile, port = tmp_path / "www", tmp_path / "server.pid", free_port()
    www.mkdir()
    (www / "index.html").write_text("<h1>Releases</h1>")
    # the server logs every request to stderr: the step's output, which outlives the step
    add_config(ws, f'\n[runbooks.serve]\nsteps = [{{ name = "start", command = "cd {www} && '
               f'{sys.executable} -m http.server {port} --bind 127.0.0.1 & echo $! > '
               f'{pidfile}" }}]\n')
    routes(ws, static=f'url = "http://127.0.0.1:{port}/index.html"\nmust_contain = '
                      '["Releases"]\nhealthy_after = 3\nreadback_interval = 0.3\n'
                      'readback_deadline = 15\nrunbook = "serve"')
    try:
        rec = cli("repair", "static", "--json").json()
        assert rec["outcome"] == "fixed", rec["summary"]
        step = rec["actions"][0]
        assert step["result"] == "ok" and step["left_running"] == 1
        assert [x["status"] for x in rec["readback"]["readings"]][-3:] == [200, 200, 200]
        assert alive(int(pidfile.read_text()))  # still serving after the repair
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_step_env_values_are_secrets_too(cli: Any, ws: Workspace, app: dict[str, Any]) -> None:
    """Every value of a step's own env is hidden, whatever its name says (HOOK_URL does
    not look secret), in the output, in the command, and in a dry run's plan."""
    hook = "https://hooks.example/T0/B1/step-own-hook-31337"
    configure(ws, app, '{{ name = "deploy", command = "echo using $HOOK_URL; curl -s '
              + hook + ' || exit 1", env = {{ HOOK_URL = "' + hook + '" }} }},')
    plan = cli("repair", "releases", "--dry-run", "--json").json()["plan"]
    assert plan[0]["command"] == "echo using $HOOK_URL; curl -s [REDACTED] || exit 1"
    rec = cli("repair", "releases", "--json").json()
    assert "using [REDACTED]" in rec["actions"][0]["output_tail"]
    assert "step-own-hook-31337" not in json.dumps(rec)
    printed = cli("repair", "releases", "--dry-run").stdout
    assert "would run deploy" in printed and "step-own-hook-31337" not in printed



def repair_in_background(ws: Workspace, route: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    return subprocess.Popen(  # SIGINT as a terminal would deliver it, even if ignored here
        [*ATLAS.split(), "repair", route, "--json", "--home", str(ws.home)], env=env,
        stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stopped_repair_kills_its_step_and_writes_its_receipt(
        cli: Any, ws: Workspace, pages: str, tmp_path: Path, sig: signal.Signals) -> None:
    pidfile = tmp_path / "step.pid"
    add_config(ws, f'\n[runbooks.hang]\nsteps = [{{ name = "build", command = "sleep 300 & '
               f'echo $! > {pidfile}; wait" }}]\n')
    routes(ws, dead=f'url = "{pages}/flap/F"\nrunbook = "hang"')
    runner = repair_in_background(ws, "dead")
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline and runner.poll() is None, "the step never ran"
        time.sleep(0.05)
    runner.send_signal(sig)
    stdout, _ = runner.communicate(timeout=30)
    rec = json.loads(stdout)
    assert runner.returncode == 1 and rec["outcome"] == "not_fixed"
    said = f"interrupted ({sig.name}): killed with its session"
    assert rec["actions"][0]["result"] == said and rec["evidence"]["interrupted"] == sig.name
    assert rec["summary"] == (f"Not fixed: runbook step 'build' was {said}; the page was not "
                              "read back (the repair was stopped).")
    assert not alive(int(pidfile.read_text()))
    assert [r["id"] for r in cli("receipts", "list", "--kind", "repair", "--json").json()] == [
        rec["receipt_id"]]


def test_repair_is_a_side_effect_for_jobs(cli: Any, ws: Workspace, pages: str,
                                          tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    add_config(ws, f'\n[runbooks.mark]\nsteps = [{{ name = "mark", command = "echo x >> '
               f'{marker}" }}]\n')
    routes(ws, dead=f'url = "{pages}/flap/F"\nrunbook = "mark"\nreadback_deadline = 0.5')
    add_config(ws, f"""
[jobs.watcher]
command = "{ATLAS} repair dead --force"
read_only = true

[jobs.lanes-only]
command = "{ATLAS} repair dead"
lanes = ["outbound.review"]

[jobs.fixer]
command = "{ATLAS} repair dead"
lanes = ["repair"]

[jobs.dropper]
command = "env -u ATLAS_JOB_RUN -u ATLAS_CAPABILITIES {ATLAS} repair dead"
read_only = true

[jobs.daemon]
command = "{detached(f'env -u ATLAS_JOB_RUN -u ATLAS_CAPABILITIES {ATLAS} repair dead',
                     tmp_path / 'done')}"
read_only = true
""")
    rec = cli("jobs", "run", "watcher", "--json").json()
    assert rec["evidence"]["violation"] is True and rec["evidence"]["refused_attempts"] == 1
    assert rec["evidence"]["exit_code"] == 8 and not marker.exists()
    rec = cli("jobs", "run", "lanes-only", "--json").json()
    assert rec["outcome"] == "failed" and rec["evidence"]["refused_attempts"] == 1
    assert "do not include repair" in rec["evidence"]["output_tail"] and not marker.exists()
    # a forged run id is refused with a receipt, not only an error
    monkeypatch.setenv("ATLAS_JOB_RUN", "forged-123")
    r = cli("repair", "dead")
    assert r.exit_code == 8 and "not a job run" in r.stderr and not marker.exists()
    monkeypatch.delenv("ATLAS_JOB_RUN")
    refused = cli("receipts", "list", "--kind", "effect.refused", "--json").json()
    assert len(refused) == 3
    rec = cli("jobs", "run", "fixer", "--json").json()
    assert rec["evidence"]["repairs_run"] == 1 and marker.read_text() == "x\n"
    assert "1 repair(s) ran a runbook" in rec["summary"]
    repair = cli("receipts", "list", "--kind", "repair", "--json").json()[-1]
    shown = cli("receipts", "show", str(repair["id"]), "--json").json()
    assert shown["evidence"]["job_run"] == rec["evidence"]["run_id"]
    assert shown["actor"] == f"job:fixer#{rec['evidence']['run_id']}"
    # a job's process that drops the variables is still the job's: refused
    rec = cli("jobs", "run", "dropper", "--json").json()
    assert rec["evidence"]["violation"] is True and rec["evidence"]["refused_attempts"] == 1
    assert marker.read_text() == "x\n"
    # a daemon that forked twice is no longer the job's: its repair is counted apart
    rec = cli("jobs", "run", "daemon", "--json").json()
    assert marker.read_text() == "x\nx\n" and rec["evidence"]["repairs_run"] == 0
    assert rec["evidence"]["untagged_effects_in_window"] == 1

def test_a_secret_cut_by_the_tail_is_not_leaked(tmp_path: Path) -> None:
    from atlasops.ops import process

    secret = "s3cr3t-v4lue-abcdefgh"
    token = "abcdefghijklmnopqrstuvwxyz0123456789"
    # the last 8 KiB start 10 characters before the end of the secret
    script = (f"import sys; sys.stdout.write('x' * 100 + {secret!r} + 'y' * (8192 - 11) + "
              "'\\n')")
    ran = process.run([sys.executable, "-c", script], env={**os.environ, "MY_TOKEN": secret},
                      timeout=30, secrets=process.secret_values({"MY_TOKEN": secret}))
    assert ran.output_bytes == 100 + len(secret) + 8192 - 10
    assert secret[-10:] not in ran.output_tail and len(ran.output_tail) <= 8192
    # a bearer token not known as a secret, cut in the middle: its line is dropped
    script = (f"print('Authorization: Bearer {token}'); print('z' * (8192 - 20))")
    ran = process.run([sys.executable, "-c", script], env=dict(os.environ), timeout=30)
    assert token[-20:] not in ran.output_tail and token[-5:] not in ran.output_tail


# -- jobs: capabilities come from the ledger ----------------------------------------------

def maildir_count(ws: Workspace) -> int:
    new = ws.home / "data/maildir/owner/new"
    return len(list(new.iterdir())) if new.exists() else 0


@pytest.fixture
def packet(cli: Any, tmp_path: Path) -> str:
    rows = [[f"c{i}@cpa{i}.example", f"C{i}", "", "cpa", "wimper"] for i in range(3)]
    assert cli("leads", "import", str(write_csv(tmp_path / "l.csv", rows))).exit_code == 0
    assert cli("packet", "create", "p", "--segment", "cpa").exit_code == 0
    return "p"


def test_a_job_cannot_widen_its_capabilities(cli: Any, ws: Workspace, packet: str) -> None:
    add_config(ws, f"""
[jobs.escalate]
command = "ATLAS_CAPABILITIES=outbound.review {ATLAS} packet send-review p"
read_only = true

[jobs.undeclared]
command = "env -u ATLAS_CAPABILITIES {ATLAS} packet send-review p"
read_only = true

[jobs.reviewer]
command = "{ATLAS} packet send-review p"
lanes = ["outbound.review"]
""")
    for name in ("escalate", "undeclared"):
        r = cli("jobs", "run", name, "--json")
        rec = r.json()
        assert r.exit_code == 1 and rec["evidence"]["violation"] is True, name
        assert rec["evidence"]["refused_attempts"] == 1, name
        assert "read-only" in rec["evidence"]["output_tail"]
    assert maildir_count(ws) == 0
    # a job allowed to use the review lane: its one performed effect is counted, although
    # a review mail to the owner carries no counter
    rec = cli("jobs", "run", "reviewer", "--json").json()
    assert rec["outcome"] == "ok" and maildir_count(ws) == 1
    assert rec["evidence"]["performed_effects"] == 1 and rec["effects"]["emails_sent"] == 0
    # the gate commands a job runs act as the job run, not as the local user
    review = cli("receipts", "list", "--kind", "packet.review", "--json").json()[0]
    assert review["actor"] == f"job:reviewer#{rec['evidence']['run_id']}"


def detached(command: str, done: Path) -> str:
    """A job command that runs ``command`` in a daemon that forks twice: its parent exits
    first (it waits for that), so it is no longer a descendant of the job's runner. The job
    waits for it to finish (``done``), so it is not killed as a leftover first."""
    return (f"sh -c '(while kill -0 $$ 2>/dev/null; do sleep 0.05; done; {command}; "
            f"touch {done}) &'; while [ ! -e {done} ]; do sleep 0.05; done")


def test_a_job_process_that_drops_its_run_is_still_the_jobs(
        cli: Any, ws: Workspace, packet: str, tmp_path: Path) -> None:
    """Unsetting ATLAS_JOB_RUN and ATLAS_CAPABILITIES does not leave the job: the run is
    found by ancestry (its runner), so the send and the deploy record are refused and
    counted as the read-only run's violation, and the snapshot carries the run."""
    data = tmp_path / "s.json"
    data.write_text('{"x": 1}')
    bare = f"env -u ATLAS_CAPABILITIES -u ATLAS_JOB_RUN {ATLAS}"
    deploy = "deploy record --site s --provider p --url https://s.example"
    add_config(ws, f"""
[jobs.dropper]
command = "{bare} packet send-review p; {bare} {deploy}; {bare} snapshot record x --file {data}"
read_only = true
""")
    rec = cli("jobs", "run", "dropper", "--json").json()
    run = rec["evidence"]["run_id"]
    assert rec["evidence"]["violation"] is True and rec["evidence"]["refused_attempts"] == 2
    assert rec["evidence"]["untagged_effects_in_window"] == 0
    # ground truth, read apart from the receipt
    assert maildir_count(ws) == 0 and cli("deploy", "list", "--json").json() == []
    assert [r["evidence"]["job_run"] for r in refusals(cli)] == [run, run]
    snap = cli("snapshot", "list", "--json").json()[0]
    assert snap["job_run"] == run and snap["actor"] == f"job:dropper#{run}"


def test_a_double_forked_daemon_escapes_attribution_and_the_receipt_says_so(
        cli: Any, ws: Workspace, packet: str, tmp_path: Path) -> None:
    """Not a sandbox: a daemon that forks twice (orphaned, so no longer its runner's
    descendant) and drops both variables acts outside the job's accounting. The receipt
    does not attribute the effect, but it does say one happened."""
    bare = f"env -u ATLAS_CAPABILITIES -u ATLAS_JOB_RUN {ATLAS}"
    command = detached(f"{bare} packet send-review p", tmp_path / "done")
    add_config(ws, f'\n[jobs.escape]\ncommand = "{command}"\nread_only = true\n')
    rec = cli("jobs", "run", "escape", "--json").json()
    assert maildir_count(ws) == 1  # the mail went out: this cannot be prevented in-process
    assert rec["evidence"]["violation"] is False
    assert rec["evidence"]["untagged_effects_in_window"] == 1
    assert "not attributed to it" in rec["summary"]


def test_untagged_deploys_and_publishes_are_counted_once_each(
        cli: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    article = tmp_path / "a.md"
    article.write_text("# Market data\n")
    item = cli("content", "add", "--business", "wimper", "--title", "Market data", "--file",
               str(article), "--json").json()["id"]
    bare = f"env -u ATLAS_CAPABILITIES -u ATLAS_JOB_RUN {ATLAS}"
    deploy = "deploy record --site s --provider p --url https://s.example"
    add_config(ws, PUBLISHING.format(approval="false") + f"""
[jobs.escape]
command = "{detached(f'{bare} {deploy} && {bare} content publish {item}', tmp_path / 'done')}"
read_only = true
""")
    with Ledger.for_workspace(ws) as led:
        monkeypatch.setenv("ATLAS_TOKEN", owner_token(led))
    assert cli("lane", "open", "social.post", "--reason", "posts").exit_code == 0
    monkeypatch.delenv("ATLAS_TOKEN")
    rec = cli("jobs", "run", "escape", "--json").json()
    assert rec["evidence"]["exit_code"] == 0, rec["evidence"]["output_tail"]
    # ground truth, read apart from the receipt: one deploy and one published file
    assert len(cli("deploy", "list", "--json").json()) == 1
    assert len(list((ws.home / "published").iterdir())) == 1
    assert rec["evidence"]["untagged_effects_in_window"] == 2
    assert rec["evidence"]["violation"] is False and rec["evidence"]["deploys_recorded"] == 0


def test_an_effect_cut_off_in_flight_is_reported(cli: Any, ws: Workspace, packet: str,
                                                 tmp_path: Path) -> None:
    """A job killed at its timeout while the SMTP server holds its message: the send may
    have happened (here it did), and the receipt says so instead of counting nothing."""
    port, received = free_port(), tmp_path / "received.eml"
    server = subprocess.Popen([sys.executable, "-m", "tests.slow_smtp", str(port),
                               str(received)], cwd=ROOT)
    try:
        wait_listening(port, server)
        add_config(ws, f"""
[channels.slow]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
from_address = "atlas@wimper.example"
timeout = 60

[lanes."outbound.review"]
channel = "slow"

[jobs.reviewer]
command = "{ATLAS} packet send-review p"
lanes = ["outbound.review"]
timeout = 4
""")
        rec = cli("jobs", "run", "reviewer", "--json").json()
    finally:
        server.terminate()
        server.wait(10)
    assert received.read_bytes().count(b"=====\n") == 1  # the server has the message
    ev = rec["evidence"]
    assert ev["timed_out"] is True and ev["performed_effects"] == 0
    assert ev["in_flight_effects"] == 1 and ev["refused_attempts"] == 0
    assert "1 side effect(s) in flight when stopped: may have happened" in rec["summary"]

def test_forged_or_finished_job_runs_are_refused(cli: Any, ws: Workspace, packet: str,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "s.json"
    data.write_text('{"x": 1}')
    monkeypatch.setenv("ATLAS_JOB_RUN", "forged-run-123")
    r = cli("snapshot", "record", "portfolio", "--file", str(data))
    assert r.exit_code == 8 and "not a job run of this workspace" in r.stderr
    r = cli("packet", "send-review", "p")
    assert r.exit_code == 8 and "not a job run" in r.stderr
    assert cli("deploy", "record", "--site", "s", "--provider", "p", "--url",
               "https://s.example").exit_code == 8
    assert cli("content", "add", "--business", "wimper", "--title", "t", "--file",
               str(data)).exit_code == 8
    assert cli("jobs", "run", "db-check").exit_code == 8
    monkeypatch.delenv("ATLAS_JOB_RUN")
    assert cli("snapshot", "list", "--json").json() == [] and maildir_count(ws) == 0
    # the side effects (the send, the deploy record) leave a refusal; records do not
    assert sorted(r["evidence"]["attempted"]["kind"] for r in refusals(cli)) == [
        "deploy", "email"]
    # a run that has finished cannot be borrowed either
    done = cli("jobs", "run", "db-check", "--json").json()["evidence"]["run_id"]
    monkeypatch.setenv("ATLAS_JOB_RUN", done)
    r = cli("snapshot", "record", "portfolio", "--file", str(data))
    assert r.exit_code == 8 and "has finished" in r.stderr



def wait_running(cli: Any, name: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        running = [r["run_id"] for r in cli("jobs", "runs", "--json").json()
                   if r["name"] == name and r["state"] == "running"]
        if running:
            return str(running[0])
        assert time.monotonic() < deadline, f"job {name} never started"
        time.sleep(0.1)


def test_a_job_cannot_borrow_another_running_jobs_run(cli: Any, ws: Workspace, packet: str,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run id is honoured only in a process its runner started: a read-only job that
    names another job's running run is refused, and the refusal counts against its own
    run, not the victim's."""
    add_config(ws, '\n[jobs.longreviewer]\ncommand = "sleep 60"\nlanes = ["outbound.review"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    victim = subprocess.Popen([*ATLAS.split(), "jobs", "run", "longreviewer", "--json",
                               "--home", str(ws.home)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        run = wait_running(cli, "longreviewer")
        add_config(ws, f'\n[jobs.borrower]\ncommand = "ATLAS_JOB_RUN={run} '
                   f'ATLAS_CAPABILITIES= {ATLAS} packet send-review p"\nread_only = true\n')
        rec = cli("jobs", "run", "borrower", "--json").json()
        assert rec["outcome"] == "failed" and rec["evidence"]["violation"] is True
        assert rec["evidence"]["refused_attempts"] == 1
        assert "is not this process's job run" in rec["evidence"]["output_tail"]
        # the operator's own shell cannot borrow it either (no receipt for a snapshot)
        data = tmp_path / "s.json"
        data.write_text("{}")
        monkeypatch.setenv("ATLAS_JOB_RUN", run)
        r = cli("snapshot", "record", "portfolio", "--file", str(data))
        assert r.exit_code == 8 and "is not this process's job run" in r.stderr
        assert cli("packet", "send-review", "p").exit_code == 8
        monkeypatch.delenv("ATLAS_JOB_RUN")
    finally:
        victim.send_signal(signal.SIGTERM)
        stdout, _ = victim.communicate(timeout=30)
    assert maildir_count(ws) == 0 and cli("snapshot", "list", "--json").json() == []
    own = json.loads(stdout)
    assert own["evidence"]["performed_effects"] == 0 and own["evidence"]["refused_attempts"] == 0
    refused = [cli("receipts", "show", str(x["id"]), "--json").json()["evidence"]["job_run"]
               for x in cli("receipts", "list", "--kind", "effect.refused", "--json").json()]
    assert sorted(refused, key=str) == sorted([rec["evidence"]["run_id"], None], key=str)



def refusals(cli: Any) -> list[dict[str, Any]]:
    """Every effect.refused receipt, in full, oldest first."""
    return [cli("receipts", "show", str(x["id"]), "--json").json()
            for x in cli("receipts", "list", "--kind", "effect.refused", "--json").json()]


def test_a_forged_or_borrowed_run_on_publish_or_deploy_is_refused_with_a_receipt(
        cli: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`content publish` and `deploy record` under a made-up run id, or under another
    running job's id, leave a refusal receipt tagged with the caller's own run: a read-only
    job's attempt is a violation, never a quiet exit 8."""
    article = tmp_path / "a.md"
    article.write_text("# Market data\n")
    item = cli("content", "add", "--business", "wimper", "--title", "Market data", "--file",
               str(article), "--json").json()["id"]
    add_config(ws, PUBLISHING.format(approval="false") + '''
[jobs.victim]
command = "sleep 60"
lanes = ["social.post", "deploy"]
''')
    with Ledger.for_workspace(ws) as led:
        monkeypatch.setenv("ATLAS_TOKEN", owner_token(led))
    assert cli("lane", "open", "social.post", "--reason", "posts").exit_code == 0
    monkeypatch.delenv("ATLAS_TOKEN")
    attempts = (f"{ATLAS} content publish {item}; {ATLAS} deploy record --site s "
                "--provider p --url https://s.example")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    victim = subprocess.Popen([*ATLAS.split(), "jobs", "run", "victim", "--json",
                               "--home", str(ws.home)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        borrowed = wait_running(cli, "victim")
        add_config(ws, f"""
[jobs.forger]
command = "export ATLAS_JOB_RUN=forged-2; {attempts}"
read_only = true

[jobs.borrower]
command = "export ATLAS_JOB_RUN={borrowed}; {attempts}"
read_only = true
""")
        runs = {}
        for name, why in (("forger", "not a job run of this workspace"),
                          ("borrower", "is not this process's job run")):
            rec = cli("jobs", "run", name, "--json").json()
            runs[name] = rec["evidence"]["run_id"]
            assert rec["outcome"] == "failed" and rec["evidence"]["violation"] is True, name
            assert rec["evidence"]["refused_attempts"] == 2, (name, rec["summary"])
            assert rec["evidence"]["output_tail"].count(why) == 2, name
    finally:
        victim.send_signal(signal.SIGTERM)
        stdout, _ = victim.communicate(timeout=30)
    # ground truth, read apart from the receipts: nothing was published or recorded
    assert not (ws.home / "published").exists() or not list((ws.home / "published").iterdir())
    assert cli("deploy", "list", "--json").json() == []
    assert json.loads(stdout)["evidence"]["refused_attempts"] == 0  # not the victim's
    tagged = sorted((r["evidence"]["job_run"], r["evidence"]["attempted"]["kind"])
                    for r in refusals(cli))
    assert tagged == sorted((runs[n], k) for n in runs for k in ("post", "deploy"))


def test_library_calls_from_a_job_act_as_its_run(cli: Any, ws: Workspace, pages: str,
                                                 tmp_path: Path) -> None:
    """An entry-point job that calls `record_deploy` and `repair` without passing
    capabilities acts under its run's recorded capabilities: read-only, both refused."""
    marker = tmp_path / "ran"
    add_config(ws, f'''
[runbooks.mark]
steps = [{{ name = "mark", command = "touch {marker}" }}]

[jobs.library]
entry = "tests.job_helpers:library_side_effects"
cwd = "{ROOT}"
read_only = true
''')
    routes(ws, dead=f'url = "{pages}/flap/F"\nrunbook = "mark"\nreadback_deadline = 0.5')
    rec = cli("jobs", "run", "library", "--json").json()
    assert "deploy refused" in rec["evidence"]["output_tail"], rec["evidence"]["output_tail"]
    assert "repair refused" in rec["evidence"]["output_tail"]
    assert rec["evidence"]["violation"] is True and rec["evidence"]["refused_attempts"] == 2
    # ground truth, read apart from the receipt: no deploy, and the runbook never ran
    assert cli("deploy", "list", "--json").json() == [] and not marker.exists()
    assert [r["evidence"]["job_run"] for r in refusals(cli)] == [rec["evidence"]["run_id"]] * 2


def test_a_nested_job_cannot_act_as_its_parent_run(cli: Any, ws: Workspace,
                                                   packet: str) -> None:
    """The outer runner is an ancestor of the inner job too, but the inner job belongs to
    its own (narrower) run: naming the outer run does not give it the outer's lanes."""
    add_config(ws, f"""
[jobs.outer]
command = "OUTER=$ATLAS_JOB_RUN {ATLAS} jobs run inner"
lanes = ["outbound.review"]

[jobs.inner]
command = "ATLAS_JOB_RUN=$OUTER {ATLAS} packet send-review p"
read_only = true
""")
    outer = cli("jobs", "run", "outer", "--json").json()
    inner = [r for r in cli("jobs", "runs", "--json").json() if r["name"] == "inner"][0]
    shown = cli("receipts", "show", str(inner["receipt_id"]), "--json").json()
    assert shown["evidence"]["violation"] is True
    assert shown["evidence"]["refused_attempts"] == 1
    assert "is not this process's job run" in shown["evidence"]["output_tail"]
    assert maildir_count(ws) == 0 and outer["evidence"]["performed_effects"] == 0

def test_a_runner_is_known_by_pid_and_start_time() -> None:
    """A zombie is not a running runner, and neither is another process that got its pid."""
    from atlasops.gates.effects import runner_alive
    from atlasops.ops.process import proc_stat

    child = subprocess.Popen(["sleep", "60"])
    try:
        stat = proc_stat(child.pid)
        assert stat is not None
        assert runner_alive({"runner_pid": child.pid, "runner_start": stat.start})
        # the same pid with another start time: the pid was reused, the runner is gone
        assert not runner_alive({"runner_pid": child.pid, "runner_start": stat.start - 1})
        child.kill()
        deadline = time.monotonic() + 10
        while (now := proc_stat(child.pid)) is not None and now.state != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert now is not None and now.state == "Z"  # dead, not yet reaped
        assert not runner_alive({"runner_pid": child.pid, "runner_start": stat.start})
    finally:
        child.kill()
        child.wait()

def test_a_job_cannot_leave_processes_behind(cli: Any, ws: Workspace, packet: str,
                                             tmp_path: Path) -> None:
    pidfile = tmp_path / "late.pid"
    add_config(ws, f'\n[jobs.sneaky]\ncommand = "(sleep 1; {ATLAS} packet send-review p) '
               f'>/dev/null 2>&1 & echo $! > {pidfile}; echo done"\nread_only = true\n')
    rec = cli("jobs", "run", "sneaky", "--json").json()
    assert rec["outcome"] == "ok" and rec["evidence"]["output_tail"] == "done\n"
    left = rec["evidence"]["left_processes"]  # the subshell, and its sleep once forked
    assert 1 <= left <= rec["evidence"]["killed_processes"]
    assert f"{left} process(es) it left running were killed" in rec["summary"]
    assert not alive(int(pidfile.read_text()))
    time.sleep(2)  # when the leftover would have sent
    assert cli("receipts", "list", "--kind", "effect.refused", "--json").json() == []
    assert maildir_count(ws) == 0


def test_a_job_duration_ends_when_the_job_does(cli: Any, ws: Workspace) -> None:
    add_config(ws, '\n[jobs.bg]\ncommand = "(sleep 3; echo late) & echo started"\n')
    t0 = time.perf_counter()
    rec = cli("jobs", "run", "bg", "--json").json()
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert rec["evidence"]["output_tail"] == "started\n"  # never waited for "late"
    assert rec["evidence"]["ms"] <= elapsed_ms < 3000
    assert rec["evidence"]["left_processes"] >= 1  # the subshell (and its sleep)


def test_a_job_timeout_kills_its_children(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    add_config(ws, f'\n[jobs.hang]\ncommand = "sleep 300 & echo $! > {pidfile}; wait"\n'
               'timeout = 1\n')
    rec = cli("jobs", "run", "hang", "--json").json()
    assert rec["evidence"]["timed_out"] is True and rec["evidence"]["killed_processes"] == 2
    time.sleep(0.2)
    assert not alive(int(pidfile.read_text()))



def test_a_nested_jobs_processes_die_with_the_outer_timeout(cli: Any, ws: Workspace,
                                                            tmp_path: Path) -> None:
    """The inner runner starts its job in a session of its own, and its job ignores
    SIGTERM: the outer timeout must still reach it (by descent), not only its session."""
    pidfile = tmp_path / "inner.pid"
    add_config(ws, f"""
[jobs.inner]
command = "trap '' TERM; sleep 120 & echo $! > {pidfile}; wait; wait"
timeout = 600

[jobs.outer]
command = "{ATLAS} jobs run inner"
timeout = 4
""")
    rec = cli("jobs", "run", "outer", "--json").json()
    assert rec["evidence"]["timed_out"] is True
    assert pidfile.read_text().strip(), "the inner job never started"
    # sleep ignores SIGTERM (inherited from the trap): only the SIGKILL reaches it
    assert not alive(int(pidfile.read_text())), "the nested job's process survived"
    # the inner runner, its job's shell and the sleep: every one of them was signalled
    assert rec["evidence"]["killed_processes"] >= 3, rec["evidence"]

def test_jobs_run_killed_by_sigterm_writes_an_interrupted_receipt(
        cli: Any, ws: Workspace, tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    add_config(ws, f'\n[jobs.long]\ncommand = "sleep 300 & echo $! > {child}; wait"\n'
               'timeout = 600\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    runner = subprocess.Popen([*ATLAS.split(), "jobs", "run", "long", "--json", "--home",
                               str(ws.home)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (child.exists() and child.read_text().strip()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    runs = cli("jobs", "runs", "--json").json()
    assert [r["state"] for r in runs] == ["running"]
    runner.send_signal(signal.SIGTERM)
    stdout, _ = runner.communicate(timeout=30)
    rec = json.loads(stdout)
    assert runner.returncode == 1 and rec["outcome"] == "failed"
    assert rec["evidence"]["interrupted"] == "SIGTERM" and "interrupted" in rec["summary"]
    assert rec["evidence"]["killed_processes"] == 2
    assert not alive(int(child.read_text()))
    assert [r["state"] for r in cli("jobs", "runs", "--json").json()] == ["failed"]


def test_a_runner_that_dies_shows_no_receipt(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    add_config(ws, f'\n[jobs.long]\ncommand = "sleep 300 & echo $! > {child}; wait"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    runner = subprocess.Popen([*ATLAS.split(), "jobs", "run", "long", "--home", str(ws.home)],
                              env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (child.exists() and child.read_text().strip()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    runner.kill()  # SIGKILL cannot be caught: no receipt
    runner.wait()
    try:
        runs = cli("jobs", "runs", "--json").json()
        assert runs[0]["outcome"] is None and runs[0]["state"] == "no receipt (runner died)"
    finally:  # the orphaned job keeps running (documented); the test cleans it up
        os.killpg(os.getpgid(int(child.read_text())), signal.SIGKILL)


def test_since_respects_the_timezone_offset(cli: Any, ws: Workspace) -> None:
    assert cli("deploy", "record", "--site", "s", "--provider", "p", "--url",
               "https://s.example").exit_code == 0
    assert cli("jobs", "run", "db-check").exit_code == 0
    now = datetime.now(UTC)
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    before = (now - timedelta(minutes=30)).astimezone(east).isoformat()
    after = (now + timedelta(minutes=30)).astimezone(west).isoformat()
    for command in (("deploy", "list"), ("jobs", "runs")):
        assert len(cli(*command, "--since", before, "--json").json()) == 1, command
        assert cli(*command, "--since", after, "--json").json() == [], command


# -- deploys and content ------------------------------------------------------------------

def test_deploy_provider_output_is_redacted(cli: Any, ws: Workspace, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "cf-secret-token-4242"
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", secret)
    text = tmp_path / "wrangler.txt"
    text.write_text(f"Using token {secret}\nAuthorization: Bearer {secret}\nDeployed.\n")
    js = tmp_path / "wrangler.json"
    js.write_text(json.dumps({"success": True, "headers": {"auth": f"Bearer {secret}"},
                              "token": secret}))
    for f in (text, js):
        r = cli("deploy", "record", "--site", "s", "--provider", "cloudflare", "--url",
                "https://s.example", "--file", str(f), "--json")
        assert r.exit_code == 0
        receipt = cli("receipts", "show", str(r.json()["receipt_id"]), "--json").json()
        assert secret not in json.dumps(receipt)
    assert receipt["evidence"]["provider_output"]["token"] == "[REDACTED]"
    assert receipt["evidence"]["provider_output"]["success"] is True
    for path in (ws.home / "data").rglob("*"):  # the journal and the database, raw bytes
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_deploys_and_content_from_jobs(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    draft = tmp_path / "d.md"
    draft.write_text("# A draft")
    deploy = f"{ATLAS} deploy record --site wimper --provider cloudflare --url https://w.example"
    add_config(ws, f"""
[jobs.sneaky-deployer]
command = "{deploy}"
read_only = true

[jobs.deployer]
command = "{deploy}"
lanes = ["deploy"]

[jobs.writer]
command = "{ATLAS} content add --business wimper --title Draft --file {draft}"
read_only = true
""")
    rec = cli("jobs", "run", "sneaky-deployer", "--json").json()
    assert rec["evidence"]["violation"] is True and rec["evidence"]["refused_attempts"] == 1
    assert rec["evidence"]["deploys_recorded"] == 0 and cli("deploy", "list", "--json").json() == []
    rec = cli("jobs", "run", "deployer", "--json").json()
    assert rec["outcome"] == "ok" and rec["evidence"]["deploys_recorded"] == 1
    deploys = cli("deploy", "list", "--json").json()
    assert len(deploys) == 1 and deploys[0]["actor"] == f"job:deployer#{rec['evidence']['run_id']}"
    rec = cli("jobs", "run", "writer", "--json").json()
    assert rec["outcome"] == "ok" and rec["evidence"]["violation"] is False
    added = cli("receipts", "list", "--kind", "content.add", "--json").json()[0]
    shown = cli("receipts", "show", str(added["id"]), "--json").json()
    assert shown["evidence"]["job_run"] == rec["evidence"]["run_id"]
    assert cli("content", "list", "--json").json()[0]["status"] == "draft"


PUBLISHING = """
[channels.site-posts]
type = "directory"
path = "published"

[lanes."social.post"]
channel = "site-posts"
cooldown_hours = 0
needs_approval = {approval}
"""


def test_publishing_needs_the_owner_an_open_lane_and_a_channel(
        cli: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_config(ws, PUBLISHING.format(approval="true"))
    article = tmp_path / "a.md"
    article.write_text("# Hawaii retail sellers\n\nThe guide.")
    with Ledger.for_workspace(ws) as led:
        owner = owner_token(led)
    item = cli("content", "add", "--business", "bbh", "--title", "Retail sellers guide",
               "--file", str(article), "--json").json()["id"]
    monkeypatch.setenv("ATLAS_TOKEN", owner)
    r = cli("content", "publish", str(item))
    assert r.exit_code == 8 and "closed" in r.stderr
    assert cli("lane", "open", "social.post", "--reason", "publish the guide").exit_code == 0
    monkeypatch.delenv("ATLAS_TOKEN")
    r = cli("content", "publish", str(item))  # not the owner
    assert r.exit_code == 8 and "only the owner" in r.stderr
    monkeypatch.setenv("ATLAS_TOKEN", owner)
    r = cli("content", "publish", str(item), "--json")
    assert r.exit_code == 0, r.stderr
    rec = r.json()
    published = list((ws.home / "published").iterdir())
    assert [p.read_text() for p in published] == [article.read_text()]
    assert rec["effects"]["public_posts"] == 1 and rec["kind"] == "content.publish"
    assert cli("content", "list", "--json").json()[0]["status"] == "published"
    r = cli("content", "publish", str(item))
    assert r.exit_code == 7 and "is published" in r.stderr
    with Ledger.for_workspace(ws) as ledger:  # archived by hand: there is no command for it
        other = cli("content", "add", "--business", "bbh", "--title", "Old", "--file",
                    str(article), "--json").json()["id"]
        ledger.append("content.status_changed", "test", {"id": other, "status": "archived"})
    r = cli("content", "publish", str(other))
    assert r.exit_code == 7 and "is archived" in r.stderr
    assert len(list((ws.home / "published").iterdir())) == 1
    # a read-only job that tries to publish is refused and marked
    draft = cli("content", "add", "--business", "bbh", "--title", "New", "--file",
                str(article), "--json").json()["id"]
    add_config(ws, f'\n[jobs.poster]\ncommand = "{ATLAS} content publish {draft}"\n'
               'read_only = true\n')
    rec = cli("jobs", "run", "poster", "--json").json()
    assert rec["evidence"]["violation"] is True and rec["effects"]["public_posts"] == 0
    assert len(list((ws.home / "published").iterdir())) == 1


def test_a_job_with_the_post_lane_publishes_and_counts_it(
        cli: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    article = tmp_path / "a.md"
    article.write_text("# Market data\n")
    item = cli("content", "add", "--business", "wimper", "--title", "Market data", "--file",
               str(article), "--json").json()["id"]
    add_config(ws, PUBLISHING.format(approval="false") + f"""
[jobs.poster]
command = "{ATLAS} content publish {item}"
lanes = ["social.post"]
""")
    with Ledger.for_workspace(ws) as led:
        owner = owner_token(led)
    monkeypatch.setenv("ATLAS_TOKEN", owner)
    assert cli("lane", "open", "social.post", "--reason", "agent posts").exit_code == 0
    rec = cli("jobs", "run", "poster", "--json").json()
    assert rec["outcome"] == "ok", rec["summary"]
    assert rec["effects"]["public_posts"] == 1 and rec["evidence"]["performed_effects"] == 1
    assert len(list((ws.home / "published").iterdir())) == 1


def test_snapshot_provenance(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    data = {"mrr_cents": 123400, "date": "2026-06-27", "note": "ü"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data, indent=4))
    add_config(ws, f'\n[jobs.radar]\ncommand = "{ATLAS} snapshot record portfolio --file '
               f'{path} --business wimper"\nread_only = true\n')
    run = cli("jobs", "run", "radar", "--json").json()["evidence"]["run_id"]
    snap = cli("snapshot", "list", "--json").json()[0]
    expected = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode()).hexdigest()
    assert snap["sha256"] == expected and snap["business"] == "wimper"
    assert snap["job_run"] == run and snap["actor"] == f"job:radar#{run}"
    shown = cli("snapshot", "show", str(snap["id"])).stdout
    assert expected in shown and run in shown
    assert cli("snapshot", "record", "x", "--file", str(path), "--business", "nope"
               ).exit_code == 2


def test_crafted_json_files_are_refused_whole(cli: Any, ws: Workspace, tmp_path: Path) -> None:
    """JSON that the ledger cannot keep (nested past the limit or past the parser's
    recursion, NaN, Infinity, a number too large for a double, a lone surrogate) is refused
    with exit 2 and a reason, by `snapshot record` and `deploy record` alike, and nothing
    is recorded; at the limit it is kept, and `snapshot show --json` prints strict JSON."""
    crafted = {
        "parser": ("[" * 200_000 + "]" * 200_000, "nested more than 100 levels deep"),
        "limit": ("[" * 101 + "1" + "]" * 101, "nested more than 100 levels deep"),
        "nan": ('{"a": NaN}', "not finite (nan)"),
        "infinity": ('{"a": -Infinity}', "not finite (-inf)"),
        "huge": ('{"a": 1e400}', "not finite (inf)"),
        "surrogate": ('{"a": ["ok", "\\ud800"]}', "a lone surrogate: '\\ud800'"),
        "surrogate_key": ('{"\\udfff": 1}', "a lone surrogate: '\\udfff'"),
    }
    deploy = ("deploy", "record", "--site", "s", "--provider", "p", "--url", "https://s.example")
    for name, (text, why) in crafted.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        for command in (("snapshot", "record", "x", "--file", str(path)),
                        (*deploy, "--file", str(path))):
            r = cli(*command)
            assert r.exit_code == 2 and why in r.stderr, (name, command, r.stderr)
    assert cli("snapshot", "list", "--json").json() == []
    assert cli("deploy", "list", "--json").json() == []
    assert cli("receipts", "list", "--json").json() == []
    # at the limit, and a big integer (exact, not a double): kept, and shown as strict JSON
    kept = tmp_path / "kept.json"
    value = {"deep": json.loads("[" * 99 + "1" + "]" * 99), "big": 10**30}
    kept.write_text(json.dumps(value))
    snap = cli("snapshot", "record", "x", "--file", str(kept), "--json").json()
    shown = cli("snapshot", "show", str(snap["id"]), "--json").stdout

    def strict(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    assert json.loads(shown, parse_constant=strict)["data"] == value
    assert cli(*deploy, "--file", str(kept)).exit_code == 0

