"""A model root from the published checkpoints: each role's files fetched from its Hugging Face
repository with ``huggingface_hub`` at a pinned revision, laid out as the role's folder, and the
manifest written with every file's SHA-256.

Only the files a role needs are fetched (safetensors where the repository has them, else the
pickle), into the Hugging Face cache (``HF_HUB_CACHE``; downloads resume), then linked into the
root. With ``HF_HUB_OFFLINE=1`` the same code takes them from the cache alone. Revisions are the
commits the authors' release names where it names one; where it does not, the files are pinned by
their SHA-256 instead. A gated repository takes the token from ``HF_TOKEN``.

Example:
    >>> plan = pull_plan(["vae"])                        # doctest: +SKIP
    >>> pull_root("/models/portrait3d", plan)            # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ... import storage
from ...errors import ModelError
from .roles import ROLES, role
from .root import index_root

# File groups: each is a tuple of alternatives (paths or globs in the repository), the first one
# present is taken. A role's folder holds what the groups pick, with ``subfolder`` removed.
Groups = tuple[tuple[str, ...], ...]


def _component(name: str, weights: str = "diffusion_pytorch_model") -> Groups:
    prefix = f"{name}/" if name else ""
    return ((f"{prefix}config.json",), (f"{prefix}{weights}.safetensors", f"{prefix}{weights}.bin"))


SD15: Groups = (
    *_component("unet"),
    *_component("text_encoder", "model"),
    ("tokenizer/*",),
    ("scheduler/scheduler_config.json",),
)
SD15_WITH_VAE: Groups = SD15 + _component("vae")


@dataclass(frozen=True)
class HubSource:
    """Where a role comes from on the Hugging Face Hub."""

    repo_id: str
    revision: str  # a commit (pinned) or a branch, then the files are pinned by ``sha256``
    groups: Groups
    subfolder: str = ""
    sha256: dict[str, str] = field(default_factory=dict)  # repository path -> expected SHA-256
    licence_url: str = ""

    @property
    def url(self) -> str:
        return self.licence_url or f"https://huggingface.co/{self.repo_id}"


PORTRAIT_V11_SHA256 = "a48cb4f89ed18e02c6000f65aa9efec452e87eaed4a1bc9fcf4a460c8d0e3bc6"

SOURCES: dict[str, HubSource] = {
    "geometry_normal": HubSource(
        "xanderhuang/normal-adapted-sd1.5", "a44f486d748a4bd0b46fc90113b5612afc58e0c4", SD15_WITH_VAE
    ),
    "geometry_depth": HubSource(
        "xanderhuang/depth-adapted-sd1.5", "4f8cdfc5b0c531520fdbb88df33e7e609c14a402", SD15_WITH_VAE
    ),
    "texture_base": HubSource("SG161222/Realistic_Vision_V4.0_noVAE", "980a16dee9c208293b990744e245efcf1fb54035", SD15),
    "vae": HubSource("stabilityai/sd-vae-ft-mse", "31f26fdeee1355a5c34592e401dd41e45d25a493", _component("")),
    "controlnet_landmarks": HubSource(
        "CrucibleAI/ControlNetMediaPipeFace",
        "f6ed75cc495674bea8bf7409ef3d0e5bfb7d8c90",
        _component("diffusion_sd15"),
        subfolder="diffusion_sd15",
    ),
    "controlnet_canny": HubSource(
        "lllyasviel/control_v11p_sd15_canny", "115a470d547982438f70198e353a921996e2e819", _component("")
    ),
    "controlnet_normal": HubSource(
        "lllyasviel/control_v11p_sd15_normalbae", "cb7296e6587a219068e9d65864e38729cd862aa8", _component("")
    ),
    "ip_adapter_faceid": HubSource(
        "h94/IP-Adapter-FaceID",
        "main",
        (("ip-adapter-faceid-portrait-v11_sd15.bin",),),
        sha256={"ip-adapter-faceid-portrait-v11_sd15.bin": PORTRAIT_V11_SHA256},
    ),
    "arcface": HubSource(
        "public-data/insightface",  # a mirror of insightface's buffalo_l release (w600k_r50.onnx, unchanged)
        "main",
        (("models/buffalo_l/w600k_r50.onnx",),),
        subfolder="models/buffalo_l",
        sha256={"models/buffalo_l/w600k_r50.onnx": "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"},
        licence_url="https://github.com/deepinsight/insightface#license",
    ),
    "face_parsing": HubSource(
        "jonathandinu/face-parsing",
        "6470d31c421242c048070fa7c32e2aef77898684",  # after the fix of its label names
        (("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin")),
    ),
    "caption": HubSource(
        "Salesforce/blip2-opt-2.7b",
        "main",
        (
            ("config.json",),
            ("preprocessor_config.json", "processor_config.json"),
            ("tokenizer*", "vocab.json"),
            ("special_tokens_map.json",),
            ("model.safetensors.index.json", "pytorch_model.bin.index.json"),
            ("model-*.safetensors", "pytorch_model-*.bin"),
        ),
    ),
}
DEFAULT_ROLES = tuple(r for r in SOURCES if ROLES[r].required) + ("face_parsing",)


@dataclass(frozen=True)
class PlannedRole:
    role: str
    source: HubSource


def pull_plan(roles: Iterable[str] | None = None, sources: dict[str, HubSource] | None = None) -> list[PlannedRole]:
    """The roles to pull (every required one and face parsing by default) with their sources."""
    sources = sources or SOURCES
    names = list(roles) if roles else list(DEFAULT_ROLES)
    plan = []
    for name in names:
        role(name)
        if name not in sources:
            raise ModelError(f"role {name} has no published source to pull; put its files in the root by hand")
        plan.append(PlannedRole(name, sources[name]))
    return plan


def licences(plan: list[PlannedRole]) -> list[tuple[str, str, str]]:
    """(role, licence, where to read it) for every planned role."""
    return [(p.role, ROLES[p.role].licence, p.source.url) for p in plan]


def pull_root(
    root: str | Path,
    plan: list[PlannedRole],
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Fetch every planned role into the local folder ``root`` and write its manifest (hashing every
    role folder present). Returns the manifest."""
    if storage.is_s3(str(root)):
        raise ModelError("models pull writes a local folder; copy it to s3:// afterwards (aws s3 sync)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pulled = {}
    for p in plan:
        progress(f"{p.role}: {p.source.repo_id}@{p.source.revision[:12]}")
        _pull_role(root / p.role, p.source, cache_dir, p.role)
        pulled[p.role] = f"{p.source.repo_id}@{p.source.revision}"
    progress("manifest")
    return index_root(root, sources=pulled)


def _pull_role(folder: Path, src: HubSource, cache_dir: str | Path | None, name: str) -> None:
    from huggingface_hub import hf_hub_download

    available = _repo_files(src, cache_dir, name)
    wanted = _select(src.groups, available, name, src.repo_id)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for repo_path in wanted:
        try:
            cached = hf_hub_download(src.repo_id, repo_path, revision=src.revision, cache_dir=cache_dir)
        except Exception as e:  # network, gated repository, not in the offline cache
            raise ModelError(f"role {name}: cannot fetch {src.repo_id}/{repo_path}: {type(e).__name__}: {e}") from None
        want = src.sha256.get(repo_path)
        got = storage.sha256(cached) if want else None
        if got != want:
            raise ModelError(
                f"role {name}: {src.repo_id}/{repo_path} at {src.revision} is not the pinned file "
                f"(SHA-256 {got[:12]}..., expected {want[:12]}...)"
            )
        rel = repo_path[len(src.subfolder) + 1 :] if src.subfolder else repo_path
        _link_or_copy(Path(cached), staging / rel)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _repo_files(src: HubSource, cache_dir: str | Path | None, name: str) -> list[str]:
    """The repository's file paths at the revision: from the Hub, or offline from the cached snapshot."""
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        if constants.HF_HUB_OFFLINE:
            snap = Path(
                snapshot_download(src.repo_id, revision=src.revision, cache_dir=cache_dir, local_files_only=True)
            )
            return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
        return sorted(HfApi().list_repo_files(src.repo_id, revision=src.revision))
    except Exception as e:
        where = "the offline cache" if constants.HF_HUB_OFFLINE else "the Hub"
        raise ModelError(
            f"role {name}: {src.repo_id}@{src.revision} not found in {where}: {type(e).__name__}: {e}"
        ) from None


def _select(groups: Groups, available: list[str], name: str, repo_id: str) -> list[str]:
    picked = []
    for alternatives in groups:
        for pattern in alternatives:
            hits = [f for f in available if fnmatch.fnmatchcase(f, pattern) and "/." not in "/" + f]
            if hits:
                picked += hits
                break
        else:
            raise ModelError(f"role {name}: {repo_id} has none of {', '.join(alternatives)}")
    return picked


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to the cached blob (no second copy of gigabytes), or a copy across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    blob = src.resolve()
    try:
        os.link(blob, dst)
    except OSError:
        shutil.copyfile(blob, dst)


def sources_with(overrides: dict) -> dict[str, HubSource]:
    """:data:`SOURCES` with some roles' ``repo_id``, ``revision``, ``subfolder`` or ``sha256`` replaced
    (``{role: {field: value}}``, e.g. from JSON): a mirror, a fork, or another revision."""
    if not isinstance(overrides, dict):
        raise ModelError("sources: expected {role: {repo_id, revision, subfolder, sha256}}")
    out = dict(SOURCES)
    for name, fields in overrides.items():
        role(name)
        allowed = {"repo_id", "revision", "subfolder", "sha256", "licence_url"}
        if not isinstance(fields, dict) or set(fields) - allowed:
            raise ModelError(f"sources: role {name} takes only {', '.join(sorted(allowed))}")
        if "sha256" in fields and not (
            isinstance(fields["sha256"], dict) and all(isinstance(v, str) for v in fields["sha256"].values())
        ):
            raise ModelError(f"sources: role {name}: sha256 is {{repository path: hex digest}}")
        if name not in out:
            raise ModelError(f"sources: role {name} has no file layout to pull")
        out[name] = replace(out[name], **fields)
    return out
