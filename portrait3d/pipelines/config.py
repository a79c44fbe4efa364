"""A resolved pipeline config: a profile's implementations with typed, checked settings and a seed.

Overrides (``overrides``) are ``stage.field=value`` strings or JSON files ``{"stage": {"field":
value}}``, read against each stage's Config (``settings``): unknown keys, unreadable values and values out of range
are ConfigErrors, never silently ignored. Checks that span stages (e.g. the ID adapter needs an
ArcFace identity) run here too, before any model loads.

Example:
    >>> cfg = build_profile_config("fast", ["sculpt.steps=10"])
    >>> cfg.stages["sculpt"].steps
    10
    >>> build_profile_config("fast", ["sculpt.steps=-5"])
    Traceback (most recent call last):
    ...
    portrait3d.errors.ConfigError: sculpt.steps = -5: must be >= 1
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .overrides import parse_overrides
from .profiles import PROFILES
from .registry import STAGES, lookup
from .schedule import Schedule
from .settings import make_config


@dataclass(frozen=True)
class PipelineConfig:
    """A resolved profile: implementation names and their typed configs, plus the seed."""

    profile: str
    seed: int
    impls: dict[str, str]
    stages: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "seed": self.seed,
            "impls": dict(self.impls),
            "stages": {k: _jsonable(v) for k, v in self.stages.items()},
        }

    def fingerprint(self) -> str:
        """SHA-256 of the resolved settings: equal fingerprints make equal heads from equal inputs."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, Schedule):
        return x.to_json()
    if dataclasses.is_dataclass(x):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def build_profile_config(
    profile: str,
    overrides: list[str] | None = None,
    seed: int = 0,
    models: str | None = None,
    allow_pickle: tuple[str, ...] = (),
) -> PipelineConfig:
    """Resolve a profile and overrides into typed, checked stage configs.

    ``models`` (a model root) and ``allow_pickle`` (role names) go to every stage whose Config has
    the field of that name.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; profiles: {', '.join(sorted(PROFILES))}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"the seed must be an integer >= 0, got {seed!r}")
    spec = PROFILES[profile]
    ov = parse_overrides(overrides)
    unknown = set(ov) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stage(s) in overrides: {', '.join(sorted(unknown))}; stages: {', '.join(STAGES)}")
    stages = {}
    for stage in STAGES:
        cls = lookup(stage, spec.impls[stage])
        values = {**spec.settings.get(stage, {}), **ov.get(stage, {})}
        names = {f.name for f in dataclasses.fields(cls.Config)}
        if models and "models" in names:
            values["models"] = str(models)
        if allow_pickle and "allow_pickle" in names:
            values["allow_pickle"] = tuple(allow_pickle)
        stages[stage] = make_config(cls.Config, values, stage)
    if spec.needs_models and not all(getattr(c, "models", True) for c in stages.values()):
        raise ConfigError(
            f"the {profile} profile needs a model root: --models ROOT "
            f"(a folder or s3:// prefix; `portrait3d models check ROOT` lists what it holds)"
        )
    for stage, cfg in stages.items():
        check = getattr(cfg, "check_with", None)
        if check is not None:
            check(stage, stages)
    return PipelineConfig(profile=profile, seed=int(seed), impls=dict(spec.impls), stages=stages)
