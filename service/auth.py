"""Token auth and Host checks for both doors, in the spirit of TorchServe's token authorization.

- A token (``GLIMPSE_AUTH_TOKEN``, or the file ``--auth-token-file`` names) protects every
  HTTP route and RPC except ``/ping``, the web page (``/`` and ``/ui/*``) and
  ``grpc.health.v1.Health`` (and ``/metrics`` with ``metrics_public``). HTTP sends
  ``Authorization: Bearer <token>``, gRPC the metadata ``authorization: Bearer <token>``; the
  comparison runs in constant time.
- A non-loopback bind without a token gets one made at start (`prepare`), written to a 0600
  file whose path (never the token) is logged; ``no_auth`` turns that off.
- A loopback bind answers only HTTP requests whose Host is a loopback name, so a web page whose
  DNS name is rebound to 127.0.0.1 cannot reach the server through the user's browser.

Example: ``settings = prepare(settings)`` at start; ``create_app`` adds
``AuthMiddleware(app, guard=Guard.from_settings(settings))`` and ``start_grpc`` passes
``grpc_interceptors(settings, metrics)`` to its server.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import ConfigError, Settings
from service.errors import GlimpseError, MisdirectedRequest, Unauthorized
from service.metrics import Metrics
from service.web import OPEN_PATHS as PAGE_PATHS
from service.web import OPEN_PREFIX as PAGE_PREFIX

# Health stays open for load balancers, HEALTHCHECK and Open Inference Protocol probes; the web
# page (`/` and its static files under PAGE_PREFIX) holds no data and must load before it can
# ask for the token.
OPEN_PATHS = frozenset({"/ping", "/v2/health/live", "/v2/health/ready"}) | PAGE_PATHS
METRICS_PATH = "/metrics"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
DEFAULT_TOKEN_FILE = Path("~/.glimpse/token")
TOKEN_HINT = "GLIMPSE_AUTH_TOKEN, or the file --auth-token-file names (the start log says which)"

log = logging.getLogger("glimpse.auth")


# -- where the token comes from ----------------------------------------------------------------
def load_token(settings: Settings) -> bytes | None:
    """The token both doors require, or None when they are open. ConfigError when the settings
    contradict each other or the token file cannot be used."""
    token_file = settings.auth_token_file
    if settings.no_auth:
        if settings.auth_token or token_file is not None:
            raise ConfigError(
                "--no-auth (GLIMPSE_NO_AUTH) and a token (GLIMPSE_AUTH_TOKEN or "
                "--auth-token-file) contradict each other: drop one of them"
            )
        return None
    if settings.auth_token and token_file is not None:
        raise ConfigError(
            "both GLIMPSE_AUTH_TOKEN and --auth-token-file (GLIMPSE_AUTH_TOKEN_FILE) are set: "
            "keep one of them"
        )
    if settings.auth_token:
        return checked_token(settings.auth_token, "GLIMPSE_AUTH_TOKEN")
    if token_file is not None:
        return checked_token(read_token_file(token_file), f"the token file {token_file}")
    return None


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding blanks dropped); a warning if others may read it."""
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"the token file {path} (--auth-token-file) does not exist: write the token in it, "
            "or start `python -m service`, which generates one there"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}") from None
    if mode & 0o077:
        log.warning("the token file %s can be read by other users: chmod 600 %s", path, path)
    return text.strip()


