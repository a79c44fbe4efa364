"""Writing a head bundle, and the byte formats of its files (no model or heavy library needed, so the
CLI checks an output folder before anything loads).

A bundle is written into a fresh temporary folder beside the output and moved into place file by
file only once every file is complete, so a failure never leaves a half-written bundle.

Example:
    >>> json_bytes({"b": 1, "a": np.float32(0.5)})
    b'{\\n "a": 0.5,\\n "b": 1\\n}'
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import OutputPathError

BUNDLE_FILES = ("head.glb", "head.json", "views.png")


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def check_output_dir(out: str | Path) -> Path:
    """The output folder may exist (as a folder) or be creatable; anything else is an error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"output path {out} is a file; give a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputPathError(f"cannot create output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output folder {parent} is not writable")
    return out


def write_bundle(out: str | Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write ``{name: bytes}`` into ``out`` atomically per file; returns ``{name: path}``."""
    out = check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".portrait3d-", dir=out))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        paths = {}
        for name in files:
            os.replace(tmp / name, out / name)
            paths[name] = str(out / name)
        return paths
    except OSError as e:
        raise OutputPathError(f"cannot write the bundle into {out}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True, default=json_default).encode()


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy arrays and scalars."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
