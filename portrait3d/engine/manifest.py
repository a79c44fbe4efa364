"""A batch run's rows on disk as they finish: Parquet part files under
``OUTPUT/_manifest/<config>/<run>/``, so a driver that dies mid-run leaves its finished rows behind.
The final ``manifest.parquet`` is compacted from the run's parts (it records the settings'
fingerprint in its metadata); then the parts go.

The next run with the same settings learns from the previous manifest and from the parts of runs that
did not complete (:class:`Previous`): an input listed with the same URI, size and modification time
has the same bytes (as ``make`` and ``rsync`` assume), so its input error is taken as it was and its
bundle is looked up by the recorded hash without reading the input again.

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
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import errors, storage
from .rows import MANIFEST_SCHEMA, manifest_table

PARTS = "_manifest"
#: The manifest's schema metadata key holding the config fingerprint of the run that wrote it.
FINGERPRINT_KEY = b"portrait3d.config_sha256"


def parts_uri(output: str, fingerprint: str) -> str:
    return storage.join(output, PARTS, fingerprint[:16])


class PartWriter:
    """Finished rows into part files of one run (``uri``): one part per ``every_rows`` rows, and no row
    waits more than about ``every_s`` seconds for its part, however long the next row takes (a timer
    thread writes what is pending; each write is atomic)."""

    def __init__(self, output: str, fingerprint: str, every_rows: int = 1000, every_s: float = 1.0) -> None:
        self.uri = storage.join(parts_uri(output, fingerprint), f"run-{time.time_ns()}-{os.getpid()}")
        self.every_rows, self.every_s = every_rows, every_s
        self.rows: list[dict[str, Any]] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows.append(row)
            full = len(self.rows) >= self.every_rows
            if not full and self.timer is None:
                self.timer = threading.Timer(self.every_s, self.flush)
                self.timer.daemon = True
                self.timer.start()
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if self.timer is not None and self.timer is not threading.current_thread():
                self.timer.cancel()
            self.timer = None
            if not self.rows:
                return
            buf = io.BytesIO()
            pq.write_table(manifest_table(self.rows), buf)
            self.seq += 1
            name = f"part-{time.time_ns()}-{os.getpid()}-{self.seq:06d}.parquet"
            storage.write_bytes(storage.join(self.uri, name), buf.getvalue())
            self.rows = []


def read_parts(output: str, fingerprint: str) -> list[dict[str, Any]]:
    """Every row in the parts earlier runs with these settings left (oldest first)."""
    return [row for table in _part_tables(parts_uri(output, fingerprint)) for row in table.to_pylist()]


def _part_tables(uri: str) -> list[pa.Table]:
    if not storage.is_dir(uri):
        return []
    tables = []
    for part in sorted(u for u in storage.list_files(uri) if u.endswith(".parquet")):
        try:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(part))))
        except Exception:  # a part cut short by a crash: its rows are made again
            continue
    return tables


def compact(parts: PartWriter, fingerprint: str, manifest_uri: str) -> None:
    """Write ``manifest.parquet`` from the run's part files: every row in input order."""
    parts.flush()
    tables = [t.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA) for t in _part_tables(parts.uri)]
    table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    table = table.sort_by("index").replace_schema_metadata({FINGERPRINT_KEY: fingerprint.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(manifest_uri, buf.getvalue())


def previous_table(output: str, fingerprint: str) -> pa.Table | None:
    """``OUTPUT/manifest.parquet`` when a run with these settings wrote it, else None."""
    uri = storage.join(output, "manifest.parquet")
    if not storage.exists(uri):
        return None
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except Exception:  # an unreadable old manifest: nothing is taken from it
        return None
    return table if (table.schema.metadata or {}).get(FINGERPRINT_KEY) == fingerprint.encode() else None


def is_input_error(error_type: str | None) -> bool:
    """Whether an error follows from the bytes and the settings alone (an ``InputError`` such as
    ``NoFaceError``), so that a rerun would find it again."""
    kind = getattr(errors, error_type or "", None)
    return isinstance(kind, type) and issubclass(kind, errors.InputError)


#: ``(URI, size, mtime_ns)`` of a listed input.
Stat = tuple[str, int, int]


@dataclass
class Previous:
    """What earlier runs with these settings found, kept small: ``hashes`` maps an input's
    ``(URI, size, mtime_ns)`` to its content hash (for inputs that were made, or failed with an input
    error); ``errors`` maps a ``(content hash, face)`` (the row's face choice) to its input error
    ``(type, message, stage)``."""

    hashes: dict[Stat, str] = field(default_factory=dict)
    errors: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, output: str, fingerprint: str) -> Previous:
        prev = cls()
        manifest = previous_table(output, fingerprint)
        for table in [*([manifest] if manifest is not None else []), *_part_tables(parts_uri(output, fingerprint))]:
            prev.add(table)
        return prev

    def add(self, table: pa.Table) -> None:
        names = ("input_uri", "input_size", "input_mtime_ns", "content_hash", "status", "error_type")
        names += ("error_message", "error_stage")
        if not set(names) <= set(table.column_names):  # a manifest from before these columns
            return
        cols = [table.column(n).to_pylist() for n in names]
        faces = table.column("face").to_pylist() if "face" in table.column_names else [""] * table.num_rows
        for uri, size, mtime, digest, status, kind, message, stage, face in zip(*cols, faces, strict=True):
            if not digest:
                continue
            if status == "error" and is_input_error(kind):
                self.errors[(digest, face or "")] = (kind, message, stage)
            elif status != "ok":
                continue
            if size is not None and size >= 0:
                self.hashes[(uri, size, mtime)] = digest

    def mark_known_error(self, row: dict[str, Any]) -> bool:
        """Give ``row`` the input error recorded for its content hash and face; returns whether there was one."""
        known = self.errors.get((row["content_hash"], row["face"]))
        if known is None:
            return False
        kind, message, stage = known
        row.update(status="error", error_type=kind, error_message=message, error_stage=stage)
        return True


def clear_parts(output: str, fingerprint: str) -> None:
    """Remove the parts of every run with these settings (the manifest has their rows now)."""
    storage.delete_tree(parts_uri(output, fingerprint))
