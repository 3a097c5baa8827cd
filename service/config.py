"""Typed configuration: defaults, then GLIMPSE_* environment variables, then command-line flags.

Example: ``Settings.from_env({"GLIMPSE_HTTP_PORT": "9000"}).http_port == 9000``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    max_image_pixels: int = 50_000_000
    max_queue: int = 64
    grpc: bool = True

    def __post_init__(self) -> None:
        for port_name in ("http_port", "grpc_port"):
            port = getattr(self, port_name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{port_name} must be between 0 and 65535, got {port}")
        for name in ("max_body_bytes", "max_image_pixels", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Defaults, then GLIMPSE_<FIELD> variables, then non-None `overrides` (flags)."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(f"GLIMPSE_{field.name.upper()}")
            if raw is not None:
                values[field.name] = _parse(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def archives(self) -> list[Path]:
        """The .mar files to serve; ConfigError when there are none."""
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
        if not paths:
            raise ConfigError(
                f"no .mar archives in {self.model_store}: run `python -m training all`"
            )
        return paths


def _parse(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if "int" in kind:
            return int(raw)
        if "bool" in kind:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if "Path" in kind:
            return Path(raw)
        if "tuple" in kind:
            return tuple(part for part in raw.split(",") if part)
    except ValueError:
        raise ConfigError(f"GLIMPSE_{name.upper()} must be a whole number, got {raw!r}") from None
    return raw
