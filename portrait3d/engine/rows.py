"""The row that travels through a batch run, one per input, and the manifest it ends as.

Between pools a row carries only URIs and small metadata (status, timings, JSON text); every column
has one type in every row, so Ray Data's Arrow blocks never need to unify types.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

NAN = float("nan")

#: Manifest columns: ``(name, Arrow type, default, description)``.
COLUMNS: tuple[tuple[str, pa.DataType, Any, str], ...] = (
    ("index", pa.int64(), 0, "position of the input in the listing"),
    ("input_uri", pa.string(), "", "the portrait"),
    ("input_size", pa.int64(), -1, "its size in bytes, from the listing (-1: not listed with one)"),
    ("input_mtime_ns", pa.int64(), -1, "its modification time, ns since the epoch, from the listing (-1: none)"),
    ("face", pa.string(), "", "which face of the photo, from the input manifest's face column ('': analysis.face)"),
    ("content_hash", pa.string(), "", "SHA-256 of the input's bytes (empty when it could not be read)"),
    ("status", pa.string(), "pending", "ok or error"),
    ("reused", pa.bool_(), False, "the bundle existed from an earlier run with the same settings"),
    ("error_type", pa.string(), "", "typed error, e.g. NoFaceError, TruncatedImageError"),
    ("error_message", pa.string(), "", "what went wrong, for a person"),
    ("error_stage", pa.string(), "", "pool where the error happened"),
    ("bundle_uri", pa.string(), "", "folder of the head bundle"),
    ("glb_uri", pa.string(), "", "head.glb"),
    ("json_uri", pa.string(), "", "head.json"),
    ("views_uri", pa.string(), "", "views.png"),
    ("t_analysis_s", pa.float64(), NAN, "stage 1 time"),
    ("t_init_s", pa.float64(), NAN, "stage 2 time"),
    ("t_sculpt_s", pa.float64(), NAN, "stages 3-4 time"),
    ("t_texture_s", pa.float64(), NAN, "stage 5 time"),
    ("t_export_s", pa.float64(), NAN, "bundle time"),
    ("metrics_json", pa.string(), "{}", "face score, pose, mesh and texture metrics (JSON)"),
    ("workers_json", pa.string(), "{}", "node, process and GPUs of the worker of each pool (JSON)"),
)
#: Columns that only travel between pools.
INTERNAL: tuple[tuple[str, pa.DataType, Any], ...] = (("work_uri", pa.string(), ""),)
MANIFEST_SCHEMA = pa.schema([pa.field(n, t) for n, t, _, _ in COLUMNS])
#: A row as it travels: the manifest's columns and the internal ones.
ROW_SCHEMA = pa.schema([*MANIFEST_SCHEMA, *(pa.field(n, t) for n, t, _ in INTERNAL)])
TIMING_COLUMNS = {
    "analysis": "t_analysis_s",
    "init": "t_init_s",
    "sculpt": "t_sculpt_s",
    "texture": "t_texture_s",
    "export": "t_export_s",
}


def new_row(index: int, input_uri: str, size: int = -1, mtime_ns: int = -1, face: str = "") -> dict[str, Any]:
    row = {n: d for n, _, d, _ in COLUMNS}
    row.update({n: d for n, _, d in INTERNAL})
    row.update(index=int(index), input_uri=str(input_uri), input_size=int(size), input_mtime_ns=int(mtime_ns))
    row["face"] = str(face)
    return row


def mark_error(row: dict[str, Any], stage: str, kind: str, message: str) -> None:
    row.update(status="error", error_type=kind, error_message=message, error_stage=stage)


def batch_to_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Ray Data's numpy batch -> plain Python rows."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: _py(v[i]) for k, v in batch.items()} for i in range(n)]


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Travelling rows as one Arrow table (a Ray Data block), every column typed."""
    columns = {f.name: pa.array([_py(r[f.name]) for r in rows], type=f.type) for f in ROW_SCHEMA}
    return pa.table(columns, schema=ROW_SCHEMA)


def manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    """One row per input, in input order, with the manifest's columns only."""
    rows = sorted(rows, key=lambda r: r["index"])
    return pa.table(
        {n: pa.array([_py(r.get(n, d)) for r in rows], type=t) for n, t, d, _ in COLUMNS}, schema=MANIFEST_SCHEMA
    )
