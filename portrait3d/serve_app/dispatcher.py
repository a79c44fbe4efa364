"""The dispatcher: claims queued jobs from the job store and drives each through the stage
deployments (geometry, texture, export) by their DeploymentHandles, one stage after another.

Every ingress replica runs one. It holds a lease on each job it drives and renews it every third of
``lease_s``; a job whose dispatcher died is claimed by another (or the restarted one) once the lease
lapses, and goes on from its last finished stage. A stage replica that dies in the middle of a stage
costs an attempt and the stage is called again (Serve replaces the replica). Past ``max_attempts``
the job fails. A job's cancel is seen by its stage (through the store) or, between stages, here.
On ``done`` or ``failed`` the job's webhook, if any, is called.

Example:
    >>> d = Dispatcher(store, handles, settings, config_of)   # doctest: +SKIP
    >>> asyncio.get_running_loop().create_task(d.run())        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import CancelledError, Portrait3DError, WorkerDiedError
from ..pipelines.config import PipelineConfig
from .jobs import CANCELLED, DONE, FAILED, Job, JobStore
from .settings import ServeSettings

log = logging.getLogger(__name__)

#: The stages a dispatcher drives, in order (analysis runs when the job is submitted).
DRIVEN = ("geometry", "texture", "export")


def typed_error(e: BaseException) -> Portrait3DError | None:
    """The project's typed error inside ``e`` (Ray wraps a replica's exception; its ``cause`` is the
    original), or None for anything else."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, Portrait3DError):
        return cause
    return e if isinstance(e, Portrait3DError) else None


def replica_died(e: BaseException) -> bool:
    """Whether ``e`` says the stage replica died (a retry on a new replica may succeed)."""
    from ray import exceptions as rex

    return isinstance(e, (rex.RayActorError, rex.WorkerCrashedError, rex.ActorUnavailableError))


class Dispatcher:
    """Drives jobs through ``handles`` (pool name -> a handle with ``run``); see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        handles: Mapping[str, Any],
        settings: ServeSettings,
        config_of: Callable[[Job], PipelineConfig],
        paths_of: Callable[[Job], tuple[str, str]],
        together: tuple[str, ...] = (),
    ) -> None:
        """``together``: pools whose jobs go through ``run_together`` (gathered into one call)."""
        self.store, self.handles, self.settings = store, handles, settings
        self.together = together
        self.config_of, self.paths_of = config_of, paths_of
        self.owner = f"dispatcher-{secrets.token_hex(6)}"
        self.driving: dict[str, asyncio.Task] = {}
        self._stopping = False

    async def run(self) -> None:
        """Claim and drive jobs until :meth:`stop`."""
        s = self.settings
        last_renew = 0.0
        while not self._stopping:
            try:
                if time.monotonic() - last_renew > s.lease_s / 3:
                    await asyncio.to_thread(self.store.renew, self.owner, list(self.driving), s.lease_s)
                    last_renew = time.monotonic()
                free = s.dispatch_in_flight - len(self.driving)
                if free > 0:
                    for job in await asyncio.to_thread(self.store.claim, self.owner, s.lease_s, free):
                        self.driving[job.id] = asyncio.get_running_loop().create_task(self._drive(job))
            except Exception:  # the store may be briefly unreachable: try again next round
                log.exception("dispatcher round failed")
            await asyncio.sleep(s.poll_s)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self.driving.values()):
            task.cancel()

    async def _drive(self, job: Job) -> None:
        try:
            await self._stages(job)
        except asyncio.CancelledError:  # this replica is shutting down: another dispatcher takes over
            await asyncio.to_thread(self.store.release, self.owner, job.id)
            raise
        except Exception as e:
            await self._fail(job.id, e)
        finally:
            self.driving.pop(job.id, None)

    async def _stages(self, job: Job) -> None:
        s = self.settings
        if job.cancel_requested:
            await self._finish(job.id, CANCELLED, CancelledError("cancelled by the client"))
            return
        if job.attempts > s.max_attempts:
            raise WorkerDiedError(
                f"the job was interrupted {job.attempts - 1} times (its dispatcher or a stage "
                f"replica died); it ran out of attempts (serve.max_attempts={s.max_attempts})"
            )
        config = self.config_of(job)
        work_uri, bundle_uri = self.paths_of(job)
        for pool in DRIVEN:
            if pool in job.done_stages:
                continue
            out = await self._call(job, pool, config, work_uri, bundle_uri)
            job = await asyncio.to_thread(self.store.stage_done, job.id, pool, out["timings"], out.get("files"))
            if job.terminal:
                return
        await self._finish(job.id, DONE)

    async def _call(
        self, job: Job, pool: str, config: PipelineConfig, work_uri: str, bundle_uri: str
    ) -> dict[str, Any]:
        attempts = job.attempts
        while True:
            try:
                method = self.handles[pool].run_together if pool in self.together else self.handles[pool].run
                return await method.remote(job.id, config, work_uri, bundle_uri, dict(job.timings))
            except Exception as e:
                if not replica_died(e):
                    raise
                attempts += 1
                log.warning("job %s: the %s replica died (%s); attempt %d", job.id, pool, type(e).__name__, attempts)
                if attempts > self.settings.max_attempts:
                    raise WorkerDiedError(
                        f"a {pool} replica died on this job on each of its {attempts} attempts "
                        f"(out of memory? a crash?)"
                    ) from None
                await asyncio.to_thread(self.store.count_attempt, job.id)
                await asyncio.sleep(self.settings.poll_s)

    async def _fail(self, job_id: str, e: BaseException) -> None:
        err = typed_error(e)
        if isinstance(err, CancelledError):
            await self._finish(job_id, CANCELLED, err)
        elif err is not None:
            await self._finish(job_id, FAILED, err)
        else:
            log.error("job %s: internal error", job_id, exc_info=e)
            await self._finish(job_id, FAILED, None, type(e).__name__, f"internal error: {e}")

    async def _finish(
        self, job_id: str, status: str, err: Portrait3DError | None = None, kind: str = "", message: str = ""
    ) -> None:
        job = await asyncio.to_thread(
            self.store.finish, job_id, status, err.kind if err else kind, str(err) if err else message
        )
        if status in (DONE, FAILED) and job.spec.get("options", {}).get("webhook"):
            await self._webhook(job)

    async def _webhook(self, job: Job, tries: int = 3) -> None:
        url = job.spec["options"]["webhook"]
        if urlsplit(url).hostname not in self.settings.webhook_hosts:
            return  # checked at submit; the setting may have changed since
        body = json.dumps(
            {"id": job.id, "status": job.status, "error_type": job.error_type, "error_message": job.error_message}
        ).encode()
        for i in range(tries):
            try:
                await asyncio.to_thread(_post, url, body)
                return
            except OSError as e:
                log.warning("job %s: webhook %s failed (%s)", job.id, url, e)
                await asyncio.sleep(2**i)


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (http(s) to an allowed host, checked above)
        r.read()
