"""A complete model root of tiny, randomly initialized models of the real classes (the ``tiny``
profile): the real loading and guidance code runs on it in seconds on a CPU, with no download.

Built: three SD1.5-layout bases (UNet2DConditionModel, CLIPTextModel, a CLIPTokenizer over the 256
byte-level symbols, SD1.5's published scheduler config), an AutoencoderKL with SD's 8x downsampling,
4 latent channels and scaling factor, three ControlNets made from a base UNet, an IP-Adapter FaceID
portrait state dict (saved as a tensors-only pickle like the real release), an ArcFace-shaped ONNX
model (112x112x3 -> 512), a tiny BLIP captioner, a tiny SegFormer face parser with CelebAMask-HQ's
labels, a tiny Real-ESRGAN x2 RRDBNet, and the manifest.

Wherever size allows, the structure is the real checkpoints': SD1.5's 768-wide cross-attention (so
the text encoder is 768 wide, one layer deep), the portrait v11 FaceID adapter's 16 tokens per face,
the ControlNets' conditioning channels (16, 32, 96, 256), the VAE's scaling factor 0.18215, the
PNDM scheduler config the SD1.5 repositories publish, and an own VAE in the geometry bases (the
HumanNorm repositories carry one; the release samples the reference maps with it).

Needs the ``test`` extra (``onnx``) for the ArcFace file.

Example:
    >>> root = build_tiny_root(tempfile.mkdtemp())      # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..face_parsing import tiny_face_parser
from .root import index_root
from .rrdbnet import RRDBNet

CROSS_DIM = 768  # SD1.5's text width: every cross-attention and the FaceID tokens are this wide
ID_DIM = 512
ID_TOKENS = 16  # ip-adapter-faceid-portrait-v11_sd15: 16 tokens per face embedding
FACEID_WEIGHTS = "ip-adapter-faceid-portrait-v11_sd15.bin"
CONTROLNET_CONDITIONING_CHANNELS = (16, 32, 96, 256)  # lllyasviel's and CrucibleAI's SD1.5 ControlNets

# SD1.5's scheduler config as its repositories publish it (scheduler/scheduler_config.json).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def byte_level_tokenizer():
    """A CLIPTokenizer over the 256 byte-level symbols (and their word-final forms), no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_unet(in_channels: int = 4, full: bool = False):
    """A tiny UNet2DConditionModel, or with ``full`` SD1.5's architecture (860 M parameters)."""
    from diffusers import UNet2DConditionModel

    if full:
        return UNet2DConditionModel(
            sample_size=64,
            in_channels=in_channels,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae(full: bool = False):
    """A tiny AutoencoderKL with SD's 8x factor and 4 latent channels, or with ``full`` SD's own."""
    from diffusers import AutoencoderKL

    channels, layers, groups = ((128, 256, 512, 512), 2, 32) if full else ((8, 16, 16, 16), 1, 8)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=groups,
        sample_size=512 if full else 64,
    )


def tiny_text_encoder(vocab_size: int, full: bool = False):
    """A tiny CLIPTextModel, or with ``full`` the width and depth of SD1.5's (CLIP ViT-L/14)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    hidden, inter, layers, heads = (768, 3072, 12, 12) if full else (CROSS_DIM, 64, 1, 12)
    # the tokenizer's last two ids are its start and end tokens
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            projection_dim=hidden,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def tiny_captioner(folder: str | Path) -> Path:
    """A tiny BLIP captioner (BlipForConditionalGeneration and its processor, with a BERT tokenizer
    over a small word list) saved in ``folder``."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[DEC]",
        "a",
        "photo",
        "of",
        "person",
        "man",
        "woman",
        "with",
        "hair",
        "smiling",
        "in",
        "the",
        "head",
        "face",
        "portrait",
    ]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    n = len(words)
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=n,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            bos_token_id=5,
            eos_token_id=3,
            pad_token_id=0,
            sep_token_id=3,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(
        folder
    )
    return folder


