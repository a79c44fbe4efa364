"""The stage registry: every stage implementation registers under ``(stage, name)``.

The registry imports nothing of the stages: a stage module imports :func:`register`, and whoever
needs the built-in stages (``profiles``) imports their modules. A registered class has a ``Config``
dataclass, is built from it, is called with the stage's typed input and a
:class:`~portrait3d.pipelines.stage.Reporter`, and has ``close()`` (see ``stage``).

Example:
    >>> lookup("colour", "grading")
    Traceback (most recent call last):
    ...
    portrait3d.errors.ConfigError: unknown stage 'colour'; stages are analysis, init, sculpt, texture, export
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from ..errors import ConfigError

#: The stages of a head, in order.
STAGES = ("analysis", "init", "sculpt", "texture", "export")

_REGISTRY: dict[str, dict[str, type]] = {s: {} for s in STAGES}

T = TypeVar("T", bound=type)


def register(stage: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` the implementation ``name`` of ``stage``."""
    if stage not in _REGISTRY:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")

    def deco(cls: T) -> T:
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__name__} must declare a dataclass named Config")
        if not callable(getattr(cls, "close", None)):
            raise TypeError(f"{cls.__name__} must have close()")
        _REGISTRY[stage][name] = cls
        return cls

    return deco


def lookup(stage: str, name: str) -> type:
    """The class registered as ``name`` for ``stage``; a ConfigError names the choices otherwise."""
    if stage not in _REGISTRY:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    try:
        return _REGISTRY[stage][name]
    except KeyError:
        choices = ", ".join(sorted(_REGISTRY[stage])) or "none"
        raise ConfigError(f"no {stage} implementation named {name!r}; choices: {choices}") from None


def registered(stage: str) -> list[str]:
    """The names registered for ``stage`` so far."""
    return sorted(_REGISTRY[stage])
