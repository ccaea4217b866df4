"""``atlas.toml``: every setting declared once, validated at load.

The file is TOML; :func:`load_config` parses it with :mod:`tomllib` and
validates it with pydantic. Any problem becomes a :class:`ConfigError` that
names the key and the reason. Secrets never live here: later sections name
the *environment variables* that hold them.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def normal_email(value: str) -> str:
    """The normalised form of an email address (syntax only, no DNS); ValueError if invalid."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc


class Owner(_Strict):
    email: str
    name: str = ""
    review_addresses: list[str] = Field(default_factory=list)

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return normal_email(value)

    @field_validator("review_addresses")
    @classmethod
    def _valid_emails(cls, value: list[str]) -> list[str]:
        return [normal_email(v) for v in value]

    def addresses(self) -> set[str]:
        """Every address that counts as the owner's (compared case-insensitively)."""
        return {a.casefold() for a in [self.email, *self.review_addresses]}


LANE_EFFECTS = {
    "outbound.prospect": "email",
    "outbound.review": "email",
    "social.post": "post",
    "site.cta_change": "cta_change",
    "spend": "spend",
}


class Lane(_Strict):
    """One kind of side effect and its policy. Lanes are closed unless opened."""

    open: bool = False
    channel: str | None = None
    daily_cap: int = Field(default=50, ge=0)
    cooldown_hours: float = Field(default=24 * 14, ge=0)
    needs_approval: bool = True
    owner_only: bool = False
    footer: str | None = None
    requires_tracking: bool = False
    tracking: str | None = None
    posture_max_age_days: int | None = Field(default=None, ge=1)
    max_body_bytes: int = Field(default=100_000, ge=100)


class Channel(_Strict):
    """Where a lane's side effects go: an SMTP server or a local Maildir folder (email), or
    a local publish directory (posts: content files written there)."""

    type: Literal["smtp", "maildir", "directory"]
    # maildir, directory
    path: str | None = None
    # smtp: credentials are *names* of environment variables, never the secrets
    host: str | None = None
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["none", "starttls", "ssl"] = "starttls"
    user_env: str | None = None
    password_env: str | None = None
    timeout: float = Field(default=30, gt=0)
    from_address: str | None = None

    @field_validator("from_address")
    @classmethod
    def _valid_from(cls, value: str | None) -> str | None:
        return None if value is None else normal_email(value)




def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic that never leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT_MUST_NOT_CONTAIN = ["Internal Server Error", "Application error"]


class RouteAuth(_Strict):
    """Credentials for a route, taken from a named environment variable."""

    type: Literal["bearer", "basic", "cookie"]
    env: str  # bearer: the token; basic: "user:password"; cookie: "name=value"


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be read or matched as an http(s) page (None when it can)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    try:
        if parts.port == 0:
            return "has port 0"
    except ValueError as exc:  # out of range, or not a number
        return f"has an invalid port ({exc})"
    return None


