from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("string_value", "number_value", "null_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    null_value: _struct_pb2.NullValue
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., null_value: _Optional[_Union[_struct_pb2.NullValue, str]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.MessageMap[str, Value]
    def __init__(self, values: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("image", "row")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    row: Row
    def __init__(self, image: _Optional[bytes] = ..., row: _Optional[_Union[Row, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "inputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("classes", "value")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    value: float
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ..., value: _Optional[float] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "predictions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, model: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "inputs", "methods", "target", "params", "include_overlay", "overlay_format")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    methods: _containers.RepeatedScalarFieldContainer[str]
    target: str
    params: _containers.ScalarMap[str, str]
    include_overlay: bool
    overlay_format: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., methods: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., include_overlay: _Optional[bool] = ..., overlay_format: _Optional[str] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Map(_message.Message):
    __slots__ = ("method", "height", "width", "values", "signed", "reduction", "overlay_png", "extras", "overlay", "overlay_format", "overlay_size", "overlay_scaled", "overlay_scale")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_SIZE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_SCALED_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_SCALE_FIELD_NUMBER: _ClassVar[int]
    method: str
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    signed: bool
    reduction: str
    overlay_png: bytes
    extras: _struct_pb2.Struct
    overlay: bytes
    overlay_format: str
    overlay_size: _containers.RepeatedScalarFieldContainer[int]
    overlay_scaled: bool
    overlay_scale: float
    def __init__(self, method: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., signed: _Optional[bool] = ..., reduction: _Optional[str] = ..., overlay_png: _Optional[bytes] = ..., extras: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., overlay: _Optional[bytes] = ..., overlay_format: _Optional[str] = ..., overlay_size: _Optional[_Iterable[int]] = ..., overlay_scaled: _Optional[bool] = ..., overlay_scale: _Optional[float] = ...) -> None: ...

class ImageExplanation(_message.Message):
    __slots__ = ("prediction", "target", "maps", "by_target")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    BY_TARGET_FIELD_NUMBER: _ClassVar[int]
    prediction: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    target: Target
    maps: _containers.RepeatedCompositeFieldContainer[Map]
    by_target: _containers.RepeatedCompositeFieldContainer[TargetMaps]
    def __init__(self, prediction: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., maps: _Optional[_Iterable[_Union[Map, _Mapping]]] = ..., by_target: _Optional[_Iterable[_Union[TargetMaps, _Mapping]]] = ...) -> None: ...

class TargetMaps(_message.Message):
    __slots__ = ("target", "maps")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    target: Target
    maps: _containers.RepeatedCompositeFieldContainer[Map]
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., maps: _Optional[_Iterable[_Union[Map, _Mapping]]] = ...) -> None: ...

class ColumnAttribution(_message.Message):
    __slots__ = ("column", "value")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    column: str
    value: float
    def __init__(self, column: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Attributions(_message.Message):
    __slots__ = ("method", "columns", "convergence_delta")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CONVERGENCE_DELTA_FIELD_NUMBER: _ClassVar[int]
    method: str
    columns: _containers.RepeatedCompositeFieldContainer[ColumnAttribution]
    convergence_delta: float
    def __init__(self, method: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[ColumnAttribution, _Mapping]]] = ..., convergence_delta: _Optional[float] = ...) -> None: ...

class RowExplanation(_message.Message):
    __slots__ = ("prediction", "base_value", "attributions")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    BASE_VALUE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    prediction: float
    base_value: float
    attributions: _containers.RepeatedCompositeFieldContainer[Attributions]
    def __init__(self, prediction: _Optional[float] = ..., base_value: _Optional[float] = ..., attributions: _Optional[_Iterable[_Union[Attributions, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("image", "row")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    image: ImageExplanation
    row: RowExplanation
    def __init__(self, image: _Optional[_Union[ImageExplanation, _Mapping]] = ..., row: _Optional[_Union[RowExplanation, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "explanations", "timings_ms")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    timings_ms: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StreamExplainRequest(_message.Message):
    __slots__ = ("id", "model", "input", "methods", "target", "params", "include_overlay", "overlay_format")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    input: Input
    methods: _containers.RepeatedScalarFieldContainer[str]
    target: str
    params: _containers.ScalarMap[str, str]
    include_overlay: bool
    overlay_format: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., methods: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., include_overlay: _Optional[bool] = ..., overlay_format: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "status", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    status: str
    reason: str
    message: str
    def __init__(self, code: _Optional[int] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StreamExplainResponse(_message.Message):
    __slots__ = ("id", "explanation", "error", "timings_ms")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    explanation: Explanation
    error: Error
    timings_ms: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Method(_message.Message):
    __slots__ = ("name", "signed", "reduction", "summary", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    signed: bool
    reduction: str
    summary: str
    params: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., signed: _Optional[bool] = ..., reduction: _Optional[str] = ..., summary: _Optional[str] = ..., params: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "classes", "target", "methods", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    target: str
    methods: _containers.RepeatedCompositeFieldContainer[Method]
    description: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[Method, _Mapping]]] = ..., description: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
