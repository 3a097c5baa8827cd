"""Every manifest in deploy/k8s and deploy/kserve, validated offline, unknown fields refused.

- Kubernetes' own kinds: against the upstream strict JSON schemas of the oldest and newest
  release `kubernetes-validate` ships, and loaded into the `kubernetes` client's typed models
  (V1Deployment, V2HorizontalPodAutoscaler, ...): written back, the model must give the
  manifest again, so no key was dropped as unknown on the way in.
- InferenceService, ServiceMonitor and prometheus-adapter's rules: against the closed
  schemas of tests/manifest_schemas.py (which says what they cover).
- The parts agree with each other and with glimpse: selectors and port names, the HPA's
  metric and the adapter rule, the metric glimpse exports, the flags and GLIMPSE_*
  variables the containers pass, and the stop sequence's seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from service.__main__ import parse_settings
from service.config import Settings, env_variable
from service.metrics import Metrics
from tests import manifest_schemas as schemas

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted([*DEPLOY.glob("k8s/*.yaml"), *DEPLOY.glob("kserve/*.yaml")])
CORE_GROUPS = {"v1", "apps/v1", "autoscaling/v2"}
CUSTOM = {
    ("serving.kserve.io/v1beta1", "InferenceService"): schemas.inference_service,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): schemas.service_monitor,
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def every_document() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in documents(path):
            yield f"{path.parent.name}/{path.name}", doc


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in every_document() if doc["kind"] == kind]


def validate(doc: dict[str, Any]) -> None:
    """Raise when `doc` has an unknown field, a wrong type or a missing required one."""
    if doc["apiVersion"] in CORE_GROUPS:
        for version in schemas.KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        load_typed(doc)
        if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
            rules = yaml.safe_load(doc["data"]["config.yaml"])
            jsonschema.validate(rules, schemas.adapter_rules())
        return
    schema = CUSTOM.get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, f"no schema for {doc['apiVersion']} {doc['kind']}: add one"
    jsonschema.Draft202012Validator(schema()).validate(doc)


def load_typed(doc: dict[str, Any]) -> Any:
    """`doc` as the kubernetes client's model (e.g. V1Deployment); ValueError when writing the
    model back does not give `doc` again (the models drop keys they do not know)."""
    version = doc["apiVersion"].rsplit("/", 1)[-1].capitalize()
    api = k8s.ApiClient()
    model = api._ApiClient__deserialize(doc, f"{version}{doc['kind']}")
    if api.sanitize_for_serialization(model) != doc:
        raise ValueError(f"{doc['kind']} {doc['metadata']['name']}: fields the model drops")
    return model


# -- every manifest is valid ----------------------------------------------------------------------
def test_there_are_manifests_of_every_kind() -> None:
    kinds = {doc["kind"] for _, doc in every_document()}
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "ServiceMonitor",
        "InferenceService",
    }


@pytest.mark.parametrize(("name", "doc"), list(every_document()), ids=lambda v: str(v)[:40])
def test_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    validate(doc)


# -- and a broken one is refused -----------------------------------------------------------------
# Where to slip an unknown field into each kind: a spot deep inside what the kind defines.
UNKNOWN_AT = {
    "Deployment": ["spec", "template", "spec", "containers", 0, "readinessProbe"],
    "Service": ["spec", "ports", 0],
    "HorizontalPodAutoscaler": ["spec", "metrics", 1, "pods", "target"],
    "PersistentVolumeClaim": ["spec"],
    "ConfigMap": [],
    "ServiceMonitor": ["spec", "endpoints", 0, "authorization"],
    "InferenceService": ["spec", "predictor"],
}


def with_unknown_field(doc: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    node: Any = broken
    for key in path:
        node = node[key]
    node["unknownField"] = 1
    return broken


@pytest.mark.parametrize(("name", "doc"), list(every_document()), ids=lambda v: str(v)[:40])
def test_an_unknown_field_is_refused(name: str, doc: dict[str, Any]) -> None:
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(with_unknown_field(doc, UNKNOWN_AT[doc["kind"]]))


def test_the_typed_models_alone_refuse_an_unknown_field() -> None:
    """The second check on its own: the kubernetes client's models, no JSON schema."""
    deployment = by_kind("Deployment")[0]
    load_typed(deployment)
    with pytest.raises(ValueError, match="fields the model drops"):
        load_typed(with_unknown_field(deployment, UNKNOWN_AT["Deployment"]))


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("InferenceService", ["spec", "predictor", "model"]),
        ("InferenceService", ["spec", "predictor", "containers", 0]),
        ("ServiceMonitor", ["spec"]),
    ],
)
def test_custom_schemas_are_closed_inside(kind: str, path: list[str | int]) -> None:
    doc = next(d for d in by_kind(kind) if _has(d, path))
    with pytest.raises(jsonschema.ValidationError, match="unknownField"):
        validate(with_unknown_field(doc, path))


