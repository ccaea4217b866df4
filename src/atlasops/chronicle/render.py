"""Render the chronicle with Jinja2 templates and write it to disk.

The default templates ship with Atlas; ``[chronicle] templates = "DIR"`` points
at a directory whose ``chronicle.md.j2`` / ``chronicle.html.j2`` take their
place, so an operator can restyle the log without touching code.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from ..fsutil import replace_durably
from ..workspace import Workspace

FORMATS = ("md", "html", "json")


def environment(ws: Workspace) -> Environment:
    custom = None
    if ws.config.chronicle.templates:
        path = Path(ws.config.chronicle.templates)
        custom = str(path if path.is_absolute() else ws.home / path)
    return _environment(custom)


@functools.lru_cache(maxsize=8)
def _environment(custom: str | None) -> Environment:
    """One environment per template directory, so compiled templates are reused."""
    loaders: list[Any] = []
    if custom is not None:
        loaders.append(FileSystemLoader(custom))
    loaders.append(PackageLoader("atlasops", "chronicle/templates"))
    env = Environment(loader=ChoiceLoader(loaders), keep_trailing_newline=True,
                      autoescape=select_autoescape(["html", "html.j2"]), trim_blocks=False)
    env.filters["code"] = code
    return env


def code(text: object) -> Markup:
    """Escaped text whose `backticked` spans (commands, names) become ``<code>``."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def render(ws: Workspace, chronicle: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(chronicle, indent=2, ensure_ascii=False) + "\n"
    template = environment(ws).get_template(f"chronicle.{fmt}.j2")
    return template.render(c=chronicle)


def write(ws: Workspace, chronicle: dict[str, Any], formats: list[str],
          out_dir: Path | None = None) -> list[Path]:
    target = out_dir or ws.chronicle_dir
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for fmt in formats:
        path = target / f"{chronicle['date']}.{fmt}"
        replace_durably(path, render(ws, chronicle, fmt).encode("utf-8"))
        paths.append(path)
    return paths


__all__ = ["FORMATS", "render", "write"]