class Route(_Strict):
    url: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    auth: RouteAuth | None = None
    expect_status: int = Field(default=200, ge=100, le=599)
    must_contain: list[str] = Field(default_factory=list)
    must_not_contain: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MUST_NOT_CONTAIN))
    max_latency_ms: float = Field(default=5000, gt=0)
    healthy_after: int = Field(default=1, ge=1, le=20)
    timeout: float = Field(default=10, gt=0)
    runbook: str | None = None
    readback_deadline: float = Field(default=60, gt=0)
    readback_interval: float = Field(default=1, gt=0)
    user_can: str | None = None  # "open the releases page": the repair summary says so
    # Redirects are followed; landing anywhere but the route's own URL fails the check
    # unless the final URL is allowed here (a path like "/login/done" on the route's own
    # origin, or a full URL prefix: same origin, path boundary).
    follow_redirects: bool = True
    allow_redirect_to: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        why = _url_problem(value)
        if why is not None:
            raise ValueError(f"the url {value!r} {why}")
        return value

    @field_validator("allow_redirect_to")
    @classmethod
    def _matchable(cls, value: list[str]) -> list[str]:
        """Each entry must be able to match a final URL (see ``ops.routes._allowed``): an
        absolute path, compared with the path alone, or an http(s) URL prefix."""
        for target in value:
            if "://" in target:
                why = _url_problem(target)
            elif not target.startswith("/"):
                why = f"is neither an absolute path (\"/{target}\") nor an http(s) URL"
            elif "?" in target or "#" in target:
                why = ("is a path with a query or fragment; a path entry is compared with "
                       "the path alone (any query passes): to require a query, give the "
                       "full URL")
            else:
                why = None
            if why is not None:
                raise ValueError(f"entry {target!r} can never match: it {why}")
        return value

    @model_validator(mode="after")
    def _judgeable(self) -> Route:
        if self.method == "HEAD" and self.must_contain:
            raise ValueError("a HEAD route has no body, so must_contain can never pass; "
                             "use GET, or drop must_contain")
        if self.auth is not None and self.method == "HEAD":
            raise ValueError("a route with auth cannot use HEAD: only the body tells the "
                             "signed-in page from a login page that answers 200 too; use GET "
                             "with must_contain")
        if self.auth is not None and not self.must_contain:
            raise ValueError("a route with auth needs must_contain (text only the signed-in "
                             "page shows): a login page answers 200 too")
        return self


class Step(_Strict):
    name: str
    command: str
    cwd: str | None = None
    timeout: float = Field(default=300, gt=0)
    env: dict[str, str] = Field(default_factory=dict)


class Runbook(_Strict):
    steps: list[Step] = Field(min_length=1)


# What a job may be given: the lanes, ``deploy`` (recording deploys) and ``repair``
# (running runbooks: `atlas repair`).
JOB_CAPABILITIES = (*LANE_EFFECTS, "deploy", "repair")
# The built-in jobs: what each runs (`atlas ARGS...`) and what it is for. Their names are
# reserved: a [jobs.NAME] section cannot shadow one.
BUILTIN_JOBS: dict[str, tuple[tuple[str, ...], str]] = {
    "backup": (("backup", "--label", "scheduled"), "take and validate a backup"),
    "db-check": (("db", "check"), "quick_check and ledger == journal"),
    "route-checks": (("check", "routes"), "read every configured route"),
    "backup-prune": (("backups", "prune"), "apply the backup retention policy"),
    "chronicle": (("chronicle",), "write today's chronicle"),
}
BUILTIN_TIMEOUT = 3600.0


class BuiltinJob(_Strict):
    """Settings of a built-in job: ``[builtin_jobs.backup] timeout = 7200``."""

    timeout: float = Field(default=BUILTIN_TIMEOUT, gt=0)


class Job(_Strict):
    """An agent job: a shell command or a Python entry point, with capabilities."""

    command: str | None = None
    entry: str | None = None  # "package.module:function"
    business: str | None = None
    read_only: bool = False
    lanes: list[str] = Field(default_factory=list)
    timeout: float = Field(default=600, gt=0)
    cwd: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Job:
        if (self.command is None) == (self.entry is None):
            raise ValueError("a job has exactly one of command or entry")
        if self.entry is not None and ":" not in self.entry:
            raise ValueError("entry is 'package.module:function'")
        if self.read_only and self.lanes:
            raise ValueError("a read_only job cannot also name lanes")
        return self


class GitRepo(_Strict):
    path: str
    name: str | None = None


class ChronicleSettings(_Strict):
    """Where the daily chronicle reads from, besides the ledger."""

    repos: list[GitRepo] = Field(default_factory=list)
    agent_authors: list[str] = Field(default_factory=list)  # names or emails of agents
    status_files: list[str] = Field(default_factory=list)
    worklog_file: str | None = None
    stale_backup_hours: float = Field(default=26, gt=0)
    templates: str | None = None  # a directory with chronicle.md.j2 / chronicle.html.j2


