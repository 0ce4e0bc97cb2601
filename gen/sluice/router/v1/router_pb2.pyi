from google.api import annotations_pb2 as _annotations_pb2
from sluice.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConverseRequest(_message.Message):
    __slots__ = ("prompt", "cancel")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    prompt: ConversePrompt
    cancel: ConverseCancel
    def __init__(self, prompt: _Optional[_Union[ConversePrompt, _Mapping]] = ..., cancel: _Optional[_Union[ConverseCancel, _Mapping]] = ...) -> None: ...

class ConversePrompt(_message.Message):
    __slots__ = ("turn_id", "request", "follows_turn_id")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    FOLLOWS_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    request: GenerateRequest
    follows_turn_id: str
    def __init__(self, turn_id: _Optional[str] = ..., request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., follows_turn_id: _Optional[str] = ...) -> None: ...

class ConverseCancel(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class ConverseEvent(_message.Message):
    __slots__ = ("turn_id", "event")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    event: GenerateEvent
    def __init__(self, turn_id: _Optional[str] = ..., event: _Optional[_Union[GenerateEvent, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "messages", "max_tokens", "temperature", "stop", "user", "session_id", "tools")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.Message]
    max_tokens: int
    temperature: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    user: str
    session_id: str
    tools: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tool]
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.Message, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., user: _Optional[str] = ..., session_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[_common_pb2.Tool, _Mapping]]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("sequence", "metadata", "data", "progress", "error", "complete", "tool_call")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    metadata: MetadataEvent
    data: DataEvent
    progress: ProgressEvent
    error: ErrorEvent
    complete: CompleteEvent
    tool_call: _common_pb2.ToolCallDelta
    def __init__(self, sequence: _Optional[int] = ..., metadata: _Optional[_Union[MetadataEvent, _Mapping]] = ..., data: _Optional[_Union[DataEvent, _Mapping]] = ..., progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., error: _Optional[_Union[ErrorEvent, _Mapping]] = ..., complete: _Optional[_Union[CompleteEvent, _Mapping]] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCallDelta, _Mapping]] = ...) -> None: ...

class MetadataEvent(_message.Message):
    __slots__ = ("request_id", "trace_id", "model", "provider", "provider_model", "attempt", "fallback_step", "degradations")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_STEP_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    trace_id: str
    model: str
    provider: str
    provider_model: str
    attempt: int
    fallback_step: _common_pb2.FallbackStep
    degradations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., provider_model: _Optional[str] = ..., attempt: _Optional[int] = ..., fallback_step: _Optional[_Union[_common_pb2.FallbackStep, str]] = ..., degradations: _Optional[_Iterable[str]] = ...) -> None: ...

class DataEvent(_message.Message):
    __slots__ = ("text", "token_count")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("output_tokens", "tokens_per_second", "elapsed_ms")
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    output_tokens: int
    tokens_per_second: float
    elapsed_ms: int
    def __init__(self, output_tokens: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., elapsed_ms: _Optional[int] = ...) -> None: ...

class ErrorEvent(_message.Message):
    __slots__ = ("reason", "message", "grpc_code", "retry_after_ms", "usage")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GRPC_CODE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    grpc_code: str
    retry_after_ms: int
    usage: _common_pb2.Usage
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., grpc_code: _Optional[str] = ..., retry_after_ms: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class CompleteEvent(_message.Message):
    __slots__ = ("finish_reason", "usage", "fallback_step", "time_to_first_token_ms", "total_ms")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    fallback_step: _common_pb2.FallbackStep
    time_to_first_token_ms: int
    total_ms: int
    def __init__(self, finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., fallback_step: _Optional[_Union[_common_pb2.FallbackStep, str]] = ..., time_to_first_token_ms: _Optional[int] = ..., total_ms: _Optional[int] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("model", "messages", "max_tokens", "temperature", "stop", "user", "session_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.Message]
    max_tokens: int
    temperature: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    user: str
    session_id: str
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.Message, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., user: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("request_id", "trace_id", "model", "provider", "text", "finish_reason", "usage", "fallback_step")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_STEP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    trace_id: str
    model: str
    provider: str
    text: str
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    fallback_step: _common_pb2.FallbackStep
    def __init__(self, request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., fallback_step: _Optional[_Union[_common_pb2.FallbackStep, str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "backends", "default_max_tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    default_max_tokens: int
    def __init__(self, id: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., default_max_tokens: _Optional[int] = ...) -> None: ...
