"""Pipeline settings: one dataclass, named presets, and YAML overrides.

The config is the public surface of ``dgpo-agent train``: a preset names a complete config, a YAML
file overrides any of its fields, and each stage fingerprints only the fields it reads, so changing
a late setting never re-runs an early stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgpo_agent.errors import DGPOError


@dataclass
class WorldSettings:
    seed: int = 0
    size: str = "default"


@dataclass
class StoreSettings:
    collection: str = "dgpo"
    embedder: str | None = None  # None: the packaged all-MiniLM-L6-v2
    batch_size: int = 256


@dataclass
class AgentSettings:
    max_turns: int = 4
    top_k: int = 3


@dataclass
class PipelineConfig:
    preset: str = "tiny"
    out: str = "runs/tiny"
    world: WorldSettings = field(default_factory=WorldSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections, so a stage re-runs only when its inputs change."""
        data = {name: dataclasses.asdict(getattr(self, name)) for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "smoke": {"world": {"size": "small"}},
}


def load_config(preset: str = "tiny", path: Path | None = None, out: Path | None = None) -> PipelineConfig:
    """The preset's config, overridden by a YAML file, with the run directory defaulting to runs/<preset>."""
    if preset not in PRESETS:
        raise DGPOError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    overrides = _merge(PRESETS[preset], _read_yaml(path) if path else {})
    cfg = _build(PipelineConfig, {"preset": preset, "out": str(out or Path("runs") / preset), **overrides})
    if out is not None:
        cfg.out = str(out)
    return cfg


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise DGPOError(f"config file {path} not found: pass an existing YAML file to --config")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise DGPOError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _build(cls: type, values: dict) -> Any:
    """Instantiate a (nested) config dataclass, rejecting unknown keys with the list of valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise DGPOError(f"unknown setting(s) {', '.join(sorted(unknown))} in {cls.__name__}: valid are {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        kwargs[name] = _build(type(sub()), value) if sub and dataclasses.is_dataclass(sub()) and isinstance(value, dict) else value
    return cls(**kwargs)