def default_lanes() -> dict[str, Lane]:
    return {
        "outbound.prospect": Lane(footer="Reply STOP to opt out.", posture_max_age_days=30),
        "outbound.review": Lane(open=True, channel="owner-maildir", needs_approval=False,
                                owner_only=True, daily_cap=200, cooldown_hours=0),
        "social.post": Lane(cooldown_hours=0),
        "site.cta_change": Lane(cooldown_hours=0),
        "spend": Lane(cooldown_hours=0, daily_cap=0),
    }


def default_channels() -> dict[str, Channel]:
    return {"owner-maildir": Channel(type="maildir", path="data/maildir/owner")}


class Business(_Strict):
    name: str = Field(min_length=1, max_length=200)
    sites: list[str] = Field(default_factory=list)


class JournalSettings(_Strict):
    segment_bytes: int = Field(default=DEFAULT_SEGMENT_BYTES, ge=4096)


class BackupSettings(_Strict):
    """Retention for `atlas backups prune`: keep the newest backup of each of the last
    N hours, days and ISO weeks. The newest validated backup is always kept."""

    keep_hourly: int = Field(default=24, ge=0)
    keep_daily: int = Field(default=7, ge=0)
    keep_weekly: int = Field(default=4, ge=0)


class Config(_Strict):
    owner: Owner
    demo: bool = False
    journal: JournalSettings = Field(default_factory=JournalSettings)
    backups: BackupSettings = Field(default_factory=BackupSettings)
    businesses: dict[str, Business] = Field(default_factory=dict)
    lanes: dict[str, Lane] = Field(default_factory=dict)
    channels: dict[str, Channel] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)
    runbooks: dict[str, Runbook] = Field(default_factory=dict)
    jobs: dict[str, Job] = Field(default_factory=dict)
    builtin_jobs: dict[str, BuiltinJob] = Field(default_factory=dict)
    chronicle: ChronicleSettings = Field(default_factory=ChronicleSettings)

    @field_validator("lanes")
    @classmethod
    def _known_lanes(cls, value: dict[str, Lane]) -> dict[str, Lane]:
        for name in value:
            if name not in LANE_EFFECTS:
                raise ValueError(f"unknown lane {name!r}; lanes are "
                                 + ", ".join(LANE_EFFECTS))
        review = value.get("outbound.review")
        if review is not None and "owner_only" in review.model_fields_set \
                and not review.owner_only:
            raise ValueError('lanes."outbound.review".owner_only = false is refused: the '
                             "review lane only ever sends to the owner's addresses")
        return value

    @model_validator(mode="after")
    def _channels_exist(self) -> Config:
        channels = self.all_channels()
        for name, lane in self.all_lanes().items():
            if lane.channel is not None and lane.channel not in channels:
                raise ValueError(f"lanes.{name}.channel names {lane.channel!r}, "
                                 "which is not a [channels] entry")
            if (lane.channel is not None and LANE_EFFECTS[name] == "email"
                    and channels[lane.channel].type == "directory"):
                raise ValueError(f"lanes.{name}.channel: an email lane cannot use the "
                                 f"directory channel {lane.channel!r}")
        for name, ch in channels.items():
            if ch.type in ("maildir", "directory") and not ch.path:
                raise ValueError(f"channels.{name}: a {ch.type} channel needs a path")
            if ch.type == "smtp" and not (ch.host and ch.from_address):
                raise ValueError(f"channels.{name}: an smtp channel needs host and "
                                 "from_address")
            if (ch.tls == "none" and (ch.user_env or ch.password_env)
                    and not is_loopback(str(ch.host))):
                raise ValueError(f'channels.{name}: tls = "none" with credentials would send '
                                 "the password in cleartext; use starttls or ssl (tls = "
                                 '"none" with credentials is allowed only on a loopback host)')
        for name, route in self.routes.items():
            if route.runbook is not None and route.runbook not in self.runbooks:
                raise ValueError(f"routes.{name}.runbook names {route.runbook!r}, which is "
                                 "not a [runbooks] entry")
        for name, job in self.jobs.items():
            if name in BUILTIN_JOBS:
                raise ValueError(f"jobs.{name}: {name!r} is a built-in job's name, and "
                                 "built-in names are reserved; choose another name (a "
                                 f"built-in's timeout is set in [builtin_jobs.{name}])")
            if job.business is not None and job.business not in self.businesses:
                raise ValueError(f"jobs.{name}.business: unknown business {job.business!r}")
            for lane_name in job.lanes:
                if lane_name not in JOB_CAPABILITIES:
                    raise ValueError(f"jobs.{name}.lanes: unknown lane {lane_name!r} "
                                     f"(one of {', '.join(JOB_CAPABILITIES)})")
        for name in self.builtin_jobs:
            if name not in BUILTIN_JOBS:
                raise ValueError(f"builtin_jobs.{name}: no such built-in job (one of "
                                 f"{', '.join(BUILTIN_JOBS)})")
        return self

    def all_lanes(self) -> dict[str, Lane]:
        """The five lanes: each key atlas.toml sets, over that lane's safe defaults.

        Only the keys written in atlas.toml replace defaults: a section that sets only
        ``channel`` keeps the default footer, posture rule, cap and cooldown."""
        lanes = default_lanes()
        for name, lane in self.lanes.items():
            lanes[name] = lanes[name].model_copy(
                update={key: getattr(lane, key) for key in lane.model_fields_set})
        return lanes

    def all_channels(self) -> dict[str, Channel]:
        return {**default_channels(), **self.channels}

    @field_validator("businesses")
    @classmethod
    def _slugs(cls, value: dict[str, Business]) -> dict[str, Business]:
        for slug in value:
            if not SLUG_RE.match(slug):
                raise ValueError(
                    f"business slug {slug!r} must be lowercase letters, digits, '-' or '_'"
                )
        return value


