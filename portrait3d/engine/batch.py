"""``portrait3d batch``: a whole portrait dataset through Ray Data, one manifest row per input.

    inputs -> precheck -> analysis pool -> geometry pool -> texture pool -> export pool -> rows -> manifest

The listing is a compact Arrow table (URI, size, mtime). Inputs an earlier run with these settings
already judged (same URI, size and mtime; ``manifest.Previous``) are settled without a read: an
input error is taken as it was, a made head is looked up by its recorded hash. The precheck
(``precheck``, CPU tasks of many rows) reads, hashes and decodes the rest before any pool starts:
done inputs (a complete bundle with the same settings) and bad ones become their rows at once, the
same bytes twice are made once, and when nothing is left to make no pool starts. The heads to make
stay in Ray's object store (one-row Arrow blocks), not in the driver. Each pool is a
``map_batches`` over warm actors (``ActorPoolStrategy``, one head per task, one task in flight per
actor) with its own resources. Finished rows go to part files as they come
(``manifest``): a driver killed mid-run loses none of them, and ``manifest.parquet`` is compacted from
them. Assets go to storage inside the workers; rows carry URIs.

Example:
    >>> summary = run_batch("photos/", "s3://bucket/heads/", build_profile_config("fast"),
    ...                     build_engine_config("fast"))                              # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .. import storage
from ..errors import HeadTimeoutError, InputError, WorkerDiedError
from ..pipelines.config import PipelineConfig
from . import heads
from .config import EngineConfig
from .manifest import PartWriter, Previous, clear_parts, compact
from .precheck import check_inputs, copy_result
from .rows import batch_to_rows, mark_error, new_row, rows_table
from .workers import AnalysisWorker, ExportWorker, GeometryWorker, StageWorker, TextureWorker

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
URI_COLUMNS = ("input_uri", "uri", "path", "image", "file")
POOL_WORKERS: dict[str, type[StageWorker]] = {
    "analysis": AnalysisWorker,
    "geometry": GeometryWorker,
    "texture": TextureWorker,
    "export": ExportWorker,
}


@dataclass
class BatchProgress:
    """What the driver knows while the dataset streams."""

    total: int
    ok: int = 0
    failed: int = 0
    reused: int = 0
    made: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def heads_per_min(self) -> float:
        """Heads made (not reused) per minute of wall time so far."""
        minutes = (time.perf_counter() - self.started) / 60
        return self.made / minutes if minutes > 0 else 0.0

    def add(self, row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            self.ok += 1
            self.reused += bool(row["reused"])
            self.made += not row["reused"]
        else:
            self.failed += 1


@dataclass
class BatchSummary:
    progress: BatchProgress
    manifest_uri: str
    output: str
    skipped_files: list[str]
    elapsed_s: float

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The manifest's rows, in input order (read from storage)."""
        return pq.read_table(io.BytesIO(storage.read_bytes(self.manifest_uri))).to_pylist()


LISTING_SCHEMA = pa.schema(
    [("input_uri", pa.string()), ("input_size", pa.int64()), ("input_mtime_ns", pa.int64()), ("face", pa.string())]
)
#: A manifest's optional column: which face of each photo to make a head of (as ``analysis.face``).
FACE_COLUMN = "face"


def list_inputs(spec: str) -> tuple[list[str], list[str]]:
    """``(image URIs, skipped files)`` for a folder, prefix, glob, CSV/Parquet manifest or one file.

    Folders, prefixes and globs give the files with an image suffix; other files are reported as
    skipped. A manifest names its images in a column ``input_uri``, ``uri``, ``path``, ``image`` or
    ``file``; relative paths in it are relative to the manifest's folder. Its optional ``face`` column
    picks a face per photo (``clearest``, ``largest``, ``2`` ..., as ``analysis.face``; empty: the run's).
    """
    listing, skipped = list_input_table(spec)
    return listing.column("input_uri").to_pylist(), skipped