def faceid_state_dict(unet: torch.nn.Module, id_dim: int = ID_DIM, tokens: int = ID_TOKENS) -> dict:
    """IP-Adapter FaceID weights for ``unet`` in the release's layout: ``image_proj`` (MLP from the face
    embedding to ``tokens`` cross-attention tokens) and ``ip_adapter`` (``to_k_ip``/``to_v_ip`` of every
    cross-attention layer, numbered 1, 3, 5, ... in the UNet's processor order)."""
    cross = unet.config.cross_attention_dim
    proj = {
        "proj.0.weight": torch.randn(id_dim * 2, id_dim) * 0.02,
        "proj.0.bias": torch.zeros(id_dim * 2),
        "proj.2.weight": torch.randn(cross * tokens, id_dim * 2) * 0.02,
        "proj.2.bias": torch.zeros(cross * tokens),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            to_k = unet.get_submodule(name[: -len(".processor")]).to_k.weight
            ip[f"{key}.to_k_ip.weight"] = torch.randn_like(to_k) * 0.02
            ip[f"{key}.to_v_ip.weight"] = torch.randn_like(to_k) * 0.02
            key += 2
    return {"image_proj": proj, "ip_adapter": ip}


def arcface_onnx(path: str | Path, dim: int = ID_DIM, size: int = 112, seed: int = 0) -> Path:
    """An ONNX model with ArcFace's interface, ``(N, 3, 112, 112)`` float -> ``(N, dim)``: a 4x4 average
    pool and a random projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(seed).normal(size=(3 * 4 * 4, dim)).astype(np.float32), "w")
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[size // 4] * 2, strides=[size // 4] * 2),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)


def build_tiny_root(folder: str | Path, seed: int = 0, full: bool = False) -> Path:
    """Write a model root with every required role and its manifest into ``folder``: tiny random
    models, or with ``full`` random models of the release's full-size architectures (about 16 GB in
    float32; for speed benchmarks, where the values of the weights do not matter)."""
    from diffusers import ControlNetModel, PNDMScheduler
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = Path(folder)
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    unets = {}
    for name in ("geometry_normal", "geometry_depth", "texture_base"):
        base = root / name
        unets[name] = unet = tiny_unet(full=full)
        unet.save_pretrained(base / "unet")
        tiny_text_encoder(len(tokenizer), full=full).save_pretrained(base / "text_encoder")
        tokenizer.save_pretrained(base / "tokenizer")
        PNDMScheduler.from_config(SD15_SCHEDULER).save_pretrained(base / "scheduler")
        if name.startswith("geometry"):
            tiny_vae(full=full).save_pretrained(base / "vae")
    tiny_vae(full=full).save_pretrained(root / "vae")
    for name, unet in (
        ("controlnet_landmarks", unets["geometry_normal"]),
        ("controlnet_canny", unets["geometry_normal"]),
        ("controlnet_normal", unets["texture_base"]),
    ):
        ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS
        ).save_pretrained(root / name)
    (root / "ip_adapter_faceid").mkdir(parents=True, exist_ok=True)
    torch.save(faceid_state_dict(unets["texture_base"]), root / "ip_adapter_faceid" / FACEID_WEIGHTS)
    (root / "arcface").mkdir(parents=True, exist_ok=True)
    arcface_onnx(root / "arcface" / "w600k_r50.onnx", seed=seed)
    tiny_captioner(root / "caption")  # speed does not matter here: tiny in both sizes
    tiny_face_parser(root / "face_parsing", seed=seed)
    (root / "super_resolution").mkdir(parents=True, exist_ok=True)
    torch.save(  # Real-ESRGAN's checkpoint layout: the EMA weights under params_ema
        {"params_ema": RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4).state_dict()},
        root / "super_resolution" / "RealESRGAN_x2.pth",
    )
    what = "full-size random" if full else "tiny random"
    index_root(
        root,
        sources={
            k: f"{what} (portrait3d.pipelines.models.tiny)"
            for k in (
                "geometry_normal",
                "geometry_depth",
                "texture_base",
                "vae",
                "controlnet_landmarks",
                "controlnet_canny",
                "controlnet_normal",
                "ip_adapter_faceid",
                "arcface",
                "caption",
                "face_parsing",
                "super_resolution",
            )
        },
    )
    (root / "README.txt").write_text(
        json.dumps({"built_by": "portrait3d.pipelines.models.tiny", "seed": seed, "full": full})
    )
    return root
