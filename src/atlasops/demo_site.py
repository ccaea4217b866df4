"""A tiny web app for the demo and the tests: it serves a page from a build directory
and answers 500 without it, like a production app whose build artifacts are missing.

    python -m atlasops.demo_site build   --dir D        write D/build/releases.html
    python -m atlasops.demo_site break   --dir D        remove D/build
    python -m atlasops.demo_site start   --dir D --port P   serve in the background
    python -m atlasops.demo_site restart --dir D --port P
    python -m atlasops.demo_site stop    --dir D

The build is read when the server starts (as a production server does), so a
rebuild alone does not fix the page: build, restart, read the real page.
/wimper/releases needs ``Authorization: Bearer $DEMO_SITE_TOKEN``; without it
the server redirects to a login page that answers 200.
"""

from __future__ import annotations

import argparse
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = """<!doctype html><html><head><title>WIMPER releases</title></head>
<body><h1>WIMPER Releases</h1><ul><li>2026-06-27: partner packet workflow</li>
<li>2026-06-20: payroll savings calculator</li></ul></body></html>
"""
LOGIN = "<!doctype html><html><body><h1>Sign in</h1><form>...</form></body></html>"


def build(root: Path) -> None:
    (root / "build").mkdir(parents=True, exist_ok=True)
    (root / "build" / "releases.html").write_text(PAGE, encoding="utf-8")


def breakdown(root: Path) -> None:
    shutil.rmtree(root / "build", ignore_errors=True)


def serve(root: Path, port: int) -> None:
    page_file = root / "build" / "releases.html"
    page = page_file.read_text(encoding="utf-8") if page_file.exists() else None
    token = os.environ.get("DEMO_SITE_TOKEN", "")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, "ok")
            elif self.path == "/login":
                self._send(200, LOGIN)
            elif self.path == "/wimper/releases":
                given = self.headers.get("Authorization", "")
                if not token or not hmac.compare_digest(given, f"Bearer {token}"):
                    self._send(302, "", {"Location": "/login"})
                elif page is None:
                    self._send(500, "Internal Server Error: the production build is missing")
                else:
                    self._send(200, page)
            else:
                self._send(404, "not found")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def terminate(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _pidfile(root: Path) -> Path:
    return root / "server.pid"


def stop(root: Path) -> None:
    pidfile = _pidfile(root)
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
            for _ in range(100):  # wait until it is really gone (and its port is free)
                os.kill(pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            break
    pidfile.unlink(missing_ok=True)


def start(root: Path, port: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "atlasops.demo_site", "serve", "--dir",
                             str(root), "--port", str(port)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    _pidfile(root).write_text(str(proc.pid))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see server.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start listening within 15 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atlasops.demo_site")
    parser.add_argument("action", choices=["build", "break", "serve", "start", "stop",
                                           "restart"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    if args.action == "build":
        build(root)
    elif args.action == "break":
        breakdown(root)
    elif args.action == "serve":
        serve(root, args.port)
    elif args.action == "start":
        start(root, args.port)
    elif args.action == "stop":
        stop(root)
    else:
        stop(root)
        start(root, args.port)


if __name__ == "__main__":
    main()