def checked_token(token: str, source: str) -> bytes:
    """`token` as bytes, if HTTP headers and gRPC metadata can carry it."""
    if not token:
        raise ConfigError(
            f"{source} is empty: write a token, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if not all(33 <= ord(char) <= 126 for char in token):
        raise ConfigError(
            f"{source} holds blanks or characters outside printable ASCII, which headers and "
            "gRPC metadata cannot carry: use letters, digits and -._~+/= "
            "(secrets.token_urlsafe(32) makes one)"
        )
    return token.encode("ascii")


def prepare(settings: Settings) -> Settings:
    """At start: generate a token file when one is needed, check the rest, log the outcome.

    A token is generated when no token is given and either `auth_token_file` names a missing
    file (it is created there, and read again at the next start) or the host is not a loopback
    address (it goes to ``~/.glimpse/token``, replaced at every start). The returned settings
    name the file. Example: ``settings = prepare(Settings(host="0.0.0.0"))``.
    """
    loopback = is_loopback_host(settings.host)
    if settings.no_auth:
        load_token(settings)  # refuses a token given together with --no-auth
        if not loopback:
            log.warning(
                "--no-auth on %s, which is not a loopback address: anyone who can reach this "
                "host can call every route and RPC",
                settings.host,
            )
        return settings
    if _needs_generated_token(settings, loopback):
        settings = _generate(settings)
    token = load_token(settings)
    if token is None:
        log.info(
            "no auth token: %s is a loopback address, so only local clients can connect "
            "(HTTP requests whose Host is not a loopback name are refused)",
            settings.host,
        )
    else:
        public = "/ping, the web page, gRPC health" + (
            ", /metrics" if settings.metrics_public else ""
        )
        log.info("token auth on both doors (open without it: %s)", public)
    return settings


def _needs_generated_token(settings: Settings, loopback: bool) -> bool:
    if settings.auth_token:
        return False
    if settings.auth_token_file is not None:
        return not settings.auth_token_file.expanduser().exists()
    return not loopback


def _generate(settings: Settings) -> Settings:
    path = (settings.auth_token_file or DEFAULT_TOKEN_FILE).expanduser()
    try:
        write_token_file(path, secrets.token_urlsafe(32))
    except OSError as exc:
        raise ConfigError(
            f"cannot write the token file {path}: {exc}; pass --auth-token-file with a "
            "writable path, set GLIMPSE_AUTH_TOKEN, or start with --no-auth"
        ) from None
    if settings.auth_token_file is not None:
        why = "the --auth-token-file did not exist"
    else:
        why = f"no token was given and {settings.host} is not a loopback address"
    log.info(
        "generated an auth token in %s (mode 0600; %s): HTTP clients send 'Authorization: "
        "Bearer <token>', gRPC clients the metadata 'authorization: Bearer <token>'",
        path,
        why,
    )
    return dataclasses.replace(settings, auth_token_file=path)


def write_token_file(path: Path, token: str) -> None:
    """Write `token` to `path` with mode 0600, atomically (a new file replaces the old one, so
    a symlink or a looser mode left at `path` is not followed or kept)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".token-")  # mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(token + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- who may call -------------------------------------------------------------------------------
def is_loopback_host(host: str) -> bool:
    """Whether binding `host` listens on loopback only: localhost, 127.0.0.0/8 or ::1."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # another name, or "" (every interface): not loopback-only
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_name(host_header: str) -> bool:
    """Whether a Host header names loopback: ``localhost``, ``127.x.x.x`` or ``[::1]``, each
    with or without ``:port``. Example: ``is_loopback_name("localhost:8000") is True``."""
    value = host_header.strip().lower()
    if value.startswith("["):
        name, _, port = value[1:].partition("]")
        version = 6
    else:
        name, colon, number = value.partition(":")
        port, version = colon + number, 4
    if port and not (port.startswith(":") and port[1:].isdigit()):
        return False
    if version == 4 and name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.version == version and address.is_loopback


def bearer_refusal(value: str | bytes | None, token: bytes, how: str) -> str | None:
    """None when `value` (an Authorization header or metadata value) is ``Bearer <token>``;
    else the reason, which tells the client what to send (`how`: a header or metadata)."""
    if value is None:
        return f"this server requires a token: send {how} (the token is in {TOKEN_HINT})"
    raw = value.encode() if isinstance(value, str) else value
    scheme, _, given = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not given.strip():
        return f"the credentials must be {how}"
    if not hmac.compare_digest(given.strip(), token):
        return f"the token does not match this server's: send the one in {TOKEN_HINT}"
    return None


# -- the HTTP door ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Guard:
    """What the HTTP door checks, resolved once from Settings: the token (None: open), the
    paths open without it, and whether the Host must be a loopback name (loopback binds)."""

    token: bytes | None
    open_paths: frozenset[str]
    loopback_hosts_only: bool
    bind: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        public = {METRICS_PATH} if settings.metrics_public else set()
        return cls(
            load_token(settings),
            OPEN_PATHS | public,
            is_loopback_host(settings.host),
            settings.host,
        )

    def refusal(
        self, path: str, host: str | None, authorization: bytes | None
    ) -> GlimpseError | None:
        """The error a request gets, or None when it may go on."""
        # A client without a Host header is not a browser (browsers always send one), and a
        # rebound page can only reach us through a browser: let it through.
        if self.loopback_hosts_only and host is not None and not is_loopback_name(host):
            return MisdirectedRequest(
                f"this server is bound to the loopback address {self.bind} and answers only "
                f"requests addressed to localhost, 127.x.x.x or [::1], not {host!r} "
                "(DNS-rebinding protection): use http://127.0.0.1:<port>, or bind a "
                "non-loopback --host, which requires a token"
            )
        if self.token is None or path in self.open_paths or path.startswith(PAGE_PREFIX):
            return None
        reason = bearer_refusal(
            authorization, self.token, "the header 'Authorization: Bearer <token>'"
        )
        return None if reason is None else Unauthorized(reason)


class AuthMiddleware:
    """ASGI middleware in front of every HTTP route: refuse a foreign Host (421) and a request
    without the right token (401, with ``WWW-Authenticate: Bearer``) before any body is read.
    Added inside `ObserveRequests`, so refusals are counted in the metrics."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = _headers(scope, (b"host", b"authorization"))
            host = headers.get(b"host")
            authorization = headers.get(b"authorization")
            refusal = self.guard.refusal(
                scope["path"], None if host is None else host.decode("latin-1"), authorization
            )
            if refusal is not None:
                await _refuse(refusal, authorization)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _headers(scope: Scope, names: Sequence[bytes]) -> dict[bytes, bytes]:
    """The first value of each header in `names` that the request carries."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value
    return found


def _refuse(error: GlimpseError, authorization: bytes | None) -> JSONResponse:
    """The error as JSON; a 401 carries the Bearer challenge (RFC 6750), with
    ``error="invalid_token"`` when a bearer token was sent but is not the server's."""
    headers = {}
    if isinstance(error, Unauthorized):
        sent = authorization is not None and authorization.lower().startswith(b"bearer ")
        headers["WWW-Authenticate"] = 'Bearer realm="glimpse"' + (
            ', error="invalid_token"' if sent else ""
        )
    return JSONResponse(error.as_json(), status_code=error.status, headers=headers)


# -- the gRPC door ----------------------------------------------------------------------------
def grpc_interceptors(settings: Settings, metrics: Metrics) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors `start_grpc` passes to its server: none when there is no token."""
    token = load_token(settings)
    return [] if token is None else [TokenInterceptor(token, metrics)]


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Answer UNAUTHENTICATED to every RPC but health without ``authorization: Bearer <token>``
    metadata; reflection is protected too. Refusals are counted in the request metrics."""

    def __init__(self, token: bytes, metrics: Metrics) -> None:
        self.token = token
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        value = _metadata(details.invocation_metadata or (), "authorization")
        reason = bearer_refusal(value, self.token, "the metadata 'authorization: Bearer <token>'")
        if reason is None:
            return handler
        self.metrics.observe_request("", details.method, "grpc", "UNAUTHENTICATED", 0.0)
        return _denying(handler, reason)


def _metadata(metadata: Sequence[tuple[str, str | bytes]], key: str) -> str | bytes | None:
    return next((value for name, value in metadata if name.lower() == key), None)


def _denying(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary or streaming each way) that aborts UNAUTHENTICATED."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def streaming(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        yield  # never reached: makes this the async generator a streaming response needs

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        streaming if handler.response_streaming else unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
