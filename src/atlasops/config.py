"""``atlas.toml``: every setting declared once, validated at load.

The file is TOML; :func:`load_config` parses it with :mod:`tomllib` and
validates it with pydantic. Any problem becomes a :class:`ConfigError` that
names the key and the reason. Secrets never live here: later sections name
the *environment variables* that hold them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Owner(_Strict):
    email: str
    name: str = ""

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(str(exc)) from exc


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
        first = exc.errors()[0]
        problems = [f"{_key(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(
            f"{source}: key {_key(first['loc'])}: {first['msg']}",
            problems=problems,
        ) from exc


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    return parse_config(text, source=str(path))


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    owner_email: str,
    owner_name: str = "",
    businesses: dict[str, Business] | None = None,
    *,
    demo: bool = False,
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
    text = "\n".join(lines)
    parse_config(text)
    return text


__all__ = [
    "BackupSettings",
    "Business",
    "Config",
    "JournalSettings",
    "Owner",
    "load_config",
    "parse_config",
    "render_config",
]
