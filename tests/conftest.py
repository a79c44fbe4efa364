import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GLOG_minloglevel", "2")


def astronaut() -> np.ndarray:
    import skimage.data
    return skimage.data.astronaut()


def grace_hopper_path() -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(astronaut()).save(p)
    return p


@pytest.fixture(scope="session")
def analysis_stage():
    from portrait3d.pipelines.analysis import MediapipeAnalysis
    stage = MediapipeAnalysis(MediapipeAnalysis.Config())
    yield stage
    stage.close()


@pytest.fixture(scope="session")
def astronaut_analysis(analysis_stage, astronaut_png):
    from portrait3d.pipelines.image_io import load_image
    return analysis_stage(load_image(astronaut_png))
