import numpy as np
import pytest

from portrait3d.errors import ConfigError, ModelError
from portrait3d.pipelines.identity import ArcFaceOnnx, load_identity_encoder


def _tiny_arcface(path, size=112):
    from portrait3d.pipelines.models.tiny import arcface_onnx

    return arcface_onnx(path, size=size)


def test_arcface_onnx_loads_by_path(tmp_path, astronaut_analysis):
    enc = load_identity_encoder(str(_tiny_arcface(tmp_path / "w600k_r50.onnx")))
    assert isinstance(enc, ArcFaceOnnx) and enc.dim == 512
    a = astronaut_analysis
    e = enc.embed(a.crop, a.face_box)
    assert e.shape == (512,) and abs(np.linalg.norm(e) - 1) < 1e-5
    assert enc.distance(e, e) == pytest.approx(0.0, abs=1e-6)


def test_arcface_wrong_shape_and_missing(tmp_path):
    with pytest.raises(ModelError, match="112"):
        ArcFaceOnnx(_tiny_arcface(tmp_path / "bad.onnx", size=64))
    with pytest.raises(ModelError, match="not found"):
        ArcFaceOnnx(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        ArcFaceOnnx(tmp_path / "junk.onnx")
    with pytest.raises(ConfigError):
        load_identity_encoder("facenet")
