"""deploy/k8s and deploy/docker, checked offline: every overlay renders and validates strictly
(KubeRay CRD schemas, Kubernetes core schemas, pod templates inside KubeRay objects), its Serve config
passes the strict Serve check and builds the app, and the manifests hold what a platform team needs
(GPU groups that scale from zero, secrets by reference, probes, limits, a disruption budget, metrics).
The Dockerfiles pass hadolint and install the way the README documents."""

from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .k8s import OVERLAYS, REPO, by_kind, containers, pod_templates, render, validate

DOCKER = REPO / "deploy" / "docker"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {target: render(target) for target in OVERLAYS}


@pytest.mark.parametrize("target", OVERLAYS)
def test_overlay_validates_strictly(rendered, target):
    docs = rendered[target]
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "RayJob", "ConfigMap", "PodDisruptionBudget"} <= kinds
    assert [e for d in docs for e in validate(d)] == []


def test_validation_rejects_unknown_and_wrong_fields(rendered):
    service = by_kind(rendered["overlays/gpu-prod"], "RayService")[0]
    cases = {
        "a misspelt worker-group field": lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(
            minReplica=0
        ),
        "an unknown RayService field": lambda s: s["spec"].update(serveConfig="x"),
        "an unknown container field": lambda s: pod_templates(s)[0][1]["spec"]["containers"][0].update(imag="x"),
        "a wrong type": lambda s: s["spec"].update(rayClusterDeletionDelaySeconds="an hour"),
        "an unknown metadata field": lambda s: s["metadata"].update(label={"a": "b"}),
    }
    for what, change in cases.items():
        bad = copy.deepcopy(service)
        change(bad)
        assert validate(bad), what
    pdb = copy.deepcopy(by_kind(rendered["base"], "PodDisruptionBudget")[0])
    pdb["spec"]["maxUnavailabe"] = 1
    assert validate(pdb)


def _serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


@pytest.mark.parametrize("target", OVERLAYS)
def test_serve_config_v2_is_strict_and_builds_the_app(rendered, target):
    from ray.serve import Application

    from portrait3d.serve_app.config_file import APP, check_serve_config

    text = by_kind(rendered[target], "RayService")[0]["spec"]["serveConfigV2"]
    config = check_serve_config(yaml.safe_load(text))  # unknown keys at any depth are errors
    (app,) = config.applications
    assert app.import_path == APP
    module, _, attr = app.import_path.partition(":")
    assert isinstance(getattr(importlib.import_module(module), attr)(app.args), Application)
    args = app.args
    assert args["store"].startswith("postgresql+psycopg://") and args["storage"].startswith("s3://")
    assert "@" not in args["store"], "credentials in the store URL: the password comes from PGPASSWORD"


def test_serve_config_v2_is_the_serve_file(rendered):
    """The RayService holds exactly the serve.yaml of its kustomization, which `portrait3d serve
    --config` takes."""
    pairs = {
        "base": "base/serve.yaml",
        "overlays/dev-cpu": "base/serve.yaml",
        "overlays/gpu-prod": "overlays/gpu-prod/serve.yaml",
    }
    for target, file in pairs.items():
        text = by_kind(rendered[target], "RayService")[0]["spec"]["serveConfigV2"]
        assert text == (REPO / "deploy" / "k8s" / file).read_text()


def _groups(doc: dict) -> dict[str, dict]:
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def _resource_of(group: dict) -> dict[str, float]:
    params = group["rayStartParams"]
    out = {"CPU": float(params["num-cpus"]), "GPU": float(params.get("num-gpus", 0))}
    if "resources" in params:
        out.update(json.loads(json.loads(params["resources"])))
    return out


def test_gpu_prod_cluster(rendered):
    docs = rendered["overlays/gpu-prod"]
    service = by_kind(docs, "RayService")[0]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert service["spec"]["upgradeStrategy"]["type"] == "NewCluster"
    groups = _groups(service)
    assert set(groups) == {"cpu", "gpu-geometry", "gpu-texture"}
    for name in ("gpu-geometry", "gpu-texture"):
        g = groups[name]
        spec = g["template"]["spec"]
        limits = spec["containers"][0]["resources"]["limits"]
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        assert limits["nvidia.com/gpu"] == g["rayStartParams"]["num-gpus"] == "1"
        assert spec["nodeSelector"]["nvidia.com/gpu.product"]
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # each GPU deployment asks for what exactly one GPU group carries, and scales to zero
    pools = _serve_config(service)["applications"][0]["args"]["pools"]
    for pool, group in {"geometry": "gpu-geometry", "texture": "gpu-texture"}.items():
        want = {"GPU": pools[pool]["num_gpus"], f"accelerator_type:{pools[pool]['accelerator_type']}": 1}
        fits = [n for n, g in groups.items() if all(_resource_of(g).get(k, 0) >= v for k, v in want.items())]
        assert fits == [group] and pools[pool]["min_size"] == 0
    for pool in ("analysis", "export"):
        assert pools[pool].get("num_gpus", 0) == 0
    # the model root: a read-only claim in every Ray pod
    assert by_kind(docs, "PersistentVolumeClaim")[0]["metadata"]["name"] == "portrait3d-models"
    for where, c in containers(service):
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"], where


def test_the_longest_head_fits_in_the_old_cluster_after_an_upgrade(rendered):
    from portrait3d.serve_app.settings import ServeSettings

    for target in OVERLAYS:
        spec = by_kind(rendered[target], "RayService")[0]["spec"]
        # a paper head takes tens of minutes on one GPU; the old cluster must outlive the lease too
        assert spec["rayClusterDeletionDelaySeconds"] >= 600 + ServeSettings().lease_s


