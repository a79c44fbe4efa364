"""Connecting to Ray: the cluster named by ``--address`` or ``RAY_ADDRESS``, else a local instance."""

from __future__ import annotations

import logging
import os
from types import ModuleType

from .config import EngineConfig, local_cpus

#: Environment for worker processes: quiet C++ logging of mediapipe / TFLite; and glibc's malloc with one
#: arena that keeps its memory. A stage run in a thread other than the main one (as Serve runs a
#: replica's methods) otherwise gets a thread arena, whose large blocks are mapped and unmapped on
#: every allocation: measured on the fast texture stage in a Serve replica, 2.0-2.3 s of system time
#: and 45-78k page faults per head (0.02-0.12 s and < 1k with these settings), 11.1-11.6 s -> 9.0-9.4 s.
#: The cost: a worker keeps the memory of its largest head.
WORKER_ENV = {
    "GLOG_minloglevel": "2",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
}


def connect(engine: EngineConfig, address: str | None = None, verbose: bool = False) -> str:
    """Join a Ray cluster or start a local one; returns a description of where the work runs.

    A running Ray session in this process is used as it is. With no address (argument or
    ``RAY_ADDRESS``) a local instance starts with enough logical CPUs for the warm pools.
    """
    import ray
    import ray.data  # noqa: F401 (configures its loggers on import; quiet them after)

    if not verbose:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # we draw our own progress; Ray Data warns that its bars are off
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        return _describe(ray)
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=verbose, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=local_cpus(engine),
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=verbose,
            logging_level=logging.WARNING,
        )
    prestart_data_actors()
    return _describe(ray)


def prestart_data_actors(timeout_s: float = 120) -> None:
    """Start Ray Data's own actors (execution stats, autoscaling coordinator) now and wait until
    they answer. Ray Data creates them when the first rows flow; each costs about 1 CPU-s to start
    (measured on 2 cores: 1.2 CPU-s each in the first 2 s of the first head), which otherwise
    competes with the first heads' stages. Both are get-or-create: a later run reuses them."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:  # private to Ray Data: another Ray version may not have them
        return
    handles = [get_or_create_stats_actor(), get_or_create_autoscaling_coordinator()]
    ray.get([h.__ray_ready__.remote() for h in handles], timeout=timeout_s)


def _describe(ray: ModuleType) -> str:
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node{'s' * (nodes != 1)}, {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
