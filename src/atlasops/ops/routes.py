"""Route checks: read the real page, the way a user would, and judge it.

A check passes only when the status is the expected one, every must-contain
text appears, no must-not-contain text appears ("Internal Server Error",
"Application error" by default, which also catches a 200 that is really an
error page), the latency is within bound, and any redirect ends back on the route's
own URL (scheme, host, port, path and query; a trailing slash aside) or where
``allow_redirect_to`` allows. A 200 that is really a login form fails its
must-contain condition, and a redirect to it fails the redirect condition.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import Route
from ..errors import ConfigError
from ..receipts import Check
from .process import redact, secret_values

SNIPPET = 300


@dataclass
class Reading:
    route: str
    url: str
    passed: bool
    status: int | None
    ms: float
    checks: list[Check] = field(default_factory=list)
    snippet: str = ""
    error: str | None = None
    final_url: str | None = None  # where the reading ended, after redirects
    redirects: list[dict[str, Any]] = field(default_factory=list)  # each hop: status, url
    timeout: float | None = None  # the longest this reading was allowed to wait (s)

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.route, "url": self.url, "passed": self.passed,
                "status": self.status, "ms": self.ms, "error": self.error,
                "final_url": self.final_url, "redirects": self.redirects,
                "snippet": self.snippet, "timeout": self.timeout,
                "checks": [c.model_dump() for c in self.checks]}

    def evidence(self) -> dict[str, Any]:
        """What a receipt keeps of the reading."""
        return {"status": self.status, "ms": self.ms, "url": self.url,
                "final_url": self.final_url, "redirects": self.redirects,
                "snippet": self.snippet}


def _auth_headers(route: Route, env: Mapping[str, str]) -> dict[str, str]:
    """The Authorization header (httpx keeps it on same-origin hops and drops it on
    others). A cookie goes with each request instead: see :func:`client_for`."""
    if route.auth is None:
        return {}
    value = env.get(route.auth.env)
    if not value:
        raise ConfigError(f"the route's credentials are missing: environment variable "
                          f"{route.auth.env} is not set",
                          hint=f"export {route.auth.env}=... before running the check")
    if route.auth.type == "bearer":
        return {"Authorization": f"Bearer {value}"}
    if route.auth.type == "basic":
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}
    return {}


def describe_route(route: Route) -> str:
    """What the route promises a user, in the words a receipt uses."""
    path = urlsplit(route.url).path or "/"
    who = " for an authenticated user" if route.auth else ""
    return f"{route.method} {path} returns {route.expect_status}{who}"


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default port spelled out): where a page is served."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    return scheme, (u.hostname or "").lower(), u.port or DEFAULT_PORTS.get(scheme)


def _path(url: str) -> str:
    return urlsplit(url).path.rstrip("/") or "/"


def _cookie_hook(route_url: str, cookie: str) -> Callable[[httpx.Request], None]:
    """Put the route's cookie (``name=value; ...``) on a request to the route's own origin
    (scheme, host and port), ahead of any cookie the site set itself under another name."""
    origin = _origin(route_url)
    names = {part.partition("=")[0].strip() for part in cookie.split(";")}

    def add(request: httpx.Request) -> None:
        if _origin(str(request.url)) != origin:
            return
        theirs = [part for part in request.headers.get("Cookie", "").split("; ")
                  if part and part.partition("=")[0] not in names]
        request.headers["Cookie"] = "; ".join([cookie, *theirs])

    return add


def client_for(route: Route, env: Mapping[str, str]) -> httpx.Client:
    """The client that reads ``route``. A cookie credential is sent with every request to
    the route's own origin, the first one and each redirect hop back to it (httpx drops a
    Cookie header on every hop, and its cookie jar would also send it to subdomains,
    other ports and plain http), and never to another origin."""
    hooks: dict[str, list[Callable[[httpx.Request], None]]] = {}
    if route.auth is not None and route.auth.type == "cookie" and env.get(route.auth.env):
        hooks["request"] = [_cookie_hook(route.url, env[route.auth.env])]
    return httpx.Client(timeout=route.timeout, follow_redirects=route.follow_redirects,
                        event_hooks=hooks)


def _same_place(a: str, b: str) -> bool:
    """The same origin (scheme, host, port), path and query; a trailing slash is not a
    move, and neither is a fragment."""
    x, y = urlsplit(a), urlsplit(b)
    return (_origin(a), _path(a), x.query) == (_origin(b), _path(b), y.query)


def _allowed(route_url: str, final_url: str, target: str) -> bool:
    """Whether ``allow_redirect_to`` entry ``target`` allows ending on ``final_url``. A path
    ("/login/done") means that path on the route's own origin (any query). A full URL is a
    prefix: the same origin, and a path that is the prefix's or lies under it at a ``/``
    boundary ("https://a.example/app" allows /app and /app/x, not /apple); a query in the
    prefix must be the final URL's query."""
    if "://" not in target:
        return (_origin(final_url) == _origin(route_url)
                and _path(final_url) == (target.rstrip("/") or "/"))
    prefix, final = urlsplit(target), urlsplit(final_url)
    base = prefix.path.rstrip("/")
    return (_origin(final_url) == _origin(target)
            and (final.path.rstrip("/") == base or final.path.startswith(base + "/"))
            and (not prefix.query or prefix.query == final.query))


