"""Face parsing (CelebAMask-HQ's 19 classes) for the face-only and head masks of the paper profile.

The release parses the portrait with a BiSeNet trained on CelebAMask-HQ and keeps two masks: the
head (every parsed class) and the face (that, without hair, hat, ears, neck, necklace, cloth and
glasses), which supervises the reference-view normals. Here the ``face_parsing`` role is any
``transformers`` semantic-segmentation model whose labels are CelebAMask-HQ's class names (e.g.
``jonathandinu/face-parsing``, a SegFormer trained on that dataset); labels are read by name, so the
class order of the model does not matter.

Example:
    >>> names = ["background", "skin", "hair", "cloth"]
    >>> labels = np.array([[0, 1], [2, 3]])
    >>> face, head = parsed_masks(labels, names)
    >>> face.tolist(), head.tolist()
    ([[False, True], [False, False]], [[False, True], [True, False]])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError

CELEBAMASK_HQ = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
NOT_FACE = {"background", "eye_g", "l_ear", "r_ear", "neck", "neck_l", "cloth", "hair", "hat"}  # the release's
NOT_HEAD = {"background", "neck_l", "cloth"}  # below the neck or not the person's own shape


def parsed_masks(labels: np.ndarray, names: list[str] | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``labels (H, W)`` class indices into ``names`` -> (face mask, head mask), ``(H, W)`` bool each."""
    lut_face = np.array([n not in NOT_FACE for n in names])
    lut_head = np.array([n not in NOT_HEAD for n in names])
    return lut_face[labels], lut_head[labels]


class FaceParser:
    """A ``transformers`` semantic-segmentation model and its image processor from a role folder."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        from .models.diffusion import from_folder, quiet_libraries

        quiet_libraries()
        self.processor = from_folder(AutoImageProcessor, folder, "the face_parsing role")
        self.model = from_folder(AutoModelForSemanticSegmentation, folder, "the face_parsing role").eval()
        id2label = self.model.config.id2label
        self.names = [str(id2label[i]).lower() for i in range(len(id2label))]
        unknown = sorted(set(self.names) - set(CELEBAMASK_HQ))
        if unknown:
            raise ModelError(
                f"the face_parsing role's labels {unknown} are not CelebAMask-HQ's ({', '.join(CELEBAMASK_HQ)})"
            )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(S, S, 3)`` uint8 RGB -> class indices ``(S, S)`` into :attr:`names`."""
        import torch
        import torch.nn.functional as F

        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**inputs).logits
        up = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return up.argmax(1)[0].numpy()


def tiny_face_parser(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random SegFormer with CelebAMask-HQ's labels and its image processor, saved in ``folder``."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    cfg = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        id2label=dict(enumerate(CELEBAMASK_HQ)),
        label2id={n: i for i, n in enumerate(CELEBAMASK_HQ)},
    )
    folder = Path(folder)
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
