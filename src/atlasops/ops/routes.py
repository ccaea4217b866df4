"""Route checks: read the real page, the way a user would, and judge it.

A check passes only when the status is the expected one, every must-contain
text appears, no must-not-contain text appears ("Internal Server Error",
"Application error" by default, which also catches a 200 that is really an
error page) and the latency is within bound. A 200 that is really a login form
fails its must-contain condition.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

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

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.route, "url": self.url, "passed": self.passed,
                "status": self.status, "ms": self.ms, "error": self.error,
                "snippet": self.snippet, "checks": [c.model_dump() for c in self.checks]}


def _auth_headers(route: Route, env: Mapping[str, str]) -> dict[str, str]:
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
    return {"Cookie": value}


def describe_route(route: Route) -> str:
    """What the route promises a user, in the words a receipt uses."""
    path = urlparse(route.url).path or "/"
    who = " for an authenticated user" if route.auth else ""
    return f"{route.method} {path} returns {route.expect_status}{who}"


def read(name: str, route: Route, env: Mapping[str, str],
         client: httpx.Client | None = None) -> Reading:
    """One reading of the real page."""
    secrets = secret_values(env, [route.auth.env] if route.auth else [])
    headers = _auth_headers(route, env)
    own = client is None
    client = client or httpx.Client(timeout=route.timeout, follow_redirects=True)
    t0 = time.perf_counter()
    try:
        response = client.request(route.method, route.url, headers=headers)
        body = response.text
        status: int | None = response.status_code
        error = None
    except httpx.TimeoutException as exc:
        body, status, error = "", None, f"timed out after {route.timeout:g} s ({exc!r})"
    except httpx.HTTPError as exc:
        body, status, error = "", None, f"{type(exc).__name__}: {exc}"
    finally:
        if own:
            client.close()
    ms = round((time.perf_counter() - t0) * 1000, 3)
    checks = [Check(name="reachable", passed=error is None, detail=error or "answered", ms=ms)]
    if error is None:
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
                   snippet, redact(error, secrets) if error else None)


__all__ = ["Reading", "describe_route", "read"]
