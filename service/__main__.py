"""`python -m service`: serve every archive in the model store over HTTP (and gRPC).

Settings come from defaults, then GLIMPSE_* environment variables, then flags.
SIGTERM or SIGINT drains (service/lifecycle.py): health NOT_SERVING, new requests
refused, those in flight finished within --drain-seconds; then the runtime closes and
the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import uvicorn

from service.auth import prepare as prepare_auth
from service.config import ConfigError, Settings, parse_names
from service.http import create_app
from service.lifecycle import CLOSE_SECONDS, HttpServer, Lifecycle, stop_on_signal
from service.pipeline import Pipeline
from service.runtime import Runtime
from service.threads import configure as configure_threads
from service.worker import Batching

log = logging.getLogger("glimpse")


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    parser.add_argument("--model-store", type=Path, help="directory of .mar files")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--max-body-bytes", type=int, help="largest accepted request body")
    parser.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    parser.add_argument("--batch-size", type=int, help="jobs per forward pass (default 16)")
    parser.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads (default 0: chosen by glimpse)"
    )
    parser.add_argument(
        "--decode-processes",
        type=int,
        help="processes that decode image uploads (default 1 on 2+ cores; 0: in threads)",
    )
    parser.add_argument("--access-log", action="store_true", help="log a line per request")
    parser.add_argument(
        "--max-batch-delay", type=int, help="ms to wait for a batch to fill (default 0)"
    )
    parser.add_argument(
        "--enable-management",
        action="store_true",
        help="allow POST /models?url=<.mar in the store> and DELETE /models/{name}",
    )
    add_auth_arguments(parser)
    parser.add_argument(
        "--drain-seconds",
        type=float,
        help="on SIGTERM/SIGINT, longest wait for requests in flight (default 30)",
    )
    args = parser.parse_args(argv)
    models = parse_names("--models", args.models) if args.models else None
    try:
        return Settings.from_env(
            os.environ,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            model_store=args.model_store,
            models=models,
            max_body_bytes=args.max_body_bytes,
            grpc=False if args.no_grpc else None,
            enable_management=True if args.enable_management else None,
            batch_size=args.batch_size,
            torch_threads=args.torch_threads,
            decode_processes=args.decode_processes,
            access_log=True if args.access_log else None,
            max_batch_delay=args.max_batch_delay,
            **auth_overrides(args),
            drain_seconds=args.drain_seconds,
        )
    except ConfigError as exc:
        parser.error(str(exc))
        raise


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of service.auth. The token itself has no flag: command lines are visible to other
    users (ps); it comes from GLIMPSE_AUTH_TOKEN or a file."""
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="PATH",
        help="file holding the token clients must send (created with a new token if missing)",
    )
    parser.add_argument(
        "--metrics-public", action="store_true", help="serve /metrics without the token"
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="no token, even on a non-loopback --host (otherwise one is generated)",
    )


def auth_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "auth_token_file": args.auth_token_file,
        "metrics_public": True if args.metrics_public else None,
        "no_auth": True if args.no_auth else None,
    }


async def serve(settings: Settings) -> None:
    """Load the archives and serve them until SIGTERM/SIGINT has drained both doors. Every
    way out, a failed start too, closes the runtime, which removes its temp dir."""
    lifecycle = Lifecycle(settings.drain_seconds, settings.stuck_seconds)
    lifecycle.take_signals()  # SIGTERM/SIGINT drain from now on (once loaded, if during)
    threads = configure_threads(settings.torch_threads)
    log.info("torch uses %d intra-op thread(s)", threads)
    runtime = Runtime.load(
        settings.archives(),
        max_queue=settings.max_queue,
        max_image_pixels=settings.max_image_pixels,
        batching=Batching(settings.batch_size, settings.max_batch_delay),
        decode_processes=settings.decode_processes,
    )
    try:
        await serve_runtime(settings, runtime, lifecycle)
    finally:
        runtime.close()


async def serve_runtime(settings: Settings, runtime: Runtime, lifecycle: Lifecycle) -> None:
    """Both doors onto `runtime`, until the drain is over; both are stopped on the way out."""
    for model in runtime.models.values():
        log.info("loaded %s (%s) in %.2f s", model.name, model.handler.kind, model.load_seconds)
    if not runtime.models and not settings.enable_management:
        raise SystemExit(
            f"glimpse: none of the archives in {settings.model_store} can be served "
            "(the warnings above say why)"
        )
    pipeline = Pipeline(runtime, settings.limits(), lifecycle)
    app = create_app(settings, pipeline)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=CLOSE_SECONDS,
    )
    server = HttpServer(config)  # stopped by stop_on_signal, after the drain
    stopper = asyncio.create_task(stop_on_signal(lifecycle, server))
    grpc_server = None
    try:
        if settings.grpc:
            from service.grpc_server import start_grpc

            try:
                grpc_server = await start_grpc(settings, pipeline)
            except OSError as exc:
                raise SystemExit(f"glimpse: {exc}") from None
            log.info("gRPC on %s:%d", settings.host, settings.grpc_port)
        await server.serve()
    finally:
        stopper.cancel()
        if grpc_server is not None:
            await grpc_server.stop(grace=CLOSE_SECONDS)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = parse_settings(argv)
    try:
        settings.archives()
        settings = prepare_auth(settings)
    except ConfigError as exc:
        raise SystemExit(f"glimpse: {exc}") from None
    try:  # libuv's event loop: cheaper per request than asyncio's own
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
