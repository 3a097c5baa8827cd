"""Settings: defaults, then GLIMPSE_* variables parsed by each field's real type, then flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service import __version__, imaging
from service.__main__ import parse_settings
from service.config import (
    PARSERS,
    ConfigError,
    Settings,
    env_variable,
    parse_bool,
    parse_float,
    parse_int,
    parse_names,
    parse_path,
    parse_str,
)


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.host, settings.http_port, settings.grpc_port) == ("127.0.0.1", 8000, 50051)
    assert settings.model_store == Path("model_store") and settings.models == ()
    assert settings.max_body_bytes == 32 * 1024 * 1024 and settings.max_queue == 64
    assert settings.grpc is True


def test_max_image_pixels_default_is_the_decoders() -> None:
    assert Settings().max_image_pixels == imaging.DEFAULT_MAX_PIXELS == 50_000_000


def test_every_field_is_read_from_its_variable() -> None:
    environ = {
        "GLIMPSE_HOST": "0.0.0.0",
        "GLIMPSE_HTTP_PORT": "9000",
        "GLIMPSE_GRPC_PORT": " 9001 ",
        "GLIMPSE_MODEL_STORE": "/srv/models",
        "GLIMPSE_MODELS": "cnn, tabular,",
        "GLIMPSE_MAX_BODY_BYTES": "1_000_000",
        "GLIMPSE_MAX_IMAGE_PIXELS": "4000000",
        "GLIMPSE_MAX_QUEUE": "8",
        "GLIMPSE_GRPC": "off",
        "GLIMPSE_ENABLE_MANAGEMENT": "yes",
        "GLIMPSE_BATCH_SIZE": "4",
        "GLIMPSE_MAX_BATCH_DELAY": "5",
        "GLIMPSE_TORCH_THREADS": "1",
        "GLIMPSE_DECODE_PROCESSES": "3",
        "GLIMPSE_ACCESS_LOG": "on",
        "GLIMPSE_AUTH_TOKEN": " s3cret ",
        "GLIMPSE_AUTH_TOKEN_FILE": "/run/secrets/glimpse",
        "GLIMPSE_METRICS_PUBLIC": "true",
        "GLIMPSE_NO_AUTH": "no",
        "GLIMPSE_MAX_INPUTS": "8",
        "GLIMPSE_MAX_ROWS": "100",
        "GLIMPSE_EXPLAIN_BUDGET": "5000",
        "GLIMPSE_MAX_OVERLAY_PIXELS": "1000000",
        "GLIMPSE_REQUEST_TIMEOUT": "2.5",
        "GLIMPSE_MAX_CONCURRENCY": "4",
        "GLIMPSE_DRAIN_SECONDS": "2.5",
        "GLIMPSE_STUCK_SECONDS": "60",
    }
    assert {env_variable(f.name) for f in dataclasses.fields(Settings)} == set(environ)
    settings = Settings.from_env(environ)
    assert settings == Settings(
        host="0.0.0.0",
        http_port=9000,
        grpc_port=9001,
        model_store=Path("/srv/models"),
        models=("cnn", "tabular"),
        max_body_bytes=1_000_000,
        max_image_pixels=4_000_000,
        max_queue=8,
        grpc=False,
        enable_management=True,
        batch_size=4,
        max_batch_delay=5,
        torch_threads=1,
        decode_processes=3,
        access_log=True,
        auth_token="s3cret",
        auth_token_file=Path("/run/secrets/glimpse"),
        metrics_public=True,
        no_auth=False,
        max_inputs=8,
        max_rows=100,
        explain_budget=5000,
        max_overlay_pixels=1_000_000,
        request_timeout=2.5,
        max_concurrency=4,
        drain_seconds=2.5,
        stuck_seconds=60.0,
    )
    assert isinstance(settings.model_store, Path) and isinstance(settings.grpc, bool)


def test_overrides_win_over_the_environment_and_none_is_no_override() -> None:
    environ = {"GLIMPSE_HTTP_PORT": "9000", "GLIMPSE_MAX_QUEUE": "8"}
    settings = Settings.from_env(environ, http_port=9100, max_queue=None)
    assert (settings.http_port, settings.max_queue) == (9100, 8)


def test_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_GRPC_PORT", "7000")
    monkeypatch.setenv("GLIMPSE_MODELS", "tabular")
    settings = parse_settings(["--http-port", "7001", "--models", "cnn, tabular", "--no-grpc"])
    assert (settings.http_port, settings.grpc_port) == (7001, 7000)
    assert settings.models == ("cnn", "tabular") and settings.grpc is False


def test_auth_flags_and_the_token_stays_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_AUTH_TOKEN", "s3cret")
    settings = parse_settings(["--auth-token-file", "tok", "--metrics-public", "--no-auth"])
    assert settings.auth_token_file == Path("tok") and settings.auth_token == "s3cret"
    assert settings.metrics_public is True and settings.no_auth is True
    assert "s3cret" not in repr(settings)


def test_flag_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GLIMPSE_MAX_QUEUE", "lots")
    with pytest.raises(SystemExit):
        parse_settings([])
    assert "GLIMPSE_MAX_QUEUE must be a whole number, got 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("GLIMPSE_MAX_QUEUE", "x", "GLIMPSE_MAX_QUEUE must be a whole number, got 'x'"),
        ("GLIMPSE_HTTP_PORT", "80.5", "GLIMPSE_HTTP_PORT must be a whole number, got '80.5'"),
        ("GLIMPSE_MAX_BODY_BYTES", "32MiB", "GLIMPSE_MAX_BODY_BYTES must be a whole number"),
        ("GLIMPSE_GRPC", "maybe", "GLIMPSE_GRPC must be true or false, got 'maybe'"),
        ("GLIMPSE_GRPC", "", "GLIMPSE_GRPC must be true or false, got ''"),
        ("GLIMPSE_MODEL_STORE", " ", "GLIMPSE_MODEL_STORE is empty"),
        ("GLIMPSE_HOST", "", "GLIMPSE_HOST is empty"),
    ],
)
def test_bad_variables_are_refused_with_what_to_write(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        Settings.from_env({variable: raw})


def test_range_checks_still_apply_after_parsing() -> None:
    with pytest.raises(ConfigError, match="http_port must be between 0 and 65535, got 70000"):
        Settings.from_env({"GLIMPSE_HTTP_PORT": "70000"})
    with pytest.raises(ConfigError, match="max_queue must be a positive number, got 0"):
        Settings.from_env({"GLIMPSE_MAX_QUEUE": "0"})


def test_decode_processes_default_to_one_on_two_cores_and_are_range_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings().decode_processes == 1
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert Settings().decode_processes == 0  # one core: the codec threads decode
    assert Settings.from_env({"GLIMPSE_DECODE_PROCESSES": "0"}).decode_processes == 0
    with pytest.raises(ConfigError, match="decode_processes must be between 0 .* got -1"):
        Settings.from_env({"GLIMPSE_DECODE_PROCESSES": "-1"})


def test_drain_and_stuck_seconds_are_checked() -> None:
    assert Settings(drain_seconds=0).drain_seconds == 0  # drain: stop without waiting
    with pytest.raises(ConfigError, match="drain_seconds must be 0 or more"):
        Settings.from_env({"GLIMPSE_DRAIN_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="stuck_seconds more than 0, got 30.0 and 0.0"):
        Settings.from_env({"GLIMPSE_STUCK_SECONDS": "0"})


def test_parse_int() -> None:
    assert parse_int("V", "42") == 42
    assert parse_int("V", " -3 ") == -3
    with pytest.raises(ConfigError, match="^V must be a whole number, got '4e3': write digits"):
        parse_int("V", "4e3")


def test_parse_float() -> None:
    assert parse_float("V", "2.5") == 2.5
    assert parse_float("V", "3") == 3.0 and isinstance(parse_float("V", "3"), float)
    assert parse_float("V", "1e-3") == 0.001
    with pytest.raises(ConfigError, match=r"^V must be a number, got '2,5': write e\.g\. 2\.5"):
        parse_float("V", "2,5")
    for raw in ("nan", "inf", "-Infinity"):
        with pytest.raises(ConfigError, match=f"^V must be a finite number, got '{raw}'"):
            parse_float("V", raw)


@pytest.mark.parametrize("raw", ["1", "true", "True", " YES ", "on"])
def test_parse_bool_true(raw: str) -> None:
    assert parse_bool("V", raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", " off"])
def test_parse_bool_false(raw: str) -> None:
    assert parse_bool("V", raw) is False


@pytest.mark.parametrize("raw", ["2", "y", "enabled", "", "truthy"])
def test_parse_bool_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_bool("V", raw)
    assert str(error.value) == (
        f"V must be true or false, got {raw!r}: write one of 1/true/yes/on or 0/false/no/off"
    )


def test_parse_path() -> None:
    assert parse_path("V", "models/here") == Path("models/here")
    with pytest.raises(ConfigError, match="^V is empty: write a directory"):
        parse_path("V", "")


def test_parse_str() -> None:
    assert parse_str("V", " ::1 ") == "::1"
    with pytest.raises(ConfigError, match="^V is empty: write a value, or unset it"):
        parse_str("V", "  ")


def test_parse_names() -> None:
    assert parse_names("V", "cnn") == ("cnn",)
    assert parse_names("V", " cnn , tabular ,,") == ("cnn", "tabular")
    assert parse_names("V", "") == ()


def test_every_field_type_has_a_parser() -> None:
    assert {int, float, bool, Path, str, tuple[str, ...]} <= set(PARSERS)


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib.metadata import version

    assert __version__ == version("glimpse") != "0+unknown"
