import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from portrait3d.errors import ImageReadError, ImageTooLargeError, NotAnImageError, TruncatedImageError
from portrait3d.pipelines.image_io import load_image

from .conftest import astronaut


def _encode(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_are_converted_to_rgb8():
    rgb = astronaut()[:64, :48]
    cases = {
        "L": Image.fromarray(rgb).convert("L"),
        "RGBA": Image.fromarray(rgb).convert("RGBA"),
        "P": Image.fromarray(rgb).convert("P"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "1": Image.fromarray(rgb).convert("1"),
    }
    for mode, img in cases.items():
        fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "1" else "PNG")
        out = load_image(_encode(img, fmt)).pixels
        assert out.shape == (64, 48, 3) and out.dtype == np.uint8, mode
    # 16-bit keeps its range: 255*257 maps back to 255.
    g16 = load_image(_encode(cases["I;16"])).pixels
    assert np.abs(g16[..., 0].astype(int) - rgb[..., 0]).max() <= 1


def test_transparent_pixels_become_white():
    a = np.zeros((8, 8, 4), np.uint8)
    out = load_image(_encode(Image.fromarray(a, "RGBA"))).pixels
    assert (out == 255).all()


def test_exif_orientation_is_applied():
    img = Image.fromarray(astronaut()[:40, :60])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_encode(img, "JPEG", exif=exif)).pixels
    assert out.shape == (60, 40, 3)


def test_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageReadError):
        load_image(12345)
    with pytest.raises(NotAnImageError):
        load_image(b"this is plain text, not a picture")
    with pytest.raises(NotAnImageError):
        load_image(b"")
    data = _encode(Image.fromarray(astronaut()), "JPEG")
    with pytest.raises(TruncatedImageError):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    # A valid PNG header claiming 10000 x 6000 pixels (60 MP): refused from the header alone.
    png = _encode(Image.new("RGB", (1, 1)))
    ihdr = png.index(b"IHDR")
    data = struct.pack(">II", 10000, 6000) + png[ihdr + 12 : ihdr + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + data))
    bomb = png[: ihdr + 4] + data + crc + png[ihdr + 21 :]
    with pytest.raises(ImageTooLargeError, match="60.0 megapixels"):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError):
        load_image(_encode(Image.new("L", (400, 300))), max_megapixels=0.1)