def list_input_table(spec: str | list[str]) -> tuple[pa.Table, list[str]]:
    """:func:`list_inputs` as an Arrow table (``LISTING_SCHEMA``) with each file's size and mtime from
    the listing (-1 for inputs named by a manifest or a list, which the listing does not stat) and the
    face a manifest picks for it ('' for the run's ``analysis.face``)."""
    if isinstance(spec, list):
        return _listing([(str(u), -1, -1) for u in spec]), []
    spec = str(spec)
    if spec.lower().endswith(MANIFEST_SUFFIXES) and not any(c in spec for c in "*?["):
        return _listing([(u, -1, -1, face) for u, face in _read_manifest(spec)]), []
    if any(c in spec for c in "*?[") or storage.is_dir(spec) or (storage.is_s3(spec) and not storage.exists(spec)):
        files = storage.list_file_stats(spec)
        images = [f for f in files if f[0].lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {spec}")
        return _listing(images), [f[0] for f in files if not f[0].lower().endswith(IMAGE_SUFFIXES)]
    if storage.exists(spec):
        return _listing([(storage.normalize(spec), -1, -1)]), []
    raise InputError(f"input {spec} is not a folder, prefix, glob, manifest or file")


def _listing(files: list[tuple[str, int, int]] | list[tuple[str, int, int, str]]) -> pa.Table:
    """``(URI, size, mtime[, face])`` per input -> a ``LISTING_SCHEMA`` table."""
    rows = [(*f, "")[:4] for f in files]
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    arrays = [pa.array(c, type=f.type) for c, f in zip(cols, LISTING_SCHEMA, strict=True)]
    return pa.table(arrays, schema=LISTING_SCHEMA)


def face_cell(value: object) -> str:
    """A manifest's face cell as ``analysis.face`` spells it: ``2``, ``2.0`` and ``" 2 "`` -> ``'2'``,
    ``'Largest'`` -> ``'largest'``; empty, null or NaN -> ``''`` (the run's setting). Other values pass
    as they are: the precheck gives their rows a ConfigError.

    Example:
        >>> [face_cell(v) for v in (2, 2.0, " Central ", None, float("nan"), "", "widest")]
        ['2', '2', 'central', '', '', '', 'widest']
    """
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def _read_manifest(uri: str) -> list[tuple[str, str]]:
    data = storage.read_bytes(uri)
    try:
        table = (
            pq.read_table(io.BytesIO(data)) if not uri.lower().endswith(".csv") else pacsv.read_csv(io.BytesIO(data))
        )
    except Exception as e:  # pyarrow raises several types for malformed files
        raise InputError(f"cannot read manifest {uri}: {e}") from None
    col = next((c for c in URI_COLUMNS if c in table.column_names), None)
    if col is None:
        raise InputError(
            f"manifest {uri} needs a column named one of {', '.join(URI_COLUMNS)}; "
            f"it has {', '.join(table.column_names)}"
        )
    base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else os.path.dirname(storage.normalize(uri))
    faces = table.column(FACE_COLUMN).to_pylist() if FACE_COLUMN in table.column_names else [None] * table.num_rows
    uris = []
    for v, face in zip(table.column(col).to_pylist(), faces, strict=True):
        if not v:
            continue
        v = str(v)
        if not (storage.is_s3(v) or os.path.isabs(v)):
            v = f"{base}/{v}" if storage.is_s3(base) else os.path.normpath(os.path.join(base, v))
        uris.append((v, face_cell(face)))
    if not uris:
        raise InputError(f"manifest {uri} lists no inputs")
    return uris


#: Inputs per precheck task.
PRECHECK_ROWS_PER_TASK = 64


def precheck(blocks: list[Any], output: str, config: PipelineConfig, engine: EngineConfig):
    """The precheck (``precheck.check_inputs``) as Ray Data tasks over ``blocks`` (object refs of
    Arrow tables of rows); yields the checked rows a block at a time."""
    import ray

    from ..pipelines.image_io import DEFAULT_MAX_MEGAPIXELS

    kwargs = {
        "output": output,
        "fingerprint": config.fingerprint(),
        "max_bytes": int(engine.batch.max_input_mb * 2**20),
        "max_megapixels": getattr(config.stages["analysis"], "max_megapixels", DEFAULT_MAX_MEGAPIXELS),
    }
    ds = ray.data.from_arrow_refs(blocks).map_batches(check_inputs, fn_kwargs=kwargs, batch_size=None, num_cpus=0.5)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
        yield table.to_pylist()


def build_dataset(blocks: list[Any], output: str, config: PipelineConfig, engine: EngineConfig):
    """The Ray Data plan for the heads to make (``blocks``: object refs of one-row Arrow tables): one
    ``map_batches`` per pool."""
    import ray

    ds = ray.data.from_arrow_refs(blocks)
    for name, worker in POOL_WORKERS.items():
        pool = engine.pools[name]
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for bounded actor-task retries yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                worker,
                fn_constructor_kwargs={"config": config, "output": output, "pool": pool, "batch": engine.batch},
                batch_size=pool.heads_per_worker,
                compute=ray.data.ActorPoolStrategy(
                    min_size=pool.warm_size(), max_size=pool.max_size, max_tasks_in_flight_per_actor=1
                ),
                max_restarts=-1,  # a worker holds nothing but its models: always bring it back
                max_task_retries=engine.batch.max_task_retries,
                **pool.remote_args(),
            )
    return ds


