"""Shared fixtures: small real archives built once per session, and the app serving them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.http import create_app
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from service.runtime import Runtime
from tests.helpers import LOCAL, png
from tests.servers.grpc_inprocess import grpc_server
from training.image import ImageConfig, train_cnn
from training.shapes import make_shapes


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with a quickly trained cnn.mar (accuracy is not the point here)."""
    store = tmp_path_factory.mktemp("model_store")
    train_cnn(ImageConfig(out=store, epochs=1, n_train=256, n_test=64, batch_size=64))
    return store


@pytest.fixture(scope="session")
def cnn_archive(model_store: Path) -> Path:
    return model_store / "cnn.mar"


@pytest.fixture(scope="session")
def runtime(cnn_archive: Path, settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.load(
        [cnn_archive],
        max_image_pixels=settings.max_image_pixels,
        decode_processes=settings.decode_processes,  # the server's default: 1 on 2+ cores
    )
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def settings(model_store: Path) -> Settings:
    return Settings(model_store=model_store, max_body_bytes=2_000_000, max_image_pixels=4_000_000)


@pytest.fixture(scope="session")
def client(settings: Settings, runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(settings, Pipeline(runtime)), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="session")
def shapes_png() -> bytes:
    """A held-out generated shape, upscaled to an odd size, as PNG bytes."""
    image = Image.fromarray(make_shapes(1, seed=123).images[0]).resize((97, 71))
    return png(image)


@pytest.fixture(scope="session")
def tabular_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickly trained tabular.mar on a small generated store-sales table, in its own store."""
    from training.tabular import TabularConfig, train_tabular

    store = tmp_path_factory.mktemp("tabular_store")
    config = TabularConfig(out=store, epochs=1, n_stores=5, years=1, layers=(32, 16), gbm=False)
    return train_tabular(config)


# -- both models behind both doors, one pipeline per test module (test_grpc, test_oip, ...) ----
@pytest.fixture(scope="module")
def pipeline(cnn_archive: Path, tabular_archive: Path, settings: Settings) -> Iterator[Pipeline]:
    runtime = Runtime.load(
        [cnn_archive, tabular_archive],
        max_image_pixels=settings.max_image_pixels,
        decode_processes=settings.decode_processes,
    )
    yield Pipeline(runtime)
    runtime.close()


@pytest.fixture(scope="module")
def http(settings: Settings, pipeline: Pipeline) -> Iterator[TestClient]:
    with TestClient(create_app(settings, pipeline), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def stub(settings: Settings, pipeline: Pipeline) -> Iterator[pb_grpc.GlimpseStub]:
    """glimpse's gRPC door on a free port, over the module's `pipeline`."""
    with grpc_server(settings, pipeline) as address, grpc.insecure_channel(address) as channel:
        yield pb_grpc.GlimpseStub(channel)
