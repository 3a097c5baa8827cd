"""Tabular rows: decode -> queue -> predict or attribute per method -> one result per row.

Example: ``await TabularFlow("tabular", handler).predict(call, [Payload(b'{"Store": 1}')])``
"""

from __future__ import annotations

from collections.abc import Mapping

from service.errors import BadInput, UnsupportedMediaType
from service.explain import Explainer
from service.flows.base import Call, ExplainRequest, Payload
from service.handlers.tabular import Row, TabularHandler
from service.results import RowResult


class TabularFlow:
    """The flow of a tabular model. A payload holds one row or a list of rows."""

    def __init__(self, name: str, handler: TabularHandler) -> None:
        self.name = name
        self.handler = handler

    async def predict(self, call: Call, payloads: list[Payload]) -> list[list[float]]:
        """Per payload, the predicted value of each of its rows (what TorchServe answers)."""
        requests = await call.in_thread("decode", lambda: self.decode(payloads))
        flat = [row for rows in requests for row in rows]

        def job() -> list[float]:
            with call.timings.stage("inference"):
                return self.handler.predict_rows(flat)

        values = iter(await call.queued(job, len(flat)))
        return [[next(values) for _ in rows] for rows in requests]

    async def explain(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> list[RowResult]:
        requests = await call.in_thread("decode", lambda: self.decode(request.inputs))
        rows = [row for payload_rows in requests for row in payload_rows]

        def job() -> list[RowResult]:
            per_method = []
            for name, explainer in explainers.items():
                with call.timings.stage(explainer.stage, method=name):
                    per_method.append(self.handler.explain_rows(rows, explainer))
            return [_merge(results) for results in zip(*per_method, strict=True)]

        return await call.queued(job, len(rows))

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> bytes:
        raise UnsupportedMediaType(
            f"{self.name} is not an image model; use /explanations/{self.name}"
        )

    def decode(self, payloads: list[Payload]) -> list[list[Row]]:
        """Each payload's rows, decoded by the handler exactly as inside TorchServe."""
        decoded = [self._rows(i, payload) for i, payload in enumerate(payloads)]
        if not any(decoded):
            raise BadInput("the request has no inputs")
        return decoded

    def _rows(self, index: int, payload: Payload) -> list[Row]:
        content_type = payload.content_type
        if not isinstance(payload.data, Mapping) and content_type not in ("application/json", ""):
            raise UnsupportedMediaType(
                f"input {index}: {self.name} is a tabular model; send rows as application/json, "
                f"not {content_type} (gRPC: set Input.row)"
            )
        return self.handler.decode(payload.data)


def _merge(results: tuple[RowResult, ...]) -> RowResult:
    """One row's results from several methods -> one result with attributions by method."""
    first = results[0]
    return RowResult(
        prediction=first.prediction,
        base_value=first.base_value,
        attributions={k: v for r in results for k, v in r.attributions.items()},
        convergence_delta={k: v for r in results for k, v in r.convergence_delta.items()},
    )