def _key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(text: str, *, source: str = "atlas.toml") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = [f"key {_key(e['loc'])}: {e['msg']}" for e in exc.errors()]
        head = (f"{source}: {problems[0]}" if len(problems) == 1 else
                f"{source} has {len(problems)} problems: " + "; ".join(problems))
        raise ConfigError(head, problems=problems) from exc


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}",
                          hint="atlas.toml must be a UTF-8 file readable by this user "
                          "(Atlas creates it 0600).") from exc
    return parse_config(text, source=str(path))


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    owner_email: str,
    owner_name: str = "",
    businesses: dict[str, Business] | None = None,
    *,
    demo: bool = False,
    extra: str = "",
) -> str:
    """The text of a new ``atlas.toml``; the result is validated before it is returned."""
    lines = [
        "# Atlas workspace configuration. See README.md, 'Configuration'.",
        "# Secrets never go here: later sections name environment variables instead.",
        "",
    ]
    if demo:
        lines += ["demo = true  # `atlas demo --reset` may delete this workspace", ""]
    lines += ["[owner]", f"email = {_toml_str(owner_email)}"]
    if owner_name:
        lines.append(f"name = {_toml_str(owner_name)}")
    lines += ["", "[journal]", f"segment_bytes = {DEFAULT_SEGMENT_BYTES}", ""]
    lines += ["[backups]  # retention for `atlas backups prune`",
              "keep_hourly = 24", "keep_daily = 7", "keep_weekly = 4", ""]
    for slug, biz in (businesses or {}).items():
        sites = ", ".join(_toml_str(s) for s in biz.sites)
        lines += [f"[businesses.{slug}]", f"name = {_toml_str(biz.name)}", f"sites = [{sites}]", ""]
    text = "\n".join(lines) + extra
    parse_config(text)
    return text


__all__ = [
    "BUILTIN_JOBS",
    "BUILTIN_TIMEOUT",
    "JOB_CAPABILITIES",
    "LANE_EFFECTS",
    "BackupSettings",
    "BuiltinJob",
    "Business",
    "Channel",
    "ChronicleSettings",
    "GitRepo",
    "Job",
    "Lane",
    "Route",
    "RouteAuth",
    "Runbook",
    "Step",
    "normal_email",
    "default_channels",
    "default_lanes",
    "Config",
    "JournalSettings",
    "Owner",
    "load_config",
    "parse_config",
    "render_config",
]
