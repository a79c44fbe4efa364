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

from ..errors import ModelError

TEMPLATE = "a person"


class Captioner:
    def __init__(self, folder: str | Path, max_new_tokens: int = 30):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot load the caption role from {folder}: {e}") from None
        self.max_new_tokens = max_new_tokens

    def __call__(self, image: np.ndarray) -> str:
        """``(H, W, 3)`` uint8 RGB -> one line of text (greedy decoding)."""
        from PIL import Image

        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.processor.batch_decode(out, skip_special_tokens=True)[0]
        return " ".join(text.split())
