from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]

class FallbackStep(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_STEP_UNSPECIFIED: _ClassVar[FallbackStep]
    FALLBACK_STEP_PRIMARY: _ClassVar[FallbackStep]
    FALLBACK_STEP_SECONDARY: _ClassVar[FallbackStep]
    FALLBACK_STEP_CACHE: _ClassVar[FallbackStep]
    FALLBACK_STEP_SIMPLIFIED: _ClassVar[FallbackStep]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_OUT_OF_MEMORY: _ClassVar[ErrorReason]
    ERROR_REASON_NETWORK_FAILURE: _ClassVar[ErrorReason]
    ERROR_REASON_SERVICE_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_RATE_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_RESPONSE: _ClassVar[ErrorReason]
    ERROR_REASON_VALIDATION_ERROR: _ClassVar[ErrorReason]
    ERROR_REASON_AUTHORIZATION_ERROR: _ClassVar[ErrorReason]
    ERROR_REASON_BUSINESS_RULE_VIOLATION: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_INPUT: _ClassVar[ErrorReason]
    ERROR_REASON_MISSING_PARAMETER: _ClassVar[ErrorReason]
    ERROR_REASON_UNSUPPORTED_OPERATION: _ClassVar[ErrorReason]
    ERROR_REASON_QUOTA_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_DEADLINE_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FALLBACK_STEP_UNSPECIFIED: FallbackStep
FALLBACK_STEP_PRIMARY: FallbackStep
FALLBACK_STEP_SECONDARY: FallbackStep
FALLBACK_STEP_CACHE: FallbackStep
FALLBACK_STEP_SIMPLIFIED: FallbackStep
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_OUT_OF_MEMORY: ErrorReason
ERROR_REASON_NETWORK_FAILURE: ErrorReason
ERROR_REASON_SERVICE_UNAVAILABLE: ErrorReason
ERROR_REASON_RATE_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_TOKEN_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_INVALID_RESPONSE: ErrorReason
ERROR_REASON_VALIDATION_ERROR: ErrorReason
ERROR_REASON_AUTHORIZATION_ERROR: ErrorReason
ERROR_REASON_BUSINESS_RULE_VIOLATION: ErrorReason
ERROR_REASON_INVALID_INPUT: ErrorReason
ERROR_REASON_MISSING_PARAMETER: ErrorReason
ERROR_REASON_UNSUPPORTED_OPERATION: ErrorReason
ERROR_REASON_QUOTA_EXCEEDED: ErrorReason
ERROR_REASON_DEADLINE_EXCEEDED: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason

class Message(_message.Message):
    __slots__ = ("role", "content", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    name: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class ToolCallDelta(_message.Message):
    __slots__ = ("index", "id", "name", "arguments_delta")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_DELTA_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    name: str
    arguments_delta: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_delta: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens", "estimated")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int
    estimated: bool
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., estimated: _Optional[bool] = ...) -> None: ...
