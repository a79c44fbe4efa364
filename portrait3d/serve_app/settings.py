"""The service's settings: typed, with help and ranges, from ``portrait3d serve`` flags or the ``args``
of a Ray Serve config file (the same keys).

Example:
    >>> s = serve_settings({"profile": "fast", "max_upload_mb": "8"})
    >>> s.max_upload_mb, s.store_url().startswith("sqlite:///")
    (8.0, True)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import ConfigError
from ..pipelines.settings import make_config, setting
from .jobs import default_store_url


@dataclass(frozen=True)
class ServeSettings:
    """What ``portrait3d serve`` and the Serve app take (``pools`` apart: the worker-pool settings of
    ``engine.config``, per stage deployment)."""

    profile: str = setting("fast", "the profile this service runs; its stage models load when it starts")
    models: str = setting("", "model root of the paper/tiny profiles: a folder or s3:// prefix")
    allow_pickle: tuple[str, ...] = setting((), "roles whose pickled weights may run code")
    settings: tuple[str, ...] = setting((), "stage.field=value defaults of this service's heads (like -c)")
    data: str = setting("portrait3d-data", "local folder for the embedded job store and, by default, the files")
    store: str = setting(
        "",
        "job store URL (SQLAlchemy): empty is a SQLite file in the data folder; "
        "postgresql+psycopg://user:password@host/db for one that several ingress replicas share",
    )
    storage: str = setting(
        "", "where uploads, intermediates and results live: empty is the data folder; or s3://bucket/prefix"
    )
    input_roots: tuple[str, ...] = setting((), "local folders or s3:// prefixes a request may name its input in")
    max_upload_mb: float = setting(20.0, "largest request body, MiB (413 above it)", gt=0, le=1024)
    max_active_per_client: int = setting(8, "queued and running jobs one client may have (429 above it)", ge=1)
    max_queued: int = setting(1000, "queued and running jobs in all (429 above it)", ge=1)
    dispatch_in_flight: int = setting(
        8,
        "jobs each ingress replica drives at once; they wait in the stage "
        "deployments' queues, which is what Serve's autoscaling reads",
        ge=1,
        le=10000,
    )
    lease_s: float = setting(
        30.0,
        "a dispatcher's lease on a job; a job whose dispatcher died is taken over this long after its last renewal",
        ge=2,
        le=3600,
    )
    max_attempts: int = setting(
        3, "times a job may be interrupted (its dispatcher or a stage replica died) before it fails", ge=1, le=100
    )
    together_wait_s: float = setting(
        0.5,
        "how long a stage deployment that takes several heads at once (heads_per_worker > 1) waits for "
        "more jobs before it starts the ones it has, seconds",
        ge=0,
        le=600,
    )
    poll_s: float = setting(
        0.5, "how often dispatchers look for jobs and stages look for a cancel, seconds", gt=0, le=60
    )
    token_env: str = setting(
        "PORTRAIT3D_API_TOKEN", "environment variable with the API's bearer token; authentication is on when it is set"
    )
    cors_origins: tuple[str, ...] = setting((), "origins CORS allows (none: CORS off)")
    webhook_hosts: tuple[str, ...] = setting((), "host names a job's webhook may call (none: webhooks refused)")
    retry_after_s: int = setting(30, "Retry-After of a 429 response, seconds", ge=1, le=3600)

    def store_url(self) -> str:
        return self.store or default_store_url(self.data)

    def storage_uri(self) -> str:
        return storage.normalize(self.storage or str(Path(self.data).resolve() / "files"))

    def token(self) -> str:
        """The bearer token from the environment ('' when authentication is off)."""
        return os.environ.get(self.token_env, "") if self.token_env else ""

    def to_args(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def serve_settings(args: dict[str, Any]) -> ServeSettings:
    """From a mapping of text or JSON values (``pools`` excluded); unknown keys are ConfigErrors."""
    values = {k: v for k, v in args.items() if k != "pools"}
    cfg = make_config(ServeSettings, values, "serve")
    if cfg.webhook_hosts and any("/" in h or ":" in h for h in cfg.webhook_hosts):
        raise ConfigError("serve.webhook_hosts holds host names only (no scheme, port or path)")
    return cfg
