"""The generated shapes data set: seeded, boxed, and written as an ImageFolder tree."""

from pathlib import Path

import numpy as np

from training.imagefolder import load_image_folder
from training.shapes import CLASSES, make_shapes, save_image_folder


def test_same_seed_same_images() -> None:
    a, b = make_shapes(8, seed=3), make_shapes(8, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, make_shapes(8, seed=4).images)


def test_every_sample_carries_its_box() -> None:
    data = make_shapes(50, seed=1, size=48)
    assert data.images.shape == (50, 48, 48, 3) and data.boxes is not None
    x0, y0, x1, y1 = data.boxes.T
    assert (x0 < x1).all() and (y0 < y1).all() and (data.boxes >= 0).all()
    assert (data.boxes <= 47).all()
    assert set(data.labels) <= set(range(len(CLASSES)))


def test_image_folder_round_trip(tmp_path: Path) -> None:
    save_image_folder(make_shapes(40, seed=2), tmp_path)
    train, test = load_image_folder(tmp_path, size=32, seed=0)
    assert train.classes == tuple(sorted(CLASSES))
    assert len(train) + len(test) == 40 and train.images.shape[1:] == (32, 32, 3)
