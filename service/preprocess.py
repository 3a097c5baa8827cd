"""Image preprocessing as data: what an archive's `input` metadata says, and doing it.

Two modes, chosen by whether `resize` is set:

* ``resize=None`` (glimpse's own archives): each image is resized straight to
  `size` = (height, width) with PIL's BILINEAR filter, aspect ratio ignored.
* ``resize=<int>`` (user archives): TorchServe's `image_classifier` pipeline,
  ``Resize(resize) -> CenterCrop(size) -> ToTensor() -> Normalize(mean, std)``,
  reproduced without torchvision. torchvision's semantics for a PIL image
  (torchvision.transforms.functional), followed exactly here:

  - ``Resize(s)`` with an int: the short side becomes ``s`` and the long side
    ``int(s * long / short)`` (truncated, computed in Python floats); an image of
    width w and height h is resized to (w', h') = (s, int(s*h/w)) when w <= h,
    else (int(s*w/h), s). If that is already its size the image is left as is,
    otherwise ``image.resize((w', h'), BILINEAR)`` (PIL's filter, which
    antialiases when shrinking). ``max_size`` is not supported.
  - ``CenterCrop((ch, cw))``: if the image is smaller than the crop on a side it
    is first padded with zeros, left/top by ``(c - n) // 2`` and right/bottom by
    ``(c - n + 1) // 2`` on that side; then ``top = int(round((h - ch) / 2.0))``,
    ``left = int(round((w - cw) / 2.0))`` (Python's round: halves go to the even
    integer, so 79.5 -> 80 but 70.5 -> 70) and the (ch, cw) window is cut out.
  - ``ToTensor()``: uint8 HWC -> float32 CHW, divided by 255.
  - ``Normalize(mean, std)``: ``(x - mean) / std`` per channel in float32.

Both modes end with the same float32 operations (x / 255, then (x - mean) / std),
so the old mode gives exactly what `ImageHandler.preprocess` always gave.
Metadata (`input` in metadata.json)::

    {"size": [h, w], "mean": [r, g, b], "std": [r, g, b]}                 # resize=None
    {"size": [h, w], "mean": [...], "std": [...], "resize": 256, "crop": [h, w]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESIZE = 256
DEFAULT_CROP = 224


@dataclass(frozen=True)
class ImageTransform:
    """RGB PIL images -> [N, 3, H, W] normalised float32 tensor; `size` is (height, width)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(int(v) != v or v < 1 for v in self.size):
            raise ValueError(f"size must be two positive integers (height, width), not {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B): {self.mean}, {self.std}")
        if any(not v > 0 for v in self.std):
            raise ValueError(f"std values must be positive: {self.std}")
        if self.resize is not None and (int(self.resize) != self.resize or self.resize < 1):
            raise ValueError(f"resize must be a positive integer, not {self.resize}")

    @classmethod
    def torchserve(
        cls,
        resize: int = DEFAULT_RESIZE,
        crop: int | Sequence[int] = DEFAULT_CROP,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> ImageTransform:
        """TorchServe's image_classifier preprocessing (ImageNet statistics by default)."""
        height, width = (crop, crop) if isinstance(crop, int) else crop
        return cls((int(height), int(width)), _three(mean), _three(std), int(resize))

    @property
    def crop(self) -> tuple[int, int] | None:
        """The centre crop (height, width), or None when images are resized straight to size."""
        return self.size if self.resize is not None else None

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> ImageTransform:
        """Read an archive's `input` dictionary (see the module docstring)."""
        size = tuple(int(v) for v in data["size"])
        if len(size) != 2:
            raise ValueError(f"input size must be [height, width], not {data['size']}")
        resize = data.get("resize")
        crop = data.get("crop")
        if crop is not None and (resize is None or tuple(int(v) for v in crop) != size):
            raise ValueError(f"input crop {crop} needs resize and must equal size {list(size)}")
        return cls(
            (size[0], size[1]),
            _three(data["mean"]),
            _three(data["std"]),
            None if resize is None else int(resize),
        )

    def to_metadata(self) -> dict[str, Any]:
        """The `input` dictionary for metadata.json; `from_metadata` reads it back."""
        out: dict[str, Any] = {
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.resize is not None:
            out["resize"] = self.resize
            out["crop"] = list(self.size)
        return out

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of that size after the resize step."""
        if self.resize is None:
            return self.size[1], self.size[0]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def source_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the original image that the model's input shows.

        In the image's own pixel coordinates (PIL's resize maps [0, n] linearly onto
        [0, n']). The whole image when resizing straight to `size`; the centre-crop
        window otherwise, which reaches past the image's edges where the crop pads.
        """
        if self.resize is None:
            return 0.0, 0.0, float(width), float(height)
        new_width, new_height = self.resized_size(width, height)
        crop_height, crop_width = self.size
        left = _crop_start(new_width, crop_width)
        top = _crop_start(new_height, crop_height)
        sx, sy = width / new_width, height / new_height
        return left * sx, top * sy, (left + crop_width) * sx, (top + crop_height) * sy

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The uint8 [H, W, 3] pixels the model sees: resized (and centre-cropped)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.resize is None:
            height, width = self.size
            return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
        new_size = self.resized_size(*image.size)
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BILINEAR)
        return _center_crop(np.asarray(image), self.size)

    def prepare(self, image: Image.Image) -> Image.Image:
        """The picture the model sees, as an image (e.g. to draw a heatmap over)."""
        return Image.fromarray(self.pixels(image))

    def array(self, images: list[Image.Image]) -> np.ndarray:
        """The model's input batch as a C-contiguous float32 [N, 3, H, W] array, in numpy
        alone: the decode processes (service.decoding) run this without importing torch."""
        batch = np.stack([self.pixels(im) for im in images]).transpose(0, 3, 1, 2)
        scaled = batch.astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray((scaled - self._mean) / self._std)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's input batch [N, 3, H, W] as a float32 tensor."""
        import torch  # here, not at the top: see `array`

        return torch.from_numpy(self.array(images))

    @cached_property
    def _mean(self) -> np.ndarray:
        return np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)

    @cached_property
    def _std(self) -> np.ndarray:
        return np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)


def _center_crop(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's center_crop on [H, W, C] pixels: zero padding first if the image is small."""
    crop_height, crop_width = size
    height, width = pixels.shape[:2]
    if crop_width > width or crop_height > height:
        pad_h = max(crop_height - height, 0)
        pad_w = max(crop_width - width, 0)
        pixels = np.pad(
            pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        )
        height, width = pixels.shape[:2]
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return np.ascontiguousarray(pixels[top : top + crop_height, left : left + crop_width])


def _crop_start(length: int, crop: int) -> int:
    """Where `_center_crop`'s window starts on a side of `length` (negative inside padding)."""
    if crop > length:
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))


def _three(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"need 3 values (R, G, B), not {list(values)}")
    return float(values[0]), float(values[1]), float(values[2])
