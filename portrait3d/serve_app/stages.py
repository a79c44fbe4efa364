"""The service's per-stage deployments: one Serve deployment per worker pool (analysis, geometry,
texture, export), each with its own replicas, resources and autoscaling, running the same pool steps
as ``portrait3d batch`` (``engine.steps``) through the stage interface.

Only URIs and small metadata pass through the handles: a stage reads its inputs from the job's work
folder and writes its output there. While a stage runs, :class:`JobChannel` writes its progress into
the job store and watches the job's cancel flag, which sets the stage's cancellation token.

Example:
    >>> from portrait3d.serve_app.stages import StageDeployment       # doctest: +SKIP
    >>> geometry = StageDeployment.options(name="geometry").bind("geometry", settings.to_args())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from ray import serve

from .. import storage
from ..engine import steps
from ..engine.steps import POOL_STAGES
from ..errors import CancelledError
from ..pipelines.config import PipelineConfig, build_profile_config
from ..pipelines.pipeline import RunContext, StageCache
from ..pipelines.stage import CancelToken
from .jobs import JobStore
from .settings import serve_settings

CANCELLED_BY_CLIENT = "cancelled by the client"


class JobChannel:
    """A stage's link to its job's record: progress in (at most every ``poll_s``), the cancel flag out
    (checked by a watcher thread every ``poll_s``, so a stage inside a long native call is reached too)."""

    def __init__(self, store: JobStore, job_id: str, stage: str, poll_s: float) -> None:
        self.store, self.job_id, self.stage, self.poll_s = store, job_id, stage, poll_s
        self.token = CancelToken()
        self._last = 0.0
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def context(self, timings: dict[str, float] | None = None) -> RunContext:
        return RunContext(progress=self.progress, cancel=self.token, timings=dict(timings or {}))

    def progress(self, stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self.poll_s and fraction < 1:
            return
        self._last = now
        if self.store.progress(self.job_id, stage, fraction, message):
            self.token.cancel(CANCELLED_BY_CLIENT)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.store.cancel_requested(self.job_id):
                self.token.cancel(CANCELLED_BY_CLIENT)
                return

    def __enter__(self) -> JobChannel:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watcher.join()


def pool_timings(pool: str, ctx: RunContext) -> dict[str, float]:
    """The timings of ``pool``'s own stages in ``ctx`` (it also holds the earlier pools')."""
    return {k: v for k, v in ctx.timings.items() if k in POOL_STAGES[pool]}


@serve.deployment(max_ongoing_requests=1, health_check_period_s=10)
class StageDeployment:
    """One pool's stages, warm. ``run`` does the pool's work on one job; the analysis pool's
    ``analyze`` runs on an upload before its job exists (its errors are the request's 4xx); the
    geometry pool's ``run_together`` gathers up to ``heads`` concurrent jobs (``heads_per_worker``)
    and sculpts them at once."""

    def __init__(self, pool: str, args: dict[str, Any], threads: int = 1, heads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        if pool not in POOL_STAGES:
            raise ValueError(f"unknown pool {pool!r}")
        self.pool = pool
        self.settings = serve_settings(args)
        self._together.set_max_batch_size(max(1, int(heads)))
        self._together.set_batch_wait_timeout_s(self.settings.together_wait_s)
        s = self.settings
        self.store = JobStore(s.store_url())
        self.cache = StageCache()
        default = build_profile_config(
            s.profile, list(s.settings), models=s.models or None, allow_pickle=s.allow_pickle
        )
        self.cache.driver(default, POOL_STAGES[pool])  # the models load now, not in the first job

    def ready(self) -> bool:
        return True

    def analyze(self, data: bytes, name: str, work_uri: str, config: PipelineConfig) -> dict[str, Any]:
        """Stage 1 on an upload: its timings and notes (typed errors propagate to the request)."""
        p3d = self.cache.driver(config, POOL_STAGES["analysis"])
        ctx = RunContext()
        analysis = steps.run_analysis(p3d, data, name, work_uri, ctx)
        return {"timings": ctx.timings, "notes": list(analysis.notes), "face_score": float(analysis.face_score)}

    def run(
        self, job_id: str, config: PipelineConfig, work_uri: str, bundle_uri: str, timings: dict[str, float]
    ) -> dict[str, Any]:
        """This pool's work on job ``job_id``; returns its timings and, from export, the files' sizes and
        SHA-256 (the ETags). Work already in storage is not done again."""
        p3d = self.cache.driver(config, POOL_STAGES[self.pool])
        done = (
            steps.bundle_done(bundle_uri, config.fingerprint())
            if self.pool == "export"
            else steps.pool_done(self.pool, work_uri)
        )
        result: dict[str, Any] = {"timings": {}, "skipped": done}
        if not done:
            if self.store.stage_started(job_id, self.pool):
                raise CancelledError(CANCELLED_BY_CLIENT)
            with JobChannel(self.store, job_id, self.pool, self.settings.poll_s) as channel:
                ctx = channel.context(timings)
                if self.pool == "geometry":
                    steps.run_geometry(p3d, work_uri, ctx)
                elif self.pool == "texture":
                    steps.run_texture(p3d, work_uri, ctx)
                else:
                    steps.run_export(p3d, work_uri, bundle_uri, ctx)
            result["timings"] = pool_timings(self.pool, ctx)
        if self.pool == "export":
            result["files"] = {
                name: {
                    "bytes": storage.size(storage.join(bundle_uri, name)),
                    "sha256": storage.sha256(storage.join(bundle_uri, name)),
                }
                for name in steps.BUNDLE_FILES
            }
        return result

    async def run_together(
        self, job_id: str, config: PipelineConfig, work_uri: str, bundle_uri: str, timings: dict[str, float]
    ) -> dict[str, Any]:
        """``run`` of the geometry pool, gathered with the other jobs that arrive within
        ``together_wait_s`` (up to ``heads``) into one ``sculpt_many``."""
        out = await self._together((job_id, config, work_uri, bundle_uri, timings))
        if isinstance(out, BaseException):
            raise out
        return out

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.5)
    async def _together(self, items: list[tuple]) -> list[Any]:
        return await asyncio.to_thread(self._geometry_many, items)

    def _geometry_many(self, items: list[tuple]) -> list[Any]:
        """Each job's ``run`` result, or the error its head alone raised: jobs with the same settings go
        through the geometry step together; if that fails they go one at a time (so that only the job
        whose head fails gets the error)."""
        results: list[Any] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (job_id, config, work_uri, _, _) in enumerate(items):
            if steps.pool_done("geometry", work_uri):
                results[i] = {"timings": {}, "skipped": True}
            elif self.store.stage_started(job_id, "geometry"):
                results[i] = CancelledError(CANCELLED_BY_CLIENT)
            else:
                groups.setdefault(config.fingerprint(), []).append(i)
        for group in groups.values():
            p3d = self.cache.driver(items[group[0]][1], POOL_STAGES["geometry"])
            try:
                with contextlib.ExitStack() as stack:
                    channels = [
                        stack.enter_context(JobChannel(self.store, items[i][0], "geometry", self.settings.poll_s))
                        for i in group
                    ]
                    ctxs = [ch.context(items[i][4]) for ch, i in zip(channels, group, strict=True)]
                    steps.run_geometry_many(p3d, [items[i][2] for i in group], ctxs)
                for i, ctx in zip(group, ctxs, strict=True):
                    results[i] = {"timings": pool_timings("geometry", ctx), "skipped": False}
            except Exception:
                for i in group:
                    try:
                        results[i] = self.run(*items[i])
                    except Exception as e:
                        results[i] = e
        return results
