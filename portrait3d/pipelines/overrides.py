"""Setting overrides as a person writes them: ``stage.field=value`` or a JSON file, into a mapping
``{stage: {field: value}}`` (values stay text until a Config reads them; see ``settings``).

Example:
    >>> parse_overrides(["sculpt.steps=10", "texture.mirror=false"])
    {'sculpt': {'steps': '10'}, 'texture': {'mirror': 'false'}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


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
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
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
