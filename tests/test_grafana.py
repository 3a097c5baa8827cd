"""deploy/grafana/: the dashboard is well-formed Grafana JSON, its provisioning files load and
point at it, and every PromQL expression in it returns data from a real Prometheus scraping a
real glimpse that has served predictions and explanations over HTTP and gRPC."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from service import client as glimpse_client
from service.metrics import Metrics
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from tests.helpers import ROW
from tests.servers.glimpse import glimpse
from tests.servers.prometheus import Prometheus, binary, prometheus

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "glimpse.json"
PROVISIONING = GRAFANA / "provisioning"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
MODELS = ("cnn", "tabular")
# What Grafana puts in place of its built-in variables; `1m` spans many 1 s scrapes.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "60000",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>\w+)\s*\)$")


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target."""
    return [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, query) for every query variable; Grafana 10+ stores the query as an object."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with Grafana's variables replaced: ``$model`` / ``${model}`` / ``${model:regex}``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"no value for ${name} in {expr}")
        return values[name]

    return VARIABLE.sub(replace, expr)


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """The dashboard's own variables (models as a regex of the served ones) and the built-ins."""
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    values = {"model": "|".join(MODELS), "DS_PROMETHEUS": "prometheus", **BUILTINS}
    missing = names - values.keys()
    assert not missing, f"the test has no value for the dashboard variables {missing}"
    return values


