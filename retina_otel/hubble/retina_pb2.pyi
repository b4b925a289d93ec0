from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowMetadata(_message.Message):
    __slots__ = ("event", "drop_reason", "packets", "bytes", "reply_packets", "reply_bytes", "retransmits", "tcp_flag_counts", "start_time_unix_nano")
    class TcpFlagCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLY_PACKETS_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    TCP_FLAG_COUNTS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    event: str
    drop_reason: str
    packets: int
    bytes: int
    reply_packets: int
    reply_bytes: int
    retransmits: int
    tcp_flag_counts: _containers.ScalarMap[str, int]
    start_time_unix_nano: int
    def __init__(self, event: _Optional[str] = ..., drop_reason: _Optional[str] = ..., packets: _Optional[int] = ..., bytes: _Optional[int] = ..., reply_packets: _Optional[int] = ..., reply_bytes: _Optional[int] = ..., retransmits: _Optional[int] = ..., tcp_flag_counts: _Optional[_Mapping[str, int]] = ..., start_time_unix_nano: _Optional[int] = ...) -> None: ...

class GetFlowsExtension(_message.Message):
    __slots__ = ("whitelist", "blacklist")
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    BLACKLIST_FIELD_NUMBER: _ClassVar[int]
    whitelist: _containers.RepeatedCompositeFieldContainer[FilterExtension]
    blacklist: _containers.RepeatedCompositeFieldContainer[FilterExtension]
    def __init__(self, whitelist: _Optional[_Iterable[_Union[FilterExtension, _Mapping]]] = ..., blacklist: _Optional[_Iterable[_Union[FilterExtension, _Mapping]]] = ...) -> None: ...

class FilterExtension(_message.Message):
    __slots__ = ("drop_reason", "event")
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    drop_reason: _containers.RepeatedScalarFieldContainer[str]
    event: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, drop_reason: _Optional[_Iterable[str]] = ..., event: _Optional[_Iterable[str]] = ...) -> None: ...
