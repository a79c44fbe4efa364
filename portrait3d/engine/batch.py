"""``portrait3d batch``: a whole portrait dataset through Ray Data, one manifest row per input.

    inputs -> precheck -> analysis pool -> geometry pool -> texture pool -> export pool -> rows -> manifest

The precheck (``precheck``, CPU tasks) reads, hashes and decodes every input before any pool starts:
done inputs (a complete bundle with the same settings) and bad ones become their rows at once, the
same bytes twice are made once, and when nothing is left to make no pool starts. Finished rows go to
part files as they come (``manifest``): a driver killed mid-run loses none of them. Each pool is a
``map_batches`` over warm actors (``ActorPoolStrategy``, one head per task, one task in flight per
actor) with its own resources. Assets go to storage inside the workers; rows carry URIs.
A rerun reuses every bundle made with the same settings from the same bytes (content hash).

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

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .. import storage
from ..errors import HeadTimeoutError, InputError, WorkerDiedError
from ..pipelines.config import PipelineConfig
from . import heads
from .config import EngineConfig
from .manifest import PartWriter, clear_parts, input_errors, manifest_bytes, previous_rows, read_parts
from .precheck import check_inputs, copy_result, split_duplicates
from .rows import batch_to_rows, mark_error, new_row
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
    rows: list[dict[str, Any]]


def list_inputs(spec: str) -> tuple[list[str], list[str]]:
    """``(image URIs, skipped files)`` for a folder, prefix, glob, CSV/Parquet manifest or one file.

    Folders, prefixes and globs give the files with an image suffix; other files are reported as
    skipped. A manifest names its images in a column ``input_uri``, ``uri``, ``path``, ``image`` or
    ``file``; relative paths in it are relative to the manifest's folder.
    """
    spec = str(spec)
    if spec.lower().endswith(MANIFEST_SUFFIXES) and not any(c in spec for c in "*?["):
        return _read_manifest(spec), []
    if any(c in spec for c in "*?[") or storage.is_dir(spec) or (storage.is_s3(spec) and not storage.exists(spec)):
        files = storage.list_files(spec)
        images = [u for u in files if u.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {spec}")
        return images, [u for u in files if u not in set(images)]
    if storage.exists(spec):
        return [storage.normalize(spec)], []
    raise InputError(f"input {spec} is not a folder, prefix, glob, manifest or file")


def _read_manifest(uri: str) -> list[str]:
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
    uris = []
    for v in table.column(col).to_pylist():
        if not v:
            continue
        v = str(v)
        if storage.is_s3(v) or os.path.isabs(v):
            uris.append(v)
        else:
            uris.append(f"{base}/{v}" if storage.is_s3(base) else os.path.normpath(os.path.join(base, v)))
    if not uris:
        raise InputError(f"manifest {uri} lists no inputs")
    return uris


#: Inputs per precheck task.
PRECHECK_ROWS_PER_TASK = 64


def precheck(rows: list[dict[str, Any]], output: str, config: PipelineConfig, engine: EngineConfig):
    """The precheck (``precheck.check_inputs``) as Ray Data tasks; yields the checked rows."""
    import math

    import ray

    from ..pipelines.image_io import DEFAULT_MAX_MEGAPIXELS

    kwargs = {
        "output": output,
        "fingerprint": config.fingerprint(),
        "max_bytes": int(engine.batch.max_input_mb * 2**20),
        "max_megapixels": getattr(config.stages["analysis"], "max_megapixels", DEFAULT_MAX_MEGAPIXELS),
    }
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / PRECHECK_ROWS_PER_TASK)))
    ds = ds.map_batches(check_inputs, fn_kwargs=kwargs, batch_size=None, num_cpus=0.5)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        yield from batch_to_rows(batch)


def build_dataset(rows: list[dict[str, Any]], output: str, config: PipelineConfig, engine: EngineConfig):
    """The Ray Data plan for the heads to make: one block per row, then one ``map_batches`` per pool."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    for name, worker in POOL_WORKERS.items():
        pool = engine.pools[name]
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for bounded actor-task retries yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                worker,
                fn_constructor_kwargs={"config": config, "output": output, "pool": pool, "batch": engine.batch},
                batch_size=1,
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