# -- the JSON and the provisioning files (no servers) ---------------------------------------------
def test_dashboard_is_grafana_json_on_the_prometheus_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "glimpse" and dashboard["schemaVersion"] >= 36  # Grafana 10/11
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    model = variables["model"]
    assert model["datasource"] == DS and model["multi"] and model["includeAll"]
    assert model["definition"] == "label_values(glimpse_requests_total, model)"
    assert dict(variable_queries(dashboard))["model"] == model["definition"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']!r} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS and target["expr"].strip(), panel["title"]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = load_dashboard()
    exprs = [expr for _, expr in panel_expressions(dashboard)]
    text = "\n".join(exprs)
    defined = {
        metric.name for metric in Metrics().registry.collect() if metric.name.startswith("glimpse_")
    }
    assert {"glimpse_requests", "glimpse_stage_duration_seconds", "glimpse_batch_size"} <= defined
    for name in defined | {"process_resident_memory_bytes"}:
        assert name in text, f"no panel shows {name}"
    for quantile in ("0.5", "0.99"):
        assert any(
            expr.startswith(f"histogram_quantile({quantile}, sum by (le, model, route) (rate(")
            and "glimpse_request_duration_seconds_bucket" in expr
            for expr in exprs
        ), f"no p{quantile} per model and route"
    assert any("glimpse_requests_total" in e and "code=~" in e and " / " in e for e in exprs)
    stacked = [
        panel
        for panel in panels(dashboard)
        if any("sum by (stage)" in t["expr"] for t in panel.get("targets", []))
    ]
    assert stacked, "no stage breakdown"
    custom = stacked[0]["fieldConfig"]["defaults"]["custom"]
    assert custom["stacking"]["mode"] == "normal"
    assert any("by (method)" in e and "glimpse_stage_duration_seconds" in e for e in exprs)
    assert all('model=~"$model"' in e for e in exprs if "model" in e and "glimpse_" in e)


def test_every_expression_parses_after_substitution(tmp_path: Path) -> None:
    """promtool checks PromQL syntax offline: each expression becomes a recording rule."""
    dashboard = load_dashboard()
    values = variable_values(dashboard)
    rules = [
        {"record": f"grafana:expr_{i}", "expr": substitute(expr, values)}
        for i, (_, expr) in enumerate(panel_expressions(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def readme_mounts() -> dict[str, str]:
    """The README's `-v "$PWD/<repo path>:<container path>"` mounts: repo path -> container path."""
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r'-v "\$PWD/([^:"]+):([^:"]+)"', text))


def test_provisioning_loads_and_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert httpx.URL(source["url"]).scheme in {"http", "https"}
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "glimpse.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    # Grafana reads the files where the README mounts them: the same two paths.
    mounts = readme_mounts()
    assert mounts.get("deploy/grafana/provisioning") == "/etc/grafana/provisioning", mounts
    assert mounts.get("deploy/grafana/dashboards") == provider["options"]["path"], mounts
    assert DASHBOARD.parent == ROOT / "deploy" / "grafana" / "dashboards"
    assert sorted(p.name for p in DASHBOARD.parent.glob("*.json")) == ["glimpse.json"]


# -- every expression against a real Prometheus scraping a real glimpse ---------------------------
def send_traffic(http: str, address: str, png: bytes) -> int:
    """Predictions and explanations on both models over both doors, a few failing; the count."""
    sent = 0
    with httpx.Client(base_url=http, timeout=60) as client:
        for route, kwargs in [
            ("/predictions/cnn", {"content": png}),
            ("/explanations/cnn", {"content": png, "params": {"methods": "activation,gradcam"}}),
            ("/heatmaps/cnn", {"content": png}),
            ("/predictions/tabular", {"json": ROW}),
            ("/explanations/tabular", {"json": [ROW]}),
            ("/predictions/cnn", {"content": b"not an image"}),  # 400
            ("/predictions/nope", {"content": png}),  # 404
        ]:
            client.post(route, **kwargs)  # type: ignore[arg-type]
            sent += 1
    image, row = pb.Input(image=png), pb.Input(row=glimpse_client.encode_row(ROW))
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GlimpseStub(channel)
        calls: list[tuple[Any, Any]] = [
            (stub.Predict, pb.PredictRequest(model="cnn", inputs=[image])),
            (stub.Explain, pb.ExplainRequest(model="cnn", inputs=[image], methods=["gradcam"])),
            (stub.Predict, pb.PredictRequest(model="tabular", inputs=[row])),
            (stub.Explain, pb.ExplainRequest(model="tabular", inputs=[row])),
            (stub.Predict, pb.PredictRequest(model="nope", inputs=[image])),  # NOT_FOUND
        ]
        for call, request in calls:
            try:
                call(request, timeout=60)
            except grpc.RpcError:
                pass
            sent += 1
    return sent


def wait_for_count(prom: Prometheus, total: int, timeout: float = 30) -> None:
    """Until Prometheus has scraped all `total` requests."""
    deadline = time.monotonic() + timeout
    seen: float | None = None
    while time.monotonic() < deadline:
        result = prom.query("sum(glimpse_requests_total)")
        seen = float(result[0]["value"][1]) if result else None
        if seen == total:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus saw {seen} requests, expected {total}")


def has_data(result: list[dict[str, Any]]) -> bool:
    """Non-empty, and at least one series is a number (not NaN from an empty rate window)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def ask(prom: Prometheus, expr: str) -> tuple[list[dict[str, Any]], str]:
    """The query's result, or an empty one and Prometheus' error."""
    try:
        return prom.query(expr), ""
    except httpx.HTTPStatusError as exc:
        return [], exc.response.text


@pytest.mark.integration
def test_every_expression_returns_data(
    cnn_archive: Path, tabular_archive: Path, shapes_png: bytes, tmp_path: Path
) -> None:
    dashboard = load_dashboard()
    values = variable_values(dashboard)
    queries = [(where, substitute(expr, values)) for where, expr in panel_expressions(dashboard)]
    with glimpse([cnn_archive, tabular_archive], tmp_path / "glimpse") as server:
        with prometheus(server.http.removeprefix("http://"), tmp_path / "prometheus") as prom:
            # Two rounds with a scrape between them, so every series rises inside the rate
            # window: rate() has two samples and histogram_quantile a non-zero count.
            sent = send_traffic(server.http, server.grpc, shapes_png)
            wait_for_count(prom, sent)
            sent += send_traffic(server.http, server.grpc, shapes_png)
            wait_for_count(prom, sent)

            for name, query in variable_queries(dashboard):
                parsed = LABEL_VALUES.match(query)
                assert parsed, f"${name}: {query} is not label_values(metric, label)"
                found = prom.label_values(parsed["label"], parsed["match"] or "{__name__=~'.+'}")
                assert set(MODELS) <= set(found), (name, query, found)

            deadline = time.monotonic() + 30
            failing = dict(queries)
            answers: dict[str, tuple[list[dict[str, Any]], str]] = {}
            while failing and time.monotonic() < deadline:
                for where, expr in list(failing.items()):
                    answers[where] = ask(prom, expr)
                    if has_data(answers[where][0]):
                        del failing[where]
                if failing:
                    time.sleep(1)
        assert prom.process.poll() is not None
    assert server.process.poll() is not None
    assert not failing, "\n".join(
        f"{where}: {expr}\n  -> {answers[where][1] or answers[where][0]}"
        for where, expr in failing.items()
    )
