"""Ray Serve config files for this app (what ``portrait3d serve --config`` takes and a KubeRay
RayService holds as ``serveConfigV2``), checked strictly.

Serve's own schema ignores keys it does not know, so a misspelt ``max_replcias`` would silently do
nothing: :func:`check_serve_config` rejects unknown keys at any depth of Ray's pydantic models, then
validates with them, and checks each portrait3d application's ``args`` with the service's own
settings.

Example:
    >>> check_serve_config({"applications": [{"name": "p", "import_path": APP, "route_prefix": "/",
    ...                     "deployments": [{"name": "geometry", "max_replcias": 2}]}]})
    Traceback (most recent call last):
    ...
    portrait3d.errors.ConfigError: unknown key(s) in the Serve config: applications[0].deployments[0].max_replcias
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError

APP = "portrait3d.serve_app.app:build_app"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, Union, List and Dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]


def _unknown_keys(model: type[BaseModel], value: Any, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        return
    fields = {}
    for name, f in model.model_fields.items():
        fields[name] = f
        if f.alias:
            fields[f.alias] = f
    for key, item in value.items():
        f = fields.get(key)
        where = f"{path}.{key}" if path else key
        if f is None:
            yield where
            continue
        for sub in _models(f.annotation):
            origin = typing.get_origin(f.annotation)
            if isinstance(item, list):
                for i, x in enumerate(item):
                    yield from _unknown_keys(sub, x, f"{where}[{i}]")
            elif isinstance(item, dict) and origin is not dict:
                yield from _unknown_keys(sub, item, where)
            break


def check_serve_config(data: Any) -> Any:
    """A ``ServeDeploySchema`` from ``data``; unknown keys and bad portrait3d args are ConfigErrors."""
    from ray.serve.schema import ServeDeploySchema

    from .settings import serve_settings

    if not isinstance(data, dict):
        raise ConfigError("a Serve config is a mapping with an applications list")
    unknown = list(_unknown_keys(ServeDeploySchema, data, ""))
    if unknown:
        raise ConfigError(f"unknown key(s) in the Serve config: {', '.join(unknown)}")
    try:
        config = ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"not a valid Serve config: {e}") from None
    for app in config.applications:
        if app.import_path == APP:
            serve_settings(app.args or {})
            from ..engine.config import POOLS

            known = {"ingress", *POOLS}
            bad = [d.name for d in app.deployments if d.name not in known]
            if bad:
                raise ConfigError(
                    f"application {app.name}: no deployment named {', '.join(bad)}; "
                    f"deployments: {', '.join(sorted(known))}"
                )
    return config


def read_serve_config(path: str | Path) -> Any:
    """Read and check a Serve config file (YAML or JSON)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the Serve config {path}: {e}") from None
    return check_serve_config(data)