def run_batch(
    inputs: str | list[str],
    output: str,
    config: PipelineConfig,
    engine: EngineConfig,
    on_row: Callable[[dict[str, Any], BatchProgress], None] | None = None,
    show_ray_progress: bool = False,
) -> BatchSummary:
    """Turn every portrait in ``inputs`` (a spec for :func:`list_inputs`, or URIs) into a head bundle
    under ``output``; write the manifest.

    Needs a connected Ray session (see :func:`portrait3d.engine.cluster.connect`). The manifest is
    written even when the run is interrupted: inputs not finished are error rows then.
    """
    output = storage.check_writable(output)
    uris, skipped = (list(inputs), []) if isinstance(inputs, list) else list_inputs(inputs)
    # input errors an earlier run with these settings found: in its manifest, or in the parts of a
    # run that did not complete
    fingerprint = config.fingerprint()
    known_errors = input_errors(previous_rows(output, fingerprint) + read_parts(output, fingerprint))
    storage.write_bytes(
        storage.join(output, "batch.json"),
        json.dumps(
            {
                "inputs": inputs if isinstance(inputs, str) else f"{len(uris)} URIs",
                "count": len(uris),
                "config": config.to_dict(),
                "config_sha256": config.fingerprint(),
                "engine": engine.to_dict(),
            },
            indent=1,
        ).encode(),
    )
    configure_data_context(engine, show_ray_progress)
    progress = BatchProgress(total=len(uris))
    finished: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    interrupted: BaseException | None = None

    parts = PartWriter(output, fingerprint)

    def emit(row: dict[str, Any]) -> None:
        finished[row["index"]] = row
        parts.add(row)
        progress.add(row)
        if on_row:
            on_row(row, progress)

    try:
        pending = []
        for row in precheck([new_row(i, u) for i, u in enumerate(uris)], output, config, engine):
            if row["status"] != "pending":
                emit(row)
            elif row["content_hash"] in known_errors:
                copy_result(known_errors[row["content_hash"]], row)
                emit(row)
            else:
                pending.append(row)
        parts.flush()  # what the precheck decided is on disk before any pool starts
        to_make, same_bytes = split_duplicates(pending)
        if to_make:
            # prefetch_batches=0: with prefetching, each finished row waits for the next one to finish
            rows_out = build_dataset(to_make, output, config, engine).iter_batches(
                batch_size=1, batch_format="numpy", prefetch_batches=0
            )
            for batch in rows_out:
                for row in batch_to_rows(batch):
                    emit(row)
                    for twin in same_bytes.pop(row["content_hash"], []):
                        copy_result(row, twin)
                        emit(twin)
    except (KeyboardInterrupt, Exception) as e:  # keep what is done: write the manifest, then re-raise
        interrupted = e
    rows = list(finished.values())
    # Rows Ray dropped: their worker died on every attempt, or the run stopped before them.
    why = (
        f"not finished: the run stopped ({type(interrupted).__name__})"
        if interrupted is not None
        else f"a worker process died on this input on each of its {engine.batch.max_task_retries + 1} "
        "attempt(s) (out of memory? a crash?)"
    )
    for i, uri in enumerate(uris):
        if i not in finished:
            row = new_row(i, uri)
            timed_out = heads.find_timeout(output, uri) if engine.batch.head_timeout_s else None
            if timed_out:  # the worker ended itself, with no retry left
                mark_error(row, timed_out["pool"], HeadTimeoutError.__name__, timed_out["message"])
            else:
                mark_error(row, "", WorkerDiedError.__name__, why)
            rows.append(row)
            if interrupted is None:
                progress.add(row)
                if on_row:
                    on_row(row, progress)
    parts.flush()
    if not engine.batch.keep_work:
        storage.delete_tree(storage.join(output, "_work"))
    manifest_uri = storage.join(output, "manifest.parquet")
    storage.write_bytes(manifest_uri, manifest_bytes(rows, fingerprint))
    if interrupted is not None:
        raise interrupted
    clear_parts(output)
    return BatchSummary(
        progress=progress,
        manifest_uri=manifest_uri,
        output=output,
        skipped_files=skipped,
        elapsed_s=time.perf_counter() - t0,
        rows=sorted(rows, key=lambda r: r["index"]),
    )
