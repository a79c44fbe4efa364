"""The HTTP API (FastAPI, the ingress deployment of the Serve app), versioned under ``/v1``; OpenAPI
at ``/docs``; the web page at ``/``.

- ``POST /v1/heads``: a multipart upload (``image``, and ``options`` as JSON or the fields
  ``profile``, ``seed``, ``caption``, ``settings``, ``webhook``) or JSON naming an ``input`` under one
  of the service's input roots. The photo is checked (size, type by its bytes, full decode) and
  analysed before the job exists, so a bad photo is the request's 4xx; then ``202`` with the job's
  status and ``Location``.
- ``GET /v1/heads/{id}`` status; ``GET /v1/heads/{id}/events`` the same as server-sent events, as it
  changes; ``GET /v1/heads/{id}/{head.glb|head.json|views.png}`` the files, with ETags;
  ``DELETE /v1/heads/{id}`` cancels; ``GET /v1/heads`` lists, newest first.
- ``GET /healthz`` (the process answers) and ``GET /readyz`` (every stage's models are loaded and the
  job store answers).

Every error is JSON, ``{"error": {"type", "message", "status"}}``, with the typed error's status
(``errors.Portrait3DError.http_status``).
"""

# No ``from __future__ import annotations`` here: Serve serializes the ingress class by value, and
# FastAPI must find the routes' parameter types as objects, not as names to look up.
import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, storage
from ..errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ImageReadError,
    ImageTooLargeError,
    InputError,
    JobNotFoundError,
    JobStateError,
    NotAnImageError,
    Portrait3DError,
    StorageError,
    TooManyJobsError,
)
from ..pipelines.config import PipelineConfig, build_profile_config
from ..pipelines.image_io import load_image
from ..pipelines.outputs import BUNDLE_FILES
from .dispatcher import Dispatcher, typed_error
from .jobs import QUEUED, Job, JobStore, check_job_id, new_job_id
from .settings import ServeSettings, serve_settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {"head.glb": "model/gltf-binary", "head.json": "application/json", "views.png": "image/png"}
# Settings a request may not change: they name files (model roots, encoders) or choose hardware.
SERVER_SETTINGS = ("models", "allow_pickle", "device", "half", "rasterizer", "identity")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")

api = FastAPI(
    title="portrait3d",
    version=__version__,
    docs_url="/docs",
    openapi_url="/openapi.json",
    description="One portrait photo in, a textured 360-degree 3D head (glTF) out, as asynchronous jobs.",
)
api.mount("/static", StaticFiles(directory=STATIC), name="static")


class HeadOptions(BaseModel):
    """What a request may choose for its head."""

    model_config = ConfigDict(extra="forbid")
    profile: str | None = Field(None, description="must be the profile this service runs (default: it)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the same seed and photo give the same head")
    caption: str | None = Field(None, max_length=500, description="text describing the portrait")
    settings: list[str] | dict[str, dict[str, Any]] = Field(
        default_factory=list, description="stage.field=value overrides, or {stage: {field: value}}"
    )
    webhook: str | None = Field(None, max_length=2000, description="URL called with the status on done/failed")


class HeadRequest(HeadOptions):
    input: str = Field(..., max_length=4000, description="a path or s3:// URI under one of the service's input roots")


def error_body(kind: str, message: str, status: int) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "status": status}}


@api.exception_handler(Portrait3DError)
async def _typed(_request: Request, e: Portrait3DError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, AuthError) else None
    if isinstance(e, TooManyJobsError):
        headers = {"Retry-After": str(getattr(e, "retry_after", 30))}
    return JSONResponse(error_body(e.kind, str(e), e.http_status), status_code=e.http_status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body("RequestValidationError", _pydantic_message(e.errors()), 422), status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http(_request: Request, e: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body("HTTPError", str(e.detail), e.status_code), status_code=e.status_code)


def _pydantic_message(errors: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err.get('msg')}" for err in errors
    )


def _busy(message: str, s: ServeSettings) -> TooManyJobsError:
    e = TooManyJobsError(message)
    e.retry_after = s.retry_after_s
    return e


def _override_strings(settings: list[str] | dict[str, dict[str, Any]]) -> list[str]:
    if isinstance(settings, list):
        bad = [x for x in settings if "=" not in x]
        if bad:
            raise ConfigError(f"a setting override is stage.field=value, not {bad[0]!r}")
        return list(settings)
    return [
        f"{stage}.{k}={v if isinstance(v, str) else json.dumps(v)}"
        for stage, d in settings.items()
        for k, v in d.items()
    ]


