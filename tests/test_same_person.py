"""The same-person reference (benchmarks/same_person.py): the dlib distance between real photos of one man,
by how far apart their poses are, computed as the shared harness computes descriptors."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("same_person", BENCH / "same_person.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its eval_portraits import
    return module


def test_every_pair_once_with_its_yaw_gap(bench):
    d = [np.zeros(2), np.array([3.0, 4.0]), np.array([0.0, 1.0])]
    assert bench.gaps_and_distances([-5.0, 10.0, 2.0], d) == [(15.0, 5.0), (7.0, 1.0), (8.0, np.sqrt(18))]
    assert bench.gaps_and_distances([1.0], d[:1]) == []


def test_two_frames_of_one_man_are_the_same_person_and_a_blank_photo_has_no_face(bench, tmp_path):
    photos = bench.default_photos(tmp_path)
    assert len(photos) == 11
    named, pairs = bench.measure([photos[0], photos[6]])  # franck_01829 (frontal), franck_03909 (turned)
    assert [n for n, _ in named] == ["franck_01829.jpg", "franck_03909.jpg"]
    gap, distance = pairs[0]
    assert 5 < gap < 25 and gap == pytest.approx(abs(named[0][1] - named[1][1]))
    assert 0.1 < distance < 0.6  # dlib's same-person threshold; not the same photo
    assert bench.harness_descriptor(np.full((200, 200, 3), 128, np.uint8)) is None