def configure_data_context(engine: EngineConfig, show_ray_progress: bool = False) -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_no_progress_timeout_s = engine.batch.no_progress_timeout_s
    # A block fails only when a worker died on every retry of its one head (a caught error is an
    # error row); dropping it lets the run finish, and the driver writes that input's error row.
    ctx.max_errored_blocks = -1
    ctx.wait_for_min_actors_s = engine.batch.wait_for_workers_s
    ctx.enable_progress_bars = show_ray_progress
    ctx.print_on_execution_start = show_ray_progress
    ctx.execution_options.preserve_order = False


class RowSink:
    """Where the driver's finished rows go: the run's part files, the progress, ``on_row``; it
    remembers which inputs are finished (one bit each) and the heads to make (object refs)."""

    def __init__(self, parts: PartWriter, total: int, on_row: Callable[[dict[str, Any], BatchProgress], None] | None):
        self.parts, self.on_row = parts, on_row
        self.progress = BatchProgress(total=total)
        self.finished = np.zeros(total, dtype=bool)
        self.seen: set[str] = set()  # head keys (content hash, face) sent to the pools
        self.twins: dict[str, list[dict[str, Any]]] = {}  # later rows with the same bytes and face
        self.to_make: list[Any] = []

    def emit(self, row: dict[str, Any]) -> None:
        self.finished[row["index"]] = True
        self.parts.add(row)
        self.progress.add(row)
        if self.on_row:
            self.on_row(row, self.progress)

    def checked(self, rows: list[dict[str, Any]], previous: Previous) -> None:
        """Rows back from the precheck: final ones are emitted, the rest kept to make (once per hash)."""
        import ray

        make = []
        for row in rows:
            if row["status"] == "pending":
                previous.mark_known_error(row)  # known bytes under another URI
            if row["status"] != "pending":
                self.emit(row)
                continue
            key = heads.head_key(row["content_hash"], row["face"])
            if key in self.seen:
                self.twins.setdefault(key, []).append(row)
            else:
                self.seen.add(key)
                make.append(row)
        # one block per head, so that the pools share the heads out one at a time (Ray Data's streaming
        # repartition to one row per block needs a free CPU, which the warm pools hold)
        self.to_make.extend(ray.put(rows_table([row])) for row in make)

    def made(self, row: dict[str, Any]) -> None:
        self.emit(row)
        for twin in self.twins.pop(heads.head_key(row["content_hash"], row["face"]), []):
            copy_result(row, twin)
            self.emit(twin)


def settle_listed(listing: pa.Table, previous: Previous, sink: RowSink, chunk: int = PRECHECK_ROWS_PER_TASK):
    """Rows for the listing, ``chunk`` at a time: inputs with a known input error are emitted at once;
    the others (with a known hash where there is one) go to the precheck as object refs."""
    import ray

    blocks = []
    for start in range(0, listing.num_rows, chunk):
        part = listing.slice(start, chunk)
        rows = []
        columns = (part.column(n).to_pylist() for n in LISTING_SCHEMA.names)
        for i, (uri, size, mtime, face) in enumerate(zip(*columns, strict=True)):
            row = new_row(start + i, uri, size, mtime, face)
            row["content_hash"] = previous.hashes.get((uri, size, mtime), "") if size >= 0 else ""
            if row["content_hash"] and previous.mark_known_error(row):
                sink.emit(row)
            else:
                rows.append(row)
        if rows:
            blocks.append(ray.put(rows_table(rows)))
    return blocks


