"""Token auth on both doors, the generated token file, and the Host check on loopback binds.

In process: the HTTP app through TestClient and the gRPC door on its own thread, both with a
small real cnn.mar. One real `python -m service --host 0.0.0.0` checks the start-up side: the
0600 token file, its path in the log, and `--no-auth`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service import client as glimpse_client
from service.auth import is_loopback_host, is_loopback_name, load_token, prepare
from service.config import ConfigError, Settings
from service.http import create_app
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from service.runtime import Runtime
from tests.helpers import LOCAL
from tests.servers.glimpse import glimpse
from tests.servers.grpc_inprocess import grpc_server

TOKEN = "s3cret-Token_42"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
METADATA = [("authorization", f"Bearer {TOKEN}")]


# -- fixtures: one pipeline, a protected app and a protected gRPC door ---------------------------
@pytest.fixture(scope="module")
def pipeline(runtime: Runtime) -> Pipeline:
    return Pipeline(runtime)


@pytest.fixture(scope="module")
def protected(settings: Settings, pipeline: Pipeline) -> Iterator[TestClient]:
    app = create_app(dataclasses.replace(settings, auth_token=TOKEN), pipeline)
    with TestClient(app, base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def address(settings: Settings, pipeline: Pipeline) -> Iterator[str]:
    with grpc_server(dataclasses.replace(settings, auth_token=TOKEN), pipeline) as address:
        yield address


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as channel:
        yield channel


def client_for(settings: Settings, pipeline: Pipeline, base_url: str = LOCAL) -> TestClient:
    return TestClient(create_app(settings, pipeline), base_url=base_url)


# -- HTTP -----------------------------------------------------------------------------------------
def test_http_right_token_opens_the_routes(protected: TestClient, shapes_png: bytes) -> None:
    assert protected.get("/models", headers=BEARER).json()["models"][0]["name"] == "cnn"
    answer = protected.post("/predictions/cnn", content=shapes_png, headers=BEARER)
    assert answer.status_code == 200 and len(answer.json()) == 4
    lower = {"authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive (RFC 7235)
    assert protected.get("/models/cnn", headers=lower).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason", "challenge"),
    [
        ({}, "this server requires a token", 'Bearer realm="glimpse"'),
        (
            {"Authorization": "Bearer not-the-token"},
            "the token does not match",
            'Bearer realm="glimpse", error="invalid_token"',
        ),
        ({"Authorization": f"Bearer {TOKEN}x"}, "does not match", 'error="invalid_token"'),
        ({"Authorization": f"Basic {TOKEN}"}, "must be the header", 'Bearer realm="glimpse"'),
        ({"Authorization": "Bearer "}, "must be the header", 'Bearer realm="glimpse"'),
    ],
)
@pytest.mark.parametrize("path", ["/models", "/models/cnn", "/docs", "/openapi.json"])
def test_http_wrong_or_missing_token_is_401(
    protected: TestClient, path: str, headers: dict[str, str], reason: str, challenge: str
) -> None:
    answer = protected.get(path, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["code"] == "unauthorized" and reason in answer.json()["message"]
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert challenge in answer.headers["www-authenticate"]


def test_http_refuses_before_reading_the_body(protected: TestClient, settings: Settings) -> None:
    """Over the body limit and without a token: 401, so the body was never read (else 413)."""
    body = b"x" * (settings.max_body_bytes + 1)
    answer = protected.post("/predictions/cnn", content=body)
    assert answer.status_code == 401


def test_ping_is_open_and_metrics_protected(protected: TestClient) -> None:
    assert protected.get("/ping").json() == {"status": "Healthy"}
    assert protected.get("/metrics").status_code == 401
    assert protected.get("/metrics", headers=BEARER).status_code == 200


def test_the_web_page_loads_without_a_token(protected: TestClient) -> None:
    """The page and its files hold no data and must load before they can ask for the token;
    a path under /ui/ that names no file there is a 404, never another route."""
    page = protected.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        answer = protected.get(f"/ui/{name}")
        assert answer.status_code == 200 and kind in answer.headers["content-type"]
    assert protected.get("/ui/models").status_code == 404
    assert protected.get("/ui/__init__.py").status_code == 404
    assert protected.get("/models").status_code == 401


def test_401s_are_counted_in_the_metrics(protected: TestClient) -> None:
    assert protected.get("/models").status_code == 401
    text = protected.get("/metrics", headers=BEARER).text
    refused = [
        line
        for line in text.splitlines()
        if line.startswith("glimpse_requests_total{")
        and 'protocol="http"' in line
        and 'code="401"' in line
    ]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 1


def test_metrics_public_opens_metrics_only(settings: Settings, pipeline: Pipeline) -> None:
    public = dataclasses.replace(settings, auth_token=TOKEN, metrics_public=True)
    with client_for(public, pipeline) as client:
        assert client.get("/metrics").status_code == 200
        assert "glimpse_requests_total" in client.get("/metrics").text
        assert client.get("/models").status_code == 401


def test_token_from_a_file(settings: Settings, pipeline: Pipeline, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    token_file.chmod(0o600)
    with client_for(dataclasses.replace(settings, auth_token_file=token_file), pipeline) as client:
        assert client.get("/models", headers=BEARER).status_code == 200
        assert client.get("/models").status_code == 401


def test_without_a_token_every_route_is_open(client: TestClient) -> None:
    assert client.get("/models").status_code == 200
    assert client.get("/metrics").status_code == 200


# -- Host check on loopback binds ------------------------------------------------------------
@pytest.mark.parametrize(
    "base_url",
    [
        "http://evil.example",
        "http://evil.example:8000",
        "http://127.0.0.1.evil.example:8000",
        "http://localhost.evil.example",
        "http://10.0.0.5:8000",
        "http://[::2]:8000",
        "http://0.0.0.0:8000",
    ],
)
def test_loopback_bind_refuses_a_foreign_host(
    settings: Settings, pipeline: Pipeline, base_url: str
) -> None:
    with client_for(settings, pipeline, base_url) as client:
        for path in ("/ping", "/models"):
            answer = client.get(path)
            assert answer.status_code == 421, path
            body = answer.json()
            assert body["code"] == "misdirected_request"
            assert "DNS-rebinding" in body["message"] and "127.0.0.1" in body["message"]


@pytest.mark.parametrize(
    "base_url",
    [
        "http://localhost",
        "http://localhost:8000",
        "http://LocalHost:8000",
        "http://127.0.0.1",
        "http://127.0.0.1:8000",
        "http://127.9.8.7:1234",
        "http://[::1]",
        "http://[::1]:8000",
    ],
)
def test_loopback_bind_accepts_a_loopback_host(
    settings: Settings, pipeline: Pipeline, base_url: str
) -> None:
    with client_for(settings, pipeline, base_url) as client:
        assert client.get("/models").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_non_loopback_bind_accepts_any_host(
    settings: Settings, pipeline: Pipeline, host: str
) -> None:
    bound = dataclasses.replace(settings, host=host, auth_token=TOKEN)
    with client_for(bound, pipeline, "http://glimpse.example:8000") as client:
        assert client.get("/ping").status_code == 200
        assert client.get("/models", headers=BEARER).status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("myhost", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("header", "loopback"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("[::1]:50051", True),
        ("[::1]", True),
        ("::1", False),  # an IPv6 Host must be bracketed
        ("[127.0.0.1]", False),
        ("localhost:", False),
        ("localhost:80x", False),
        ("localhost.", False),
        ("127.1", False),
        ("evil.example", False),
        ("", False),
    ],
)
def test_is_loopback_name(header: str, loopback: bool) -> None:
    assert is_loopback_name(header) is loopback


# -- gRPC -----------------------------------------------------------------------------------------
def test_grpc_right_token_works(channel: grpc.Channel, shapes_png: bytes) -> None:
    stub = pb_grpc.GlimpseStub(channel)
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), metadata=METADATA).models] == [
        "cnn"
    ]
    request = pb.PredictRequest(model="cnn", inputs=[pb.Input(image=shapes_png)])
    assert stub.Predict(request, timeout=30, metadata=METADATA).predictions[0].classes


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([], "this server requires a token: send the metadata 'authorization: Bearer <token>'"),
        ([("authorization", "Bearer nope")], "the token does not match"),
        ([("authorization", TOKEN)], "the credentials must be the metadata"),
    ],
)
def test_grpc_wrong_or_missing_token_is_unauthenticated(
    channel: grpc.Channel, metadata: list[tuple[str, str]], reason: str
) -> None:
    stub = pb_grpc.GlimpseStub(channel)
    with pytest.raises(grpc.RpcError) as unary:
        stub.GetModel(pb.GetModelRequest(name="cnn"), timeout=10, metadata=metadata)
    assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason in unary.value.details()
    requests = iter([pb.StreamExplainRequest(id="a", model="cnn", input=pb.Input(image=b"x"))])
    with pytest.raises(grpc.RpcError) as stream:
        list(stub.StreamExplain(requests, timeout=10, metadata=metadata))
    assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_health_is_open(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_reflection_is_protected(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    def services(metadata: list[tuple[str, str]]) -> set[str]:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata)
        return {s.name for reply in replies for s in reply.list_services_response.service}

    with pytest.raises(grpc.RpcError) as refused:
        services([])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "glimpse.v1.Glimpse" in services(METADATA)


def test_grpc_refusals_are_counted(channel: grpc.Channel, pipeline: Pipeline) -> None:
    with pytest.raises(grpc.RpcError):
        pb_grpc.GlimpseStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    labels = ('route="/glimpse.v1.Glimpse/ListModels"', 'protocol="grpc"', 'code="UNAUTHENTICATED"')
    assert any(
        line.startswith("glimpse_requests_total{") and all(label in line for label in labels)
        for line in pipeline.metrics.render().decode().splitlines()
    )


def test_python_client_sends_the_token(
    address: str,
    shapes_png: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "shape.png"
    image.write_bytes(shapes_png)
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.delenv("GLIMPSE_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("GLIMPSE_AUTH_TOKEN_FILE", raising=False)
    command = ["predict", str(image), "--address", address, "--timeout", "30"]
    assert glimpse_client.main(command) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert glimpse_client.main([*command, "--token", TOKEN]) == 0
    assert glimpse_client.main([*command, "--token-file", str(tmp_path / "token")]) == 0
    monkeypatch.setenv("GLIMPSE_AUTH_TOKEN", TOKEN)
    assert glimpse_client.main(command) == 0


# -- where the token comes from, and the generated file -------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"no_auth": True, "auth_token": TOKEN}, "contradict each other"),
        ({"auth_token": TOKEN, "auth_token_file": Path("t")}, "keep one of them"),
        ({"auth_token": "two words"}, "outside printable ASCII"),
        ({"auth_token": "caf\u00e9"}, "outside printable ASCII"),
        ({"auth_token_file": Path("/nonexistent/token")}, "does not exist"),
    ],
)
def test_token_settings_that_cannot_work_are_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_token(dataclasses.replace(Settings(), **changes))


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match="is empty: write a token"):
        load_token(Settings(auth_token_file=tmp_path / "token"))


def test_a_token_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o644)
    with caplog.at_level(logging.WARNING, "glimpse.auth"):
        assert load_token(Settings(auth_token_file=tmp_path / "token")) == TOKEN.encode()
    assert "can be read by other users: chmod 600" in caplog.text


def test_non_loopback_host_gets_a_generated_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with caplog.at_level(logging.INFO, "glimpse.auth"):
        first = prepare(Settings(host="0.0.0.0"))
    token_file = tmp_path / ".glimpse" / "token"
    assert first.auth_token_file == token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = token_file.read_text().strip()
    assert len(token) >= 40 and load_token(first) == token.encode()
    assert str(token_file) in caplog.text and token not in caplog.text
    prepare(Settings(host="0.0.0.0"))  # the default file gets a new token at every start
    assert token_file.read_text().strip() != token
    assert [p.name for p in token_file.parent.iterdir()] == ["token"]  # no temporary left


def test_a_missing_token_file_given_is_created_and_then_kept(tmp_path: Path) -> None:
    token_file = tmp_path / "secrets" / "glimpse-token"
    settings = prepare(Settings(auth_token_file=token_file))  # on loopback too: it was asked
    assert settings.auth_token_file == token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    assert prepare(Settings(host="0.0.0.0", auth_token_file=token_file)).auth_token_file == (
        token_file
    )
    assert token_file.read_text() == token


def test_loopback_without_a_token_stays_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for host in ("127.0.0.1", "localhost", "::1"):
        assert prepare(Settings(host=host)) == Settings(host=host)
    assert not (tmp_path / ".glimpse").exists()


def test_no_auth_on_a_public_host_warns_and_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, "glimpse.auth"):
        settings = prepare(Settings(host="0.0.0.0", no_auth=True))
    assert load_token(settings) is None and not (tmp_path / ".glimpse").exists()
    assert "--no-auth on 0.0.0.0, which is not a loopback address" in caplog.text


def test_an_unwritable_token_path_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the token file .*GLIMPSE_AUTH_TOKEN"):
        prepare(Settings(auth_token_file=tmp_path / "a-file" / "token"))


# -- the real server -------------------------------------------------------------------------------
def environment(home: Path) -> dict[str, str]:
    """This process's environment without GLIMPSE_* settings, with HOME at `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    return {**env, "HOME": str(home)}


