"""glimpse's gRPC door in the test process, on its own event loop and a free port."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from service.config import Settings
from service.grpc_server import start_grpc
from service.pipeline import Pipeline
from tests.helpers import free_port


class ServerThread(threading.Thread):
    """Runs `start_grpc` on its own event loop until `stop()`."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        super().__init__(daemon=True)
        self.settings, self.pipeline = settings, pipeline
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        server = await start_grpc(self.settings, self.pipeline)
        self.ready.set()
        await self.stopping.wait()
        await server.stop(grace=1)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.join(timeout=10)


@contextmanager
def grpc_server(settings: Settings, pipeline: Pipeline) -> Iterator[str]:
    """Serve `pipeline` over gRPC on a free loopback port; yield its address."""
    server = ServerThread(dataclasses.replace(settings, grpc_port=free_port()), pipeline)
    server.start()
    assert server.ready.wait(timeout=30), "the gRPC server did not start"
    try:
        yield f"127.0.0.1:{server.settings.grpc_port}"
    finally:
        server.stop()