def _form_options(form: Any) -> HeadOptions:
    fields: dict[str, Any] = {}
    if form.get("options"):
        try:
            fields = json.loads(form["options"])
        except json.JSONDecodeError as e:
            raise BadRequestError(f"options is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise BadRequestError("options must be a JSON object")
    for key in ("profile", "seed", "caption", "webhook"):
        if form.get(key):
            fields[key] = form[key]
    if form.getlist("settings"):
        fields["settings"] = [str(x) for x in form.getlist("settings")]
    try:
        return HeadOptions.model_validate(fields)
    except ValidationError as e:
        raise BadRequestError(_pydantic_message(e.errors())) from None


def _sniff(data: bytes, name: str) -> None:
    """An image format by its first bytes (the file name and declared type are not trusted)."""
    if not (data.startswith(IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        raise NotAnImageError(f"{name} is not an image in a format we can read (JPEG, PNG, WebP, GIF, BMP, TIFF)")


def _check_webhook(url: str, hosts: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"a webhook is an http(s) URL, not {url!r}")
    if parts.hostname not in hosts:
        raise ConfigError(
            f"this service calls webhooks only on {', '.join(hosts) or 'no host'}; not on {parts.hostname}"
        )


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(api)
class Ingress:
    """The FastAPI routes, one instance per ingress replica, with its dispatcher. (Serve serializes the
    class where it is decorated: what its methods use is defined above it.)"""

    def __init__(
        self,
        handles: dict[str, Any],
        args: dict[str, Any],
        on_demand: tuple[str, ...] = (),
        together: tuple[str, ...] = (),
    ) -> None:
        """``handles``: the stage deployments by pool; ``on_demand``: those that scale to zero, which
        ``/readyz`` does not wake (a request to them starts a replica, and a GPU node for it);
        ``together``: those that gather concurrent jobs (``heads_per_worker`` > 1)."""
        self.settings: ServeSettings = serve_settings(args)
        s = self.settings
        self.handles = handles
        self.warm = {name: h for name, h in handles.items() if name not in on_demand}
        self.store = JobStore(s.store_url())
        self.files = s.storage_uri()
        storage.check_writable(self.files)
        self._configs: dict[str, PipelineConfig] = {}
        self.default = self._config(HeadOptions())
        self._ready = False
        if s.cors_origins:
            from fastapi.middleware.cors import CORSMiddleware

            api.add_middleware(
                CORSMiddleware,
                allow_origins=list(s.cors_origins),
                allow_methods=["*"],
                allow_headers=["Authorization", "Content-Type"],
            )
        self.dispatcher = Dispatcher(self.store, handles, s, self._job_config, self._paths, together)
        self._task = asyncio.get_running_loop().create_task(self.dispatcher.run())

    # -- helpers ---------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        token = self.settings.token()
        if not token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise AuthError("this service needs a bearer token: Authorization: Bearer <token>")

    def _config(self, o: HeadOptions) -> PipelineConfig:
        s = self.settings
        if o.profile not in (None, s.profile):
            raise ConfigError(f"this service runs the {s.profile} profile, not {o.profile}")
        overrides = _override_strings(o.settings)
        for item in overrides:
            name = item.split("=", 1)[0].split(".")[-1].strip()
            if name in SERVER_SETTINGS:
                raise ConfigError(f"{item.split('=', 1)[0]} is the service's to set, not a request's")
        if o.caption:
            overrides.append(f"analysis.caption={o.caption}")
        key = json.dumps([overrides, o.seed])
        if key not in self._configs:
            if len(self._configs) > 256:
                self._configs.clear()
            self._configs[key] = build_profile_config(
                s.profile, [*s.settings, *overrides], o.seed, s.models or None, s.allow_pickle
            )
        return self._configs[key]

    def _job_config(self, job: Job) -> PipelineConfig:
        return self._config(HeadOptions(**job.spec["options"]))

    def _paths(self, job: Job) -> tuple[str, str]:
        base = storage.join(self.files, "jobs", job.id)
        return storage.join(base, "work"), storage.join(base, "bundle")

    def _get(self, job_id: str) -> Job:
        return self.store.get(check_job_id(job_id))

    def _status_of(self, job_id: str) -> dict[str, Any]:
        return self.status(self._get(job_id))

    def status(self, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "status": job.status,
            "stage": job.stage,
            "progress": round(job.progress, 4),
            "message": job.message,
            "stages_done": job.done_stages,
            "queue_position": self.store.queue_position(job) if job.status == QUEUED else None,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "timings": job.timings,
            "attempts": job.attempts,
            "stage_runs": job.stage_runs,
            "updated_at": job.updated_at,
            "notes": job.notes,
            "options": job.spec.get("options", {}),
            "input_name": job.spec.get("input_name", ""),
            "error": {"type": job.error_type, "message": job.error_message} if job.error_type else None,
            "files": {n: f"/v1/heads/{job.id}/{n}" for n in BUNDLE_FILES} if job.status == "done" else {},
        }

    # -- routes ----------------------------------------------------------------------------
    def check_health(self) -> None:
        """Serve's health check of this replica: its dispatcher must still be running."""
        if self._task.done():
            error = "cancelled" if self._task.cancelled() else repr(self._task.exception())
            raise RuntimeError(f"the dispatcher stopped: {error}")

    @api.get("/healthz", include_in_schema=False)
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", include_in_schema=False)
    async def readyz(self) -> JSONResponse:
        if not self._ready:
            try:
                await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self.warm.values())), 5)
                self._ready = True
            except Exception as e:  # a stage still loading its models, or failing to
                return JSONResponse({"status": "loading", "detail": type(e).__name__}, status_code=503)
        try:
            await asyncio.to_thread(self.store.count_active)
        except Exception as e:
            return JSONResponse({"status": "job store unreachable", "detail": str(e)[:200]}, status_code=503)
        return JSONResponse({"status": "ready", "profile": self.settings.profile})

    @api.get("/", include_in_schema=False)
    def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.post("/v1/heads", status_code=202, summary="Submit a portrait; returns the job at once")
    async def submit(self, request: Request) -> JSONResponse:
        self._authorize(request)
        s = self.settings
        client = request.client.host if request.client else "unknown"
        if await asyncio.to_thread(self.store.count_active, client) >= s.max_active_per_client:
            raise _busy(f"you have {s.max_active_per_client} jobs queued or running; wait for one to finish", s)
        if await asyncio.to_thread(self.store.count_active) >= s.max_queued:
            raise _busy(f"the service has {s.max_queued} jobs queued or running", s)
        data, name, options = await self._read_request(request)
        config = self._config(options)
        if options.webhook:
            _check_webhook(options.webhook, s.webhook_hosts)
        image = await asyncio.to_thread(load_image, data, config.stages["analysis"].max_megapixels, name)
        del image  # decoded in full here, so a broken photo is this request's error; analysis decodes again
        job_id = new_job_id()
        base = storage.join(self.files, "jobs", job_id)
        work = storage.join(base, "work")
        await asyncio.to_thread(storage.write_bytes, storage.join(base, "input"), data)
        try:
            analysis = await self.handles["analysis"].analyze.remote(data, name, work, config)
        except Exception as e:
            await asyncio.to_thread(storage.delete_tree, base)
            err = typed_error(e)
            if err is None:
                raise
            raise err from None
        spec = {
            "options": options.model_dump(include=set(HeadOptions.model_fields)),
            "input_name": name,
            "config_sha256": config.fingerprint(),
        }
        job = await asyncio.to_thread(
            self.store.create, client, spec, ["analysis"], analysis["timings"], analysis["notes"], job_id
        )
        return JSONResponse(self.status(job), status_code=202, headers={"Location": f"/v1/heads/{job.id}"})

    async def _read_request(self, request: Request) -> tuple[bytes, str, HeadOptions]:
        s = self.settings
        limit = int(s.max_upload_mb * 2**20)
        length = request.headers.get("content-length")
        if length is None:
            raise BadRequestError("a request body needs a Content-Length")
        if not length.isdigit() or int(length) > limit + 65536:
            raise ImageTooLargeError(
                f"the request is {int(length) / 2**20:.1f} MiB; the limit is {s.max_upload_mb:g} MiB"
                if length.isdigit()
                else "bad Content-Length"
            )
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                req = HeadRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise BadRequestError(_pydantic_message(e.errors())) from None
            return await asyncio.to_thread(self._read_input, req.input, limit), req.input, req
        if kind != "multipart/form-data":
            raise NotAnImageError(
                f"send multipart/form-data with an image field, or JSON naming an input; got {kind!r}"
            )
        form = await request.form(max_files=1, max_fields=32, max_part_size=256 * 1024)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("the form needs a file field named image")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLargeError(f"the image is over the {s.max_upload_mb:g} MiB limit")
        options = _form_options(form)
        name = re.sub(r"[^\w.\- ]", "_", upload.filename or "upload")[:100]
        _sniff(data, name)
        return data, name, options

    def _read_input(self, uri: str, limit: int) -> bytes:
        roots = [storage.normalize(r) for r in self.settings.input_roots]
        target = storage.normalize(uri)
        if not storage.is_s3(target):
            target = str(Path(target).resolve())
        inside = any(target == r or target.startswith(r.rstrip("/") + "/") for r in roots)
        if not inside:
            raise InputError(
                f"{uri} is not under an input root of this service"
                + ("" if roots else " (it has none: upload the image instead)")
            )
        try:
            data = storage.read_bytes(target, max_bytes=limit)
        except StorageError as e:
            raise ImageReadError(str(e)) from None
        _sniff(data, uri)
        return data

    @api.get("/v1/heads", summary="Jobs, newest first")
    async def list_jobs(
        self, request: Request, limit: int = 20, offset: int = 0, status: str | None = None
    ) -> dict[str, Any]:
        self._authorize(request)
        if not 1 <= limit <= 100 or offset < 0:
            raise BadRequestError("limit must be 1..100 and offset >= 0")
        jobs, total = await asyncio.to_thread(self.store.list, limit, offset, status)
        items = await asyncio.to_thread(lambda: [self.status(j) for j in jobs])
        nxt = offset + len(jobs) if offset + len(jobs) < total else None
        return {"items": items, "total": total, "next_offset": nxt}

    @api.get("/v1/heads/{job_id}", summary="A job's status")
    async def get_job(self, request: Request, job_id: str) -> dict[str, Any]:
        self._authorize(request)
        return await asyncio.to_thread(self._status_of, job_id)

    @api.delete("/v1/heads/{job_id}", summary="Cancel a job")
    async def cancel(self, request: Request, job_id: str) -> dict[str, Any]:
        self._authorize(request)
        job = await asyncio.to_thread(self._get, job_id)
        if job.terminal:
            raise JobStateError(f"job {job.id} is already {job.status}")
        job = await asyncio.to_thread(self.store.request_cancel, job.id)
        return await asyncio.to_thread(self.status, job)

    @api.get("/v1/heads/{job_id}/events", summary="The job's status as server-sent events, as it changes")
    async def events(self, request: Request, job_id: str) -> StreamingResponse:
        self._authorize(request)
        job = await asyncio.to_thread(self._get, job_id)
        return StreamingResponse(
            self._stream(request, job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request, job: Job) -> AsyncIterator[bytes]:
        """An event whenever the job's record (or, while queued, its queue position) changes; each round
        is one small read unless something changed."""
        last, beat, version = None, time.monotonic(), None
        while True:
            snapshot = await asyncio.to_thread(self.status, job)
            key = (job.updated_at, snapshot["queue_position"])
            if key != last:
                last, beat = key, time.monotonic()
                yield f"event: status\ndata: {json.dumps(snapshot)}\n\n".encode()
            if job.terminal or await request.is_disconnected():
                return
            while True:
                await asyncio.sleep(0.5)
                if time.monotonic() - beat > 15:
                    beat = time.monotonic()
                    yield b": keep-alive\n\n"
                version = await asyncio.to_thread(self.store.version, job.id)
                if version is None or version[0] != job.updated_at or version[1] == QUEUED:
                    break
                if await request.is_disconnected():
                    return
            job = await asyncio.to_thread(self.store.get, job.id)

    @api.get("/v1/heads/{job_id}/{name}", summary="A file of a finished job")
    async def file(self, request: Request, job_id: str, name: str) -> Response:
        self._authorize(request)
        if name not in BUNDLE_FILES:
            raise JobNotFoundError(f"a head has the files {', '.join(BUNDLE_FILES)}, not {name!r}")
        job = await asyncio.to_thread(self._get, job_id)
        if job.status != "done":
            raise JobStateError(f"job {job.id} is {job.status}; its files come when it is done")
        etag = f'"{job.files.get(name, {}).get("sha256", "")}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        _, bundle = self._paths(job)
        data = await asyncio.to_thread(storage.read_bytes, storage.join(bundle, name))
        return Response(data, media_type=CONTENT_TYPES[name], headers=headers)
