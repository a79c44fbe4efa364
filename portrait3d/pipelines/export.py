"""Stage 6, export: the head bundle (``head.glb``, ``head.json``, ``views.png``).

``head.glb`` is glTF 2.0 binary: +Y up, metres, the face toward +Z, the head centred at the origin,
the base-colour texture embedded. The bundle is written into a fresh temporary folder beside the
output and moved into place file by file only once every file is complete, so a failure never leaves
a half-written bundle in the output folder.
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
import trimesh
from PIL import Image

from ..errors import OutputPathError
from .types import TexturedHead

BUNDLE_FILES = ("head.glb", "head.json", "views.png")


def glb_bytes(head: TexturedHead) -> bytes:
    """The textured mesh as glTF binary bytes (deterministic for the same input)."""
    mat = trimesh.visual.material.PBRMaterial(
        name="head", baseColorTexture=Image.fromarray(head.texture), metallicFactor=0.0, roughnessFactor=0.9
    )
    visual = trimesh.visual.TextureVisuals(uv=head.uv, material=mat)
    mesh = trimesh.Trimesh(
        vertices=head.mesh.vertices[head.uv_to_vertex], faces=head.uv_faces, visual=visual, process=False
    )
    return trimesh.Scene(geometry={"head": mesh}).export(file_type="glb")


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
