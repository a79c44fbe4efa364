"""The model roles of the ``paper`` profile: what each one is, its layout, and the authors' choice.

A role is a slot in the method (e.g. "the landmark ControlNet"); a model root fills each slot with
one folder or file in its library's own format. The reference columns name what the authors'
release (ID-Sculpt) used and its licence, so ``portrait3d models index`` can record them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Files each layout must hold, relative to the role's folder ("*" = any file with that suffix).
LAYOUTS: dict[str, tuple[str, ...]] = {
    # A Stable Diffusion 1.5 base without its VAE (the ``vae`` role is shared): diffusers folders.
    "sd15": (
        "unet/config.json",
        "unet/*weights",
        "text_encoder/config.json",
        "text_encoder/*weights",
        "tokenizer/*",
        "scheduler/scheduler_config.json",
    ),
    "vae": ("config.json", "*weights"),
    "hf_model": ("config.json", "*weights"),  # a transformers model folder
    "controlnet": ("config.json", "*weights"),
    "weights_file": ("*weights",),
    "onnx": ("*.onnx",),
    "folder": ("*",),
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Role:
    name: str
    layout: str
    help: str
    reference: str
    licence: str
    required: bool = True


ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            "geometry_normal",
            "sd15",
            "SD1.5 adapted to render normal maps (HumanNorm): ISD on normals, reference normal map",
            "xanderhuang/normal-adapted-sd1.5",
            "creativeml-openrail-m",
        ),
        Role(
            "geometry_depth",
            "sd15",
            "SD1.5 adapted to depth maps (HumanNorm): reference depth map",
            "xanderhuang/depth-adapted-sd1.5",
            "creativeml-openrail-m",
        ),
        Role(
            "texture_base",
            "sd15",
            "photoreal SD1.5 for texture inpainting and refinement",
            "SG161222/Realistic_Vision_V4.0_noVAE",
            "creativeml-openrail-m",
        ),
        Role("vae", "vae", "the SD1.5 VAE all bases share", "stabilityai/sd-vae-ft-mse", "mit"),
        Role(
            "controlnet_landmarks",
            "controlnet",
            "ControlNet on mediapipe face-mesh drawings (LAION-Face)",
            "CrucibleAI/ControlNetMediaPipeFace (diffusion_sd15)",
            "openrail",
        ),
        Role(
            "controlnet_canny",
            "controlnet",
            "ControlNet on canny edges (reference normal/depth maps)",
            "lllyasviel/control_v11p_sd15_canny",
            "openrail",
        ),
        Role(
            "controlnet_normal",
            "controlnet",
            "ControlNet on normal maps (texture inpainting views)",
            "lllyasviel/control_v11p_sd15_normalbae",
            "openrail",
        ),
        Role(
            "ip_adapter_faceid",
            "weights_file",
            "IP-Adapter FaceID: ArcFace embedding -> decoupled cross-attention tokens",
            "h94/IP-Adapter-FaceID (ip-adapter-faceid-portrait-v11_sd15.bin)",
            "non-commercial research (trained on insightface embeddings)",
        ),
        Role(
            "arcface",
            "onnx",
            "ArcFace 512-D face embedding (insightface ONNX)",
            "insightface buffalo_l (w600k_r50.onnx)",
            "non-commercial research",
        ),
        Role(
            "face_parsing",
            "hf_model",
            "face parsing with CelebAMask-HQ's classes (optional; else the landmark hull and person segmentation)",
            "jonathandinu/face-parsing (SegFormer; the release used a BiSeNet on the same classes)",
            "cc0-1.0 (trained on CelebAMask-HQ: non-commercial research)",
            required=False,
        ),
        Role(
            "super_resolution",
            "weights_file",
            "2x super-resolution of the UV map, the texture's deblur (optional; Real-ESRGAN RRDBNet weights)",
            "ai-forever/Real-ESRGAN (RealESRGAN_x2.pth), as the release",
            "bsd-3-clause",
            required=False,
        ),
        Role(
            "caption",
            "folder",
            "image captioning model for the prompt (optional; else the prompt setting)",
            "Salesforce/blip2-opt-2.7b",
            "mit",
            required=False,
        ),
        Role(
            "gan3d",
            "folder",
            "3D-GAN for initialization (optional; else the fitted head prior)",
            "PanoHead + PTI",
            "CC BY-NC 4.0",
            required=False,
        ),
    )
}


def role(name: str) -> Role:
    from ...errors import ModelError

    try:
        return ROLES[name]
    except KeyError:
        raise ModelError(f"unknown model role {name!r}; roles: {', '.join(ROLES)}") from None


def layout_problems(layout: str, files: list[str]) -> list[str]:
    """What a role's file list lacks for its layout (``files`` relative to the role folder)."""
    problems = []
    for need in LAYOUTS[layout]:
        folder, _, pattern = need.rpartition("/")
        inside = [f for f in files if (f.rpartition("/")[0] == folder)]
        if pattern == "*weights":
            ok = any(f.endswith(WEIGHT_SUFFIXES) for f in inside)
            what = f"{folder + '/' if folder else ''}weights (.safetensors or .bin)"
        elif pattern.startswith("*"):
            ok = any(f.endswith(pattern[1:]) for f in inside)
            what = f"{folder + '/' if folder else ''}{pattern}"
        else:
            ok = need in files
            what = need
        if not ok:
            problems.append(f"no {what}")
    return problems
