"""Stage 3-4 of the ``paper`` profile: ID-aware geometry supervision and geometry sculpting with ISD
on DMTet.

1. ID-aware reference maps (stage 3): the normal- and depth-adapted SD1.5 models, conditioned on the
   portrait's canny edges (canny ControlNet) and the person's ArcFace embedding (IP-Adapter FaceID),
   sample a normal map and a depth map of the reference view.
2. DMTet (stage 4): a narrow-band tetrahedral grid around the stage-2 mesh, its SDF initialised from
   that mesh, SDF values and vertex offsets optimised with Adam:
   - normal fitting: for the first steps, normal maps at random views match the stage-2 mesh's;
   - then reference-view losses (mask, normal, depth by negative Pearson) alternate with ISD (the
     normal-adapted model with the landmark ControlNet and the ID adapter) at random cameras;
   - normal consistency and Laplacian regularizers on the extracted mesh throughout.

Camera ranges follow the settings' ratios to the reference camera (distance 3.5-4.5 against 3.8,
fovy 25-45 against 28), since our reference camera is the one estimated from the photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree

from ..errors import ConfigError, OptimizationError
from .camera import CV_TO_GL, Camera
from .config import Schedule, register
from .dmtet import DMTetSurface
from .guidance import DiffusionStageSettings, IDGuidance, ISDSettings, id_embeds
from .image_io import mask_coverage
from .mesh import mirror_map, vertex_normals
from .render import get_rasterizer
from .sculpt import negative_pearson
from .types import HeadMesh, PortraitAnalysis

Progress = Callable[[float, str], None]
_GL = torch.tensor(CV_TO_GL, dtype=torch.float32)


def render_geometry(raster, cam: Camera, v: torch.Tensor, f: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normal map and depth of a mesh at ``cam`` (its own size).

    Returns ``normal`` ``(H, W, 3)``: OpenGL camera-frame normals (x right, y up, z toward the viewer),
    zero on the background; ``image`` ``(3, H, W)`` in [0, 1], the normal map as an image
    (``n / 2 + 1 / 2``, black background, antialiased); ``mask`` ``(H, W)`` bool; ``silhouette``
    ``(H, W, 1)`` antialiased coverage; ``depth`` ``(H, W)`` camera depth (metres, 0 off the mesh).
    """
    pos = cam.clip(v.double()).float()
    rast = raster.rasterize(pos, f, (cam.height, cam.width))
    R = torch.as_tensor(cam.R, dtype=v.dtype, device=v.device)
    n_cam = vertex_normals(v, f) @ R.T @ _GL.to(v.device).T
    normal = F.normalize(raster.interpolate(n_cam, rast, f), dim=-1) * rast.mask[..., None]
    depth = raster.interpolate(cam.to_camera(v)[:, 2:], rast, f)[..., 0] * rast.mask
    cover = rast.mask.float()[..., None]
    both = raster.antialias(torch.cat([(normal * 0.5 + 0.5) * cover, cover], -1), rast, pos, f)
    return {
        "normal": normal,
        "image": both[..., :3].permute(2, 0, 1),
        "mask": rast.mask,
        "silhouette": both[..., 3:],
        "depth": depth,
    }


