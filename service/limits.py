"""What one request may cost: the limits (Settings, env GLIMPSE_*), a door's gate on the
requests it serves at once, and a request's deadline.

Every refusal names its limit, the setting that raises it and what to do instead.

Example: ``Limits(max_inputs=8).check_inputs(20)`` raises PayloadTooLarge naming
GLIMPSE_MAX_INPUTS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.errors import DeadlineExceeded, Overloaded, PayloadTooLarge


@dataclass(frozen=True)
class Limits:
    """The per-request limits; Settings holds the same fields (`Settings.limits()`)."""

    max_inputs: int = 64  # inputs per request (gRPC `inputs`; an HTTP request has one)
    max_rows: int = 1000  # tabular rows per request, on both doors
    explain_budget: int = 20_000  # model evaluations an explanation request may ask for
    max_overlay_pixels: int = 4_000_000  # larger uploads get an overlay scaled to fit
    request_timeout: float = 60.0  # seconds from a request's start to its answer
    max_concurrency: int = 64  # requests in progress per door (HTTP, gRPC)

    def check_inputs(self, count: int) -> None:
        """PayloadTooLarge when a request carries more than `max_inputs` inputs."""
        if count > self.max_inputs:
            raise PayloadTooLarge(
                f"the request has {count} inputs, over the limit of {self.max_inputs} per "
                f"request (GLIMPSE_MAX_INPUTS): send at most {self.max_inputs} per request "
                "(or one at a time over gRPC's StreamExplain), or raise the limit"
            )

    def check_rows(self, count: int) -> None:
        """PayloadTooLarge when a tabular request carries more than `max_rows` rows."""
        if count > self.max_rows:
            raise PayloadTooLarge(
                f"the request has {count} rows, over the limit of {self.max_rows} per request "
                f"(GLIMPSE_MAX_ROWS): send at most {self.max_rows} rows per request, or raise "
                "the limit"
            )

    def deadline(self, client_timeout: float | None = None) -> Deadline:
        """The deadline of a request starting now: the server's `request_timeout`, or the
        client's own timeout (a gRPC deadline) when that comes first."""
        now = time.monotonic()
        if client_timeout is not None and client_timeout < self.request_timeout:
            return Deadline(now + max(0.0, client_timeout), "the call's own deadline", "")
        return Deadline(
            now + self.request_timeout,
            f"the server's time limit of {self.request_timeout:g} s per request "
            "(GLIMPSE_REQUEST_TIMEOUT)",
            " or raise the limit",
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered (on time.monotonic()'s clock), and which limit set it."""

    at: float
    limit: str  # e.g. "the server's time limit of 60 s per request (GLIMPSE_REQUEST_TIMEOUT)"
    raise_hint: str = ""  # what else the client can do, beyond asking for less work

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def error(self, where: str) -> DeadlineExceeded:
        """The refusal of a request that reached `where` ("before its forward pass") late."""
        return DeadlineExceeded(
            f"the request reached {self.limit} {where}: ask for less work (fewer inputs, "
            f"rows, targets, methods, steps or samples){self.raise_hint}"
        )


class Gate:
    """Counts one door's requests in progress and refuses any beyond `limit` at once
    (Overloaded: HTTP 503, gRPC UNAVAILABLE) rather than letting them queue without bound.
    Used from the door's event loop only, so a plain counter suffices.

    Example: ``with Gate(64, "HTTP").slot(): ...``
    """

    def __init__(self, limit: int, door: str) -> None:
        self.limit = limit
        self.door = door
        self.busy = 0

    def enter(self) -> None:
        if self.busy >= self.limit:
            raise Overloaded(
                f"the {self.door} door is serving {self.busy} requests, its limit "
                f"(GLIMPSE_MAX_CONCURRENCY={self.limit}): retry shortly, or raise the limit"
            )
        self.busy += 1

    def leave(self) -> None:
        self.busy -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a place for the block's duration; Overloaded when none is free."""
        self.enter()
        try:
            yield
        finally:
            self.leave()
