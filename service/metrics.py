"""Prometheus metrics, all prefixed `glimpse_`, on a registry owned by the app (no globals).

Label values come from closed sets: a model name or route a client made up is
recorded as "_unknown" / "_other", so client input cannot create new series.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from service import __version__

# 1 ms to 60 s: a cached activation map at the low end, integrated gradients on a photo at the top.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNKNOWN_MODEL, OTHER_ROUTE = "_unknown", "_other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The service's metrics. Example: ``Metrics(models=["cnn"]).render()`` -> exposition bytes."""

    def __init__(self, models: Iterable[str] = (), methods: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self.models = set(models)
        self.methods = set(methods)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.request_duration = Histogram(
            "glimpse_request_duration_seconds",
            "Time from request received to response sent.",
            ["model", "route", "protocol", "code"],
            buckets=BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "glimpse_stage_duration_seconds",
            "Time spent in one pipeline stage.",
            ["model", "stage", "method"],
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "glimpse_requests",
            "Requests answered, by status code.",
            ["model", "route", "protocol", "code"],
            registry=r,
        )
        self.inflight = Gauge(
            "glimpse_inflight_requests", "Requests being handled now.", ["protocol"], registry=r
        )
        self.batch_size = Histogram(
            "glimpse_batch_size",
            "Inputs per forward pass.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue_depth = Gauge(
            "glimpse_queue_depth", "Jobs waiting in front of a model.", ["model"], registry=r
        )
        self.model_load = Gauge(
            "glimpse_model_load_seconds",
            "Time to open and initialize an archive.",
            ["model"],
            registry=r,
        )
        build = Gauge(
            "glimpse_build_info",
            "Versions of glimpse and its engine (value 1).",
            ["version", "torch", "python"],
            registry=r,
        )
        build.labels(__version__, torch.__version__, platform.python_version()).set(1)

    def model_label(self, model: str) -> str:
        return model if model in self.models else UNKNOWN_MODEL

    def method_label(self, method: str) -> str:
        return method if method in self.methods or method == "" else "_unknown"

    def observe_request(
        self, model: str, route: str, protocol: str, code: str, seconds: float
    ) -> None:
        labels = (self.model_label(model), route, protocol, code)
        self.request_duration.labels(*labels).observe(seconds)
        self.requests.labels(*labels).inc()

    def observe_stage(self, model: str, stage: str, seconds: float, method: str = "") -> None:
        self.stage_duration.labels(
            self.model_label(model), stage, self.method_label(method)
        ).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
