"""A batch run's rows on disk as they finish: Parquet part files under ``OUTPUT/_manifest/<config>/``,
so a driver that dies mid-run leaves its finished rows behind; the next run with the same settings
takes its input errors from them (and from the previous ``manifest.parquet``, which records the
settings' fingerprint in its metadata) instead of sending those inputs through the pools again. The
final ``manifest.parquet`` is written when a run completes; then the parts go.

Example:
    >>> import tempfile
    >>> from portrait3d.engine.rows import new_row
    >>> out = tempfile.mkdtemp()
    >>> parts = PartWriter(out, "f" * 64, every_rows=1)
    >>> parts.add(new_row(0, "a.jpg") | {"status": "error", "error_type": "NoFaceError"})
    >>> [r["error_type"] for r in read_parts(out, "f" * 64)]
    ['NoFaceError']
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import pyarrow.parquet as pq

from .. import errors, storage
from .rows import manifest_table

PARTS = "_manifest"
#: The manifest's schema metadata key holding the config fingerprint of the run that wrote it.
FINGERPRINT_KEY = b"portrait3d.config_sha256"


def parts_uri(output: str, fingerprint: str) -> str:
    return storage.join(output, PARTS, fingerprint[:16])


class PartWriter:
    """Finished rows into part files: one part per ``every_rows`` rows, or sooner once ``every_s``
    seconds have passed since the last part (each write is atomic)."""

    def __init__(self, output: str, fingerprint: str, every_rows: int = 1000, every_s: float = 1.0) -> None:
        self.uri = parts_uri(output, fingerprint)
        self.every_rows, self.every_s = every_rows, every_s
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.seq = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.every_rows or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.rows:
            return
        buf = io.BytesIO()
        pq.write_table(manifest_table(self.rows), buf)
        self.seq += 1
        name = f"part-{time.time_ns()}-{os.getpid()}-{self.seq:06d}.parquet"
        storage.write_bytes(storage.join(self.uri, name), buf.getvalue())
        self.rows = []


def read_parts(output: str, fingerprint: str) -> list[dict[str, Any]]:
    """Every row in the parts an earlier run with these settings left (oldest first)."""
    uri = parts_uri(output, fingerprint)
    if not storage.is_dir(uri):
        return []
    rows = []
    for part in sorted(u for u in storage.list_files(uri) if u.endswith(".parquet")):
        try:
            rows += pq.read_table(io.BytesIO(storage.read_bytes(part))).to_pylist()
        except Exception:  # a part cut short by a crash: its rows are made again
            continue
    return rows


def manifest_bytes(rows: list[dict[str, Any]], fingerprint: str) -> bytes:
    """``manifest.parquet``: the rows in input order, the settings' fingerprint in its metadata."""
    table = manifest_table(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def previous_rows(output: str, fingerprint: str) -> list[dict[str, Any]]:
    """The rows of ``OUTPUT/manifest.parquet`` when a run with these settings wrote it, else []."""
    uri = storage.join(output, "manifest.parquet")
    if not storage.exists(uri):
        return []
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except Exception:  # an unreadable old manifest: nothing is taken from it
        return []
    if (table.schema.metadata or {}).get(FINGERPRINT_KEY) != fingerprint.encode():
        return []
    return table.to_pylist()


def input_errors(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{content hash: error row}`` of the rows whose error follows from the bytes and the settings
    alone (an ``InputError`` such as ``NoFaceError``), so a rerun would find it again."""
    out = {}
    for row in rows:
        kind = getattr(errors, row.get("error_type") or "", None)
        if row.get("status") == "error" and row.get("content_hash") and isinstance(kind, type):
            if issubclass(kind, errors.InputError):
                out[row["content_hash"]] = row
    return out


def clear_parts(output: str) -> None:
    storage.delete_tree(storage.join(output, PARTS))
