"""The gRPC door (`glimpse.v1.Glimpse`): decode protos into pipeline requests, encode results back
(the messages themselves are built in service/grpc_codec.py).

Beside the Glimpse service the server runs the standard `grpc.health.v1.Health`
(overall "", the service name and each model name; live, see service/grpc_lifecycle.py)
and server reflection; while glimpse drains, new calls get UNAVAILABLE. Errors are
mapped to status codes once, in `grpc_status`; client deadlines bound every call and a
cancelled call's queued work is dropped.

Example: ``server = await start_grpc(Settings(), pipeline); ...; await server.stop(grace=2)``
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.auth import grpc_interceptors
from service.config import Settings
from service.errors import GlimpseError, Overloaded, as_glimpse_error
from service.grpc_codec import (
    decode_inputs,
    encode_explanation,
    encode_prediction,
    explain_request,
    model_info,
)
from service.grpc_lifecycle import AdmitCalls, LiveHealth
from service.pipeline import Pipeline, PredictRequest
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["Glimpse"].full_name  # "glimpse.v1.Glimpse"
STREAM_WINDOW = 8  # stream inputs in flight at once; results still leave in order

T = TypeVar("T")


async def start_grpc(settings: Settings, pipeline: Pipeline) -> grpc.aio.Server:
    """Bind settings.host:settings.grpc_port, start serving and return the started server."""
    limit = settings.max_body_bytes
    server = grpc.aio.server(
        # The token check first (a refused call never counts as work), then the drain gate.
        interceptors=[
            *grpc_interceptors(settings, pipeline.metrics),
            AdmitCalls(pipeline.lifecycle),
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    pb_grpc.add_GlimpseServicer_to_server(GlimpseServicer(pipeline), server)
    from service.oip_grpc import add_inference_service  # it builds on this module's servicer

    inference = add_inference_service(pipeline, server)  # Open Inference Protocol v2
    live_health = LiveHealth(pipeline, (SERVICE,))
    await live_health.refresh()
    health_pb2_grpc.add_HealthServicer_to_server(live_health.servicer, server)
    names = (
        SERVICE,
        inference,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"{_host(settings.host)}:{settings.grpc_port}"
    try:  # grpc raises RuntimeError (it used to return 0) when the port is taken
        server.add_insecure_port(address)
    except RuntimeError:
        raise OSError(f"gRPC cannot bind {address}: pick a free port with --grpc-port") from None
    await server.start()
    live_health.follow(server)
    return server


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from an error to a gRPC status code and message."""
    if isinstance(exc, GlimpseError):
        return grpc.StatusCode[exc.grpc_status], exc.message
    if isinstance(exc, TimeoutError):
        message = "the call's deadline passed before the result was ready; allow more time"
        return grpc.StatusCode.DEADLINE_EXCEEDED, message
    return grpc.StatusCode.INTERNAL, as_glimpse_error(exc).message


