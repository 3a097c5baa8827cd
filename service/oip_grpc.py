"""The Open Inference Protocol v2 gRPC door: `inference.GRPCInferenceService` on glimpse's port.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, registered
as `/inference.GRPCInferenceService/<Rpc>` (what tritonclient.grpc calls). Inputs are read
from `raw_input_contents` (one per input) or the typed `contents`; outputs go to
`raw_output_contents` as raw little-endian bytes, which is all tritonclient's `as_numpy`
reads. The tensors (service/oip_tensors.py) and the pipeline behind them (service/oip.py) are
shared with REST; deadlines, the error -> status mapping, the concurrency gate and metrics
are the Glimpse servicer's own.

Example: ``add_inference_service(pipeline, server)`` before ``await server.start()``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from service import oip, oip_tensors
from service.errors import BadInput
from service.grpc_server import GlimpseServicer
from service.oip import InferRequest
from service.oip_tensors import InferTensor, TensorSpec
from service.pipeline import Pipeline
from service.proto.inference import grpc_service_pb2 as ipb
from service.proto.inference import grpc_service_pb2_grpc as ipb_grpc

SERVICE = ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# The typed `contents` field that holds each datatype (FP16 travels raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def add_inference_service(pipeline: Pipeline, server: grpc.aio.Server) -> str:
    """Register `inference.GRPCInferenceService` onto `pipeline` on `server`; its full name
    (for reflection)."""
    ipb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(pipeline), server)
    return str(SERVICE)


class _Calls(GlimpseServicer):
    """The Glimpse servicer's call handling, with metrics routes under this service's name."""

    service = SERVICE


class InferenceServicer(ipb_grpc.GRPCInferenceServiceServicer):
    """Each RPC decodes its request, calls service/oip.py and encodes the answer; no more."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.calls = _Calls(pipeline)

    async def ServerLive(
        self, request: ipb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ServerLiveResponse:
        return await self.calls._unary(context, "ServerLive", "", self._live())

    async def ServerReady(
        self, request: ipb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ServerReadyResponse:
        return await self.calls._unary(context, "ServerReady", "", self._ready())

    async def ModelReady(
        self, request: ipb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelReadyResponse:
        work = self._model_ready(request.name)
        return await self.calls._unary(context, "ModelReady", request.name, work)

    async def ServerMetadata(
        self, request: ipb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ServerMetadataResponse:
        return await self.calls._unary(context, "ServerMetadata", "", self._server_metadata())

    async def ModelMetadata(
        self, request: ipb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelMetadataResponse:
        work = self._model_metadata(request.name)
        return await self.calls._unary(context, "ModelMetadata", request.name, work)

    async def ModelInfer(
        self, request: ipb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelInferResponse:
        work = self._infer(request, context.time_remaining())
        return await self.calls._unary(context, "ModelInfer", request.model_name, work, gated=True)

    # -- each RPC's work ------------------------------------------------------------------------
    async def _live(self) -> ipb.ServerLiveResponse:
        return ipb.ServerLiveResponse(live=True)

    async def _ready(self) -> ipb.ServerReadyResponse:
        return ipb.ServerReadyResponse(ready=self.pipeline.health().serving)

    async def _model_ready(self, name: str) -> ipb.ModelReadyResponse:
        return ipb.ModelReadyResponse(ready=oip.model_ready(self.pipeline, name))

    async def _server_metadata(self) -> ipb.ServerMetadataResponse:
        return ipb.ServerMetadataResponse(**oip.server_metadata())

    async def _model_metadata(self, name: str) -> ipb.ModelMetadataResponse:
        meta = oip.model_metadata(self.pipeline, name)
        return ipb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[_tensor_metadata(t) for t in meta.inputs],
            outputs=[_tensor_metadata(t) for t in meta.outputs],
        )

    async def _infer(
        self, request: ipb.ModelInferRequest, timeout: float | None
    ) -> ipb.ModelInferResponse:
        self.pipeline.runtime.get(request.model_name)
        infer_request = InferRequest(
            request.model_name,
            decode_inputs(request),
            [output.name for output in request.outputs],
            decode_parameters(request.parameters),
            timeout,
        )
        outputs = await oip.infer(self.pipeline, infer_request)
        return ipb.ModelInferResponse(
            model_name=request.model_name,
            model_version="1",
            id=request.id,
            outputs=[
                ipb.ModelInferResponse.InferOutputTensor(
                    name=t.name, datatype=t.datatype, shape=t.shape
                )
                for t in outputs
            ],
            raw_output_contents=[oip_tensors.to_raw(t) for t in outputs],
        )


# -- decoding --------------------------------------------------------------------------------------
def decode_inputs(request: ipb.ModelInferRequest) -> list[InferTensor]:
    """Each input from its raw bytes (all or none of them raw) or its typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadInput(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; "
            "send one per input, in order, or use the typed contents for all of them"
        )
    tensors = []
    for i, item in enumerate(request.inputs):
        shape = list(item.shape)
        if raw:
            tensors.append(oip_tensors.from_raw(item.name, item.datatype, shape, raw[i]))
            continue
        field = CONTENTS.get(item.datatype)
        if field is None:
            raise BadInput(
                f"input {item.name!r}: datatype {item.datatype!r} must come in "
                f"raw_input_contents (typed contents carry {sorted(CONTENTS)})"
            )
        values = list(getattr(item.contents, field))
        tensors.append(oip_tensors.from_list(item.name, item.datatype, shape, values))
    return tensors


def decode_parameters(parameters: Mapping[str, ipb.InferParameter]) -> dict[str, Any]:
    """Each InferParameter's one value (bool, int, str or float)."""
    decoded = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        decoded[key] = getattr(parameter, which) if which is not None else None
    return decoded


def _tensor_metadata(spec: TensorSpec) -> ipb.ModelMetadataResponse.TensorMetadata:
    return ipb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )
