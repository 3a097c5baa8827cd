"""Typed configuration: defaults, then GLIMPSE_* environment variables, then command-line flags.

Example: ``Settings.from_env({"GLIMPSE_HTTP_PORT": "9000"}).http_port == 9000``
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from service.imaging import DEFAULT_MAX_PIXELS
from service.limits import DEFAULT_LIMITS, Limits

MIB = 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value glimpse cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 50051
    model_store: Path = Path("model_store")
    models: tuple[str, ...] = ()  # empty: every .mar in the model store
    max_body_bytes: int = 32 * MIB
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 64
    batch_size: int = 16  # jobs one forward pass may take (TorchServe's batch_size)
    max_batch_delay: int = 0  # ms to wait for a batch to fill; 0: take what is waiting
    torch_threads: int = 0  # torch's intra-op threads; 0: chosen by service.threads
    # Processes that decode image uploads (service.decoding); 0: the codec threads do.
    decode_processes: int = dataclasses.field(default_factory=lambda: default_decode_processes())
    access_log: bool = False  # uvicorn's line per request (costs time on every request)
    grpc: bool = True
    enable_management: bool = False  # POST /models?url=, DELETE /models/{name}
    # Token auth (service.auth): the token itself (repr=False: never printed) or a file holding
    # it; metrics_public: /metrics without the token; no_auth: none even on a non-loopback host.
    auth_token: str = dataclasses.field(default="", repr=False)
    auth_token_file: Path | None = None
    metrics_public: bool = False
    no_auth: bool = False
    # What one request may cost (service/limits.py says what each means).
    max_inputs: int = DEFAULT_LIMITS.max_inputs
    max_rows: int = DEFAULT_LIMITS.max_rows
    explain_budget: int = DEFAULT_LIMITS.explain_budget
    max_overlay_pixels: int = DEFAULT_LIMITS.max_overlay_pixels
    request_timeout: float = DEFAULT_LIMITS.request_timeout
    max_concurrency: int = DEFAULT_LIMITS.max_concurrency
    drain_seconds: float = 30.0  # on SIGTERM/SIGINT: longest wait for requests in flight
    stuck_seconds: float = 120.0  # a batch running longer makes its model NOT_SERVING

    def __post_init__(self) -> None:
        for port_name in ("http_port", "grpc_port"):
            port = getattr(self, port_name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{port_name} must be between 0 and 65535, got {port}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be 0 (auto) or more, got {self.torch_threads}")
        if not 0 <= self.decode_processes <= MAX_DECODE_PROCESSES:
            raise ConfigError(
                f"decode_processes must be between 0 (decode in threads) and "
                f"{MAX_DECODE_PROCESSES}, got {self.decode_processes}"
            )
        if self.max_batch_delay < 0:
            raise ConfigError(f"max_batch_delay must be 0 or more ms, got {self.max_batch_delay}")
        if self.drain_seconds < 0 or self.stuck_seconds <= 0:
            raise ConfigError(
                f"drain_seconds must be 0 or more and stuck_seconds more than 0, got "
                f"{self.drain_seconds} and {self.stuck_seconds}"
            )
        for name in ("max_body_bytes", "max_image_pixels", "max_queue", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in LIMIT_FIELDS:
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name} must be a positive number, got {getattr(self, name)}: set "
                    f"{env_variable(name)} to a value above 0, or unset it for the default"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Defaults, then GLIMPSE_<FIELD> variables, then non-None `overrides` (flags)."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            variable = env_variable(field.name)
            raw = environ.get(variable)
            if raw is not None:
                values[field.name] = _FIELD_PARSERS[field.name](variable, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def limits(self) -> Limits:
        """What one request may cost, as the pipeline and the doors read it."""
        return Limits(**{name: getattr(self, name) for name in LIMIT_FIELDS})

    def archives(self) -> list[Path]:
        """The .mar files to serve; ConfigError when there are none (unless models can be
        registered later, with enable_management)."""
        if not self.model_store.is_dir():
            raise ConfigError(
                f"model store {self.model_store} does not exist: build the models with "
                "`python -m training all` or pass --model-store DIR"
            )
        if self.models:
            paths = [self.model_store / f"{name}.mar" for name in self.models]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise ConfigError(f"no archive {missing[0]}: build it with `python -m training`")
            return paths
        paths = sorted(self.model_store.glob("*.mar"))
        if not paths and not self.enable_management:
            raise ConfigError(
                f"no .mar archives in {self.model_store}: run `python -m training all`"
            )
        return paths


MAX_DECODE_PROCESSES = 64


def default_decode_processes() -> int:
    """One decode process on a machine of two cores or more; none on one core, where a
    second process would only take turns with the server's own."""
    return 1 if (os.cpu_count() or 1) >= 2 else 0


LIMIT_FIELDS = tuple(field.name for field in dataclasses.fields(Limits))


def env_variable(field: str) -> str:
    """The environment variable that sets `field`: ``max_queue`` -> ``GLIMPSE_MAX_QUEUE``."""
    return f"GLIMPSE_{field.upper()}"


# One parser per field type: (variable, raw text) -> value, or a ConfigError saying what to write.
Parser = Callable[[str, str], Any]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_int(variable: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{variable} must be a whole number, got {raw!r}: write digits only, "
            "without units or a decimal point"
        ) from None


def parse_float(variable: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{variable} must be a number, got {raw!r}: write e.g. 2.5") from None
    if not math.isfinite(value):
        raise ConfigError(f"{variable} must be a finite number, got {raw!r}")
    return value


def parse_bool(variable: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(
        f"{variable} must be true or false, got {raw!r}: write one of "
        f"{'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}"
    )


def parse_path(variable: str, raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(f"{variable} is empty: write a directory, or unset it for the default")
    return Path(raw)


def parse_str(variable: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{variable} is empty: write a value, or unset it for the default")
    return raw.strip()


def parse_names(variable: str, raw: str) -> tuple[str, ...]:
    """Comma-separated names; blanks around commas are dropped, and empty means "none given"."""
    return tuple(name for part in raw.split(",") if (name := part.strip()))


PARSERS: dict[object, Parser] = {
    int: parse_int,
    float: parse_float,
    bool: parse_bool,
    Path: parse_path,
    Path | None: parse_path,
    str: parse_str,
    tuple[str, ...]: parse_names,
}


def _field_parsers() -> dict[str, Parser]:
    """Each Settings field's parser, chosen from its real type (annotations are strings here)."""
    hints = get_type_hints(Settings)
    parsers = {}
    for field in dataclasses.fields(Settings):
        kind = hints[field.name]
        if kind not in PARSERS:
            raise TypeError(f"Settings.{field.name}: no parser for {kind!r}; add one to PARSERS")
        parsers[field.name] = PARSERS[kind]
    return parsers


_FIELD_PARSERS = _field_parsers()
