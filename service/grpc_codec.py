"""The gRPC door's messages: protos into the pipeline's requests, typed results into protos.

`decode_inputs`/`explain_request` read `glimpse.v1` requests; `encode_prediction`,
`encode_explanation` and `model_info` write the answers. No I/O, no status codes: the
servicer in service/grpc_server.py calls these and maps errors once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2

from service.errors import BadInput
from service.pipeline import ExplainRequest, Payload
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.results import Explanation, ImageResult, MapResult, Prediction, TargetMaps


# -- decoding: protos -> the pipeline's requests ---------------------------------------------
def decode_inputs(inputs: Iterable[pb.Input]) -> list[Payload]:
    """Each Input as a payload: a row's values, or an image file's bytes. The model's flow
    says whether it takes that kind of input."""
    return [decode_input(i, item) for i, item in enumerate(inputs)]


def decode_input(index: int, item: pb.Input) -> Payload:
    if item.HasField("row"):
        return Payload({column: decode_value(v) for column, v in item.row.values.items()})
    if not item.image:
        raise BadInput(
            f"input {index}: Input.image is empty; set it to the image file's bytes "
            "(or Input.row to a row's column values, for a tabular model)"
        )
    return Payload(item.image, "image/*")


def decode_value(value: pb.Value) -> str | float | None:
    which = value.WhichOneof("kind")
    if which == "string_value":
        return value.string_value
    if which == "number_value":
        return value.number_value
    return None


def explain_request(
    inputs: list[Payload],
    request: pb.ExplainRequest | pb.StreamExplainRequest,
    timeout: float | None = None,
) -> ExplainRequest:
    return ExplainRequest(
        request.model,
        inputs,
        list(request.methods),
        request.target or None,
        dict(request.params),
        request.include_overlay,
        request.overlay_format.lower() or "png",
        timeout,
    )


# -- encoding: the pipeline's results -> protos -----------------------------------------------
def encode_prediction(answer: Prediction) -> pb.Prediction:
    """An image's {class: probability}, or the value predicted for an input's row."""
    if isinstance(answer, dict):
        return pb.Prediction(classes=encode_classes(answer))
    if len(answer) != 1:
        raise BadInput(f"an Input.row holds one row; this one gave {len(answer)} values")
    return pb.Prediction(value=float(answer[0]))


def encode_classes(probabilities: dict[str, float]) -> list[pb.ClassProbability]:
    return [pb.ClassProbability(label=k, probability=v) for k, v in probabilities.items()]


def encode_explanation(result: Explanation) -> pb.Explanation:
    if isinstance(result, ImageResult):
        first = result.targets[0]
        several = result.targets if len(result.targets) > 1 else []
        return pb.Explanation(
            image=pb.ImageExplanation(
                prediction=encode_classes(result.prediction),
                target=encode_target(first),
                maps=[encode_map(m) for m in first.maps],
                by_target=[
                    pb.TargetMaps(target=encode_target(t), maps=[encode_map(m) for m in t.maps])
                    for t in several
                ],
            )
        )
    attributions = [
        pb.Attributions(
            method=method,
            convergence_delta=result.convergence_delta.get(method),
            columns=[pb.ColumnAttribution(column=c, value=v) for c, v in by.items()],
        )
        for method, by in result.attributions.items()
    ]
    return pb.Explanation(
        row=pb.RowExplanation(
            prediction=result.prediction, base_value=result.base_value, attributions=attributions
        )
    )


def encode_target(entry: TargetMaps) -> pb.Target:
    t = entry.target
    return pb.Target(index=t.index, label=t.label, probability=t.probability)


def encode_map(result: MapResult) -> pb.Map:
    """One method's [h, w] map, flattened row-major, with its overlay and extras."""
    extras = struct_pb2.Struct()
    extras.update(result.extras)
    return pb.Map(
        method=result.method,
        height=result.values.shape[0],
        width=result.values.shape[1],
        values=result.values.ravel().tolist(),
        signed=result.signed,
        reduction=result.reduction,
        overlay_png=(result.overlay or b"") if result.overlay_format == "png" else b"",
        overlay=result.overlay or b"",
        overlay_format=result.overlay_format if result.overlay else "",
        extras=extras,
        overlay_size=list(result.overlay_size or ()),
        overlay_scaled=result.overlay_scaled,
        overlay_scale=result.overlay_scale if result.overlay else 0.0,
    )


def model_info(description: dict[str, Any], full: bool = False) -> pb.ModelInfo:
    """The typed essentials of `Model.describe()`; with `full`, all of it as a Struct."""
    methods = [
        pb.Method(
            name=m["name"],
            signed=m["signed"],
            reduction=m["reduction"],
            summary=m["summary"],
            params=list(m["params"]),
        )
        for m in description["explanations"]
    ]
    info = pb.ModelInfo(
        name=description["name"],
        kind=description["kind"],
        classes=description.get("classes", []),
        target=description.get("target", ""),
        methods=methods,
    )
    if full:
        info.description.update(_jsonable(description))
    return info


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """What JSON (and so a Struct) can carry: tuples become lists, other objects text."""
    return dict(json.loads(json.dumps(value, default=str)))
