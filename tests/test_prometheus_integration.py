"""A real Prometheus scrapes a real glimpse; what it reads back matches what was sent."""

from __future__ import annotations

import math
import time
from pathlib import Path

import grpc
import httpx
import pytest

from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from tests.helpers import ROW
from tests.servers.glimpse import glimpse
from tests.servers.prometheus import prometheus

pytestmark = pytest.mark.integration


def send_http(base: str, png: bytes) -> dict[str, int]:
    codes: dict[str, int] = {}
    calls = (
        [("/predictions/cnn", png)] * 5
        + [("/explanations/cnn", png)] * 3
        + [("/predictions/cnn", b"")] * 2
        + [("/predictions/nope", png)] * 2
    )
    with httpx.Client(base_url=base, timeout=60) as client:
        for route, body in calls:
            code = str(client.post(route, content=body).status_code)
            codes[code] = codes.get(code, 0) + 1
        for _ in range(2):
            code = str(client.post("/predictions/tabular", json=ROW).status_code)
            codes[code] = codes.get(code, 0) + 1
    return codes


def send_grpc(address: str, png: bytes) -> dict[str, int]:
    codes: dict[str, int] = {}
    calls = (
        [pb.PredictRequest(model="cnn", inputs=[pb.Input(image=png)])] * 4
        + [pb.PredictRequest(model="nope", inputs=[pb.Input(image=png)])] * 2
        + [pb.PredictRequest(model="cnn", inputs=[pb.Input(image=b"")])]
    )
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GlimpseStub(channel)
        for request in calls:
            try:
                stub.Predict(request, timeout=60)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            codes[code] = codes.get(code, 0) + 1
    return codes


def test_prometheus_reads_back_counts_and_quantiles(
    cnn_archive: Path, tabular_archive: Path, shapes_png: bytes, tmp_path: Path
) -> None:
    with glimpse([cnn_archive, tabular_archive], tmp_path / "glimpse") as server:
        with prometheus(server.http.removeprefix("http://"), tmp_path / "prometheus") as prom:
            sent = {
                "http": send_http(server.http, shapes_png),
                "grpc": send_grpc(server.grpc, shapes_png),
            }
            total = sum(sum(codes.values()) for codes in sent.values())
            _wait_for(prom, "sum(glimpse_requests_total)", total)
            counted = {
                (r["metric"]["protocol"], r["metric"]["code"]): float(r["value"][1])
                for r in prom.query("sum by (protocol, code) (glimpse_requests_total)")
            }
            quantiles = prom.query(
                "histogram_quantile(0.99, sum by (le, model, route) "
                "(glimpse_request_duration_seconds_bucket))"
            )
        assert prom.process.poll() is not None
    assert server.process.poll() is not None
    expected = {
        (protocol, code): float(n) for protocol, codes in sent.items() for code, n in codes.items()
    }
    assert expected[("http", "200")] == 10 and expected[("grpc", "NOT_FOUND")] == 2
    assert counted == expected
    by_route = {
        (q["metric"]["model"], q["metric"]["route"]): float(q["value"][1]) for q in quantiles
    }
    for key in [
        ("cnn", "/predictions/{name}"),
        ("cnn", "/explanations/{name}"),
        ("tabular", "/predictions/{name}"),
        ("cnn", "/glimpse.v1.Glimpse/Predict"),
        ("_unknown", "/predictions/{name}"),
    ]:
        assert key in by_route and math.isfinite(by_route[key]) and by_route[key] > 0, key


def _wait_for(prom: object, expr: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        result = prom.query(expr)  # type: ignore[attr-defined]
        seen = float(result[0]["value"][1]) if result else None
        if seen == value:
            return
        time.sleep(0.5)
    raise AssertionError(f"{expr} stayed at {seen}, expected {value}")
