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


# accelerate's trackers (``LoggerType``) and the module each needs, so a run that names one that is not
# installed is refused before it trains, not silently left untracked as accelerate would.
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",), "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",), "swanlab": ("swanlab",),
}


def trackers(key: str, names: list[str]) -> None:
    """Every name is one of accelerate's trackers, and installed."""
    import importlib.util

    for name in names:
        one_of(key, name, tuple(TRACKERS))
        if not any(importlib.util.find_spec(module) for module in TRACKERS[name]):
            raise DGPOError(f"{key} names {name}, which is not installed: pip install {TRACKERS[name][0]}")

