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
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..pipelines.config import make_config, parse_overrides

#: The worker pools, in pipeline order: analysis (stage 1), geometry (stages 2-4), texture (stage 5),
#: export (the bundle writer; no models).
POOLS = ("analysis", "geometry", "texture", "export")


@dataclass
class PoolConfig:
    """Resources and size of one worker pool."""

    num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved by each worker"})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs reserved by each worker (fractions share one GPU)"})
    accelerator_type: str = field(
        default="", metadata={"help": "Ray accelerator type the workers need (e.g. H100, A10G); empty: any"}
    )
    resources: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": 'custom Ray resources each worker needs, e.g. {"geometry_node": 1}: places the pool on '
            "the nodes that carry them"
        },
    )
    memory_gb: float = field(default=0.0, metadata={"help": "memory reserved by each worker, GiB (0: none)"})
    min_size: int = field(default=1, metadata={"help": "workers kept warm (actor pools)"})
    max_size: int = field(default=1, metadata={"help": "most workers the pool autoscales to"})
    torch_threads: int = field(
        default=0, metadata={"help": "torch intra-op threads per worker; 0: num_cpus rounded down, at least 1"}
    )

    def validate(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0 or self.memory_gb < 0:
            raise ConfigError("num_cpus, num_gpus and memory_gb must be >= 0")
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ConfigError(f"need 1 <= min_size <= max_size, got {self.min_size} and {self.max_size}")
        if any(v < 0 for v in self.resources.values()):
            raise ConfigError("custom resource amounts must be >= 0")

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


@dataclass
class BatchSettings:
    """How a batch run treats slow, failing and finished heads."""

    max_task_retries: int = field(
        default=2,
        metadata={"help": "times a head is retried after its worker process died (then it becomes an error row)"},
    )
    no_progress_timeout_s: float = field(
        default=3600.0,
        metadata={"help": "fail the run when no head moves for this long (rows take minutes; Ray's default is 30 min)"},
    )
    head_timeout_s: float = field(
        default=0.0,
        metadata={
            "help": "longest one pool may work on one head (0: no limit); past it the worker process ends, the "
            "head becomes an error row (HeadTimeoutError) and a new worker takes the next heads"
        },
    )
    max_input_mb: float = field(default=64.0, metadata={"help": "inputs bigger than this become error rows"})
    wait_for_workers_s: float = field(
        default=0.0,
        metadata={
            "help": "before streaming, wait up to this long until every pool has its min_size workers "
            "(0: start as soon as a pool has one; a timeout fails the run)"
        },
    )
    keep_work: bool = field(
        default=False, metadata={"help": "keep the per-stage intermediates under OUTPUT/_work after a head is done"}
    )

    def validate(self) -> None:
        if min(self.max_task_retries, self.wait_for_workers_s, self.head_timeout_s) < 0 or self.max_input_mb <= 0:
            raise ConfigError("max_task_retries, wait_for_workers_s and head_timeout_s must be >= 0, max_input_mb > 0")


@dataclass
class EngineConfig:
    pools: dict[str, PoolConfig]
    batch: BatchSettings

    def required_cpus(self) -> float:
        """CPUs the warm pools need at once."""
        return sum(p.num_cpus * p.min_size for p in self.pools.values())

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
    return EngineConfig(pools=pools, batch=make_config(BatchSettings, ov.get("batch", {}), "batch"))


def local_cpus(cfg: EngineConfig, available: int | None = None) -> int:
    """Logical CPUs for a local Ray instance: the machine's, or what the warm pools need if that is
    more (the pools then share the cores)."""
    return max(available or os.cpu_count() or 1, math.ceil(cfg.required_cpus()))
