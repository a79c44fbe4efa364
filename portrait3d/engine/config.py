"""Worker pools and batch settings: typed, with help, overridable like the stage settings.

Overrides are ``pool.field=value`` (``geometry.num_gpus=1``, ``texture.accelerator_type=H100``,
``geometry.resources={"geometry_node": 1}``) or ``batch.field=value``, or a JSON file
``{"geometry": {"num_gpus": 1}, "batch": {"max_task_retries": 3}}``.

Example:
    >>> cfg = build_engine_config("fast", ["geometry.num_gpus=1", "texture.max_size=4"])
    >>> cfg.pools["geometry"].remote_args()["num_gpus"], cfg.pools["texture"].max_size
    (1.0, 4)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..pipelines.config import parse_overrides
from ..pipelines.settings import make_config, setting

#: The worker pools, in pipeline order: analysis (stage 1), geometry (stages 2-4), texture (stage 5),
#: export (the bundle writer; no models).
POOLS = ("analysis", "geometry", "texture", "export")


@dataclass(frozen=True)
class PoolConfig:
    """Resources and size of one worker pool."""

    num_cpus: float = setting(1.0, "CPUs reserved by each worker", ge=0)
    num_gpus: float = setting(0.0, "GPUs reserved by each worker (fractions share one GPU)", ge=0)
    accelerator_type: str = setting("", "Ray accelerator type the workers need (e.g. H100, A10G); empty: any")
    resources: dict[str, float] = setting(
        {},
        'custom Ray resources each worker needs, e.g. {"geometry_node": 1}: '
        "places the pool on the nodes that carry them",
        ge=0,
    )
    memory_gb: float = setting(0.0, "memory reserved by each worker, GiB (0: none)", ge=0)
    min_size: int = setting(
        1,
        "workers kept warm; 0 lets the service's deployment of this pool (and its GPU nodes) scale to zero "
        "when idle (a batch run still keeps one)",
        ge=0,
    )
    max_size: int = setting(1, "most workers the pool autoscales to", ge=1)
    torch_threads: int = setting(0, "torch intra-op threads per worker; 0: num_cpus rounded down, at least 1", ge=0)
    heads_per_worker: int = setting(
        1,
        "heads a worker works on at once: the geometry pool sculpts them together, their ISD steps through "
        "one UNet (the paper profile on a GPU); other pools take 1. With batch.head_timeout_s the heads go "
        "one at a time",
        ge=1,
        le=64,
    )

    def validate(self) -> None:
        if self.max_size < self.min_size:
            raise ConfigError(f"need min_size <= max_size, got {self.min_size} and {self.max_size}")

    def warm_size(self) -> int:
        """Workers an actor pool keeps (at least one: Ray Data's actor pools do not start from zero)."""
        return max(1, self.min_size)

    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.num_cpus))

    def remote_args(self) -> dict[str, Any]:
        """Keyword arguments for ``map_batches`` (Ray remote options)."""
        args: dict[str, Any] = {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus)}
        if self.accelerator_type:
            args["accelerator_type"] = self.accelerator_type
        if self.resources:
            args["resources"] = dict(self.resources)
        if self.memory_gb:
            args["memory"] = int(self.memory_gb * 2**30)
        return args


@dataclass(frozen=True)
class BatchSettings:
    """How a batch run treats slow, failing and finished heads."""

    max_task_retries: int = setting(
        2, "times a head is retried after its worker process died (then it becomes an error row)", ge=0
    )
    no_progress_timeout_s: float = setting(
        3600.0, "fail the run when no head moves for this long (rows take minutes; Ray's default is 30 min)", gt=0
    )
    head_timeout_s: float = setting(
        0.0,
        "longest one pool may work on one head (0: no limit); past it the head is "
        "cancelled and becomes an error row (HeadTimeoutError)",
        ge=0,
    )
    head_timeout_grace_s: float = setting(
        10.0,
        "after head_timeout_s, how long the stage may take to stop by itself "
        "before its worker process is ended (0: end it at once)",
        ge=0,
    )
    max_input_mb: float = setting(64.0, "inputs bigger than this become error rows", gt=0)
    wait_for_workers_s: float = setting(
        0.0,
        "before streaming, wait up to this long until every pool has its "
        "min_size workers (0: start as soon as a pool has one; a timeout fails the "
        "run)",
        ge=0,
    )
    keep_work: bool = setting(False, "keep the per-stage intermediates under OUTPUT/_work after a head is done")
    reuse_by_stat: bool = setting(
        True,
        "take an input listed with the URI, size and modification time an earlier run with these settings "
        "recorded to have the same bytes, and reuse that run's result without reading it (off: read and "
        "hash every input)",
    )


@dataclass(frozen=True)
class EngineConfig:
    pools: dict[str, PoolConfig]
    batch: BatchSettings

    def required_cpus(self) -> float:
        """CPUs the warm pools need at once."""
        return sum(p.num_cpus * p.warm_size() for p in self.pools.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "pools": {k: dataclasses.asdict(v) for k, v in self.pools.items()},
            "batch": dataclasses.asdict(self.batch),
        }


#: Per-profile pool defaults. ``fast`` runs on CPUs; ``paper`` puts geometry and texture on GPUs.
PROFILE_POOLS: dict[str, dict[str, dict[str, Any]]] = {
    # analysis (~0.2 s a head) and export (~0.4 s) are light beside geometry and texture (seconds)
    "fast": {
        "analysis": {"num_cpus": 0.5},
        "geometry": {"num_cpus": 1},
        "texture": {"num_cpus": 1},
        "export": {"num_cpus": 0.5},
    },
    "paper": {
        "analysis": {"num_cpus": 1},
        "geometry": {"num_cpus": 4, "num_gpus": 1},
        "texture": {"num_cpus": 4, "num_gpus": 1},
        "export": {"num_cpus": 1},
    },
}


def build_engine_config(profile: str, overrides: list[str] | None = None, workers: int | None = None) -> EngineConfig:
    """Pool settings for ``profile`` with overrides; ``workers`` sets min and max size of the three
    actor pools at once."""
    ov = parse_overrides(overrides)
    unknown = set(ov) - set(POOLS) - {"batch"}
    if unknown:
        raise ConfigError(f"unknown pool(s) {', '.join(sorted(unknown))}; pools: {', '.join(POOLS)}, and batch")
    base = PROFILE_POOLS.get(profile, PROFILE_POOLS["fast"])
    pools = {}
    for name in POOLS:
        values = dict(base.get(name, {}))
        if workers is not None and name != "export":
            if workers < 1:
                raise ConfigError(f"--workers must be >= 1, got {workers}")
            values.update(min_size=workers, max_size=workers)
        values.update(ov.get(name, {}))
        pools[name] = make_config(PoolConfig, values, name)
        if name != "geometry" and pools[name].heads_per_worker != 1:
            raise ConfigError(f"{name}.heads_per_worker: only the geometry pool works on several heads at once")
    return EngineConfig(pools=pools, batch=make_config(BatchSettings, ov.get("batch", {}), "batch"))


def local_cpus(cfg: EngineConfig, available: int | None = None) -> int:
    """Logical CPUs for a local Ray instance: the machine's, or what the warm pools need if that is
    more (the pools then share the cores)."""
    return max(available or os.cpu_count() or 1, math.ceil(cfg.required_cpus()))
