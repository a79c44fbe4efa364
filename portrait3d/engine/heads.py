"""Where heads live in an output root (local or ``s3://``), keyed by the input's content hash (and, for
an input whose manifest row picks a face, that choice too).

``OUTPUT/heads/<hash16>/``: ``head.glb``, ``views.png``, then ``head.json`` written last, so a bundle
whose ``head.json`` exists is complete. ``OUTPUT/_work/<hash16>/``: intermediates passed between
pools (``analysis.npz``, ``mesh.npz``, ``head.npz``), removed once the bundle is written;
``OUTPUT/_work/timeouts/`` records the heads that ran past ``batch.head_timeout_s``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .. import storage
from ..errors import StorageError
from ..pipelines.outputs import BUNDLE_FILES

KEY_CHARS = 16  # 64 bits of SHA-256: collisions are not a concern at dataset sizes


def head_key(content_hash: str, face: str = "") -> str:
    """The head's folder name: the first 16 hex digits of the input's content hash; of a head of the
    face ``face`` (a manifest row's choice), those of the hash of both, so each face is its own head.

    Example:
        >>> digest = "ab" * 32
        >>> head_key(digest), head_key(digest, "2")
        ('abababababababab', 'f0be976e14306eec')
    """
    key = content_hash[:KEY_CHARS]
    if len(key) != KEY_CHARS or any(c not in "0123456789abcdef" for c in key):
        raise StorageError(f"not a content hash: {content_hash!r}")
    if face:
        return hashlib.sha256(f"{content_hash}\nface={face}".encode()).hexdigest()[:KEY_CHARS]
    return key


def bundle_uri(output: str, content_hash: str, face: str = "") -> str:
    return storage.join(output, "heads", head_key(content_hash, face))


def work_uri(output: str, content_hash: str, face: str = "") -> str:
    return storage.join(output, "_work", head_key(content_hash, face))


def _timeout_uri(output: str, input_uri: str) -> str:
    key = hashlib.sha256(input_uri.encode()).hexdigest()[:KEY_CHARS]
    return storage.join(output, "_work", "timeouts", f"{key}.json")


def record_timeout(output: str, input_uri: str, pool: str, message: str) -> None:
    """Record that ``pool`` ran past its time limit on this input (kept for the rest of the run)."""
    storage.write_bytes(_timeout_uri(output, input_uri), json.dumps({"pool": pool, "message": message}).encode())


def find_timeout(output: str, input_uri: str) -> dict[str, str] | None:
    """The record of :func:`record_timeout` for this input (``pool``, ``message``), else None."""
    uri = _timeout_uri(output, input_uri)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def write_head_bundle(uri: str, files: dict[str, bytes]) -> dict[str, str]:
    """Write the bundle's files, ``head.json`` last; returns ``{name: uri}``."""
    order = sorted(files, key=lambda n: n == "head.json")
    out = {}
    for name in order:
        out[name] = storage.join(uri, name)
        storage.write_bytes(out[name], files[name])
    return out


def find_bundle(uri: str, config_sha256: str) -> dict[str, Any] | None:
    """The ``head.json`` record of a complete bundle made with these settings, else None."""
    json_uri = storage.join(uri, "head.json")
    if not storage.exists(json_uri):
        return None
    try:
        record = json.loads(storage.read_bytes(json_uri))
    except (StorageError, ValueError):
        return None
    if record.get("config_sha256") != config_sha256:
        return None
    if not all(storage.exists(storage.join(uri, n)) for n in BUNDLE_FILES):
        return None
    return record


def summary_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The small part of ``head.json`` that goes into a manifest row."""
    return {
        "face_score": record.get("face_score"),
        "pose_deg": record.get("pose_deg"),
        "notes": record.get("notes", []),
        **record.get("metrics", {}),
    }


def fill_outputs(row: dict[str, Any], bundle: str, record: dict[str, Any]) -> None:
    """A manifest row of a done head: ok, the bundle's URIs and its summary metrics."""
    row.update(
        status="ok",
        bundle_uri=bundle,
        glb_uri=storage.join(bundle, "head.glb"),
        json_uri=storage.join(bundle, "head.json"),
        views_uri=storage.join(bundle, "views.png"),
        metrics_json=json.dumps(summary_metrics(record)),
    )
