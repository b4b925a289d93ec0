from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN_NODE_STATE: _ClassVar[NodeState]
    NODE_CONNECTED: _ClassVar[NodeState]
    NODE_UNAVAILABLE: _ClassVar[NodeState]
    NODE_GONE: _ClassVar[NodeState]
    NODE_ERROR: _ClassVar[NodeState]
UNKNOWN_NODE_STATE: NodeState
NODE_CONNECTED: NodeState
NODE_UNAVAILABLE: NodeState
NODE_GONE: NodeState
NODE_ERROR: NodeState
