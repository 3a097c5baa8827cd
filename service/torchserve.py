"""TorchServe as a door onto glimpse's flows: one TorchServe batch in, one answer per item out.

TorchServe calls the handler's `handle(data, context)` with a batch of requests (up to the
model's `batchSize`, gathered for up to `maxBatchDelay` ms), from `/predictions/{model}` and
from `/explanations/{model}` alike; the frontend marks each explanation with the request
header `explain: True`, which `context.get_request_header(idx, "explain")` reads (as
TorchServe's own BaseHandler does in `_is_explain`, but per item: a batch may mix both).

Each item runs through the model's flow (service.flows) as in glimpse's own server: decode,
validation, the explanation budget, then one batched pass for every item of the batch that
got that far (the flow's `process`, which glimpse's own worker runs too), then the encoding.
An explanation answers `service.answers.explanation_body`, the JSON of glimpse's own
`/explanations/{name}`; a prediction answers what glimpse's `/predictions/{name}` answers.

How an explanation request names its method, target and method parameters (the names of
glimpse's own query parameters):
- multipart fields: the input in the file field `data` (or `file`), and fields `methods`
  (or `method`), `target`, `overlay`, `format`; every other field is a method parameter
  (`steps`, or `integrated_gradients.steps`), e.g.
  ``curl -F data=@cat.png -F methods=gradcam -F target=cat .../explanations/cnn``;
- a JSON body: for images ``{"data": "<base64 image>", "methods": "gradcam", "target":
  "cat", "params": {"steps": 20}}``; for rows ``{"rows": [...], "methods": ..., "params":
  {...}}`` (a JSON object without `rows` is one row, answered with the default method);
- a raw body (image bytes, or JSON rows) alone: the default method, the predicted class.

A bad item fails alone: its answer is glimpse's error object `{"code", "message"}` with the
error's HTTP status set on that item only (`context.set_response_status(status, code, idx)`),
and the other items of the batch are answered as usual.

Example (what `GlimpseHandler.handle` does):
``return door_for(handler, context).handle(data, context)``
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.answers import explanation_body
from service.config import Settings
from service.errors import BadInput, SchemaError, as_glimpse_error
from service.flows import Call, ExplainRequest, Flow, Payload, flow_for
from service.flows.base import ROUTE_OPTIONS
from service.handlers.base import GlimpseHandler
from service.imaging import image_file
from service.limits import DEFAULT_LIMITS, Limits
from service.metrics import Metrics
from service.pipeline import explainers_for
from service.timing import Timings

logger = logging.getLogger(__name__)

# The fields that are not method parameters: the input, and glimpse's own route parameters.
INPUT_FIELDS = ("data", "file", "body")
JSON_FIELDS = ROUTE_OPTIONS | {"data", "rows", "params"}
# Each answer says how many requests its TorchServe batch held, e.g. `X-Glimpse-Batch: 4`.
BATCH_HEADER = "X-Glimpse-Batch"


class TorchServeContext(Protocol):
    """The parts of TorchServe's `Context` the door reads and writes (ts/context.py)."""

    def get_request_header(self, idx: int, key: str) -> str | None: ...

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...

    def set_response_header(self, idx: int, key: str, value: str) -> None: ...


@dataclass
class Item:
    """One request of a TorchServe batch: its input, and for an explanation its options as
    text (glimpse's query parameters: see ExplainRequest.from_options)."""

    explain: bool
    payload: Payload
    options: dict[str, str] = field(default_factory=dict)