@pytest.mark.parametrize("target", OVERLAYS)
def test_pods_have_limits_secrets_by_reference_probes_and_metrics(rendered, target):
    docs = rendered[target]
    for doc in docs:
        for where, c in containers(doc) + [(f"{doc['kind']}", c) for c in _plain_containers(doc)]:
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{doc['metadata']['name']} {where} {kind}"
            for env in c.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
    config = {k for d in by_kind(docs, "ConfigMap") for k in d["data"]}
    assert not any(re.search(r"PASSWORD|TOKEN|SECRET", k) for k in config)
    service = by_kind(docs, "RayService")[0]
    for where, template in pod_templates(service):
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        if where != "head":  # the proxies run on the workers; KubeRay probes the head itself
            c = template["spec"]["containers"][0]
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}


def _plain_containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"] if doc["kind"] in ("StatefulSet", "Deployment") else []


@pytest.mark.parametrize("target", OVERLAYS)
def test_disruption_budgets_select_the_service_pods(rendered, target):
    docs = rendered[target]
    labels = [t["metadata"]["labels"] for _, t in pod_templates(by_kind(docs, "RayService")[0])]
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= lab.items() for lab in labels), pdb["metadata"]["name"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_batch_job_runs_on_the_service_worker_shapes(rendered, target):
    docs = rendered[target]
    job = by_kind(docs, "RayJob")[0]
    spec = job["spec"]
    assert spec["suspend"] is True and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
    assert spec["submissionMode"] == "K8sJobMode" and spec["entrypoint"].startswith("portrait3d batch ")
    service_groups, job_groups = _groups(by_kind(docs, "RayService")[0]), _groups(job)
    assert set(job_groups) == set(service_groups)
    for name, g in job_groups.items():
        s = service_groups[name]
        assert g["rayStartParams"] == s["rayStartParams"] and g["maxReplicas"] == s["maxReplicas"]
        js, ss = g["template"]["spec"], s["template"]["spec"]
        for key in ("nodeSelector", "tolerations", "volumes", "securityContext"):
            assert js.get(key) == ss.get(key), (name, key)
        assert js["containers"][0]["resources"] == ss["containers"][0]["resources"]
        assert js["containers"][0]["image"] == ss["containers"][0]["image"]
    if target == "overlays/gpu-prod":
        for flag in ("geometry.num_gpus=1", "geometry.accelerator_type=H100", "texture.accelerator_type=L4"):
            assert flag in spec["entrypoint"]


def test_batch_entrypoint_parses_as_the_cli(rendered, tmp_path):
    """The gpu-prod RayJob's command line, with its variables set, is one `portrait3d batch` accepts
    up to the point of reading its input (a bad input folder here, exit 2 with an InputError)."""
    import shlex

    job = by_kind(rendered["overlays/gpu-prod"], "RayJob")[0]
    env = {"PORTRAIT3D_BATCH_INPUT": str(tmp_path / "none"), "PORTRAIT3D_BATCH_OUTPUT": str(tmp_path / "out")}
    env["PORTRAIT3D_BATCH_PROFILE"] = "fast"
    line = job["spec"]["entrypoint"].replace("-m /models", "")
    for k, v in env.items():
        line = line.replace(f'"${k}"', shlex.quote(v))
    argv = shlex.split(line)
    r = subprocess.run([sys.executable, "-m", "portrait3d.cli", *argv[1:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such" in r.stderr.lower() or "InputError" in r.stderr, r.stderr


# -- images --------------------------------------------------------------------------------------
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert len(DOCKERFILES) == 2
    r = subprocess.run([str(hadolint), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for path in DOCKERFILES:
        text = path.read_text()
        base = re.search(r"^FROM (\S+)", text, re.M).group(1)
        assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py\d+-(cpu|cu\d+)", base), base
        assert re.findall(r"^USER (\S+)", text, re.M)[-1] != "0"
        assert not re.search(r"(?i)(password|secret|token)\s*=", text)


def _run_commands(path: Path) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    cmds = []
    for line in re.findall(r"^RUN (.+)$", text, re.M):
        cmds += [" ".join(c.split()) for c in line.split("&&")]
    return cmds


def test_dockerfiles_install_as_the_readme_documents():
    import ray

    readme = " ".join((REPO / "README.md").read_text().split())
    for path in DOCKERFILES:
        pips = [c for c in _run_commands(path) if c.startswith("pip install")]
        assert len(pips) >= 2, path.name
        for cmd in pips:
            assert cmd in readme, f"{path.name} runs `{cmd}`, which README.md does not document"
        assert f"rayproject/ray:{ray.__version__}-" in path.read_text()


def test_constraints_pin_every_dependency_within_pyproject():
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    for req in map(Requirement, reqs):
        version = pins.get(canonicalize_name(req.name))
        assert version, f"{req.name} is not pinned in deploy/docker/constraints.txt"
        assert "+" not in version and req.specifier.contains(version, prereleases=True), (req, version)


def test_manifests_use_the_images_and_ray_version_built_here(rendered):
    import ray

    for target, tag in {"overlays/dev-cpu": "cpu", "overlays/gpu-prod": "cuda"}.items():
        for doc in by_kind(rendered[target], "RayService") + by_kind(rendered[target], "RayJob"):
            cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
            assert cluster["rayVersion"] == ray.__version__
            for where, c in containers(doc):
                assert c["image"].endswith(f"-{tag}"), (where, c["image"])