class GlimpseServicer(pb_grpc.GlimpseServicer):
    """Each RPC decodes its request, calls the pipeline and encodes the result; no more."""

    service = SERVICE  # the service name in the metrics' route label

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.runtime = pipeline.runtime
        self.metrics = pipeline.metrics

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        work = self._predict(request, context.time_remaining())
        return await self._unary(context, "Predict", request.model, work, gated=True)

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        work = self._explain(request, context.time_remaining())
        return await self._unary(context, "Explain", request.model, work, gated=True)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return await self._unary(context, "ListModels", "", self._list_models())

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return await self._unary(context, "GetModel", request.name, self._get_model(request.name))

    async def StreamExplain(
        self,
        requests: AsyncIterator[pb.StreamExplainRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamExplainResponse]:
        """Explain each input as it arrives, a few at a time; answer in arrival order."""
        window: asyncio.Queue[asyncio.Task[pb.StreamExplainResponse] | None] = asyncio.Queue(
            STREAM_WINDOW
        )
        models: list[str] = []

        async def feed() -> None:
            try:
                async for item in requests:
                    models.append(item.model)
                    await window.put(asyncio.create_task(self._stream_item(item, context)))
            finally:
                await window.put(None)

        with self._observed("StreamExplain", models) as outcome, ExitStack() as held:
            try:
                held.enter_context(self.pipeline.gate("gRPC").slot())
            except Overloaded as exc:  # the door's concurrency limit: refused at once
                status, message = grpc_status(exc)
                outcome["code"] = status.name
                await context.abort(status, message)
            feeder = asyncio.create_task(feed())
            try:
                while (task := await window.get()) is not None:
                    yield await task
                await feeder  # a broken request stream surfaces here
            finally:
                feeder.cancel()
                while not window.empty():
                    if (task := window.get_nowait()) is not None:
                        task.cancel()  # drops its job from the model's queue
            outcome["code"] = "OK"

    # -- each RPC's work: decode, pipeline, encode -------------------------------------------
    async def _predict(
        self, request: pb.PredictRequest, timeout: float | None
    ) -> pb.PredictResponse:
        self.runtime.get(request.model)
        inputs = decode_inputs(request.inputs)
        results = await self.pipeline.predict(PredictRequest(request.model, inputs, timeout))
        return pb.PredictResponse(
            model=request.model, predictions=[encode_prediction(r) for r in results]
        )

    async def _explain(
        self, request: pb.ExplainRequest, timeout: float | None
    ) -> pb.ExplainResponse:
        self.runtime.get(request.model)
        inputs = decode_inputs(request.inputs)
        results, timings = await self.pipeline.explain(explain_request(inputs, request, timeout))
        explanations = [encode_explanation(r) for r in results]
        return pb.ExplainResponse(
            model=request.model, explanations=explanations, timings_ms=timings
        )

    async def _list_models(self) -> pb.ListModelsResponse:
        models = sorted(self.runtime.models.values(), key=lambda m: m.name)
        return pb.ListModelsResponse(models=[model_info(m.describe()) for m in models])

    async def _get_model(self, name: str) -> pb.ModelInfo:
        return model_info(self.runtime.get(name).describe(), full=True)

    async def _stream_item(
        self,
        item: pb.StreamExplainRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.StreamExplainResponse:
        try:
            self.runtime.get(item.model)
            inputs = decode_inputs([item.input])
            request = explain_request(inputs, item, context.time_remaining())
            work = self.pipeline.explain(request)
            results, timings = await asyncio.wait_for(work, context.time_remaining())
        except Exception as exc:  # noqa: BLE001 - one input's error is that input's result
            status, message = grpc_status(exc)
            reason = exc.code if isinstance(exc, GlimpseError) else status.name.lower()
            error = pb.Error(
                code=status.value[0], status=status.name, reason=reason, message=message
            )
            return pb.StreamExplainResponse(id=item.id, error=error)
        return pb.StreamExplainResponse(
            id=item.id, timings_ms=timings, explanation=encode_explanation(results[0])
        )

    # -- what every RPC shares: deadline, error mapping, metrics ------------------------------
    async def _unary(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        model: str,
        work: Awaitable[T],
        gated: bool = False,
    ) -> T:
        """Await `work` within the client's deadline (and, when `gated`, within the door's
        concurrency limit); failures become the mapped status."""
        with self._observed(method, [model]) as outcome:
            try:
                with self.pipeline.gate("gRPC").slot() if gated else nullcontext():
                    result = await asyncio.wait_for(work, context.time_remaining())
            except Exception as exc:  # noqa: BLE001 - mapped to a status; INTERNAL for bugs
                status, message = grpc_status(exc)
                outcome["code"] = status.name
                await context.abort(status, message)
            finally:
                if isinstance(work, Coroutine):
                    work.close()  # refused before it started: never awaited, never warned about
            outcome["code"] = "OK"
            return result

    @contextmanager
    def _observed(self, method: str, models: list[str]) -> Iterator[dict[str, str]]:
        """Count the call in flight; record its duration and final code (CANCELLED unless set).
        `models` is read at the end: a stream learns its model from its first request."""
        outcome = {"code": "CANCELLED"}
        self.metrics.inflight.labels("grpc").inc()
        started = time.perf_counter()
        try:
            yield outcome
        finally:
            self.metrics.inflight.labels("grpc").dec()
            model = models[0] if models else ""
            self.metrics.observe_request(
                model,
                f"/{self.service}/{method}",
                "grpc",
                outcome["code"],
                time.perf_counter() - started,
            )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
