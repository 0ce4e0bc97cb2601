from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TraceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACE_STATUS_UNSPECIFIED: _ClassVar[TraceStatus]
    TRACE_STATUS_ERROR: _ClassVar[TraceStatus]
    TRACE_STATUS_OK: _ClassVar[TraceStatus]
TRACE_STATUS_UNSPECIFIED: TraceStatus
TRACE_STATUS_ERROR: TraceStatus
TRACE_STATUS_OK: TraceStatus

class EraseUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class EraseUserResponse(_message.Message):
    __slots__ = ("traces_deleted", "spans_deleted")
    TRACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    SPANS_DELETED_FIELD_NUMBER: _ClassVar[int]
    traces_deleted: int
    spans_deleted: int
    def __init__(self, traces_deleted: _Optional[int] = ..., spans_deleted: _Optional[int] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("trace_id",)
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    def __init__(self, trace_id: _Optional[str] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("trace_id", "spans")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    def __init__(self, trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("span_id", "parent_span_id", "name", "service_name", "kind", "start_time_unix_nano", "end_time_unix_nano", "status_code", "status_message", "attributes", "event_names")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    END_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    span_id: str
    parent_span_id: str
    name: str
    service_name: str
    kind: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: str
    status_message: str
    attributes: _containers.ScalarMap[str, str]
    event_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., name: _Optional[str] = ..., service_name: _Optional[str] = ..., kind: _Optional[str] = ..., start_time_unix_nano: _Optional[int] = ..., end_time_unix_nano: _Optional[int] = ..., status_code: _Optional[str] = ..., status_message: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., event_names: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchTracesRequest(_message.Message):
    __slots__ = ("service_name", "status", "min_duration_ms", "attributes", "limit")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    status: TraceStatus
    min_duration_ms: int
    attributes: _containers.ScalarMap[str, str]
    limit: int
    def __init__(self, service_name: _Optional[str] = ..., status: _Optional[_Union[TraceStatus, str]] = ..., min_duration_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class TraceSummary(_message.Message):
    __slots__ = ("trace_id", "root_service_name", "root_span_name", "start_time_unix_nano", "duration_ms", "span_count", "error", "service_names")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    ROOT_SPAN_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    SPAN_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAMES_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    root_service_name: str
    root_span_name: str
    start_time_unix_nano: int
    duration_ms: float
    span_count: int
    error: bool
    service_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trace_id: _Optional[str] = ..., root_service_name: _Optional[str] = ..., root_span_name: _Optional[str] = ..., start_time_unix_nano: _Optional[int] = ..., duration_ms: _Optional[float] = ..., span_count: _Optional[int] = ..., error: _Optional[bool] = ..., service_names: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchTracesResponse(_message.Message):
    __slots__ = ("traces",)
    TRACES_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[TraceSummary]
    def __init__(self, traces: _Optional[_Iterable[_Union[TraceSummary, _Mapping]]] = ...) -> None: ...

class GetServiceGraphRequest(_message.Message):
    __slots__ = ("window_s",)
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    def __init__(self, window_s: _Optional[int] = ...) -> None: ...

class ServiceEdge(_message.Message):
    __slots__ = ("client", "server", "calls", "errors", "error_rate")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    client: str
    server: str
    calls: int
    errors: int
    error_rate: float
    def __init__(self, client: _Optional[str] = ..., server: _Optional[str] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ...) -> None: ...

class GetServiceGraphResponse(_message.Message):
    __slots__ = ("edges",)
    EDGES_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedCompositeFieldContainer[ServiceEdge]
    def __init__(self, edges: _Optional[_Iterable[_Union[ServiceEdge, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("window_s", "service_name")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    service_name: str
    def __init__(self, window_s: _Optional[int] = ..., service_name: _Optional[str] = ...) -> None: ...

class OperationStats(_message.Message):
    __slots__ = ("service_name", "operation", "count", "request_rate", "error_rate", "p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms", "apdex", "spans")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_P50_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_MS_FIELD_NUMBER: _ClassVar[int]
    APDEX_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    operation: str
    count: int
    request_rate: float
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    apdex: float
    spans: int
    def __init__(self, service_name: _Optional[str] = ..., operation: _Optional[str] = ..., count: _Optional[int] = ..., request_rate: _Optional[float] = ..., error_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., ttft_p50_ms: _Optional[float] = ..., ttft_p95_ms: _Optional[float] = ..., apdex: _Optional[float] = ..., spans: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("window_s", "apdex_t_ms", "operations")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    APDEX_T_MS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    apdex_t_ms: float
    operations: _containers.RepeatedCompositeFieldContainer[OperationStats]
    def __init__(self, window_s: _Optional[int] = ..., apdex_t_ms: _Optional[float] = ..., operations: _Optional[_Iterable[_Union[OperationStats, _Mapping]]] = ...) -> None: ...

class GetBreakdownRequest(_message.Message):
    __slots__ = ("window_s", "limit")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    limit: int
    def __init__(self, window_s: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class KindShare(_message.Message):
    __slots__ = ("kind", "self_time_ms", "share")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SELF_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    self_time_ms: float
    share: float
    def __init__(self, kind: _Optional[str] = ..., self_time_ms: _Optional[float] = ..., share: _Optional[float] = ...) -> None: ...

class SlowOperation(_message.Message):
    __slots__ = ("service_name", "operation", "kind", "count", "p99_ms", "mean_self_ms")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SELF_MS_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    operation: str
    kind: str
    count: int
    p99_ms: float
    mean_self_ms: float
    def __init__(self, service_name: _Optional[str] = ..., operation: _Optional[str] = ..., kind: _Optional[str] = ..., count: _Optional[int] = ..., p99_ms: _Optional[float] = ..., mean_self_ms: _Optional[float] = ...) -> None: ...

class GetBreakdownResponse(_message.Message):
    __slots__ = ("window_s", "slowest", "kinds")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SLOWEST_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    slowest: _containers.RepeatedCompositeFieldContainer[SlowOperation]
    kinds: _containers.RepeatedCompositeFieldContainer[KindShare]
    def __init__(self, window_s: _Optional[int] = ..., slowest: _Optional[_Iterable[_Union[SlowOperation, _Mapping]]] = ..., kinds: _Optional[_Iterable[_Union[KindShare, _Mapping]]] = ...) -> None: ...