def _redirect_check(route: Route, final_url: str, hops: list[dict[str, Any]]) -> Check:
    chain = " -> ".join(f"{h['status']} {h['url']}" for h in hops) + f" -> {final_url}"
    if _same_place(route.url, final_url):
        return Check(name="redirect", passed=True, detail=f"back on the route: {chain}")
    allowed = any(_allowed(route.url, final_url, a) for a in route.allow_redirect_to)
    return Check(name="redirect", passed=allowed,
                 detail=(f"allowed by allow_redirect_to: {chain}" if allowed else
                         f"redirected away from the route: {chain}"))


def read(name: str, route: Route, env: Mapping[str, str],
         client: httpx.Client | None = None, timeout: float | None = None) -> Reading:
    """One reading of the real page (``timeout`` caps the route's own timeout)."""
    secrets = secret_values(env, [route.auth.env] if route.auth else [])
    headers = _auth_headers(route, env)
    own = client is None
    client = client or client_for(route, env)
    limit = min(route.timeout, timeout) if timeout is not None else route.timeout
    t0 = time.perf_counter()
    hops: list[dict[str, Any]] = []
    final_url: str | None = None
    try:
        response = client.request(route.method, route.url, headers=headers, timeout=limit)
        body = response.text
        status: int | None = response.status_code
        error = None
        hops = [{"status": r.status_code, "url": str(r.url)} for r in response.history]
        final_url = str(response.url)
    except httpx.TimeoutException as exc:
        body, status, error = "", None, f"timed out after {limit:g} s ({exc!r})"
    except httpx.HTTPError as exc:
        body, status, error = "", None, f"{type(exc).__name__}: {exc}"
    finally:
        if own:
            client.close()
    ms = round((time.perf_counter() - t0) * 1000, 3)
    checks = [Check(name="reachable", passed=error is None, detail=error or "answered", ms=ms)]
    if error is None:
        if hops and final_url:
            checks.append(_redirect_check(route, final_url, hops))
        checks.append(Check(name="status", passed=status == route.expect_status,
                            detail=f"{status} (expected {route.expect_status})"))
        for text in route.must_contain:
            checks.append(Check(name=f"contains {text!r}", passed=text in body,
                                detail="found" if text in body else "missing"))
        for text in route.must_not_contain:
            checks.append(Check(name=f"does not contain {text!r}", passed=text not in body,
                                detail="absent" if text not in body else "present"))
        checks.append(Check(name="latency", passed=ms <= route.max_latency_ms,
                            detail=f"{ms:.0f} ms (bound {route.max_latency_ms:g} ms)"))
    for c in checks:  # exception texts can quote header values: redact every detail
        c.detail = redact(c.detail, secrets)
    snippet = redact(" ".join(body.split())[:SNIPPET], secrets)
    return Reading(name, route.url, all(c.passed for c in checks), status, ms, checks,
                   snippet, redact(error, secrets) if error else None,
                   redact(final_url, secrets) if final_url else None,
                   [{**h, "url": redact(h["url"], secrets)} for h in hops], limit)


def read_or_fail(name: str, route: Route, env: Mapping[str, str],
                 client: httpx.Client | None = None, timeout: float | None = None) -> Reading:
    """:func:`read`, except that missing credentials fail this route alone (a reading
    with a failed ``credentials`` check) instead of raising."""
    try:
        return read(name, route, env, client, timeout)
    except ConfigError as exc:
        return Reading(name, route.url, False, None, 0.0,
                       [Check(name="credentials", passed=False, detail=exc.message)],
                       "", exc.message)


__all__ = ["Reading", "client_for", "describe_route", "read", "read_or_fail"]
