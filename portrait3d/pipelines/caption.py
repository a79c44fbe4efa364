"""Captions of portraits: the text condition of the paper's diffusion models.

A caption is the user's own text, a template (``"a person"``), or the output of the model root's
optional ``caption`` role: any image-to-text model that transformers loads with ``AutoProcessor`` and
``AutoModelForImageTextToText`` (BLIP, BLIP-2, ...).

Example:
    >>> cap = Captioner(ModelRoot(root).folder("caption"))      # doctest: +SKIP
    >>> cap(crop)                                                # doctest: +SKIP
    'a man with a beard and a hat'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TEMPLATE = "a person"


class Captioner:
    def __init__(self, folder: str | Path, max_new_tokens: int = 30):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from .models.diffusion import from_folder, quiet_libraries

        quiet_libraries()
        self.processor = from_folder(AutoProcessor, folder, "the caption role")
        self.model = from_folder(AutoModelForImageTextToText, folder, "the caption role").eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, image: np.ndarray) -> str:
        """``(H, W, 3)`` uint8 RGB -> one line of text (greedy decoding)."""
        from PIL import Image

        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.processor.batch_decode(out, skip_special_tokens=True)[0]
        return " ".join(text.split())
