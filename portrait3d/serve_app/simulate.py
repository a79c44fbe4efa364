r"""The service on a simulated autoscaling Ray cluster on this machine whose node types mirror a KubeRay
cluster spec's worker groups (fake GPUs, accelerator types and all): Serve's autoscaling and Ray's
autoscaler at work without Kubernetes. The autoscaling test and ``benchmarks/bench_autoscale.py`` use it.

Every simulated node is a raylet on this machine (Ray's fake multi-node provider): the resources
are logical, the work is real and shares this machine's cores.

Example:
    >>> spec = {"headGroupSpec": {"rayStartParams": {"num-cpus": "0"}}, "workerGroupSpecs": [
    ...     {"groupName": "gpu", "minReplicas": 0, "maxReplicas": 4,
    ...      "rayStartParams": {"num-cpus": "8", "num-gpus": "1", "resources": '"{\\"accelerator_type:H100\\": 1}"'}}]}
    >>> head, types = node_types(spec)
    >>> head, types["gpu"]["resources"], types["gpu"]["max_workers"]
    ({'CPU': 0.0}, {'CPU': 8.0, 'GPU': 1.0, 'accelerator_type:H100': 1.0}, 4)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


def ray_resources(params: dict[str, str]) -> dict[str, float]:
    """The Ray resources a KubeRay ``rayStartParams`` gives a node (``resources`` is KubeRay's
    quoted JSON: ``'"{\\"name\\": 1}"'``)."""
    out = {"CPU": float(params.get("num-cpus", 0))}
    if "num-gpus" in params:
        out["GPU"] = float(params["num-gpus"])
    if "resources" in params:
        raw = json.loads(params["resources"])
        out.update({k: float(v) for k, v in (json.loads(raw) if isinstance(raw, str) else raw).items()})
    return out


def node_types(cluster: dict[str, Any], max_workers: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """``(head resources, autoscaler node types)`` from a RayCluster spec (a RayService's
    ``rayClusterConfig``): one node type per worker group, its resources from ``rayStartParams``, its
    min/max workers from ``minReplicas``/``maxReplicas`` (``max_workers`` caps the latter)."""
    head = ray_resources(cluster["headGroupSpec"]["rayStartParams"])
    types = {}
    for group in cluster["workerGroupSpecs"]:
        most = group.get("maxReplicas", 1) if max_workers is None else min(group.get("maxReplicas", 1), max_workers)
        types[group["groupName"]] = {
            "resources": ray_resources(group["rayStartParams"]),
            "min_workers": group.get("minReplicas", 0),
            "max_workers": most,
            "node_config": {},
        }
    return head, types


class SimulatedCluster:
    """An autoscaling Ray cluster of fake nodes of ``types`` (``node_types``) on this machine (Ray's
    fake multi-node provider: its autoscaler starts and stops raylets here); ``ray.init("auto")``
    joins it. Nodes idle for ``idle_timeout_s`` are removed. Each node gets a small object store."""

    def __init__(
        self,
        head: dict[str, float],
        types: dict[str, Any],
        idle_timeout_s: float = 10,
        object_store_mb: int = 256,
    ) -> None:
        self.head, self.types = dict(head), types
        self.idle_timeout_s, self.object_store = idle_timeout_s, object_store_mb * 2**20
        self._dir = ""

    def config(self) -> dict[str, Any]:
        """The cluster config the fake provider's autoscaler reads."""
        nodes = {"ray.head.default": {"resources": self.head, "node_config": {}, "max_workers": 0}}
        for name, t in self.types.items():
            nodes[name] = {**t, "resources": {**t["resources"], "object_store_memory": self.object_store}}
        empty: dict[str, Any] = {k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")}
        empty.update({k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")})
        return {
            "cluster_name": "portrait3d-simulated",
            "max_workers": sum(t["max_workers"] for t in self.types.values()),
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": nodes,
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_s / 60,
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            **empty,
        }

    def _ray(self, *args: str, env: dict[str, str] | None = None) -> None:
        import subprocess

        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        subprocess.run([ray_cli, *args], check=True, env=env, capture_output=True, timeout=300)

    def __enter__(self) -> SimulatedCluster:
        import tempfile

        from ..engine.cluster import WORKER_ENV

        self._dir = tempfile.mkdtemp(prefix="p3d-sim-")
        path = os.path.join(self._dir, "cluster.json")
        with open(path, "w") as f:
            json.dump(self.config(), f)
        env = {**os.environ, **WORKER_ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self._ray("stop", "--force")
        head = [f"--num-cpus={self.head.get('CPU', 0):g}", f"--num-gpus={self.head.get('GPU', 0):g}"]
        self._ray(
            "start",
            "--head",
            f"--autoscaling-config={path}",
            f"--object-store-memory={self.object_store}",
            "--include-dashboard=false",
            *head,
            env=env,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._ray("stop", "--force")
        shutil.rmtree(self._dir, ignore_errors=True)

    def node_counts(self) -> dict[str, int]:
        """Alive worker nodes per node type (a node's type is told by its resources)."""
        import ray

        counts = dict.fromkeys(self.types, 0)
        for node in ray.nodes():
            if not node.get("Alive") or "node:__internal_head__" in node["Resources"]:
                continue
            name = _type_of(node["Resources"], self.types)
            if name:
                counts[name] += 1
        return counts


def _type_of(resources: dict[str, float], types: dict[str, Any]) -> str | None:
    for name, t in types.items():
        want = t["resources"]
        if all(abs(resources.get(k, 0) - v) < 1e-6 for k, v in want.items()) and resources.get("GPU", 0) == want.get(
            "GPU", 0
        ):
            return name
    return None


@dataclass
class Timeline:
    """Samples, once per ``period_s``, of the jobs (by status), the running replicas per deployment
    and the alive nodes per node type."""

    cluster: SimulatedCluster
    url: str
    app: str = "portrait3d"
    period_s: float = 1.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # each job's last status, by id
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> dict[str, Any]:
        import requests
        from ray import serve

        def total(status: str) -> int:
            r = requests.get(f"{self.url}/v1/heads", params={"limit": 1, "status": status}, timeout=10)
            return r.json()["total"]

        deployments = serve.status().applications[self.app].deployments
        row = {
            "t": time.monotonic(),
            "jobs": {s: total(s) for s in ("queued", "running", "done", "failed", "cancelled")},
            "replicas": {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()},
            "nodes": self.cluster.node_counts(),
        }
        self.rows.append(row)
        return row

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # the service is starting or stopping; the next sample tells
                pass
            self._stop.wait(self.period_s)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def table(self, pools: tuple[str, ...], node_names: tuple[str, ...]) -> str:
        """The timeline as text: seconds, jobs queued/running/done, replicas per pool, nodes per type."""
        head = ["t_s", "queued", "running", "done", *pools, *node_names]
        lines = [" ".join(f"{h:>12}" for h in head)]
        t0 = self.rows[0]["t"] if self.rows else 0
        for r in self.rows:
            cells = [f"{r['t'] - t0:.0f}", *(str(r["jobs"][s]) for s in ("queued", "running", "done"))]
            cells += [str(r["replicas"].get(p, 0)) for p in pools] + [str(r["nodes"].get(n, 0)) for n in node_names]
            lines.append(" ".join(f"{c:>12}" for c in cells))
        return "\n".join(lines)


def local_serve_config(
    service: dict[str, Any], data: str, port: int, settings: list[str], max_replicas: int = 2
) -> dict[str, Any]:
    """A RayService's Serve config made to run on the simulated cluster: the ``fast`` profile with
    ``settings`` (no model root), the embedded job store and files under ``data``, one proxy (every
    simulated node shares this machine's ports), at most ``max_replicas`` per pool, and stage
    deployments that scale down after 5 s idle instead of 60. Resources, accelerator types and
    scale-to-zero stay as the manifest has them."""
    import yaml

    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = config["applications"]
    pools = app["args"].get("pools", {})
    for pool in pools.values():
        pool["max_size"] = min(pool.get("max_size", 1), max_replicas)
    app["args"] = {
        "profile": "fast",
        "data": data,
        "settings": list(settings),
        "dispatch_in_flight": 16,
        "poll_s": 0.25,
        "pools": pools,
    }
    app["deployments"] = [{"name": "ingress", "num_replicas": 1}] + [
        {
            "name": name,
            "autoscaling_config": {
                "min_replicas": pool.get("min_size", 1),
                "max_replicas": pool["max_size"],
                "target_ongoing_requests": 1,
                "upscale_delay_s": 2,
                "downscale_delay_s": 5,
            },
        }
        for name, pool in pools.items()
    ]
    return config


def run_burst(
    service: dict[str, Any],
    portraits: list[bytes],
    data: str,
    port: int,
    settings: list[str],
    max_replicas: int = 2,
    idle_timeout_s: float = 10,
    timeout_s: float = 900,
    log: Any = None,
) -> Timeline:
    """Start the simulated cluster mirroring ``service`` (a rendered RayService), deploy its Serve app
    (``local_serve_config``), submit one job per portrait at once, wait until every job ended and the
    cluster is back to its minimum, and return the timeline (sampled from before the burst)."""
    import requests

    from .app import start_config
    from .config_file import check_serve_config

    head, types = node_types(service["spec"]["rayClusterConfig"], max_workers=max_replicas)
    config = check_serve_config(local_serve_config(service, data, port, settings, max_replicas))
    url = f"http://127.0.0.1:{port}"
    say = log or (lambda msg: None)
    with SimulatedCluster(head, types, idle_timeout_s=idle_timeout_s) as cluster:
        start_config(config, address="auto", timeout_s=timeout_s)
        say(f"service running at {url}; nodes {cluster.node_counts()}")
        timeline = Timeline(cluster, url)
        timeline.sample()
        thread = timeline.start()
        ids = []
        for i, image in enumerate(portraits):
            r = requests.post(f"{url}/v1/heads", files={"image": ("p.jpg", image)}, data={"seed": str(i)}, timeout=120)
            r.raise_for_status()
            ids.append(r.json()["id"])
        say(f"submitted {len(ids)} jobs")
        deadline = time.monotonic() + timeout_s
        minimum = {name: t["min_workers"] for name, t in types.items()}

        def settled() -> bool:
            if not timeline.rows:
                return False
            last = timeline.rows[-1]
            ended = sum(last["jobs"][s] for s in ("done", "failed", "cancelled")) >= len(ids)
            return ended and last["nodes"] == minimum

        while time.monotonic() < deadline and not settled():
            time.sleep(1)
        timeline.stop()
        thread.join(10)
        timeline.sample()
        timeline.statuses = {i: requests.get(f"{url}/v1/heads/{i}", timeout=10).json() for i in ids}
    return timeline
