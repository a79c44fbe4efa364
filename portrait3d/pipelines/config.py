"""Registry of stage implementations, typed stage configs, schedules and profiles.

Every stage implementation registers under ``(stage, name)`` and declares a ``Config`` dataclass whose
fields carry ``metadata={"help": ...}``; the CLI prints that help. A profile picks one implementation
per stage. Overrides are ``stage.field=value`` strings (or a JSON/YAML-like mapping), checked against
the dataclass: unknown keys and unparsable values are errors, never silently ignored.

Example:
    >>> cfg = build_profile_config("fast", ["sculpt.steps=10"])
    >>> cfg.stages["sculpt"].steps
    10
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import ConfigError

STAGES = ("analysis", "init", "sculpt", "texture")

_REGISTRY: dict[str, dict[str, type]] = {s: {} for s in STAGES}

T = TypeVar("T", bound=type)


def register(stage: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` the implementation ``name`` of ``stage``."""
    if stage not in _REGISTRY:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")

    def deco(cls: T) -> T:
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__name__} must declare a dataclass named Config")
        _REGISTRY[stage][name] = cls
        return cls

    return deco


def lookup(stage: str, name: str) -> type:
    """The class registered as ``name`` for ``stage``; a ConfigError names the choices otherwise."""
    _ensure_builtin_registered()
    if stage not in _REGISTRY:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    try:
        return _REGISTRY[stage][name]
    except KeyError:
        choices = ", ".join(sorted(_REGISTRY[stage])) or "none"
        raise ConfigError(f"no {stage} implementation named {name!r}; choices: {choices}") from None


def registered(stage: str) -> list[str]:
    _ensure_builtin_registered()
    return sorted(_REGISTRY[stage])


def _ensure_builtin_registered() -> None:
    # Importing the stage modules runs their @register decorators.
    from . import analysis, init, sculpt, sculpt_isd, texture, texture_diffusion  # noqa: F401


@dataclass(frozen=True)
class Schedule:
    """A scalar that may change over optimization steps: piecewise linear through ``points``.

    ``points`` is a sequence of ``(step, value)`` with increasing steps; before the first step the
    first value holds, after the last the last value holds.

    Example:
        >>> Schedule(((0, 1.0), (100, 0.0)))(50)
        0.5
    """

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
        for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
            if step <= s1:
                a = (step - s0) / max(s1 - s0, 1)
                return float(v0 + a * (v1 - v0))
        return float(pts[-1][1])

    @classmethod
    def parse(cls, value: Any) -> "Schedule":
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


def help_of(cfg_cls: type) -> dict[str, tuple[str, Any, str]]:
    """``{field: (type name, default, help)}`` for a Config dataclass."""
    out = {}
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        out[f.name] = (getattr(hints[f.name], "__name__", str(hints[f.name])), default, f.metadata.get("help", ""))
    return out


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    try:
        if typ is Schedule:
            return Schedule.parse(value)
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            v = typ(value) if not isinstance(value, str) else typ(float(value) if typ is float else int(value))
            return v
        if typ is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = json.loads(value)
            args = typing.get_args(typ)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], where) for v in value)
            if len(args) != len(value):
                raise ValueError(value)
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else {}
            kt, vt = typing.get_args(typ)
            return {_coerce(k, kt, where): _coerce(v, vt, where) for k, v in dict(value).items()}
        if origin is typing.Union:
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                return None
            return _coerce(value, args[0], where)
    except ConfigError:
        raise
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"{where}: cannot read {value!r} as {getattr(typ, '__name__', typ)}") from None
    return value


def make_config(cfg_cls: type, values: dict[str, Any], where: str) -> Any:
    """Build ``cfg_cls`` from a mapping, type-checking each value; unknown keys are errors."""
    hints = typing.get_type_hints(cfg_cls)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    cfg = cfg_cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


@dataclass
class ProfileSpec:
    """Which implementation runs each stage, and the profile's own setting values."""

    impls: dict[str, str]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    needs_models: bool = False  # a model root (--models) is required


_PAPER_IMPLS = {"analysis": "mediapipe", "init": "head_prior", "sculpt": "isd_dmtet", "texture": "diffusion"}

PROFILES: dict[str, ProfileSpec] = {
    "fast": ProfileSpec(
        impls={"analysis": "mediapipe", "init": "head_prior", "sculpt": "reference_view", "texture": "classical"},
        description="CPU, no downloaded weights: mediapipe + dlib analysis, fitted head prior, "
        "reference-view mesh sculpting, back-projection + progressive classical inpainting.",
    ),
    "paper": ProfileSpec(
        impls=_PAPER_IMPLS,
        settings={"analysis": {"identity": "arcface", "caption": "auto"}},
        description="The paper's method with the models of a root (--models ROOT; a GPU): ArcFace identity, ISD "
        "geometry sculpting on DMTet, diffusion texture inpainting and refinement, at the settings "
        "of the authors' release.",
        needs_models=True,
    ),
    "tiny": ProfileSpec(
        impls=_PAPER_IMPLS,
        settings={
            "analysis": {"identity": "arcface", "caption": "auto"},
            "init": {"subdivisions": 4},
            "sculpt": {
                "grid_resolution": 32,
                "band": 0.02,
                "steps": 16,
                "normal_fit_steps": 4,
                "render_size": 64,
                "reference_steps": 4,
            },
            "texture": {"texture_size": 256, "view_size": 64, "inpaint_steps": 3, "refine_steps": 6},
        },
        description="The paper profile's code at toy sizes, for a root of tiny models "
        "(`portrait3d models tiny ROOT`): checks the whole path in seconds on a CPU.",
        needs_models=True,
    ),
}


@dataclass
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
            "stages": {k: _jsonable(dataclasses.asdict(v)) for k, v in self.stages.items()},
        }

    def fingerprint(self) -> str:
        """SHA-256 of the resolved settings: equal fingerprints make equal heads from equal inputs."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"points"}:
            pts = x["points"]
            return pts[0][1] if len(pts) == 1 else [list(p) for p in pts]
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def parse_overrides(overrides: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["sculpt.steps=10", "path/to/cfg.json"]`` -> ``{"sculpt": {"steps": "10"}}``.

    A JSON file holds ``{"stage": {"field": value}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in overrides or []:
        if "=" not in item:
            p = Path(item)
            if not p.is_file():
                raise ConfigError(f"config override {item!r} is neither stage.field=value nor a JSON file")
            try:
                data = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"cannot read config file {item}: {e}") from None
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ConfigError(f"config file {item} must hold {{stage: {{field: value}}}}")
            for stage, vals in data.items():
                out.setdefault(stage, {}).update(vals)
            continue
        key, value = item.split("=", 1)
        if key.count(".") != 1:
            raise ConfigError(f"config override {item!r}: the key must be stage.field (e.g. sculpt.steps=50)")
        stage, name = key.split(".")
        out.setdefault(stage.strip(), {})[name.strip()] = value.strip()
    return out


def build_profile_config(
    profile: str,
    overrides: list[str] | None = None,
    seed: int = 0,
    models: str | None = None,
    allow_pickle: tuple[str, ...] = (),
) -> PipelineConfig:
    """Resolve a profile and overrides into typed stage configs.

    ``models`` (a model root) and ``allow_pickle`` (role names) go to every stage whose Config has
    the field of that name.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; profiles: {', '.join(sorted(PROFILES))}")
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
    return PipelineConfig(profile=profile, seed=int(seed), impls=dict(spec.impls), stages=stages)
