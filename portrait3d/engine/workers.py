"""Ray Data workers: callable classes that load their stage models once and then process rows.

Each worker runs its pool's step (``steps``) on one head: inputs from storage, the pool's stages
through the stage interface, the output to storage; only the URI and small metadata go into the
row. A typed error (or a bug) in one row becomes an error row; the worker goes on with the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import storage
from ..errors import CancelledError, HeadTimeoutError, Portrait3DError
from ..pipelines.config import PipelineConfig
from ..pipelines.pipeline import Portrait3D, RunContext
from . import heads, steps
from .config import BatchSettings, PoolConfig
from .rows import TIMING_COLUMNS, batch_to_rows, mark_error, rows_to_batch
from .steps import POOL_STAGES

log = logging.getLogger(__name__)


def placement() -> dict[str, Any]:
    """Where this worker runs: Ray node, process, GPUs and accelerator type."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "accelerator_ids": {k: list(v) for k, v in ctx.get_accelerator_ids().items() if v},
    }


class StageWorker:
    """Base of the pool workers. Subclasses set ``pool``, ``stages`` and implement ``process``, which
    runs the pool's stages through the stage interface with the head's :class:`RunContext`."""

    pool = ""
    stages: tuple[str, ...] = ()

    def __init__(self, config: PipelineConfig, output: str, pool: PoolConfig, batch: BatchSettings) -> None:
        import torch

        torch.set_num_threads(pool.threads())
        self.config, self.output, self.batch = config, output, batch
        self.p3d = Portrait3D(config, stages=self.stages)
        self.where = placement()
        import ray

        if ray.get_runtime_context().get_actor_id() is not None:  # a Ray actor, not a driver
            atexit.register(_skip_interpreter_teardown)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = batch_to_rows(batch)
        pending = [row for row in rows if row["status"] == "pending"]
        if len(pending) > 1 and not self.batch.head_timeout_s and self._together(pending):
            return rows_to_batch(rows)
        for row in pending:
            self._guarded(row)
        return rows_to_batch(rows)

    def _together(self, rows: list[dict[str, Any]]) -> bool:
        """Work on several heads at once where the pool can (``process_many``); False when it cannot, or
        when that failed (a typed error or a bug in one head): then they go one at a time, so that only
        the head that fails becomes an error row."""
        started = time.time()
        ctxs = [RunContext() for _ in rows]
        try:
            if not self.process_many(rows, ctxs):
                return False
        except Exception as e:
            log.warning("%d heads together failed (%s: %s); one at a time", len(rows), type(e).__name__, e)
            return False
        for row, ctx in zip(rows, ctxs, strict=True):
            self._record(row, ctx, started, heads_together=len(rows))
        return True

    def process_many(self, rows: list[dict[str, Any]], ctxs: list[RunContext]) -> bool:
        """Several heads at once; False where the pool works on one head at a time."""
        return False

    def _guarded(self, row: dict[str, Any]) -> None:
        started = time.time()
        ctx = RunContext()
        try:
            with self._time_limit(row, ctx):
                self.process(row, ctx)
        except Portrait3DError as e:
            mark_error(row, self.pool, e.kind, str(e))
        except Exception as e:  # a bug must cost one row, not the run; the traceback goes to the log
            log.error("internal error on %s:\n%s", row["input_uri"], traceback.format_exc())
            mark_error(row, self.pool, type(e).__name__, f"internal error: {e}")
        self._record(row, ctx, started)

    def _record(self, row: dict[str, Any], ctx: RunContext, started: float, **extra: Any) -> None:
        """The head's stage timings and where and when this pool worked on it, into its row."""
        for stage, seconds in ctx.timings.items():
            row[TIMING_COLUMNS[stage]] = float(seconds)
        workers = json.loads(row["workers_json"])
        workers[self.pool] = {**self.where, "started": round(started, 3), "finished": round(time.time(), 3), **extra}
        row["workers_json"] = json.dumps(workers)

    def process(self, row: dict[str, Any], ctx: RunContext) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _time_limit(self, row: dict[str, Any], ctx: RunContext) -> Iterator[None]:
        """``batch.head_timeout_s`` for this pool's work on one head.

        Past the limit the head's cancellation token is set: the stage stops at its next check and
        the head becomes a ``HeadTimeoutError`` row, with the worker and its models kept. A stage
        that does not stop within ``batch.head_timeout_grace_s`` (stuck in a native call, which
        Python cannot interrupt) gets its process ended instead, after the timeout is recorded in
        storage: Ray restarts the worker and retries the head, and the retry (or, with no retries
        left, the driver) turns the record into the same row instead of running the head again.
        """
        limit, grace = self.batch.head_timeout_s, self.batch.head_timeout_grace_s
        if not limit:
            yield
            return
        uri = row["input_uri"]
        record = heads.find_timeout(self.output, uri)
        if record is not None:
            raise HeadTimeoutError(record["message"])
        message = f"the {self.pool} pool worked on this head for more than {limit:g} s (batch.head_timeout_s)"
        finished = threading.Event()

        def end_process() -> None:
            if finished.is_set():
                return
            heads.record_timeout(self.output, uri, self.pool, message)
            log.error("%s: %s, and it did not stop; ending worker process %d", uri, message, os.getpid())
            _skip_interpreter_teardown(exit_code=1)

        def expire() -> None:
            ctx.cancel.cancel(message)
            if grace > 0:
                _daemon_timer(grace, end_process)
            else:
                end_process()

        timer = _daemon_timer(limit, expire)
        try:
            yield
        except CancelledError:
            if ctx.cancel.cancelled:
                raise HeadTimeoutError(message) from None
            raise
        finally:
            finished.set()
            timer.cancel()


