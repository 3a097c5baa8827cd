"""The gRPC door's share of the lifecycle: admit calls, and keep grpc.health.v1 live.

`AdmitCalls` counts every call to glimpse's services as in flight while it runs and,
once the drain refuses work, answers new ones UNAVAILABLE; health and reflection stay
open. `LiveHealth` keeps the health statuses equal to `Pipeline.health()`: "" and the
Glimpse service NOT_SERVING while glimpse drains or any model is unhealthy, each model
on its own account; refreshed every HEALTH_PERIOD seconds and at once when the drain
begins.

Example: ``grpc.aio.server(interceptors=[AdmitCalls(pipeline.lifecycle)])``
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from service.errors import Draining
from service.lifecycle import Lifecycle
from service.pipeline import Pipeline

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # answered while draining
HEALTH_PERIOD = 1.0  # seconds between two looks at the workers
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class AdmitCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints
    """Wraps each method handler of glimpse's services in the lifecycle's admission."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        wrapped = {
            kind: admitted(self.lifecycle, behaviour)
            for kind in BEHAVIOURS
            if (behaviour := getattr(handler, kind)) is not None
        }
        return handler._replace(**wrapped)


def admitted(lifecycle: Lifecycle, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """`behaviour` (a coroutine or async generator function) counted in flight while it
    runs; UNAVAILABLE without running it once the drain refuses work."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await _enter(lifecycle, context)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                lifecycle.leave()

        return stream
    if not inspect.iscoroutinefunction(behaviour):
        return behaviour  # glimpse's servicers are all async; leave others as they are

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _enter(lifecycle, context)
        try:
            return await behaviour(request, context)
        finally:
            lifecycle.leave()

    return call


async def _enter(lifecycle: Lifecycle, context: grpc.aio.ServicerContext) -> None:
    try:
        lifecycle.enter()
    except Draining as exc:
        await context.abort(grpc.StatusCode[exc.grpc_status], exc.message)


class LiveHealth:
    """A grpc.health.v1 servicer whose statuses follow `pipeline.health()`.

    Example: ``live = LiveHealth(pipeline, ("glimpse.v1.Glimpse",)); await live.refresh()``
    """

    def __init__(self, pipeline: Pipeline, services: tuple[str, ...]) -> None:
        self.servicer = health.aio.HealthServicer()
        self.pipeline = pipeline
        self.services = ("", *services)
        self._shown: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()  # the server's: watchers wait on it
        pipeline.lifecycle.on_drain(self._refresh_on_own_loop)

    async def refresh(self) -> None:
        """Set every status that changed since the last look (watchers hear only changes)."""
        now = self.pipeline.health()
        wanted = {name: SERVING if now.serving else NOT_SERVING for name in self.services}
        for model in self.pipeline.runtime.models:
            wanted[model] = SERVING if now.serves(model) else NOT_SERVING
        for gone in self._shown.keys() - wanted.keys():  # unregistered models
            wanted[gone] = UNKNOWN
        for name, status in wanted.items():
            if self._shown.get(name) != status:
                await self.servicer.set(name, status)
        self._shown = {name: status for name, status in wanted.items() if status != UNKNOWN}

    async def _refresh_on_own_loop(self) -> None:
        if self._loop is asyncio.get_running_loop():
            await self.refresh()
        elif not self._loop.is_closed():  # a drain on another thread's loop (tests)
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.refresh(), self._loop))

    def follow(self, server: grpc.aio.Server) -> None:
        """Refresh every HEALTH_PERIOD seconds until `server` stops."""
        self._task = self._loop.create_task(self._follow(server))

    async def _follow(self, server: grpc.aio.Server) -> None:
        stopped = asyncio.ensure_future(server.wait_for_termination())
        try:
            while not stopped.done():
                await self.refresh()
                await asyncio.wait([stopped], timeout=HEALTH_PERIOD)
        finally:
            stopped.cancel()
