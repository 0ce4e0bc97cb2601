from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EraseUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class EraseUserResponse(_message.Message):
    __slots__ = ("cache_entries_deleted",)
    CACHE_ENTRIES_DELETED_FIELD_NUMBER: _ClassVar[int]
    cache_entries_deleted: int
    def __init__(self, cache_entries_deleted: _Optional[int] = ...) -> None: ...
