"""Range checks for settings dataclasses: each raises one ``DGPOError`` line naming the setting, the
range it must be in and the value it got. Shared by the pipeline's sections (``training.config``) and
the RL trainer's ``RLConfig``, which can also be built directly in code."""

from __future__ import annotations

from typing import Any

from dgpo_agent.errors import DGPOError


def one_of(key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise DGPOError(f"{key} must be one of {', '.join(map(str, allowed))} (got {value!r})")


def at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # NaN included
        raise DGPOError(f"{key} must be at least {low} (got {value!r})")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise DGPOError(f"{key} must be above 0 (got {value!r})")


def fraction(key: str, value: float, below_one: bool = False) -> None:
    if not (0 <= value < 1 if below_one else 0 <= value <= 1):
        raise DGPOError(f"{key} must be in [0, {'1)' if below_one else '1]'} (got {value!r})")
