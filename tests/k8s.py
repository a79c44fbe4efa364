"""Offline checks of the Kubernetes manifests: render an overlay with the pinned kubectl's kustomize,
validate KubeRay objects against the CRD schemas made strict and core objects with
``kubernetes-validate`` (strict), pod templates inside KubeRay objects included.

    >>> strict({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}})["additionalProperties"]
    False
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
CRDS = REPO.parent / "shared" / "k8s-crds"
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
#: The Kubernetes API version core objects are checked against (kubectl's is 1.31; clusters run newer).
KUBERNETES_VERSION = "1.31.0"
OVERLAYS = ("base", "overlays/dev-cpu", "overlays/gpu-prod")


def render(target: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s/<target>``: the objects an apply would create."""
    assert KUBECTL.exists(), f"{KUBECTL} is missing: `bash setup.sh` installs the pinned kubectl (kustomize)"
    out = subprocess.run([str(KUBECTL), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema where every object with listed properties rejects other keys
    (what the API server's strict field validation does), except where unknown fields are preserved."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` -> the strict schema of each served version of the KubeRay CRDs."""
    assert CRDS.is_dir(), f"the KubeRay CRD schemas are not at {CRDS} (../shared/k8s-crds beside the repository)"
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, template)`` of every pod template a KubeRay object holds."""
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or {}
    found = []
    if "headGroupSpec" in cluster:
        found.append(("head", cluster["headGroupSpec"]["template"]))
    for group in cluster.get("workerGroupSpecs", []):
        found.append((f"group {group['groupName']}", group["template"]))
    if "submitterPodTemplate" in spec:
        found.append(("submitter", spec["submitterPodTemplate"]))
    return found


def validate(doc: dict[str, Any]) -> list[str]:
    """What is wrong with one object ([] when it would be accepted with strict field validation)."""
    import jsonschema
    import kubernetes_validate

    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    errors = []

    def core(obj: dict[str, Any], what: str) -> None:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{name} {what}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")

    schema = crd_schemas().get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        core(doc, "")
        return errors
    for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
        errors.append(f"{name}: {e.message} at {'.'.join(map(str, e.absolute_path))}")
    # metadata is a bare object in CRD schemas: check it as Kubernetes' ObjectMeta
    core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": copy.deepcopy(doc.get("metadata", {}))}, "metadata")
    for where, template in pod_templates(doc):
        core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}, where)
    return errors


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(where, c) for where, t in pod_templates(doc) for c in t["spec"]["containers"]]