def normal_from_image(img: np.ndarray) -> np.ndarray:
    """Inverse of the normal map image of :func:`render_geometry`: ``(H, W, 3)`` uint8 -> unit
    normals ``(H, W, 3)`` float32."""
    n = img.astype(np.float32) / 127.5 - 1.0
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def mesh_regularizers(v: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normal consistency: mean ``1 - cos`` between the normals of faces sharing an edge; uniform
    Laplacian: mean squared distance of each vertex to its neighbours' centroid)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    fn = F.normalize(torch.cross(b - a, c - a, dim=1), dim=1, eps=1e-12)
    edges = torch.sort(torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), dim=1).values
    face_of = torch.arange(len(f), device=f.device).repeat(3)
    _, inv = torch.unique(edges, dim=0, return_inverse=True)
    order = torch.argsort(inv, stable=True)
    si, sf = inv[order], face_of[order]
    pair = si[1:] == si[:-1]  # a closed manifold mesh has each edge twice, adjacent after the sort
    consistency = (1 - (fn[sf[:-1][pair]] * fn[sf[1:][pair]]).sum(-1)).mean() if pair.any() else v.sum() * 0
    e = edges
    deg = torch.zeros(len(v), device=v.device).index_add(0, e.reshape(-1), torch.ones(e.numel(), device=v.device))
    nbr = torch.zeros_like(v).index_add(0, e[:, 0], v[e[:, 1]]).index_add(0, e[:, 1], v[e[:, 0]])
    used = deg > 0
    lap = (nbr[used] / deg[used, None] - v[used]).pow(2).sum(-1).mean()
    return consistency, lap