def _daemon_timer(seconds: float, fn: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True
    timer.start()
    return timer


class AnalysisWorker(StageWorker):
    """Stage 1 on an input the precheck (``precheck``) hashed and found no bundle for."""

    pool, stages = "analysis", POOL_STAGES["analysis"]

    def process(self, row: dict[str, Any], ctx: RunContext) -> None:
        uri = row["input_uri"]
        data = storage.read_bytes(uri, max_bytes=int(self.batch.max_input_mb * 2**20))
        row["work_uri"] = heads.work_uri(self.output, row["content_hash"], row["face"])
        steps.run_analysis(self.p3d, data, uri, row["work_uri"], ctx, face=row["face"])


class GeometryWorker(StageWorker):
    """Stages 2-4: the head prior fitted to the portrait, then sculpted."""

    pool, stages = "geometry", POOL_STAGES["geometry"]

    def process(self, row: dict[str, Any], ctx: RunContext) -> None:
        steps.run_geometry(self.p3d, row["work_uri"], ctx)

    def process_many(self, rows: list[dict[str, Any]], ctxs: list[RunContext]) -> bool:
        steps.run_geometry_many(self.p3d, [row["work_uri"] for row in rows], ctxs)
        return True


class TextureWorker(StageWorker):
    """Stage 5: the UV texture."""

    pool, stages = "texture", POOL_STAGES["texture"]

    def process(self, row: dict[str, Any], ctx: RunContext) -> None:
        steps.run_texture(self.p3d, row["work_uri"], ctx)


class ExportWorker(StageWorker):
    """Stage 6, the bundle: ``head.glb``, ``views.png`` and, last, ``head.json``. Needs no models."""

    pool, stages = "export", POOL_STAGES["export"]

    def process(self, row: dict[str, Any], ctx: RunContext) -> None:
        ctx.timings.update({s: row[c] for s, c in TIMING_COLUMNS.items() if s != "export"})
        uri = heads.bundle_uri(self.output, row["content_hash"], row["face"])
        heads.fill_outputs(row, uri, steps.run_export(self.p3d, row["work_uri"], uri, ctx))
        if not self.batch.keep_work:
            storage.delete_tree(row["work_uri"])


def _skip_interpreter_teardown(exit_code: int = 0) -> None:
    """End a worker process without Python's teardown of torch and the stage modules.

    Ray Data lets a pool's workers exit as soon as the pool's input is exhausted, while the next pool
    is still working on the same heads. Tearing down the interpreter costs about 1 CPU-second per
    worker (measured), taken from the pools that are still working. By the time ``atexit`` runs,
    Ray has finished the actor's tasks and told the raylet the exit is intended; this handler runs
    before Ray's own (handlers run last-registered first), so it flushes what Ray's would.
    With ``exit_code=1`` it ends a worker whose head ran past its time limit: an exit Ray did not
    expect, so Ray restarts the worker and retries the head.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_code)
