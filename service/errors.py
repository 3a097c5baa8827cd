"""One exception hierarchy for everything a client can get wrong.

Each error carries its HTTP status and gRPC status name; the HTTP and gRPC
doors map them once each. Anything else that escapes is a bug (500 / INTERNAL).
"""

from __future__ import annotations


class GlimpseError(Exception):
    """Base of client-facing errors: `code` is a stable machine-readable string."""

    status = 500
    grpc_status = "INTERNAL"
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def as_glimpse_error(error: BaseException) -> GlimpseError:
    """`error` itself when it is a client-facing error, else a 500 `internal` naming it: the
    one place a bug becomes an answer, for every door."""
    if isinstance(error, GlimpseError):
        return error
    return GlimpseError(f"internal error: {error!r}")


class BadInput(GlimpseError):
    status, grpc_status, code = 400, "INVALID_ARGUMENT", "bad_input"


class ModelNotFound(GlimpseError):
    status, grpc_status, code = 404, "NOT_FOUND", "model_not_found"


class PayloadTooLarge(GlimpseError):
    status, grpc_status, code = 413, "RESOURCE_EXHAUSTED", "payload_too_large"


class UnsupportedMediaType(GlimpseError):
    status, grpc_status, code = 415, "INVALID_ARGUMENT", "unsupported_media_type"


class SchemaError(GlimpseError):
    status, grpc_status, code = 422, "INVALID_ARGUMENT", "schema_error"


class Conflict(GlimpseError):
    status, grpc_status, code = 409, "ALREADY_EXISTS", "conflict"


class Overloaded(GlimpseError):
    status, grpc_status, code = 503, "UNAVAILABLE", "overloaded"


class DeadlineExceeded(GlimpseError):
    status, grpc_status, code = 504, "DEADLINE_EXCEEDED", "deadline_exceeded"


class Unauthorized(GlimpseError):
    status, grpc_status, code = 401, "UNAUTHENTICATED", "unauthorized"


class MisdirectedRequest(GlimpseError):
    """A Host header this server does not answer to (DNS-rebinding protection; HTTP only)."""

    status, grpc_status, code = 421, "PERMISSION_DENIED", "misdirected_request"


class OverBudget(GlimpseError):
    """An explanation that would need more model evaluations than the per-request budget."""

    status, grpc_status, code = 422, "INVALID_ARGUMENT", "over_budget"


class Draining(GlimpseError):
    """The server is shutting down (SIGTERM/SIGINT): it finishes what it has, takes nothing new."""

    status, grpc_status, code = 503, "UNAVAILABLE", "draining"


class ModelUnavailable(GlimpseError):
    """A model's worker thread has ended: the model cannot answer until glimpse restarts."""

    status, grpc_status, code = 503, "UNAVAILABLE", "model_unavailable"


class DecoderRestarted(GlimpseError):
    """The process decoding an upload ended before it answered; a new one takes the next."""

    status, grpc_status, code = 503, "UNAVAILABLE", "decoder_restarted"
