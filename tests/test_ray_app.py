"""service/ray_app.py without a cluster: its flags, scaling options and replica settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, Settings

pytest.importorskip("ray", reason="the [ray] extra is not installed")
from service.ray_app import Scaling, parse_args, replica_settings  # noqa: E402


def test_fixed_replicas() -> None:
    options = Scaling(replicas=3, replica_cpus=0.5).deployment_options()
    assert options["num_replicas"] == 3
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert "autoscaling_config" not in options


def test_autoscaling_replaces_the_fixed_count() -> None:
    options = Scaling(
        min_replicas=1, max_replicas=4, target_ongoing_requests=2
    ).deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 1}, "go together"),
        ({"min_replicas": 3, "max_replicas": 2}, "--min-replicas <= --max-replicas"),
        ({"replicas": 0}, "--replicas"),
        ({"replica_cpus": 0}, "--replica-cpus"),
    ],
)
def test_bad_scaling_says_which_flag(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Scaling(**kwargs)


def test_flags_become_settings_and_scaling(tmp_path: Path) -> None:
    argv = ["--model-store", str(tmp_path), "--port", "8123", "--replicas", "2"]
    settings, scaling, args = parse_args([*argv, "--replica-cpus", "0.5", "--num-cpus", "2"])
    assert (settings.model_store, settings.http_port) == (tmp_path, 8123)
    assert (scaling.replicas, scaling.replica_cpus, args.num_cpus) == (2, 0.5, 2)


def test_replicas_get_the_token_not_the_file(tmp_path: Path) -> None:
    """A replica may run on another machine: the token travels, the file's path does not."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o600)
    settings = Settings(host="0.0.0.0", auth_token_file=token_file)
    ready = replica_settings(settings, Scaling(replica_cpus=2))
    assert (ready.auth_token, ready.auth_token_file) == ("s3cret", None)
    assert ready.torch_threads == 2  # follows the replica's CPUs unless set
    assert replica_settings(Settings(torch_threads=3), Scaling()).torch_threads == 3
