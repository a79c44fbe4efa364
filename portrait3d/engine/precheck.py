"""The batch run's first step, before any worker pool starts: read each input once, hash it, decode it
(no model), and look its bundle up. A done input becomes its row at once (``reused``), a bad one its
error row; only the rest go to the pools, each content hash once.

Ray Data tasks run it (CPU only, many rows per task), so it spreads over the cluster like the pools.

Example:
    >>> from portrait3d.engine.rows import new_row, rows_to_batch
    >>> batch = rows_to_batch([new_row(0, "/nonexistent/a.jpg")])
    >>> out = check_inputs(batch, output="/tmp/out", fingerprint="f", max_bytes=2**20, max_megapixels=50.0)
    >>> out.column("status").to_pylist(), out.column("error_type").to_pylist()
    (['error'], ['StorageError'])
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from .. import storage
from ..errors import Portrait3DError
from ..pipelines.analysis import check_face_choice
from ..pipelines.image_io import load_image
from . import heads
from .rows import batch_to_rows, mark_error, rows_table


def check_row(row: dict[str, Any], output: str, fingerprint: str, max_bytes: int, max_megapixels: float) -> None:
    """One input: an error row when it cannot be read or decoded, an ok row (``reused``) when its
    bundle is complete with these settings, else left ``pending`` with its ``content_hash``. A row
    that comes with its ``content_hash`` (an earlier run's, for the same URI, size and mtime) is looked
    up by it before its input is read."""
    uri = row["input_uri"]
    try:
        if row["face"]:
            check_face_choice(row["face"], f"the face column for {uri}")
        if row["content_hash"] and _reuse(row, output, fingerprint):
            return
        data = storage.read_bytes(uri, max_bytes=max_bytes)
        row["content_hash"] = hashlib.sha256(data).hexdigest()
        if _reuse(row, output, fingerprint):
            return
        load_image(data, max_megapixels=max_megapixels, name=uri)
    except Portrait3DError as e:
        mark_error(row, "analysis", e.kind, str(e))


def _reuse(row: dict[str, Any], output: str, fingerprint: str) -> bool:
    """Point ``row`` at the complete bundle of its content hash made with these settings, if any."""
    bundle = heads.bundle_uri(output, row["content_hash"], row["face"])
    record = heads.find_bundle(bundle, fingerprint)
    if record is None:
        return False
    heads.fill_outputs(row, bundle, record)
    row["reused"] = True
    return True


def check_inputs(batch: dict[str, np.ndarray], **kwargs: Any) -> pa.Table:
    """``check_row`` over a Ray Data batch (keyword arguments as ``check_row``'s)."""
    rows = batch_to_rows(batch)
    for row in rows:
        check_row(row, **kwargs)
    return rows_table(rows)


#: What a row made from the same bytes takes from the row that made the head.
SHARED_COLUMNS = (
    "status",
    "error_type",
    "error_message",
    "error_stage",
    "bundle_uri",
    "glb_uri",
    "json_uri",
    "views_uri",
    "metrics_json",
)


def copy_result(made: dict[str, Any], row: dict[str, Any]) -> None:
    """Give ``row`` (same bytes as ``made``) the result of ``made``; an ok head counts as reused."""
    row.update({k: made[k] for k in SHARED_COLUMNS})
    row["reused"] = made["status"] == "ok"
