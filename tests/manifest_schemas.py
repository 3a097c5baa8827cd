"""JSON schemas for the manifests in deploy/ whose kinds Kubernetes itself does not define.

Core kinds (Deployment, Service, HPA, ConfigMap, PVC) are checked against the upstream
schemas that the `kubernetes-validate` package ships (strict: no unknown field anywhere).
For the custom resources there is no installable package with their schemas that fits
this venv (KServe's SDK pins an older protobuf), so the fields deploy/ uses are written
here after the projects' API types, every object closed (`additionalProperties: false`),
and every Kubernetes type inside them (Container, PodSpec fields, ObjectMeta,
LabelSelector, SecretKeySelector) taken from those same upstream strict schemas:

- InferenceService (serving.kserve.io/v1beta1): spec.predictor is KServe's PredictorSpec, a
  PodSpec inline plus ComponentExtensionSpec (replicas, scaling, timeout) plus `model`
  (ModelSpec: a Container inline plus modelFormat, runtime, storageUri, protocolVersion).
- ServiceMonitor (monitoring.coreos.com/v1): selector, namespaceSelector, endpoints.
- prometheus-adapter's rules file (the `config.yaml` inside its ConfigMap).

What this catches: a misspelt or misplaced field, a wrong type, a bad enum value. What it
cannot: a field real KServe or the Prometheus Operator added that is not listed here is
refused too (add it here), and nothing checks what a controller does with the values.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")  # oldest and newest schemas kubernetes-validate ships
DURATION = (
    "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


@cache
def core_definitions(version: str = KUBERNETES_VERSIONS[-1]) -> dict[str, Any]:
    """The upstream strict schemas of every Kubernetes type, by name (`$defs`)."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (folder / f"v{version}-local-strict" / "_definitions.json").read_text()
    return dict(json.loads(text)["$defs"])


def core(name: str) -> dict[str, Any]:
    """A reference to an upstream type, e.g. ``core("api.core.v1.Container")``."""
    return {"$ref": f"#/$defs/io.k8s.{name}"}


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def inline(name: str, **more: Any) -> dict[str, Any]:
    """An upstream type's fields inline (as Go's `json:",inline"`), optional, plus `more`."""
    return closed({**core_definitions()[f"io.k8s.{name}"]["properties"], **more})


def document(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A whole closed schema for one kind, with the upstream types it refers to."""
    schema = closed(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": core("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "$defs": core_definitions(),
    }


def _int_or_string() -> dict[str, Any]:
    return {"type": ["integer", "string"]}


# -- KServe v1beta1 -----------------------------------------------------------------------------
def _model_spec() -> dict[str, Any]:
    return inline(
        "api.core.v1.Container",
        modelFormat=closed({"name": {"type": "string"}, "version": {"type": "string"}}, ("name",)),
        runtime={"type": "string"},
        runtimeVersion={"type": "string"},
        storageUri={"type": "string"},
        protocolVersion={"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
    )


def _predictor_spec() -> dict[str, Any]:
    replicas = {"type": "integer", "minimum": 0}
    return inline(
        "api.core.v1.PodSpec",
        # ComponentExtensionSpec
        minReplicas=replicas,
        maxReplicas=replicas,
        scaleTarget={"type": "integer", "minimum": 1},
        scaleMetric={"enum": ["cpu", "memory", "concurrency", "rps"]},
        containerConcurrency={"type": "integer", "minimum": 0},
        timeout={"type": "integer", "minimum": 1},
        canaryTrafficPercent={"type": "integer", "minimum": 0, "maximum": 100},
        labels={"type": "object", "additionalProperties": {"type": "string"}},
        annotations={"type": "object", "additionalProperties": {"type": "string"}},
        model=_model_spec(),
    )


def inference_service() -> dict[str, Any]:
    return document(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        closed({"predictor": _predictor_spec()}, ("predictor",)),
    )


# -- Prometheus Operator v1 ----------------------------------------------------------------------
def _endpoint() -> dict[str, Any]:
    secret_key = core("api.core.v1.SecretKeySelector")
    return closed(
        {
            "port": {"type": "string"},
            "targetPort": _int_or_string(),
            "path": {"type": "string"},
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            "params": {"type": "object"},
            "interval": {"type": "string", "pattern": DURATION},
            "scrapeTimeout": {"type": "string", "pattern": DURATION},
            "honorLabels": {"type": "boolean"},
            "honorTimestamps": {"type": "boolean"},
            "authorization": closed({"type": {"type": "string"}, "credentials": secret_key}),
            "bearerTokenSecret": secret_key,
            "followRedirects": {"type": "boolean"},
            "enableHttp2": {"type": "boolean"},
            "relabelings": {"type": "array", "items": {"type": "object"}},
            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
        }
    )


def service_monitor() -> dict[str, Any]:
    strings = {"type": "array", "items": {"type": "string"}}
    spec = closed(
        {
            "selector": core("apimachinery.pkg.apis.meta.v1.LabelSelector"),
            "namespaceSelector": closed({"any": {"type": "boolean"}, "matchNames": strings}),
            "endpoints": {"type": "array", "items": _endpoint(), "minItems": 1},
            "jobLabel": {"type": "string"},
            "targetLabels": strings,
            "podTargetLabels": strings,
            "sampleLimit": {"type": "integer", "minimum": 0},
        },
        ("selector", "endpoints"),
    )
    return document("monitoring.coreos.com/v1", "ServiceMonitor", spec)


# -- prometheus-adapter ------------------------------------------------------------------------
def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter's config file: `rules` that turn Prometheus series into custom
    metrics (seriesQuery, seriesFilters, resources, name, metricsQuery)."""
    string = {"type": "string"}
    rule = closed(
        {
            "seriesQuery": string,
            "seriesFilters": {
                "type": "array",
                "items": closed({"is": string, "isNot": string}),
            },
            "resources": closed(
                {
                    "overrides": {
                        "type": "object",
                        "additionalProperties": closed(
                            {"group": string, "resource": string}, ("resource",)
                        ),
                    },
                    "template": string,
                }
            ),
            "name": closed({"matches": string, "as": string}),
            "metricsQuery": string,
        },
        ("seriesQuery", "metricsQuery"),
    )
    return closed({"rules": {"type": "array", "items": rule, "minItems": 1}}, ("rules",))
