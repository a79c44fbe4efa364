"""``portrait3d models pull`` end to end, offline: a Hugging Face cache folder filled with the tiny
models in the hub's cache layout (blobs, refs, snapshots of the pinned revisions, with files a role
does not need beside the ones it does), read through the real ``huggingface_hub`` code with
``HF_HUB_OFFLINE=1`` in a real ``portrait3d`` process."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portrait3d.pipelines.models.pull import SOURCES

DECOYS = {  # files the repositories also hold, which no role needs
    "geometry_normal": ["v1-5-pruned-emaonly.safetensors", "feature_extractor/preprocessor_config.json"],
    "texture_base": ["Realistic_Vision_V4.0.safetensors", "safety_checker/config.json"],
    "controlnet_landmarks": ["control_v2p_sd21_mediapipe_face.safetensors", "config.json"],
    "ip_adapter_faceid": ["ip-adapter-faceid_sd15.bin"],
    "arcface": ["models/buffalo_l/det_10g.onnx"],
    "face_parsing": ["onnx/model.onnx"],
}


def _commit(src) -> str:
    return src.revision if len(src.revision) == 40 else hashlib.sha1(src.repo_id.encode()).hexdigest()


def fill_hub_cache(cache: Path, tiny_root: Path) -> None:
    """Each role of the tiny root as its published repository would hold it, in the hub cache layout."""
    for name, src in SOURCES.items():
        role_dir = tiny_root / name
        if not role_dir.is_dir():
            continue
        repo = cache / f"models--{src.repo_id.replace('/', '--')}"
        commit = _commit(src)
        files = {
            (Path(src.subfolder) / p.relative_to(role_dir)).as_posix(): p.read_bytes()
            for p in role_dir.rglob("*")
            if p.is_file()
        }
        if name.startswith("geometry") or name == "texture_base":  # a pickle beside each safetensors file
            files["unet/diffusion_pytorch_model.bin"] = b"not needed: the safetensors file is there"
        files.update({d: b"decoy" for d in DECOYS.get(name, [])})
        for rel, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ("main" if src.revision == "main" else src.revision)).write_text(commit)


def _pull(args, cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf_home")}
    return subprocess.run(
        [sys.executable, "-m", "portrait3d.cli", "models", "pull", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_root):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    fill_hub_cache(cache, tiny_root)
    return cache


def _tiny_pins(tiny_root, tmp_path) -> Path:
    """The tiny files' SHA-256 for the two roles pinned by content (their real pins are the release's files)."""
    pins = {
        "ip_adapter_faceid": {"sha256": {"ip-adapter-faceid-portrait-v11_sd15.bin": None}},
        "arcface": {"sha256": {"models/buffalo_l/w600k_r50.onnx": None}},
    }
    for name, path in (("ip_adapter_faceid", "ip-adapter-faceid-portrait-v11_sd15.bin"), ("arcface", "w600k_r50.onnx")):
        key = next(iter(pins[name]["sha256"]))
        pins[name]["sha256"][key] = hashlib.sha256((tiny_root / name / path).read_bytes()).hexdigest()
    out = tmp_path / "sources.json"
    out.write_text(json.dumps(pins))
    return out


def test_pull_refuses_a_file_that_is_not_the_pinned_one(hub_cache, tmp_path):
    res = _pull([tmp_path / "root", "--roles", "ip_adapter_faceid", "--accept-licences"], hub_cache)
    assert res.returncode == 2 and "not the pinned file" in res.stderr, res.stderr
    assert not (tmp_path / "root" / "ip_adapter_faceid").exists()


def test_pull_needs_the_licences_accepted(hub_cache, tmp_path):
    res = _pull([tmp_path / "root", "--roles", "vae"], hub_cache)
    assert res.returncode == 2 and "--accept-licences" in res.stderr
    assert "mit" in res.stdout and "stabilityai/sd-vae-ft-mse" in res.stdout  # the licence table was shown
    assert not (tmp_path / "root" / "vae").exists()


def test_pull_builds_a_root_that_check_accepts(hub_cache, tiny_root, tmp_path):
    root = tmp_path / "root"
    res = _pull([root, "--accept-licences", "--sources", _tiny_pins(tiny_root, tmp_path)], hub_cache)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["roles"]) == {r for r, s in SOURCES.items() if r != "caption"}
    src = SOURCES["controlnet_landmarks"]
    assert manifest["roles"]["controlnet_landmarks"]["source"] == f"{src.repo_id}@{src.revision}"
    # Only what each role needs, laid out as the role's folder (subfolders taken off, safetensors chosen).
    assert sorted(manifest["roles"]["controlnet_landmarks"]["files"]) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert sorted(manifest["roles"]["arcface"]["files"]) == ["w600k_r50.onnx"]
    base = manifest["roles"]["geometry_normal"]["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in base and "vae/config.json" in base
    assert not any(f.endswith(".bin") or f.startswith(("feature_extractor", "v1-5")) for f in base)
    check = subprocess.run(
        [sys.executable, "-m", "portrait3d.cli", "models", "check", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # A second pull from the same cache is a no-op for the files: the same manifest.
    again = _pull([root, "--roles", "vae", "--accept-licences"], hub_cache)
    assert again.returncode == 0 and json.loads((root / "manifest.json").read_text()) == manifest


def test_pull_names_what_the_offline_cache_lacks(tmp_path):
    res = _pull([tmp_path / "root", "--roles", "vae", "--accept-licences"], tmp_path / "empty")
    assert res.returncode == 2 and "not found in the offline cache" in res.stderr


def test_sources_file_is_checked(hub_cache, tmp_path):
    bad = tmp_path / "sources.json"
    bad.write_text(json.dumps({"vae": {"repository": "x/y"}}))
    res = _pull([tmp_path / "root", "--accept-licences", "--sources", bad], hub_cache)
    assert res.returncode == 2 and "takes only" in res.stderr
