"""One flow per kind of model; `flow_for` is the one place that picks it."""

from __future__ import annotations

from service.flows.base import Call, ExplainRequest, Flow, Payload, PredictRequest, Tensor
from service.flows.image import ImageFlow
from service.flows.tabular import TabularFlow
from service.handlers.base import GlimpseHandler
from service.handlers.image import ImageHandler
from service.handlers.tabular import TabularHandler

__all__ = ["Call", "ExplainRequest", "Flow", "Payload", "PredictRequest", "Tensor", "flow_for"]


def flow_for(name: str, handler: GlimpseHandler) -> Flow:
    """The flow that serves `handler`; ValueError for a handler glimpse cannot serve."""
    if isinstance(handler, ImageHandler):
        return ImageFlow(name, handler)
    if isinstance(handler, TabularHandler):
        return TabularFlow(name, handler)
    raise ValueError(f"{name}: glimpse has no flow for a {type(handler).__name__}")