def run_batch(
    inputs: str | list[str] | pa.Table,
    output: str,
    config: PipelineConfig,
    engine: EngineConfig,
    on_row: Callable[[dict[str, Any], BatchProgress], None] | None = None,
    show_ray_progress: bool = False,
) -> BatchSummary:
    """Turn every portrait in ``inputs`` (a spec for :func:`list_inputs`, URIs, or a table from
    :func:`list_input_table`) into a head bundle under ``output``; write the manifest.

    Needs a connected Ray session (see :func:`portrait3d.engine.cluster.connect`). The manifest is
    written even when the run is interrupted: inputs not finished are error rows then.
    """
    output = storage.check_writable(output)
    listing, skipped = (inputs, []) if isinstance(inputs, pa.Table) else list_input_table(inputs)
    fingerprint = config.fingerprint()
    previous = Previous.load(output, fingerprint) if engine.batch.reuse_by_stat else Previous()
    storage.write_bytes(
        storage.join(output, "batch.json"),
        json.dumps(
            {
                "inputs": inputs if isinstance(inputs, str) else f"{listing.num_rows} URIs",
                "count": listing.num_rows,
                "config": config.to_dict(),
                "config_sha256": fingerprint,
                "engine": engine.to_dict(),
            },
            indent=1,
        ).encode(),
    )
    configure_data_context(engine, show_ray_progress)
    sink = RowSink(PartWriter(output, fingerprint), listing.num_rows, on_row)
    t0 = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        blocks = settle_listed(listing, previous, sink)
        if blocks:
            for rows in precheck(blocks, output, config, engine):
                sink.checked(rows, previous)
        sink.parts.flush()  # what the precheck decided is on disk before any pool starts
        if sink.to_make:
            # prefetch_batches=0: with prefetching, each finished row waits for the next one to finish
            rows_out = build_dataset(sink.to_make, output, config, engine).iter_batches(
                batch_size=1, batch_format="numpy", prefetch_batches=0
            )
            for batch in rows_out:
                for row in batch_to_rows(batch):
                    sink.made(row)
    except (KeyboardInterrupt, Exception) as e:  # keep what is done: write the manifest, then re-raise
        interrupted = e
    write_unfinished(listing, sink, output, engine, interrupted)
    if not engine.batch.keep_work:
        storage.delete_tree(storage.join(output, "_work"))
    manifest_uri = storage.join(output, "manifest.parquet")
    compact(sink.parts, fingerprint, manifest_uri)
    if interrupted is not None:
        raise interrupted
    clear_parts(output, fingerprint)
    return BatchSummary(
        progress=sink.progress,
        manifest_uri=manifest_uri,
        output=output,
        skipped_files=skipped,
        elapsed_s=time.perf_counter() - t0,
    )


def write_unfinished(
    listing: pa.Table, sink: RowSink, output: str, engine: EngineConfig, interrupted: BaseException | None
) -> None:
    """An error row for each input without one: Ray dropped it (its worker died on every attempt, or
    it ran past its time limit), or the run stopped before it."""
    why = (
        f"not finished: the run stopped ({type(interrupted).__name__})"
        if interrupted is not None
        else f"a worker process died on this input on each of its {engine.batch.max_task_retries + 1} "
        "attempt(s) (out of memory? a crash?)"
    )
    uris, sizes, mtimes, faces = (listing.column(n) for n in LISTING_SCHEMA.names)
    for i in map(int, np.flatnonzero(~sink.finished)):
        uri = uris[i].as_py()
        row = new_row(i, uri, sizes[i].as_py(), mtimes[i].as_py(), faces[i].as_py())
        timed_out = heads.find_timeout(output, uri) if engine.batch.head_timeout_s else None
        if timed_out:  # the worker ended itself, with no retry left
            mark_error(row, timed_out["pool"], HeadTimeoutError.__name__, timed_out["message"])
        else:
            mark_error(row, "", WorkerDiedError.__name__, why)
        if interrupted is None:
            sink.emit(row)
        else:
            sink.parts.add(row)
