"""The checked-in gRPC stubs are exactly what `make proto` generates from the .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    written = gen_proto().generate(tmp_path)
    assert written, "protoc wrote nothing"
    for fresh in written:
        checked_in = ROOT / "service" / "proto" / fresh.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} is missing: run `make proto`"
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in} differs from proto/glimpse/v1/glimpse.proto: run `make proto`"
        )


def test_stubs_import_as_part_of_the_service_package() -> None:
    from service.proto.glimpse.v1 import glimpse_pb2, glimpse_pb2_grpc

    assert glimpse_pb2.DESCRIPTOR.package == "glimpse.v1"
    assert hasattr(glimpse_pb2_grpc, "GlimpseStub")