class BatchRunner:
    """The `Runner` of one TorchServe batch: it holds every item's job until each item has
    either handed in its job or failed before that, then runs them all as one batch through
    the flow's `process` (what glimpse's own worker runs on its batches)."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.jobs: list[tuple[Any, asyncio.Future[Any]]] = []
        self.changed = asyncio.Event()
        self.ran = False

    async def run(self, job: Any) -> Any:
        if self.ran:  # nothing would ever answer it: fail loudly instead of hanging the batch
            raise RuntimeError("a second job for one request after its TorchServe batch ran")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.jobs.append((job, future))
        self.changed.set()
        return await future

    async def run_when_gathered(self, tasks: list[asyncio.Task[Any]]) -> int:
        """Wait until each task has handed in its job or ended (a task that handed one in
        waits for it: so an ended task failed before), then run the jobs as one batch.
        Returns how many jobs the batch had."""
        for task in tasks:
            task.add_done_callback(lambda _: self.changed.set())
        while len(self.jobs) + sum(task.done() for task in tasks) < len(tasks):
            await self.changed.wait()
            self.changed.clear()
        self.ran = True
        if self.jobs:
            try:
                answers = self.flow.process([(job, 0.0) for job, _ in self.jobs])
            except Exception as exc:  # noqa: BLE001 - process answers failures per job; if not,
                answers = [exc] * len(self.jobs)  # each job still gets an answer
            for (_, future), answer in zip(self.jobs, answers, strict=True):
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        return len(self.jobs)


class TorchServeDoor:
    """Answers TorchServe's batches for one handler through the handler's flow."""

    def __init__(self, handler: GlimpseHandler, name: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.handler = handler
        self.name = name
        self.flow = flow_for(name, handler)
        self.limits = limits
        self.metrics = Metrics(models=[name])

    def handle(self, data: list[dict[str, Any]], context: TorchServeContext | None) -> list[Any]:
        """One answer per item of `data`, in order; a failed item's answer is its error object
        (and, given TorchServe's `context`, its HTTP status)."""
        explain = [_is_explain(context, idx) for idx in range(len(data))]
        answers = asyncio.run(self._answer(data, explain))  # TorchServe's worker runs no loop
        for idx, answer in enumerate(answers):
            if context is not None:
                context.set_response_header(idx, BATCH_HEADER, str(len(data)))
            if isinstance(answer, BaseException):
                error = as_glimpse_error(answer)
                if error.status >= 500:
                    logger.error("item %d failed", idx, exc_info=answer)
                if context is not None:
                    context.set_response_status(error.status, error.code, idx)
                answers[idx] = error.as_json()
        return answers

    async def _answer(self, data: list[dict[str, Any]], explain: list[bool]) -> list[Any]:
        runner = BatchRunner(self.flow)
        tasks = [
            asyncio.ensure_future(self._work(item, wants, runner))
            for item, wants in zip(data, explain, strict=True)
        ]
        jobs = await runner.run_when_gathered(tasks)
        answers: list[Any] = list(await asyncio.gather(*tasks, return_exceptions=True))
        logger.info(
            "glimpse batch of %d: %d explanations, %d predictions, %d in one pass",
            len(data),
            sum(explain),
            len(data) - sum(explain),
            jobs,
        )
        return answers

    async def _work(self, raw: dict[str, Any], explain: bool, runner: BatchRunner) -> Any:
        """One item's answer: parsed, then through the flow like a glimpse request."""
        item = parse_item(self.handler.kind, raw, explain)
        timings = Timings(self.name, self.metrics)
        call = Call(self.name, runner, self.metrics, timings, self.limits, None)
        if not item.explain:
            predictions = await self.flow.predict(call, [item.payload])
            return predictions[0]
        request = ExplainRequest.from_options(self.name, [item.payload], item.options)
        explainers = explainers_for(self.handler, request)
        results = await self.flow.explain(call, request, explainers)
        return explanation_body(self.name, results, timings.ms)


def _is_explain(context: TorchServeContext | None, idx: int) -> bool:
    """TorchServe's frontend sets the header `explain: True` on `/explanations` requests."""
    return context is not None and context.get_request_header(idx, "explain") == "True"


def parse_item(kind: str, raw: Mapping[str, Any], explain: bool) -> Item:
    """One TorchServe request item -> its input and options (see the module's docstring)."""
    fields = {key: value for key, value in raw.items() if key not in INPUT_FIELDS}
    body = next((raw[key] for key in INPUT_FIELDS if raw.get(key) is not None), None)
    if body is None:
        raise BadInput(
            "the request has no input: send the image or JSON rows as the body, or as the "
            "multipart file field `data`"
        )
    if isinstance(body, Mapping) and (("data" in body and kind == "image") or "rows" in body):
        return _from_json(kind, body, explain)
    if isinstance(body, Mapping | list):  # JSON rows, decoded by TorchServe
        payload = Payload(body if isinstance(body, Mapping) else {"rows": body})
    elif isinstance(body, str) and kind == "image":  # base64 text, as KServe's v1 envelope
        payload = Payload(image_file("the body", body))  # and TorchServe's image handler
    elif isinstance(body, bytes | bytearray | str):  # a file, or text TorchServe decoded
        payload = Payload(body.encode() if isinstance(body, str) else bytes(body))
    else:
        raise BadInput(f"the body is JSON {type(body).__name__}: send an image file or rows")
    if not explain:
        return Item(False, payload)
    return Item(True, payload, {k: _text(k, v) for k, v in fields.items()})


def _from_json(kind: str, body: Mapping[str, Any], explain: bool) -> Item:
    """`{"data": <base64 image>, ...}` or `{"rows": [...], ...}` with options beside."""
    unknown = sorted(set(body) - JSON_FIELDS)
    if unknown:
        raise SchemaError(
            f"unknown field {unknown[0]!r} in the JSON body; it takes {sorted(JSON_FIELDS)}"
        )
    if "rows" in body:
        if kind != "tabular":
            raise BadInput('this is an image model: send {"data": "<base64 image>"}, not rows')
        payload = Payload({"rows": body["rows"]})
    else:  # "data", which parse_item sends here for image models only
        payload = Payload(image_file('"data"', body["data"]))
    params = body.get("params", {})
    if not isinstance(params, Mapping):
        raise SchemaError(f'"params" must be an object of method parameters, got {params!r}')
    options = {k: _scalar(k, v) for k, v in body.items() if k in ROUTE_OPTIONS}
    options.update({str(k): _scalar(str(k), v) for k, v in params.items()})
    return Item(explain, payload, options if explain else {})


def _text(name: str, value: Any) -> str:
    """A multipart field's value as text."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise SchemaError(f"the field {name!r} is not UTF-8 text") from None
    return _scalar(name, value)


def _scalar(name: str, value: Any) -> str:
    """A JSON option as the text glimpse's query parameters carry: a string, a number, a
    boolean, or (for methods and target) a list of them, comma-joined."""
    if isinstance(value, list) and name in ("methods", "method", "target"):
        return ",".join(_scalar(name, v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise SchemaError(f"{name!r} must be a string or a number, got {value!r}")


def door_for(handler: GlimpseHandler, context: Any) -> TorchServeDoor:
    """The handler's door, made on its first batch (the model's name comes with the context)."""
    door: TorchServeDoor | None = getattr(handler, "_torchserve_door", None)
    if door is None:
        name = getattr(context, "model_name", None) or handler.metadata.get("name") or "model"
        door = TorchServeDoor(handler, str(name), Settings.from_env(os.environ).limits())
        handler._torchserve_door = door  # type: ignore[attr-defined]
    return door
