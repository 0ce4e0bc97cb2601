import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from sluice.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamRequest(_message.Message):
    __slots__ = ("request_id", "backend", "model", "messages", "max_tokens", "temperature", "stop", "tools", "start_with_first_output", "whole_answer", "end_with_last_output")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    START_WITH_FIRST_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    WHOLE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    END_WITH_LAST_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    backend: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.Message]
    max_tokens: int
    temperature: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    tools: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tool]
    start_with_first_output: bool
    whole_answer: bool
    end_with_last_output: bool
    def __init__(self, request_id: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.Message, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., tools: _Optional[_Iterable[_Union[_common_pb2.Tool, _Mapping]]] = ..., start_with_first_output: _Optional[bool] = ..., whole_answer: _Optional[bool] = ..., end_with_last_output: _Optional[bool] = ...) -> None: ...

class StreamEvent(_message.Message):
    __slots__ = ("start", "delta", "end", "tool_call", "started", "ended")
    START_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    delta: TokenDelta
    end: StreamEnd
    tool_call: _common_pb2.ToolCallDelta
    started: StreamStart
    ended: StreamEnd
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCallDelta, _Mapping]] = ..., started: _Optional[_Union[StreamStart, _Mapping]] = ..., ended: _Optional[_Union[StreamEnd, _Mapping]] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("backend", "model")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model: str
    def __init__(self, backend: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("text", "token_count")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ("finish_reason", "usage")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    def __init__(self, finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    def __init__(self, backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ...) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class MultiplexRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[MultiplexFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[MultiplexFrame, _Mapping]]] = ...) -> None: ...

class MultiplexFrame(_message.Message):
    __slots__ = ("stream_id", "start", "cancel", "credit")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    start: MultiplexStart
    cancel: MultiplexCancel
    credit: MultiplexCredit
    def __init__(self, stream_id: _Optional[int] = ..., start: _Optional[_Union[MultiplexStart, _Mapping]] = ..., cancel: _Optional[_Union[MultiplexCancel, _Mapping]] = ..., credit: _Optional[_Union[MultiplexCredit, _Mapping]] = ...) -> None: ...

class MultiplexStart(_message.Message):
    __slots__ = ("request", "timeout", "metadata", "window_bytes")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    request: StreamRequest
    timeout: _duration_pb2.Duration
    metadata: _containers.RepeatedCompositeFieldContainer[MultiplexMetadata]
    window_bytes: int
    def __init__(self, request: _Optional[_Union[StreamRequest, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metadata: _Optional[_Iterable[_Union[MultiplexMetadata, _Mapping]]] = ..., window_bytes: _Optional[int] = ...) -> None: ...

class MultiplexMetadata(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class MultiplexCancel(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MultiplexCredit(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class MultiplexResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[MultiplexEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[MultiplexEvent, _Mapping]]] = ...) -> None: ...

class MultiplexEvent(_message.Message):
    __slots__ = ("stream_id", "event", "status")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    event: StreamEvent
    status: _status_pb2.Status
    def __init__(self, stream_id: _Optional[int] = ..., event: _Optional[_Union[StreamEvent, _Mapping]] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
