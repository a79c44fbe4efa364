"""A model root: a local folder or ``s3://`` prefix with one folder per role and ``manifest.json``.

::

    ROOT/manifest.json
    ROOT/texture_base/{unet,text_encoder,tokenizer,scheduler}/...   (diffusers folders)
    ROOT/vae/config.json, diffusion_pytorch_model.safetensors
    ROOT/ip_adapter_faceid/ip-adapter-faceid-portrait-v11_sd15.bin
    ROOT/arcface/w600k_r50.onnx

The manifest names each role's folder, every file with its SHA-256 and size, where it came from and
its licence::

    {"format": "portrait3d.models/1",
     "roles": {"vae": {"path": "vae", "source": "stabilityai/sd-vae-ft-mse", "licence": "mit",
                       "files": {"config.json": {"sha256": "...", "bytes": 553}, ...}}}}

Nothing is fetched from a hub. Files of an ``s3://`` root are copied once into a local cache and
checked against the manifest as they stream. Pickled weights (``.bin``, ``.pt``, ...) are loaded
only when they hold plain tensors (``torch.load(weights_only=True)``); one that holds code is refused
unless the user names its role in ``allow_pickle``.

Example:
    >>> root = ModelRoot("/models/portrait3d")              # doctest: +SKIP
    >>> unet_dir = root.folder("texture_base") / "unet"     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ... import storage
from ...errors import ModelError, StorageError
from .roles import PICKLE_SUFFIXES, ROLES, layout_problems, role

FORMAT = "portrait3d.models/1"
MANIFEST = "manifest.json"


def default_cache() -> Path:
    """``$PORTRAIT3D_CACHE`` or ``~/.cache/portrait3d``."""
    return Path(os.environ.get("PORTRAIT3D_CACHE") or Path.home() / ".cache" / "portrait3d")


def read_manifest(root: str) -> dict:
    uri = storage.join(root, MANIFEST)
    try:
        data = json.loads(storage.read_bytes(uri, max_bytes=16 << 20))
    except StorageError:
        raise ModelError(
            f"model root {root} has no readable {MANIFEST} (write one with `portrait3d models index {root}`)"
        ) from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{uri} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("roles"), dict):
        raise ModelError(f"{uri} is not a {FORMAT} manifest")
    for name, entry in data["roles"].items():
        role(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict) or not entry.get("path"):
            raise ModelError(f"{uri}: role {name} needs a path and a files table")
    return data


@dataclass
class RoleStatus:
    """One role of a root: ``present``, ``missing``, ``corrupt`` or ``absent`` (optional, not given)."""

    role: str
    state: str
    problems: list[str] = field(default_factory=list)
    source: str = ""
    licence: str = ""
    bytes: int = 0


def check_root(root: str, hashes: bool = True, roles: Iterable[str] | None = None) -> list[RoleStatus]:
    """The state of every role (or of ``roles``) of a root; ``hashes=False`` checks sizes only."""
    root = storage.normalize(root)
    manifest = read_manifest(root)
    out = []
    for name in roles or ROLES:
        r = role(name)
        entry = manifest["roles"].get(name)
        if entry is None:
            out.append(
                RoleStatus(name, "missing" if r.required else "absent", ["not in the manifest"] if r.required else [])
            )
            continue
        st = RoleStatus(name, "present", source=entry.get("source", ""), licence=entry.get("licence", ""))
        files = entry["files"]
        absent = [f"manifest lists {p}" for p in layout_problems(r.layout, list(files))]
        damaged = []
        for rel, meta in files.items():
            try:
                uri = storage.join(root, entry["path"], rel)
                size = storage.size(uri)
            except StorageError as e:
                absent.append(f"{rel}: {e}")
                continue
            st.bytes += size
            if size != meta.get("bytes"):
                damaged.append(f"{rel}: {size} bytes, the manifest says {meta.get('bytes')}")
            elif hashes and storage.sha256(uri) != meta.get("sha256"):
                damaged.append(f"{rel}: SHA-256 differs from the manifest")
        st.problems = absent + damaged
        if st.problems:
            st.state = "corrupt" if damaged else "missing"
        out.append(st)
    return out


def index_root(root: str | Path, sources: dict[str, str] | None = None) -> dict:
    """Write ``ROOT/manifest.json`` for the role folders found in a local root (hashing every file);
    a role's source and licence are ``sources``' or, failing that, the manifest's already there, or the
    reference release's. Returns the manifest."""
    root = Path(root)
    try:
        before = read_manifest(str(root))["roles"]
    except ModelError:
        before = {}
    roles = {}
    for name, r in ROLES.items():
        folder = root / name
        if not folder.exists():
            continue
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
                files[p.relative_to(folder).as_posix()] = {"sha256": storage.sha256(str(p)), "bytes": p.stat().st_size}
        old = before.get(name, {})
        roles[name] = {
            "path": name,
            "source": (sources or {}).get(name) or old.get("source") or r.reference,
            "licence": old.get("licence") or r.licence,
            "files": files,
        }
    if not roles:
        raise ModelError(f"{root} holds no role folders; roles: {', '.join(ROLES)}")
    manifest = {"format": FORMAT, "roles": roles}
    storage.write_bytes(str(root / MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


class ModelRoot:
    """Verified local folders of a model root's roles.

    Args:
        root: local folder or ``s3://`` prefix.
        allow_pickle: roles whose pickled files may run code when loaded (off for every role unless
            named here).
        cache: where files of an ``s3://`` root are copied, and where verified hashes are remembered.
    """

    def __init__(self, root: str, allow_pickle: Iterable[str] = (), cache: Path | None = None):
        self.root = storage.normalize(root)
        self.manifest = read_manifest(self.root)
        self.allow_pickle = set(allow_pickle)
        for name in self.allow_pickle:
            role(name)
        self.cache = Path(cache) if cache else default_cache()
        self._folders: dict[str, Path] = {}

    def has(self, name: str) -> bool:
        return name in self.manifest["roles"]

    def entry(self, name: str) -> dict:
        role(name)
        try:
            return self.manifest["roles"][name]
        except KeyError:
            raise ModelError(
                f"model root {self.root} has no {name} role "
                f"({ROLES[name].help}; the authors used {ROLES[name].reference})"
            ) from None

    def folder(self, name: str) -> Path:
        """The role's local folder, every file checked against the manifest (once per file version)."""
        if name in self._folders:
            return self._folders[name]
        entry = self.entry(name)
        problems = layout_problems(role(name).layout, list(entry["files"]))
        if problems:
            raise ModelError(f"model role {name} in {self.root}: {'; '.join(problems)}")
        remote = storage.is_s3(self.root)
        base = (
            self.cache / "roots" / hashlib.sha256(self.root.encode()).hexdigest()[:16] / name
            if remote
            else Path(storage.join(self.root, entry["path"]))
        )
        verified = _VerifiedHashes(self.cache / "verified.json")
        for rel, meta in entry["files"].items():
            local = Path(storage.join(str(base), rel))
            want = meta.get("sha256")
            if not (local.is_file() and local.stat().st_size == meta.get("bytes") and verified.get(local) == want):
                if remote:
                    try:
                        got = storage.sha256(storage.join(self.root, entry["path"], rel), to=local)
                    except StorageError as e:
                        raise ModelError(f"model role {name}: {rel} is missing or unreadable ({e})") from None
                elif not local.is_file():
                    raise ModelError(f"model role {name}: {rel} is missing from {base}")
                else:
                    got = storage.sha256(str(local))
                if got != want:
                    raise ModelError(
                        f"model role {name}: {rel} is corrupt (SHA-256 {got[:12]}..., "
                        f"the manifest says {str(want)[:12]}...)"
                    )
                verified.put(local, got)
            if local.suffix in PICKLE_SUFFIXES:
                self._check_pickle(name, local)
        verified.save()
        self._folders[name] = base
        return base

    def file(self, name: str, suffixes: tuple[str, ...]) -> Path:
        """The one file of a single-file role with one of ``suffixes``."""
        folder = self.folder(name)
        found = sorted(rel for rel in self.entry(name)["files"] if rel.endswith(suffixes))
        if not found:
            raise ModelError(f"model role {name} has no {' or '.join(suffixes)} file")
        return folder / found[0]

    def _check_pickle(self, name: str, path: Path) -> None:
        import torch

        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:  # not a torch zip checkpoint at all
            unsafe = [f"<unreadable as a torch checkpoint: {type(e).__name__}>"]
        if unsafe and name not in self.allow_pickle:
            raise ModelError(
                f"model role {name}: {path.name} is a pickle that runs code when loaded "
                f"({', '.join(unsafe[:4])}); convert it to safetensors, or allow it by name "
                f"with --allow-pickle {name}"
            )

    def load_weights(self, name: str, path: Path) -> dict:
        """A state dict from a safetensors file or a pickle (tensors only unless the role is allowed)."""
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=name not in self.allow_pickle)


class _VerifiedHashes:
    """``{path: [size, mtime_ns, sha256]}`` in a JSON file: hash multi-GB weights once, not every start."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    def get(self, p: Path) -> str | None:
        rec = self.data.get(str(p.resolve()))
        st = p.stat()
        return rec[2] if rec and rec[:2] == [st.st_size, st.st_mtime_ns] else None

    def put(self, p: Path, digest: str) -> None:
        st = p.stat()
        self.data[str(p.resolve())] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            try:
                storage.write_bytes(str(self.path), json.dumps(self.data).encode())
            except StorageError:
                pass  # a read-only cache only costs re-hashing next time