def test_real_server_on_all_interfaces_generates_a_token(cnn_archive: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with glimpse(
        [cnn_archive], tmp_path, args=["--host", "0.0.0.0"], env=environment(home)
    ) as server:
        token_file = home / ".glimpse" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        log = (tmp_path / "glimpse.log").read_text()
        assert f"generated an auth token in {token_file}" in log and token not in log

        assert httpx.get(f"{server.http}/ping", timeout=10).status_code == 200
        refused = httpx.get(f"{server.http}/models", timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
            "Bearer"
        )
        bearer = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{server.http}/models", headers=bearer, timeout=10).status_code == 200

        with grpc.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.GlimpseStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.ListModels(pb.ListModelsRequest(), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = [("authorization", f"Bearer {token}")]
            assert stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=metadata).models


def test_real_server_with_no_auth_is_open(cnn_archive: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = ["--host", "0.0.0.0", "--no-auth"]
    with glimpse([cnn_archive], tmp_path, args=args, env=environment(home)) as server:
        assert httpx.get(f"{server.http}/models", timeout=10).status_code == 200
        with grpc.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.GlimpseStub(channel)
            assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        assert "--no-auth on 0.0.0.0" in (tmp_path / "glimpse.log").read_text()
        assert not (home / ".glimpse").exists()
