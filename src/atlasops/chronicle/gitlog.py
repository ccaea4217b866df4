"""The git source: the day's commits in the repositories listed in ``atlas.toml``.

A commit belongs to the day its *committer* date falls on (UTC): that is when it
landed in the repository; the author date is when it was first written, which a
rebase or a cherry-pick keeps from long ago. Commits are listed from every branch,
tag and remote-tracking ref (never ``refs/stash``: a stash is not work that landed),
inside a window a month wider than the day on each side, and filtered to the day
here, by their timestamp, so a commit whose clock ran backwards is still found. The
same commit reachable from two configured repositories is counted once. A path may
be a work tree's top level or a bare repository; git runs without any ``GIT_*``
variable of Atlas's own environment, so nothing points it at another repository.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ..config import ChronicleSettings, GitRepo
from ..workspace import Workspace
from .sources import SourceInfo, why

MARGIN = timedelta(days=31)  # git stops walking a little after --since; skewed clocks


@dataclass
class Commit:
    repo: str
    sha: str
    author: str
    email: str
    when: str  # committer date, ISO 8601 UTC
    subject: str
    agent: bool


def read_git(ws: Workspace, day: date, settings: ChronicleSettings
             ) -> tuple[list[Commit] | None, list[SourceInfo]]:
    """The commits of every repository that could be read, and one SourceInfo per
    repository. ``None`` only when no repository could be read at all."""
    if not settings.repos:
        return None, [SourceInfo("git", "git", "-", False,
                                 "no git repositories are configured ([chronicle] repos)")]
    agents = {a.casefold() for a in settings.agent_authors}
    commits: list[Commit] = []
    seen: set[str] = set()
    infos: list[SourceInfo] = []
    for repo in settings.repos:
        path = _path(ws, repo)
        info = SourceInfo(f"git:{repo.name or path.name}", "git", str(path), True)
        infos.append(info)
        try:
            found = _day_commits(path, day, info.name.removeprefix("git:"), agents)
        except RepoUnreadable as exc:
            info.fail(str(exc))
            continue
        except Exception as exc:  # the source boundary: every failure is a reason
            info.fail(why(exc))
            continue
        for c in found:
            if c.sha not in seen:
                seen.add(c.sha)
                commits.append(c)
    if not any(i.available for i in infos):
        return None, infos
    commits.sort(key=lambda c: c.when)
    return commits, infos


class RepoUnreadable(Exception):
    """Why a configured path cannot be read as a repository of its own."""


def _path(ws: Workspace, repo: GitRepo) -> Path:
    path = Path(repo.path)
    return path if path.is_absolute() else ws.home / path


def _git(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run git on ``path`` alone: every ``GIT_*`` variable of Atlas's own environment is
    dropped, so ``GIT_DIR`` (or ``GIT_WORK_TREE``, ...) cannot point it elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True,
                              text=True, timeout=60, errors="replace", env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepoUnreadable(f"git could not run: {exc}") from exc


def _first_line(out: subprocess.CompletedProcess[str], default: str) -> str:
    return (out.stderr.strip().splitlines() or [default])[0][:200]


def _same(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _check_toplevel(path: Path) -> None:
    """The path must be a repository itself, not a folder inside another one: a bare
    repository's git directory, or a work tree's top level."""
    if not path.exists():
        raise RepoUnreadable("the path does not exist")
    out = _git(path, "rev-parse", "--is-bare-repository", "--absolute-git-dir")
    if out.returncode != 0:
        raise RepoUnreadable(_first_line(out, "not a git repository"))
    bare, _, git_dir = out.stdout.strip().partition("\n")
    if bare.strip() == "true":
        if not _same(git_dir, path):
            raise RepoUnreadable(f"not a git repository (inside {git_dir})")
        return
    out = _git(path, "rev-parse", "--show-toplevel")
    if out.returncode != 0:  # the .git directory of a work tree
        raise RepoUnreadable(f"not a git repository (inside {os.path.dirname(git_dir)})")
    top = out.stdout.strip()
    if not _same(top, path):
        raise RepoUnreadable(f"not a git repository (inside {top})")


def _day_commits(path: Path, day: date, name: str, agents: set[str]) -> list[Commit]:
    _check_toplevel(path)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    out = _git(path, "log", "--branches", "--tags", "--remotes",
               f"--since={(start - MARGIN).isoformat()}", f"--until={(end + MARGIN).isoformat()}",
               "--format=%H%x1f%an%x1f%ae%x1f%ct%x1f%s")
    if out.returncode != 0:
        raise RepoUnreadable(_first_line(out, "git log failed"))
    found = []
    for line in out.stdout.splitlines():
        sha, author, email, stamp, subject = (line.split("\x1f") + [""] * 5)[:5]
        when = datetime.fromtimestamp(int(stamp), UTC)
        if start <= when < end:
            agent = author.casefold() in agents or email.casefold() in agents
            found.append(Commit(name, sha, author, email,
                                when.strftime("%Y-%m-%dT%H:%M:%SZ"), subject, agent))
    return found


__all__ = ["Commit", "read_git"]
