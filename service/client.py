"""A small gRPC client: `python -m service.client predict|explain INPUT --model cnn`.

INPUT is an image file, or a .json file holding one row, a list of rows or {"rows": [...]}.
The answer is printed as JSON (the proto's JSON mapping; overlay PNGs are left out of the
print). `explain --out heat.png` writes the first map's overlay. Against a server with a token,
set GLIMPSE_AUTH_TOKEN or pass --token-file (or --token).

Example: ``python -m service.client explain cat.png --model cnn --methods gradcam --out heat.png``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc

MAX_MESSAGE = 64 * 1024 * 1024  # the server's limit is what counts; the client never refuses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["predict", "explain"])
    parser.add_argument("input", type=Path, help="an image file, or a .json file of rows")
    parser.add_argument("--model", default="cnn", help="model name (default cnn)")
    parser.add_argument("--methods", default="", help="explanation methods, comma-separated")
    parser.add_argument("--target", default="", help="class to explain, by name or index")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method parameter, e.g. steps=32 or gradcam.relu=0 (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="explain: write the first map's overlay PNG")
    parser.add_argument("--address", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    parser.add_argument(
        "--token",
        default=os.environ.get("GLIMPSE_AUTH_TOKEN", ""),
        help="the server's auth token (default: $GLIMPSE_AUTH_TOKEN); see also --token-file",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("GLIMPSE_AUTH_TOKEN_FILE") or None,
        help="read the token from this file (default: $GLIMPSE_AUTH_TOKEN_FILE)",
    )
    return parser.parse_args(argv)


def auth_metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``authorization: Bearer <token>`` when a token is given (--token-file wins), else none."""
    token = args.token_file.expanduser().read_text().strip() if args.token_file else args.token
    return [("authorization", f"Bearer {token}")] if token else []


def read_inputs(path: Path) -> list[pb.Input]:
    """An image file's bytes, or each row of a .json file."""
    if path.suffix.lower() != ".json":
        return [pb.Input(image=path.read_bytes())]
    rows = json.loads(path.read_text())
    rows = rows["rows"] if isinstance(rows, dict) and "rows" in rows else rows
    return [pb.Input(row=encode_row(row)) for row in (rows if isinstance(rows, list) else [rows])]


def encode_row(row: dict[str, Any]) -> pb.Row:
    """{"Store": 1, "StoreType": "a", "CompetitionDistance": None} -> a Row message."""
    return pb.Row(values={column: encode_value(value) for column, value in row.items()})


def encode_value(value: Any) -> pb.Value:
    if value is None:
        return pb.Value(null_value=0)
    if isinstance(value, bool | int | float):
        return pb.Value(number_value=float(value))
    return pb.Value(string_value=str(value))


def call(args: argparse.Namespace) -> Message:
    """Send the request the arguments describe; return the reply."""
    inputs = read_inputs(args.input)
    metadata = auth_metadata(args)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    with grpc.insecure_channel(args.address, options=options) as channel:
        stub = pb_grpc.GlimpseStub(channel)
        if args.command == "predict":
            request = pb.PredictRequest(model=args.model, inputs=inputs)
            reply: Message = stub.Predict(request, timeout=args.timeout, metadata=metadata)
            return reply
        params = dict(param.split("=", 1) for param in args.param if "=" in param)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        explain = pb.ExplainRequest(
            model=args.model,
            inputs=inputs,
            methods=methods,
            target=args.target,
            params=params,
            include_overlay=args.out is not None,
        )
        reply = stub.Explain(explain, timeout=args.timeout, metadata=metadata)
        return reply


def write_overlay(reply: pb.ExplainResponse, out: Path) -> None:
    """The first input's first map's overlay PNG -> `out`."""
    first = reply.explanations[0]
    if first.WhichOneof("kind") != "image" or not first.image.maps:
        raise SystemExit(f"--out needs an image model's map; {reply.model} returned none")
    out.write_bytes(first.image.maps[0].overlay_png)


def as_json(reply: Message) -> str:
    """The proto's JSON mapping, overlay PNGs left out (they go to --out)."""
    if isinstance(reply, pb.ExplainResponse):
        reply = _without_overlays(reply)
    body = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    return json.dumps(body, indent=2)


def _without_overlays(reply: pb.ExplainResponse) -> pb.ExplainResponse:
    copy = pb.ExplainResponse()
    copy.CopyFrom(reply)
    for explanation in copy.explanations:
        for entry in explanation.image.maps:
            entry.ClearField("overlay_png")
    return copy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is not None and args.command != "explain":
        raise SystemExit("--out goes with explain")
    try:
        reply = call(args)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if args.out is not None and isinstance(reply, pb.ExplainResponse):
        write_overlay(reply, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    print(as_json(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
