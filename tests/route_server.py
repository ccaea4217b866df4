"""A real HTTP(S) server, run as a subprocess by the route tests, with the pages that
make route checks go wrong:

    /page             200, the text "Releases"
    /login            200, a sign-in form
    /login-redirect   302 to /login
    /other-host       302 to the same page on another host name (localhost)
    /slow?ms=N        waits N ms, then answers like /page
    /flap/SEQ         the n-th request answers 200 "Releases" if SEQ[n] is P, else 500
    /reflect          200 "Releases" and what the request said about who it is
    ANY?redirect=URL  302 to URL (any path: a redirect from the route's own path)
    /dir              302 to /dir/, which answers like /reflect

    python -m tests.route_server PORT [CERT KEY]    (HTTPS when a cert is given)
"""

from __future__ import annotations

import base64
import collections
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PAGE = "<html><body><h1>Releases</h1></body></html>"
LOGIN = "<html><body><h1>Sign in</h1><form>...</form></body></html>"


def main() -> None:
    port = int(sys.argv[1])
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _send(self, status: int, body: str, location: str | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            target = parse_qs(url.query).get("redirect")
            if target:
                self._send(302, "", target[0])
            elif url.path == "/dir":
                self._send(302, "", "/dir/")
            elif url.path == "/page":
                self._send(200, PAGE)
            elif url.path == "/login":
                self._send(200, LOGIN)
            elif url.path == "/login-redirect":
                self._send(302, "", "/login")
            elif url.path == "/other-host":
                self._send(302, "", f"http://localhost:{port}/page")
            elif url.path == "/slow":
                time.sleep(int(parse_qs(url.query)["ms"][0]) / 1000)
                self._send(200, PAGE)
            elif url.path.startswith("/flap/"):
                with lock:
                    n = seen[url.path]
                    seen[url.path] += 1
                sequence = url.path.rsplit("/", 1)[1]
                good = n < len(sequence) and sequence[n] == "P"
                self._send(200 if good else 500, PAGE if good else "Internal Server Error")
            elif url.path in ("/reflect", "/dir/"):
                auth = self.headers.get("Authorization", "")
                user = ""
                if auth.startswith("Basic "):
                    user = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
                self._send(200, f"{PAGE} you sent Authorization={auth} "
                                f"Cookie={self.headers.get('Cookie', '')} user={user}")
            else:
                self._send(404, "not found")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
