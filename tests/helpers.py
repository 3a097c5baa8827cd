"""Helpers and test data shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import socket
from typing import Any

import numpy as np
from PIL import Image

# Base URL for in-process clients (TestClient, httpx.ASGITransport): a loopback Host, which a
# server bound to loopback requires (service.auth); the clients' own default `testserver` is not.
LOCAL = "http://localhost"

# One store-sales row as a client sends it: raw columns, as in the training data.
ROW: dict[str, Any] = {
    "Store": 1,
    "StoreType": "a",
    "Assortment": "c",
    "DayOfWeek": 4,
    "Date": "2013-10-10",
    "Promo": 1,
    "StateHoliday": "0",
    "SchoolHoliday": 0,
    "CompetitionDistance": 1250.0,
    "Promo2": 0,
}

# ROW, then rows that exercise parsing: a store id as a string with a column missing, and an
# unknown store with a holiday and an explicit null.
ROWS: list[dict[str, Any]] = [
    ROW,
    {
        "Store": "2",
        "StoreType": "d",
        "Assortment": "a",
        "DayOfWeek": 6,
        "Date": "2013-12-21",
        "Promo": 0,
        "StateHoliday": "0",
        "SchoolHoliday": 1,
        "Promo2": 1,
    },
    {
        "Store": 999,
        "StoreType": "a",
        "Assortment": "a",
        "DayOfWeek": 1,
        "Date": "2014-01-06",
        "Promo": 1,
        "StateHoliday": "a",
        "SchoolHoliday": 0,
        "CompetitionDistance": None,
        "Promo2": 0,
    },
]


def png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=options.pop("format", "PNG"), **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
