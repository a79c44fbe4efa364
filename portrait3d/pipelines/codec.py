"""Stage outputs as bytes and back, without pickle: arrays in an ``.npz``, the rest as JSON.

The engine writes each stage's output to storage and passes only its URI downstream; this is the
format. Loading never executes code (``np.load(..., allow_pickle=False)``).

Example:
    >>> from portrait3d.pipelines.mesh import symmetric_sphere
    >>> v, f, mirror = symmetric_sphere(1)
    >>> m = HeadMesh(v, f, mirror, np.zeros(len(v), np.float32))
    >>> back = decode(encode(m), HeadMesh)
    >>> bool(np.array_equal(back.vertices, m.vertices))
    True
"""

from __future__ import annotations

import dataclasses
import io
import json
import typing
import zipfile
from typing import Any, TypeVar

import numpy as np

from ..errors import BundleError
from .camera import Camera
from .outputs import json_default
from .types import HeadMesh  # noqa: F401 (the example uses it)

T = TypeVar("T")
_META = "__meta__"


def encode(obj: Any) -> bytes:
    """A stage-output dataclass as ``.npz`` bytes."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"type": type(obj).__name__}
    _flatten(obj, "", arrays, meta)
    arrays[_META] = np.frombuffer(json.dumps(meta, default=json_default).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(data: bytes, cls: type[T]) -> T:
    """The inverse of :func:`encode`; a BundleError when the bytes are not a ``cls``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(_META).tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise BundleError(f"not an encoded {cls.__name__}: {e}") from None
    if meta.get("type") != cls.__name__:
        raise BundleError(f"expected an encoded {cls.__name__}, found {meta.get('type')!r}")
    return _build(cls, "", arrays, meta)


def _flatten(obj: Any, prefix: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif dataclasses.is_dataclass(value):
            _flatten(value, key + ".", arrays, meta)
        elif isinstance(value, Camera):
            meta[key] = value.to_dict()
        else:
            meta[key] = value


def _build(cls: type, prefix: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        try:
            if key in arrays:
                kwargs[f.name] = arrays[key]
            elif dataclasses.is_dataclass(hint):
                kwargs[f.name] = _build(hint, key + ".", arrays, meta)
            elif hint is Camera:
                kwargs[f.name] = Camera.from_dict(meta[key])
            elif key in meta:
                v = meta[key]
                kwargs[f.name] = tuple(v) if typing.get_origin(hint) is tuple else v
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"encoded {cls.__name__}: field {key} is malformed ({e})") from None
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise BundleError(f"encoded {cls.__name__} is missing fields: {e}") from None