def largest_component(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The connected component with the most faces (marching tetrahedra can leave floaters)."""
    m = trimesh.Trimesh(v, f, process=False)
    parts = m.split(only_watertight=False)
    if len(parts) <= 1:
        return v, f
    best = max(parts, key=lambda p: len(p.faces))
    return np.asarray(best.vertices, np.float32), np.asarray(best.faces, np.int64)


def decimate(v: np.ndarray, f: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric-error decimation to at most ``max_faces`` faces (marching tetrahedra at a fine grid
    gives hundreds of thousands of faces, more than texturing and a glb need). Decimation can leave a
    non-manifold edge; slightly lower targets are tried until the mesh is closed (measured: a 766k-face
    head gave an open mesh at 150k faces, a closed one at 60k)."""
    import fast_simplification

    v32, f64 = np.ascontiguousarray(v, np.float32), np.ascontiguousarray(f, np.int64)
    for target in (max_faces, int(max_faces * 0.9), int(max_faces * 0.8), int(max_faces * 0.7)):
        vd, fd = fast_simplification.simplify(v32, f64, target_count=target)
        vd, fd = largest_component(np.asarray(vd, np.float32), np.asarray(fd, np.int64))
        if trimesh.Trimesh(vd, fd, process=False).is_watertight:
            break
    return vd, fd


def transfer_attributes(v: np.ndarray, source: HeadMesh) -> tuple[np.ndarray, np.ndarray]:
    """Mirror map ``(N,)`` (nearest vertex to each vertex reflected through x = 0) and face weight
    ``(N,)`` (from the nearest vertex of ``source``) for a new mesh ``v (N, 3)``."""
    _, nn = cKDTree(source.vertices).query(v)
    return mirror_map(v)[1], source.face_weight[nn].astype(np.float32)


def random_camera(ref: Camera, rng: np.random.Generator, cfg, size: int) -> Camera:
    """A camera of the settings' ranges around the head centre, scaled to the reference camera."""
    elev = rng.uniform(*cfg.elevation_range)
    azim = rng.uniform(*cfg.azimuth_range)
    dist = float(np.linalg.norm(ref.center)) * rng.uniform(*cfg.distance_range) / cfg.reference_distance
    fovy = ref.fovy_deg * rng.uniform(*cfg.fovy_range) / cfg.reference_fovy
    return Camera.orbit(azim, elev, dist, fovy, size)


@register("sculpt", "isd_dmtet")
class ISDDMTetSculpt:
    @dataclass
    class Config(DiffusionStageSettings):
        grid_resolution: int = field(default=256, metadata={"help": "DMTet cube cells per side of the grid"})
        grid_margin: float = field(
            default=0.03,
            metadata={"help": "free space between the stage-2 mesh's bounding box and the grid cube, metres"},
        )
        band: float = field(
            default=0.04,
            metadata={"help": "keep grid cells within this distance of the stage-2 mesh, metres (0: whole grid)"},
        )
        max_faces: int = field(
            default=60_000,
            metadata={"help": "decimate the extracted mesh to at most this many faces (quadric error; 0: keep all)"},
        )
        deform_scale: float = field(default=0.5, metadata={"help": "largest vertex offset of the grid, in cells"})
        steps: int = field(default=6000, metadata={"help": "optimization steps in all"})
        normal_fit_steps: int = field(
            default=1000, metadata={"help": "first steps that fit the stage-2 mesh's normals only"}
        )
        lr: float = field(default=0.005, metadata={"help": "Adam learning rate of SDF and offsets (grid units)"})
        render_size: int = field(default=512, metadata={"help": "render side for losses and ISD"})
        prompt: str = field(
            default="a DSLR photo of the head of {caption}",
            metadata={"help": "text condition; {caption} is the portrait's caption"},
        )
        prompt_suffix: str = field(
            default=", black background, normal map",
            metadata={"help": "appended to the prompt for the normal/depth models"},
        )
        guidance_scale: float = field(default=50.0, metadata={"help": "ISD classifier-free guidance scale"})
        t_min: Schedule = field(
            default=Schedule.parse(0.02), metadata={"help": "lowest ISD noise level (fraction of training steps)"}
        )
        t_max: Schedule = field(default=Schedule.parse(0.5), metadata={"help": "highest ISD noise level"})
        landmark_scale: float = field(default=1.0, metadata={"help": "landmark ControlNet scale in ISD"})
        id_scale: float = field(default=1.0, metadata={"help": "IP-Adapter FaceID scale"})
        elevation_range: tuple[float, float] = field(
            default=(-15.0, 45.0), metadata={"help": "random camera elevation, degrees"}
        )
        azimuth_range: tuple[float, float] = field(
            default=(-180.0, 180.0), metadata={"help": "random camera azimuth, degrees"}
        )
        distance_range: tuple[float, float] = field(
            default=(3.5, 4.5), metadata={"help": "random camera distance, in the settings' units"}
        )
        fovy_range: tuple[float, float] = field(
            default=(25.0, 45.0), metadata={"help": "random camera fovy, degrees in the settings"}
        )
        reference_distance: float = field(
            default=3.8, metadata={"help": "the settings' reference-camera distance (maps to ours)"}
        )
        reference_fovy: float = field(
            default=28.0, metadata={"help": "the settings' reference-camera fovy (maps to ours)"}
        )
        reference_maps: bool = field(
            default=True, metadata={"help": "sample ID-aware reference normal/depth maps (stage 3)"}
        )
        reference_steps: int = field(default=30, metadata={"help": "sampling steps of each reference map"})
        reference_guidance: float = field(default=7.5, metadata={"help": "CFG scale of the reference maps"})
        canny_scale: float = field(default=1.0, metadata={"help": "canny ControlNet scale of the reference maps"})
        w_sd: Schedule = field(default=Schedule.parse(1.0), metadata={"help": "ISD loss weight"})
        w_fit: Schedule = field(
            default=Schedule.parse(1e4), metadata={"help": "normal-fit loss weight (normal-fit phase)"}
        )
        w_mask: Schedule = field(default=Schedule.parse(100.0), metadata={"help": "reference mask MSE weight"})
        w_depth: Schedule = field(
            default=Schedule.parse(100.0), metadata={"help": "reference depth negative-Pearson weight"}
        )
        w_normal: Schedule = field(default=Schedule.parse(1e4), metadata={"help": "reference normal MSE weight"})
        w_normal_consistency: Schedule = field(
            default=Schedule.parse(1e3), metadata={"help": "normal consistency weight"}
        )
        w_laplacian: Schedule = field(
            default=Schedule.parse(1e4), metadata={"help": "Laplacian smoothness weight (grid units^2)"}
        )

        def validate(self) -> None:
            if self.grid_resolution < 8:
                raise ConfigError("sculpt.grid_resolution must be at least 8")
            if not 0 <= self.normal_fit_steps <= self.steps:
                raise ConfigError("sculpt.normal_fit_steps must lie in [0, steps]")
            if self.render_size % 8:
                raise ConfigError("sculpt.render_size must be a multiple of 8 (the VAE's factor)")

    def __init__(self, cfg: "ISDDMTetSculpt.Config"):
        from .models import ModelRoot
        from .models.diffusion import load_controlnet_pipeline, resolve_device, with_controlnet

        if not cfg.models:
            raise ConfigError("the isd_dmtet sculpt stage needs a model root: --models ROOT")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = torch.float16 if cfg.half else torch.float32
        root = ModelRoot(cfg.models, allow_pickle=cfg.allow_pickle)
        kw = dict(id_scale=cfg.id_scale, dtype=dtype, device=self.device)
        # One UNet per base; the canny and landmark ControlNets share it.
        self.normal_ref = load_controlnet_pipeline(root, "geometry_normal", ("controlnet_canny",), **kw)
        self.depth_ref = (
            load_controlnet_pipeline(root, "geometry_depth", ("controlnet_canny",), **kw)
            if cfg.reference_maps
            else None
        )
        isd_pipe = with_controlnet(self.normal_ref, root, "controlnet_landmarks")
        self.isd = IDGuidance(
            isd_pipe,
            ISDSettings(
                guidance_scale=cfg.guidance_scale, t_min=cfg.t_min, t_max=cfg.t_max, control_scale=cfg.landmark_scale
            ),
        )
        self.raster = get_rasterizer(cfg.rasterizer, self.device)

    # -- stage 3 ---------------------------------------------------------------------------
    @torch.no_grad()
    def reference_maps(self, a: PortraitAnalysis, generator: torch.Generator) -> dict[str, np.ndarray]:
        """ID-aware normal ``(S, S, 3)`` (unit, OpenGL camera frame) and depth ``(S, S)`` (bigger is
        nearer, [0, 1]) of the reference view, ``S = render_size``."""
        from PIL import Image

        cfg, S = self.cfg, self.cfg.render_size
        canny = Image.fromarray(np.repeat((mask_coverage(a.canny > 0, S) > 0)[..., None], 3, -1).astype(np.uint8) * 255)
        out = {}
        for name, pipe in (("normal", self.normal_ref), ("depth", self.depth_ref)):
            ids = id_embeds(a.identity, self.device, pipe.unet.dtype)
            text = cfg.prompt.replace("{caption}", a.caption) + cfg.prompt_suffix.replace("normal map", f"{name} map")
            img = pipe(
                prompt=text,
                image=canny,
                height=S,
                width=S,
                num_inference_steps=cfg.reference_steps,
                guidance_scale=cfg.reference_guidance,
                controlnet_conditioning_scale=cfg.canny_scale,
                ip_adapter_image_embeds=[ids],
                generator=generator,
                output_type="np",
            ).images[0]
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            out[name] = normal_from_image(img) if name == "normal" else img.mean(-1) / 255.0
        return out

    # -- stage 4 ---------------------------------------------------------------------------
    def __call__(self, a: PortraitAnalysis, head: HeadMesh, progress: Progress | None = None) -> tuple[HeadMesh, dict]:
        cfg, dev, S = self.cfg, self.device, self.cfg.render_size
        report = progress or (lambda f, m: None)
        if a.identity.shape[-1] != 512:
            raise ConfigError(
                f"ISD needs a 512-D ArcFace identity; the analysis gave {a.identity_model} "
                f"({a.identity.shape[-1]}-D): use analysis.identity=arcface"
            )
        # Seeded from the global generators, which the pipeline seeds per step from the config.
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        rng = np.random.default_rng(int(np.random.randint(2**31)))
        ref_cam = a.camera.resized(S)
        mask = torch.from_numpy(mask_coverage(a.head_mask, S))[..., None].to(dev)
        if cfg.reference_maps:
            report(0.0, "ID-aware reference maps")
            refs = self.reference_maps(a, gen)
            ref_normal = torch.from_numpy(refs["normal"]).to(dev)
            ref_depth = torch.from_numpy(refs["depth"]).float().to(dev)
        else:
            ref_normal = ref_depth = None
        report(0.05, "DMTet grid")
        surf = DMTetSurface.from_mesh(
            head.vertices, head.faces, cfg.grid_resolution, cfg.band, cfg.grid_margin, cfg.deform_scale, dev
        )
        opt = torch.optim.Adam(surf.parameters(), lr=cfg.lr)
        init_v = torch.tensor(head.vertices, device=dev)
        init_f = torch.tensor(head.faces, device=dev)
        cond_text = cfg.prompt.replace("{caption}", a.caption) + cfg.prompt_suffix
        history = []

        for step in range(cfg.steps):
            v, f = surf.extract()
            if len(f) == 0:
                raise OptimizationError(
                    f"the DMTet surface vanished at step {step} (every SDF value has one "
                    f"sign); lower sculpt.lr or raise the regularizer weights"
                )
            log = {"step": step}
            if step < cfg.normal_fit_steps:
                cam = random_camera(ref_cam, rng, cfg, S)
                out = render_geometry(self.raster, cam, v, f)
                with torch.no_grad():
                    want = render_geometry(self.raster, cam, init_v, init_f)["image"]
                loss = cfg.w_fit(step) * F.mse_loss(out["image"], want)
                log["fit"] = loss.item()
            elif (step - cfg.normal_fit_steps) % 2 == 0:
                out = render_geometry(self.raster, ref_cam, v, f)
                loss = cfg.w_mask(step) * F.mse_loss(out["silhouette"], mask)
                log["mask"] = loss.item()
                both = out["mask"] & (mask[..., 0] > 0.5)
                if ref_normal is not None and both.sum() > 16:
                    l_n = cfg.w_normal(step) * F.mse_loss(out["normal"][both], ref_normal[both])
                    l_d = cfg.w_depth(step) * negative_pearson(-out["depth"][both], ref_depth[both])
                    loss = loss + l_n + l_d
                    log["normal"], log["depth"] = l_n.item(), l_d.item()
            else:
                cam = random_camera(ref_cam, rng, cfg, S)
                out = render_geometry(self.raster, cam, v, f)
                cond = self.isd.condition(cond_text, a.identity, a.landmarks_3d, [cam])
                l_sd, info = self.isd(out["image"][None], cond, step, gen)
                loss = cfg.w_sd(step) * l_sd
                log["sd"], log["t"] = loss.item(), info["t"][0]
            consistency, lap = mesh_regularizers(surf.to_unit(v), f)
            loss = loss + cfg.w_normal_consistency(step) * consistency + cfg.w_laplacian(step) * lap
            if not torch.isfinite(loss):
                raise OptimizationError(
                    f"the sculpt loss is not finite at step {step} ({log}); lower sculpt.lr or the loss weights"
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            surf.constrain()
            log["loss"] = loss.item()
            history.append(log)
            report(0.05 + 0.95 * (step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps} loss {loss.item():.4g}")

        with torch.no_grad():
            v, f = surf.extract()
        vn, fn = largest_component(v.cpu().numpy().astype(np.float32), f.cpu().numpy().astype(np.int64))
        extracted = len(fn)
        if cfg.max_faces and len(fn) > cfg.max_faces:
            vn, fn = decimate(vn, fn, cfg.max_faces)
        mirror, fw = transfer_attributes(vn, head)
        out_mesh = HeadMesh(vertices=vn, faces=fn, mirror=mirror, face_weight=fw)
        info = {
            "first": history[0] if history else {},
            "last": history[-1] if history else {},
            "grid_vertices": int(len(surf.grid)),
            "grid_tets": int(len(surf.tets)),
            "extracted_faces": extracted,
            "faces": int(len(fn)),
        }
        return out_mesh, info
