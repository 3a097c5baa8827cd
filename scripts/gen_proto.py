"""Generate the Python gRPC stubs for the protos under proto/ into service/proto/.

`make proto` runs this; tests/test_grpc_stubs.py checks the checked-in stubs match a fresh
run. protoc writes `from glimpse.v1 import glimpse_pb2` (and `from inference import ...`); the
stubs live in the package `service.proto`, so those imports are rewritten.

Example: ``python scripts/gen_proto.py [OUT_DIR]`` (default: service/proto)
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ["glimpse/v1/glimpse.proto", "inference/grpc_service.proto"]
PACKAGE = "service.proto"
PACKAGES = [
    "",
    "glimpse",
    "glimpse/v1",
    "inference",
]  # __init__.py files under the output directory


def generate(out: Path) -> list[Path]:
    """Run protoc (Python, .pyi and gRPC outputs) into `out`; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTOS}")
    written = []
    for package in PACKAGES:
        init = out / package / "__init__.py"
        init.write_text("")
        written.append(init)
    for proto in PROTOS:
        stem = out / proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = stem.with_name(stem.name + suffix)
            path.write_text(fix_imports(path.read_text()))
            written.append(path)
    return written


def fix_imports(source: str) -> str:
    """`from glimpse.v1 import x` -> `from service.proto.glimpse.v1 import x` (and inference)."""
    return re.sub(
        r"^from (glimpse\.|inference )", rf"from {PACKAGE}.\1", source, flags=re.MULTILINE
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "service" / "proto"
    for path in generate(target):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
