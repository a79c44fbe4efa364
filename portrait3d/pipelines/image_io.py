"""Decode and validate an input portrait.

``load_image`` turns a path or bytes into an ``(H, W, 3)`` uint8 RGB array: EXIF orientation applied;
grayscale, RGBA/LA (composited on white), palette, 16-bit and CMYK converted. Every failure is a
typed :class:`~portrait3d.errors.InputError`.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (4, 3), 128).save(buf, "PNG")
    >>> load_image(buf.getvalue()).pixels.shape
    (3, 4, 3)
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError, ImageTooLargeError, NotAnImageError, TruncatedImageError

DEFAULT_MAX_MEGAPIXELS = 50.0


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, upright
    sha256: str  # of the file's bytes
    source: str


def read_bytes(src: str | Path | bytes) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), "<bytes>"
    if not isinstance(src, (str, Path)):
        raise ImageReadError(f"expected a path or bytes, got {type(src).__name__}")
    p = Path(src)
    if not p.exists():
        raise ImageReadError(f"no such file: {p}")
    if p.is_dir():
        raise ImageReadError(f"{p} is a folder, not an image file")
    try:
        return p.read_bytes(), str(p)
    except OSError as e:
        raise ImageReadError(f"cannot read {p}: {e.strerror or e}") from None


def load_image(
    src: str | Path | bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, name: str | None = None
) -> DecodedImage:
    """Decode a photo, upright, as RGB8. ``name`` (e.g. the URI the bytes came from) is used in errors."""
    data, default_name = read_bytes(src)
    name = name or default_name
    if not data:
        raise NotAnImageError(f"{name} is empty")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_megapixels * 1e6:
                raise ImageTooLargeError(
                    f"{name} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is {max_megapixels:g}"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{name} is too large to decode safely") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{name} is not an image in a format we can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise TruncatedImageError(f"{name} is truncated or corrupt: {e}") from None
    return DecodedImage(pixels=_to_rgb8(img), sha256=digest, source=name)


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        g = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def mask_coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask ``(H, W)`` -> per-pixel coverage ``(size, size)`` float32 in [0, 1] (area average)."""
    import cv2

    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
