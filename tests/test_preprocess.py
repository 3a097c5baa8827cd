"""ImageTransform: TorchServe's image_classifier pipeline without torchvision, and the old mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from service.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageTransform

MEAN = np.array(IMAGENET_MEAN).reshape(3, 1, 1)
STD = np.array(IMAGENET_STD).reshape(3, 1, 1)


@pytest.fixture(scope="module")
def china() -> Image.Image:
    """A real photo, 640 x 427 (landscape)."""
    return Image.fromarray(load_sample_image("china.jpg"))


def reference(
    image: Image.Image, resize: int, crop: tuple[int, int], geometry: tuple[int, int, int, int]
) -> np.ndarray:
    """Resize(resize), CenterCrop(crop), ToTensor, Normalize by hand, in float64.

    `geometry` = (new width, new height, top, left) worked out by hand for each case from
    torchvision's rules, so the test states them: short side -> resize, long side
    int(resize * long / short); top/left = int(round((n - c) / 2.0)) after zero padding.
    PIL does the resampling, as it does under torchvision for a PIL image.
    """
    width, height = image.size
    new_w, new_h, top, left = geometry
    short, long = min(width, height), max(width, height)
    assert (new_w, new_h) == (
        (resize, int(resize * long / short))
        if width <= height
        else (int(resize * long / short), resize)
    )
    pixels = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float64)
    ch, cw = crop
    pad_h, pad_w = max(ch - new_h, 0), max(cw - new_w, 0)
    canvas = np.zeros((new_h + pad_h, new_w + pad_w, 3))
    canvas[pad_h // 2 : pad_h // 2 + new_h, pad_w // 2 : pad_w // 2 + new_w] = pixels
    cropped = canvas[top : top + ch, left : left + cw]
    assert cropped.shape == (ch, cw, 3)
    return (cropped.transpose(2, 0, 1) / 255.0 - MEAN) / STD


@pytest.mark.parametrize(
    ("box", "resize", "crop", "geometry"),
    [
        # landscape 640x427 -> 383x256; left = round(159 / 2) = round(79.5) = 80 (half to even)
        (None, 256, (224, 224), (383, 256, 16, 80)),
        # portrait 280x400 -> 256x365; top = round(141 / 2) = round(70.5) = 70 (half to even)
        ((100, 0, 380, 400), 256, (224, 224), (256, 365, 70, 16)),
        # non-square crop of the portrait
        ((100, 0, 380, 400), 256, (240, 200), (256, 365, 62, 28)),
        # crop taller than the resized image: padded by 12 rows top and bottom, then cut
        # 640x427 -> 299x200; top 0 after padding to 224; left = round(59 / 2) = 30
        (None, 200, (224, 240), (299, 200, 0, 30)),
    ],
)
def test_torchserve_pipeline_matches_a_hand_reference(
    china: Image.Image,
    box: tuple[int, int, int, int] | None,
    resize: int,
    crop: tuple[int, int],
    geometry: tuple[int, int, int, int],
) -> None:
    image = china if box is None else china.crop(box)
    transform = ImageTransform.torchserve(resize=resize, crop=crop)
    batch = transform([image, image])
    assert batch.shape == (2, 3, *crop) and batch.dtype == torch.float32
    expected = reference(image, resize, crop, geometry)
    np.testing.assert_allclose(batch[0].numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(batch[0], batch[1])
    assert transform.prepare(image).size == (crop[1], crop[0])


def test_an_image_already_at_the_resize_size_is_not_resampled() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    transform = ImageTransform.torchserve(resize=64, crop=(64, 64))
    out = transform([Image.fromarray(pixels)])[0].numpy()
    expected = (pixels[:, 8:72].transpose(2, 0, 1) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def current_handler_preprocess(
    images: list[Image.Image], size: tuple[int, int], mean: list[float], std: list[float]
) -> torch.Tensor:
    """`ImageHandler.preprocess` as it was before ImageTransform (kept verbatim as the oracle)."""
    height, width = size
    arrays = [
        np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_old_mode_equals_the_handler_exactly(china: Image.Image) -> None:
    # glimpse's own archives store float32 statistics as JSON floats
    mean = torch.tensor([0.4123, 0.5, 0.377]).tolist()
    std = torch.tensor([0.21, 0.199, 0.3]).tolist()
    metadata = {"size": [48, 40], "mean": mean, "std": std}
    transform = ImageTransform.from_metadata(metadata)
    assert transform.resize is None and transform.crop is None
    images = [china, china.crop((100, 0, 380, 400)), china.resize((33, 21))]
    expected = current_handler_preprocess(images, (48, 40), mean, std)
    assert torch.equal(transform(images), expected)
    assert transform.to_metadata() == metadata


def test_metadata_round_trip() -> None:
    transform = ImageTransform.torchserve()
    metadata = transform.to_metadata()
    assert metadata == {
        "size": [224, 224],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize": 256,
        "crop": [224, 224],
    }
    assert ImageTransform.from_metadata(metadata) == transform


def test_bad_metadata_is_refused() -> None:
    good = ImageTransform.torchserve().to_metadata()
    with pytest.raises(ValueError, match="crop"):
        ImageTransform.from_metadata({**good, "crop": [200, 200]})
    with pytest.raises(ValueError, match="std"):
        ImageTransform.from_metadata({**good, "std": [0.2, 0.0, 0.2]})
    with pytest.raises(ValueError, match="3 values"):
        ImageTransform.from_metadata({**good, "mean": [0.5, 0.5]})


def test_non_rgb_images_are_converted(china: Image.Image) -> None:
    grey = china.convert("L")
    transform = ImageTransform.torchserve(resize=64, crop=48)
    assert torch.equal(transform([grey]), transform([grey.convert("RGB")]))


def test_source_box_is_the_window_the_model_sees() -> None:
    old = ImageTransform((48, 48), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert old.source_box(97, 71) == (0.0, 0.0, 97.0, 71.0)
    transform = ImageTransform.torchserve(resize=256, crop=224)
    # 640x427 -> 383x256, window x 80..304, y 16..240 in resized pixels
    left, top, right, bottom = transform.source_box(640, 427)
    assert left == pytest.approx(80 * 640 / 383) and right == pytest.approx(304 * 640 / 383)
    assert top == pytest.approx(16 * 427 / 256) and bottom == pytest.approx(240 * 427 / 256)
    # padded: 640x427 -> 299x200, a 224-row crop starts 12 rows above the image
    padded = ImageTransform.torchserve(resize=200, crop=(224, 240))
    left, top, right, bottom = padded.source_box(640, 427)
    assert top == pytest.approx(-12 * 427 / 200) and bottom == pytest.approx(212 * 427 / 200)
    assert left == pytest.approx(30 * 640 / 299) and right == pytest.approx(270 * 640 / 299)


def test_source_box_agrees_with_the_pixels() -> None:
    """Mark the box's corners in a synthetic image; they land in the crop's corners."""
    pixels = np.zeros((200, 300, 3), dtype=np.uint8)
    exact = ImageTransform.torchserve(resize=200, crop=(80, 90))  # no resampling at this size
    left, top, right, bottom = exact.source_box(300, 200)
    assert (left, top, right, bottom) == (105, 60, 195, 140)
    pixels[60, 105] = pixels[139, 194] = 255
    out = exact.pixels(Image.fromarray(pixels))
    assert out[0, 0].min() == 255 and out[-1, -1].min() == 255 and out.sum() == 2 * 3 * 255
    # halved by the resize: a 6 px block at the box's corner fills the crop's corner
    pixels[:] = 0
    halved = ImageTransform.torchserve(resize=100, crop=(80, 90))
    left, top, _, _ = halved.source_box(300, 200)
    pixels[int(top) : int(top) + 6, int(left) : int(left) + 6] = 255
    out = halved.pixels(Image.fromarray(pixels)).max(axis=2)
    assert out[1, 1] == 255 and out[0, 0] > 150
    assert out[5:].max() == 0 and out[:, 5:].max() == 0