def test_adapter_rules_refuse_an_unknown_field() -> None:
    (config_map,) = [d for d in by_kind("ConfigMap") if "config.yaml" in d["data"]]
    rules = yaml.safe_load(config_map["data"]["config.yaml"])
    rules["rules"][0]["name"]["unknownField"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rules, schemas.adapter_rules())


def _has(doc: dict[str, Any], path: list[str | int]) -> bool:
    node: Any = doc
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return False
    return True


# -- the parts agree ------------------------------------------------------------------------------
def _pod_spec() -> dict[str, Any]:
    (deployment,) = by_kind("Deployment")
    return dict(deployment["spec"]["template"]["spec"])


def test_service_and_monitor_select_the_pods() -> None:
    (deployment,) = by_kind("Deployment")
    (service,) = by_kind("Service")
    (monitor,) = by_kind("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    container_ports = {p["name"] for p in _pod_spec()["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_hpa_scales_on_a_metric_glimpse_exports() -> None:
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    (deployment,) = by_kind("Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pods_metrics = [
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    ]
    (config_map,) = [d for d in by_kind("ConfigMap") if "config.yaml" in d["data"]]
    served = {r["name"]["as"] for r in yaml.safe_load(config_map["data"]["config.yaml"])["rules"]}
    exported = {metric.name for metric in Metrics().registry.collect()}
    assert pods_metrics == ["glimpse_inflight_requests"]
    assert set(pods_metrics) <= served <= exported


def test_containers_pass_flags_and_variables_glimpse_reads() -> None:
    """Each glimpse container's args parse as `python -m service` flags, and each GLIMPSE_*
    variable is a Settings field's."""
    variables = {env_variable(field) for field in Settings.__dataclass_fields__}
    containers = [_pod_spec()["containers"][0]]
    for isvc in by_kind("InferenceService"):
        containers += isvc["spec"]["predictor"].get("containers", [])
    for container in containers:
        assert container["command"][-2:] == ["-m", "service"]
        parse_settings(container.get("args", []))  # SystemExit on a flag it does not know
        names = {e["name"] for e in container["env"] if e["name"].startswith("GLIMPSE_")}
        assert names <= variables, names - variables


def test_the_stop_sequence_fits_in_the_grace_period() -> None:
    """preStop sleep + glimpse's drain < terminationGracePeriodSeconds, and liveness does not
    restart a pod that is draining (its /ping answers 503 for at most the drain)."""
    pod = _pod_spec()
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = float(env["GLIMPSE_DRAIN_SECONDS"])
    sleep = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert sleep + drain < pod["terminationGracePeriodSeconds"]
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"


def test_pods_run_as_non_root_on_a_read_only_root() -> None:
    pod = _pod_spec()
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert "/tmp" in mounts  # archives unpack there: an emptyDir, the root being read-only
    resources = container["resources"]
    assert resources["requests"] and resources["limits"]


def test_kserve_torchserve_serves_the_same_archive() -> None:
    (torchserve,) = [d for d in by_kind("InferenceService") if "model" in d["spec"]["predictor"]]
    model = torchserve["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    properties = (DEPLOY / "kserve/torchserve/config/config.properties").read_text()
    assert '"marName":"cnn.mar"' in properties
    assert "model_store=/mnt/models/model-store" in properties
