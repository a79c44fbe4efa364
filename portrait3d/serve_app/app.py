"""The Serve application: the FastAPI ingress composed with one deployment per worker pool.

``build_app(args)`` is the application builder a Serve config file names
(``import_path: portrait3d.serve_app.app:build_app``); ``args`` are the service's settings
(``settings.ServeSettings``) plus ``pools``, the worker-pool settings of ``engine.config`` per stage
deployment (``{"geometry": {"num_gpus": 1, "max_size": 4}}``). Each pool becomes a deployment named
after it with those resources, ``max_ongoing_requests`` 1 (one head at a time per replica) and
autoscaling between the pool's ``min_size`` (0: scale to zero when idle) and ``max_size`` replicas;
a Serve config file's ``deployments`` section may override any of it.

Example:
    >>> app = build_app({"profile": "fast", "data": "/tmp/p3d"})    # doctest: +SKIP
    >>> serve.run(app, name="portrait3d", route_prefix="/")          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ..engine.config import POOLS, PoolConfig, build_engine_config
from .api import Ingress
from .settings import serve_settings
from .stages import StageDeployment

#: Serve's logging for this app: no access-log line per request (each costs the proxy and the replica CPU
#: that heads need; the job store records every job).
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}


def deployment_options(pool: PoolConfig) -> dict[str, Any]:
    """A pool's settings as Serve deployment options."""
    from ..engine.cluster import WORKER_ENV

    actor = {k: v for k, v in pool.remote_args().items() if k != "memory"}
    actor["runtime_env"] = {"env_vars": dict(WORKER_ENV)}  # also where the app is deployed from a config file
    if pool.memory_gb:
        actor["memory"] = int(pool.memory_gb * 2**30)
    return {
        "ray_actor_options": actor,
        "max_ongoing_requests": pool.heads_per_worker,
        "logging_config": LOGGING,
        "autoscaling_config": {
            "min_replicas": pool.min_size,
            "max_replicas": pool.max_size,
            "initial_replicas": pool.min_size,
            "target_ongoing_requests": pool.heads_per_worker,
            "upscale_delay_s": 5,
            "downscale_delay_s": 60,
        },
    }


def build_app(args: dict[str, Any]) -> Application:
    """The portrait3d Serve app from ``args`` (see the module docstring)."""
    settings = serve_settings(args)
    pools = args.get("pools") or {}
    if not isinstance(pools, dict) or set(pools) - set(POOLS):
        raise ValueError(f"pools must map some of {', '.join(POOLS)} to pool settings")
    overrides = [f"{p}.{k}={v}" for p, values in pools.items() for k, v in values.items()]
    engine = build_engine_config(settings.profile, overrides)
    plain = settings.to_args()
    handles = {
        name: StageDeployment.options(name=name, **deployment_options(engine.pools[name])).bind(
            name, plain, engine.pools[name].threads(), engine.pools[name].heads_per_worker
        )
        for name in POOLS
    }
    on_demand = tuple(name for name in POOLS if engine.pools[name].min_size == 0)
    together = tuple(name for name in POOLS if engine.pools[name].heads_per_worker > 1)
    return Ingress.options(logging_config=LOGGING).bind(handles, plain, on_demand, together)


def _local_ray(profile: str, pools: dict[str, Any], address: str | None) -> None:
    """Join the cluster at ``address``, or start a local Ray instance with the logical CPUs every
    deployment's first replica needs (the replicas then share the cores)."""
    import math
    import os

    import ray

    from ..engine.cluster import WORKER_ENV

    if ray.is_initialized():
        return
    if address:
        init: dict[str, Any] = {"address": address}
    else:
        overrides = [f"{p}.{k}={v}" for p, values in pools.items() for k, v in values.items()]
        needed = build_engine_config(profile, overrides).required_cpus() + 0.25  # and the ingress
        init = {"num_cpus": max(os.cpu_count() or 1, math.ceil(needed)), "include_dashboard": False}
    ray.init(**init, runtime_env={"env_vars": dict(WORKER_ENV)}, log_to_driver=False)


def start_local(args: dict[str, Any], host: str, port: int, address: str | None = None) -> str:
    """Start the app on this machine's Ray (a local instance unless ``address``); returns its URL."""
    settings = serve_settings(args)
    _local_ray(settings.profile, args.get("pools") or {}, address)
    serve.start(http_options={"host": host, "port": port}, logging_config=LOGGING)
    serve.run(build_app(args), name="portrait3d", route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def start_config(config: Any, address: str | None = None, timeout_s: float = 900) -> None:
    """Deploy a checked Serve config (``config_file.read_serve_config``) as ``serve run CONFIG`` does, and
    wait until its applications run (a ConfigError with Serve's message when one fails to deploy)."""
    import time

    from ray.serve._private import api as serve_api

    from ..errors import ConfigError
    from .config_file import APP

    ours = [a for a in config.applications if a.import_path == APP]
    first = (ours[0].args or {}) if ours else {}
    _local_ray(first.get("profile", "fast"), first.get("pools") or {}, address)
    client = serve_api.serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = serve.status().applications
        apps = [states.get(a.name) for a in config.applications]
        failed = [
            (a.name, s.message)
            for a, s in zip(config.applications, apps, strict=True)
            if s is not None and s.status == "DEPLOY_FAILED"
        ]
        if failed:
            raise ConfigError(f"application {failed[0][0]} failed to deploy: {failed[0][1]}")
        if all(s is not None and s.status == "RUNNING" for s in apps):
            return
        time.sleep(1)
    raise ConfigError(f"the Serve applications were not running after {timeout_s:g} s")
