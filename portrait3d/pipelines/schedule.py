"""Scalars that change over optimization steps.

Example:
    >>> Schedule(((0, 1.0), (100, 0.0)))(50)
    0.5
    >>> Schedule.parse("[[0, 2], [10, 4]]")(5)
    3.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    """Piecewise linear through ``points``, a sequence of ``(step, value)`` with increasing steps;
    before the first step the first value holds, after the last the last value holds."""

    points: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("a schedule needs at least one (step, value) point")
        steps = [p[0] for p in self.points]
        if steps != sorted(steps):
            raise ConfigError(f"schedule steps must increase: {steps}")

    def __call__(self, step: int) -> float:
        pts = self.points
        if step <= pts[0][0]:
            return float(pts[0][1])
        for (s0, v0), (s1, v1) in zip(pts, pts[1:], strict=False):
            if step <= s1:
                a = (step - s0) / max(s1 - s0, 1)
                return float(v0 + a * (v1 - v0))
        return float(pts[-1][1])

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(v for _, v in self.points)

    @classmethod
    def parse(cls, value: Any) -> Schedule:
        """From a number, a ``[[step, value], ...]`` list, or its JSON text."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"not a number or a [[step, value], ...] schedule: {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(((0, float(value)),))
        try:
            return cls(tuple((int(s), float(v)) for s, v in value))
        except (TypeError, ValueError):
            raise ConfigError(f"not a number or a [[step, value], ...] schedule: {value!r}") from None

    def to_json(self) -> float | list[list[float]]:
        """A number for a constant, else the ``[[step, value], ...]`` list."""
        return self.points[0][1] if len(self.points) == 1 else [list(p) for p in self.points]
