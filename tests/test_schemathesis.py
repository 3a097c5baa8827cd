"""schemathesis against the app's own /openapi.json: every operation, requests generated from
what the schema allows (positive) and forbids (negative), and not one answer a server error.

The app runs in process (ASGI) on the tests' small cnn.mar and tabular.mar with the management
routes on, so every route the server can have is exercised; `{name}` is a real model's name
most of the time. Seeds are fixed (derandomize) and the examples per operation bounded.

schemathesis' own pytest loader for a fixture (`schemathesis.pytest.from_fixture`) reads a
node attribute pytest 9 no longer has, so each operation's hypothesis strategy is run here
directly; OPERATIONS is checked against the schema, so a new route cannot go unfuzzed.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from service.config import Settings
from service.http import create_app
from service.pipeline import Pipeline
from service.runtime import Runtime

# Every operation of the app with management on; unregistering comes last.
OPERATIONS = [
    ("GET", "/ping"),
    ("GET", "/models"),
    ("GET", "/models/{name}"),
    ("POST", "/predictions/{name}"),
    ("POST", "/explanations/{name}"),
    ("POST", "/heatmaps/{name}"),
    ("GET", "/metrics"),
    ("POST", "/models"),
    ("DELETE", "/models/{name}"),
    # Open Inference Protocol v2 and KServe v1 (service/oip_http.py)
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("GET", "/v1/models/{name}"),
    ("POST", "/v1/models/{name}:predict"),
    ("POST", "/v1/models/{name}:explain"),
]
# `{name}`: a served model three times in four (else the generated name: mostly a 404).
MODEL_NAMES = st.sampled_from(["cnn", "tabular", "cnn", "tabular", "cnn", "tabular", None, None])


@pytest.fixture(scope="module")
def api_schema(
    cnn_archive: Path,
    tabular_archive: Path,
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """The app's OpenAPI schema, bound to the app: both models, management on."""
    store = tmp_path_factory.mktemp("schemathesis_store")
    for archive in (cnn_archive, tabular_archive):
        shutil.copy(archive, store / archive.name)
    runtime = Runtime.load(sorted(store.glob("*.mar")), max_image_pixels=settings.max_image_pixels)
    # A non-loopback bind without auth: schemathesis' ASGI client sends its own Host, which a
    # loopback bind would refuse (421, DNS-rebinding protection; tested in test_auth.py).
    configured = dataclasses.replace(
        settings, model_store=store, enable_management=True, host="0.0.0.0", no_auth=True
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(configured, Pipeline(runtime)))
    runtime.close()


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in operations} == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[" ".join(o) for o in OPERATIONS])
def test_no_server_errors(api_schema: Any, method: str, path: str) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        derandomize=True,
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, name=MODEL_NAMES)
    def no_server_error(case: Any, name: str | None) -> None:
        if name is not None and "name" in (case.path_parameters or {}):
            case.path_parameters["name"] = name
        # A loopback Host: the app binds 127.0.0.1 and refuses others with 421 (DNS rebinding).
        response = case.call_and_validate(
            checks=[not_a_server_error], headers={"Host": "localhost"}
        )
        assert response.status_code != 421, "the fuzzed request never reached the route"

    no_server_error()
