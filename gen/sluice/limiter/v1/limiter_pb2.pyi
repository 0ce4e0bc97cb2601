from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AcquireRequest(_message.Message):
    __slots__ = ("api_key_id", "tenant", "user", "endpoint", "model", "requests", "tokens", "budget", "lease_requests")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    LEASE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    tenant: str
    user: str
    endpoint: str
    model: str
    requests: int
    tokens: int
    budget: Budget
    lease_requests: int
    def __init__(self, api_key_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user: _Optional[str] = ..., endpoint: _Optional[str] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., tokens: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., lease_requests: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("requests", "ttl_ms")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    ttl_ms: int
    def __init__(self, requests: _Optional[int] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("limit", "period_s", "currency")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_S_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    limit: float
    period_s: float
    currency: str
    def __init__(self, limit: _Optional[float] = ..., period_s: _Optional[float] = ..., currency: _Optional[str] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("reservation_id", "remaining", "limit", "reset_after_ms", "policies", "spent", "local_fallback", "lease")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    remaining: int
    limit: int
    reset_after_ms: int
    policies: _containers.RepeatedCompositeFieldContainer[PolicyStatus]
    spent: float
    local_fallback: bool
    lease: Lease
    def __init__(self, reservation_id: _Optional[str] = ..., remaining: _Optional[int] = ..., limit: _Optional[int] = ..., reset_after_ms: _Optional[int] = ..., policies: _Optional[_Iterable[_Union[PolicyStatus, _Mapping]]] = ..., spent: _Optional[float] = ..., local_fallback: _Optional[bool] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("policy", "subject", "unit", "remaining", "limit", "reset_after_ms")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    subject: str
    unit: str
    remaining: int
    limit: int
    reset_after_ms: int
    def __init__(self, policy: _Optional[str] = ..., subject: _Optional[str] = ..., unit: _Optional[str] = ..., remaining: _Optional[int] = ..., limit: _Optional[int] = ..., reset_after_ms: _Optional[int] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("reservation_id", "actual_tokens")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    actual_tokens: int
    def __init__(self, reservation_id: _Optional[str] = ..., actual_tokens: _Optional[int] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("applied", "reserved_tokens", "delta_tokens")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DELTA_TOKENS_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    reserved_tokens: int
    delta_tokens: int
    def __init__(self, applied: _Optional[bool] = ..., reserved_tokens: _Optional[int] = ..., delta_tokens: _Optional[int] = ...) -> None: ...

class SpendRequest(_message.Message):
    __slots__ = ("api_key_id", "amount", "period_s")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_S_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    amount: float
    period_s: float
    def __init__(self, api_key_id: _Optional[str] = ..., amount: _Optional[float] = ..., period_s: _Optional[float] = ...) -> None: ...

class SpendResponse(_message.Message):
    __slots__ = ("spent",)
    SPENT_FIELD_NUMBER: _ClassVar[int]
    spent: float
    def __init__(self, spent: _Optional[float] = ...) -> None: ...
