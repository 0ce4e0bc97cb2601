from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AcquireRequest(_message.Message):
    __slots__ = ("api_key_id", "tenant", "user", "endpoint", "model", "requests", "tokens")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    tenant: str
    user: str
    endpoint: str
    model: str
    requests: int
    tokens: int
    def __init__(self, api_key_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user: _Optional[str] = ..., endpoint: _Optional[str] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("reservation_id", "remaining", "limit", "reset_after_ms")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    remaining: int
    limit: int
    reset_after_ms: int
    def __init__(self, reservation_id: _Optional[str] = ..., remaining: _Optional[int] = ..., limit: _Optional[int] = ..., reset_after_ms: _Optional[int] = ...) -> None: ...
