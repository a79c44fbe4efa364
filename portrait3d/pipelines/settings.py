"""Stage settings: typed fields with help text and declared ranges, checked when a config is built.

Every field of a stage's ``Config`` is declared with :func:`setting`: its help text (the CLI prints
it) and, for numbers, the accepted range (``ge``/``gt``/``le``/``lt``; a schedule's values and a
tuple's items are each checked), or the accepted ``choices`` for a word. :func:`make_config` reads
values from text or JSON, checks types and ranges, then the config's own ``validate()`` for rules
across its fields. Configs are frozen: change one with ``dataclasses.replace``.

The settings that several stages share are declared here once: :class:`ModelRootSettings` (a model
root) and :class:`DiffusionStageSettings` (diffusion models on a device).

Example:
    >>> @dataclass(frozen=True)
    ... class Config:
    ...     steps: int = setting(80, "optimization steps", ge=1)
    >>> make_config(Config, {"steps": "12"}, "sculpt").steps
    12
    >>> make_config(Config, {"steps": "0"}, "sculpt")
    Traceback (most recent call last):
    ...
    portrait3d.errors.ConfigError: sculpt.steps = 0: must be >= 1
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .schedule import Schedule

_BOUNDS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def setting(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its help text and the values it accepts (see the module docstring)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "bounds": bounds, "choices": choices}
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_range(f: dataclasses.Field) -> str:
    """The accepted values of a field as text, e.g. ``>= 1``, ``> 0, <= 1``, ``auto|torch``; '' if any."""
    bounds = f.metadata.get("bounds") or {}
    if f.metadata.get("choices"):
        return "|".join(f.metadata["choices"])
    return ", ".join(f"{_BOUNDS[k][0]} {v:g}" for k, v in bounds.items())


def help_of(cfg_cls: type) -> dict[str, tuple[str, Any, str]]:
    """``{field: (type name, default, help)}`` for a Config dataclass; the help ends with the range."""
    out = {}
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        text = f.metadata.get("help", "")
        rng = describe_range(f)
        out[f.name] = (
            getattr(hints[f.name], "__name__", str(hints[f.name])),
            default,
            f"{text} [{rng}]" if rng else text,
        )
    return out


def is_numeric(typ: Any) -> bool:
    """Whether a field of type ``typ`` holds numbers (ints, floats, schedules, or tuples of them)."""
    if typ in (int, float, Schedule):
        return True
    return typing.get_origin(typ) is tuple and all(is_numeric(a) for a in typing.get_args(typ) if a is not Ellipsis)


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
            if isinstance(value, str):
                return typ(float(value) if typ is float else int(value))
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return typ(value)
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
            return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else {}
            kt, vt = typing.get_args(typ)
            return {_coerce(k, kt, where): _coerce(v, vt, where) for k, v in dict(value).items()}
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                return None
            return _coerce(value, args[0], where)
    except ConfigError:
        raise
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"{where}: cannot read {value!r} as {getattr(typ, '__name__', typ)}") from None
    return value


def _numbers(value: Any) -> list[float]:
    if isinstance(value, Schedule):
        return list(value.values)
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return []


def check_value(f: dataclasses.Field, value: Any, where: str) -> None:
    """A ConfigError when ``value`` is outside the range or choices ``f`` declares."""
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where} = {value!r}: must be one of {', '.join(choices)}")
    for x in _numbers(value):
        if x != x:
            raise ConfigError(f"{where} = {value!r}: not a number")
        for k, bound in (f.metadata.get("bounds") or {}).items():
            op, ok = _BOUNDS[k]
            if not ok(x, bound):
                shown = value.to_json() if isinstance(value, Schedule) else value
                raise ConfigError(f"{where} = {shown}: must be {op} {bound:g}")


def make_config(cfg_cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build ``cfg_cls`` from a mapping: each value read as its field's type, every field (defaults
    too) checked against its range, then ``validate()``; unknown keys are errors."""
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    cfg = cfg_cls(**kwargs)
    for name, f in fields.items():
        check_value(f, getattr(cfg, name), f"{where}.{name}")
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


@dataclass(frozen=True)
class ModelRootSettings:
    """Settings of every stage that loads models from a model root (its Config derives from this)."""

    models: str = setting("", "model root (folder or s3:// prefix); set by --models")
    allow_pickle: tuple[str, ...] = setting((), "roles whose pickled weights may run code (--allow-pickle)")


@dataclass(frozen=True)
class DiffusionStageSettings(ModelRootSettings):
    """Settings of every stage that runs the diffusion models of a model root with the ID adapter."""

    device: str = setting("auto", "torch device: auto (CUDA when present), cpu, cuda, cuda:1 ...")
    half: bool = setting(False, "run the diffusion models in float16 (the settings use float32)")
    rasterizer: str = setting(
        "auto", "auto (nvdiffrast on CUDA), torch, nvdiffrast", choices=("auto", "torch", "nvdiffrast")
    )
    log_every: int = setting(50, "keep the losses of every N-th step (reading a loss waits for the GPU)", ge=1)
    autocast: str = setting(
        "auto",
        "mixed precision of the diffusion models' forward passes (losses stay float32): auto (bf16 on CUDA, "
        "none on CPU), bf16, fp16, none",
        choices=("auto", "bf16", "fp16", "none"),
    )
    compile: str = setting(
        "none",
        "compile the UNet + ControlNet call of ISD and refinement: none, default, reduce-overhead (CUDA graphs), "
        "max-autotune (torch.compile modes), or tensorrt (Torch-TensorRT where it imports and works, else "
        "max-autotune, with a message)",
        choices=("none", "default", "reduce-overhead", "max-autotune", "tensorrt"),
    )

    def check_with(self, stage: str, stages: Mapping[str, Any]) -> None:
        """The ID adapter takes a 512-D ArcFace embedding: a 128-D dlib identity cannot condition it."""
        if getattr(stages.get("analysis"), "identity", None) == "dlib":
            raise ConfigError(
                f"the {stage} stage's ID adapter needs a 512-D ArcFace identity, and "
                f"analysis.identity=dlib gives a 128-D one: use analysis.identity=arcface"
            )
