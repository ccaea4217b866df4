"""A gate condition: a named check with a verdict and the reason for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    name: str
    passed: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failing(conditions: list[Condition]) -> list[Condition]:
    return [c for c in conditions if not c.passed]


def describe(conditions: list[Condition]) -> str:
    bad = failing(conditions)
    return "; ".join(f"{c.name}: {c.why}" for c in bad) if bad else "every condition holds"


def hold_reason(lane: str, bad: list[Condition]) -> str:
    """What holds an item, in one phrase: its first failing condition."""
    first = bad[0]
    return f"lane {lane} is closed" if first.name == "lane_open" else f"{first.name}: {first.why}"


__all__ = ["Condition", "describe", "failing", "hold_reason"]
