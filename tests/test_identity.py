import numpy as np
import pytest

from portrait3d.errors import ConfigError, ModelError
from portrait3d.pipelines.identity import ArcFaceOnnx, load_identity_encoder


def _tiny_arcface(path, dim=512, size=112):
    """An ArcFace-shaped ONNX model: (N, 3, 112, 112) -> (N, dim), random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3 * 4 * 4, dim)).astype(np.float32), "w")
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[size // 4] * 2, strides=[size // 4] * 2),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


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
