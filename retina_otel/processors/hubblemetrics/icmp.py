"""ICMP type/code names as Hubble's ``hubble_icmp_total{type}`` prints them (gopacket's
``ICMPv4TypeCode.String()`` / ``ICMPv6TypeCode.String()``): ``EchoRequest``,
``DestinationUnreachable(Port)``, ``TimeExceeded(TTLExceeded)``; a code the type does not define is
``Type(Code: n)``, an unknown type ``t(c)``."""

from __future__ import annotations

__all__ = ["icmp_type_name"]

_V4: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: ("DestinationUnreachable", {
        0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded", 5: "SourceRoutingFailed",
        6: "NetUnknown", 7: "HostUnknown", 8: "SourceIsolated", 9: "NetAdminProhibited",
        10: "HostAdminProhibited", 11: "NetTOS", 12: "HostTOS", 13: "CommAdminProhibited",
        14: "HostPrecedence", 15: "PrecedenceCutoff",
    }),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}

_V6: dict[int, tuple[str, dict[int, str] | None]] = {
    1: ("DestinationUnreachable", {
        0: "NoRouteToDst", 1: "AdminProhibited", 2: "BeyondScopeOfSrc", 3: "AddressUnreachable",
        4: "PortUnreachable", 5: "SrcAddressFailedPolicy", 6: "RejectRouteToDst",
    }),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: ("ParameterProblem", {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"}),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}


def icmp_type_name(v6: bool, icmp_type: int, code: int) -> str:
    info = (_V6 if v6 else _V4).get(icmp_type)
    if info is None:
        return f"{icmp_type}({code})"
    name, codes = info
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    found = codes.get(code)
    return f"{name}({found})" if found is not None else f"{name}(Code: {code})"
