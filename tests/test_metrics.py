"""Metrics: names and labels as documented, closed label sets, valid Prometheus deploy files."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.servers.prometheus import binary

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def series(client: TestClient) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_documented_metrics_are_exported(client: TestClient, shapes_png: bytes) -> None:
    client.post("/explanations/cnn?methods=activation,gradcam", content=shapes_png)
    names = {name for name, _ in series(client)}
    for name in (
        "glimpse_request_duration_seconds_bucket",
        "glimpse_stage_duration_seconds_bucket",
        "glimpse_requests_total",
        "glimpse_inflight_requests",
        "glimpse_batch_size_bucket",
        "glimpse_model_load_seconds",
        "glimpse_queue_depth",
        "glimpse_build_info",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    stages = {
        dict(labels).get("stage")
        for name, labels in series(client)
        if name == "glimpse_stage_duration_seconds_count"
    }
    assert {"decode", "queue", "inference", "heatmap", "attribution", "encode"} <= stages
    methods = {
        dict(labels).get("method")
        for name, labels in series(client)
        if name == "glimpse_stage_duration_seconds_count"
    }
    assert {"activation", "gradcam"} <= methods


def test_made_up_model_names_and_routes_add_no_series(
    client: TestClient, shapes_png: bytes
) -> None:
    client.post("/predictions/warm-up-unknown", content=shapes_png)
    client.get("/warm/up/unknown/route")
    before = series(client)
    for _ in range(1000):
        made_up = uuid.uuid4().hex
        client.post(f"/predictions/{made_up}", content=shapes_png)
        client.get(f"/{made_up}/anything")
    after = series(client)
    assert after - before == set()
    models = {
        dict(labels).get("model") for name, labels in after if name == "glimpse_requests_total"
    }
    assert models <= {"cnn", "_unknown", ""}


def test_promtool_accepts_the_deploy_files() -> None:
    promtool = binary("promtool")
    config = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "rules.yml")], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "4 rules found" in rules.stdout
