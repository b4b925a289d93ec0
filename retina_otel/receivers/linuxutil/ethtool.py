"""Driver statistics through the ETHTOOL_GSTATS ioctl (what ``ethtool -S`` prints), with ctypes buffers.

Three ``SIOCETHTOOL`` calls per interface: ``ETHTOOL_GSSET_INFO`` (how many statistics), ``ETHTOOL_GSTRINGS``
(their names, 32 bytes each) and ``ETHTOOL_GSTATS`` (the u64 values). The ioctl runs on a datagram socket
of the caller's network namespace, so a thread inside a pod sees the pod's interfaces.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct

__all__ = ["EthtoolError", "EthtoolUnsupported", "interface_stats"]

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSTATS = 0x1D
ETHTOOL_GSSET_INFO = 0x37
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16
_MAX_STATS = 1 << 16  # sanity bound on what a driver claims


class EthtoolError(OSError):
    """The ioctl failed for another reason than "no statistics" (e.g. the interface vanished)."""


class EthtoolUnsupported(EthtoolError):
    """The interface's driver exposes no ethtool statistics (loopback, bridges, tun...)."""


def _ioctl(sock: socket.socket, ifname: str, buf: ctypes.Array[ctypes.c_char]) -> None:
    # struct ifreq: char ifr_name[16]; union { void *ifr_data; ... } (padded to 40 bytes).
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode()[: IFNAMSIZ - 1], ctypes.addressof(buf))
    ifreq += b"\0" * (40 - len(ifreq))
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise EthtoolUnsupported(exc.errno, f"{ifname}: no ethtool statistics") from exc
        raise EthtoolError(exc.errno, f"{ifname}: {exc.strerror}") from exc


def _n_stats(sock: socket.socket, ifname: str) -> int:
    # struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[]; }
    buf = ctypes.create_string_buffer(struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_STATS, 0))
    _ioctl(sock, ifname, buf)
    _, _, mask, count = struct.unpack("=IIQI", buf.raw[:20])
    return count if mask & (1 << ETH_SS_STATS) else 0


def interface_stats(ifname: str, sock: socket.socket | None = None) -> dict[str, int]:
    """``{statistic: value}`` for one interface, as ``ethtool -S`` shows it.

    Raises :class:`EthtoolUnsupported` when the driver has no statistics, :class:`EthtoolError` otherwise.
    """
    own = sock is None
    s = sock if sock is not None else socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        n = _n_stats(s, ifname)
        if n <= 0:
            raise EthtoolUnsupported(errno.EOPNOTSUPP, f"{ifname}: no ethtool statistics")
        if n > _MAX_STATS:
            raise EthtoolError(errno.EINVAL, f"{ifname}: driver reports {n} statistics")
        # struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }
        strings = ctypes.create_string_buffer(12 + n * ETH_GSTRING_LEN)
        struct.pack_into("=III", strings, 0, ETHTOOL_GSTRINGS, ETH_SS_STATS, n)
        _ioctl(s, ifname, strings)
        got = min(n, struct.unpack_from("=I", strings, 8)[0])
        # struct ethtool_stats { u32 cmd; u32 n_stats; u64 data[]; }
        values = ctypes.create_string_buffer(8 + n * 8)
        struct.pack_into("=II", values, 0, ETHTOOL_GSTATS, n)
        _ioctl(s, ifname, values)
        got = min(got, struct.unpack_from("=I", values, 4)[0])
        raw = strings.raw
        out: dict[str, int] = {}
        nums = struct.unpack_from(f"={got}Q", values, 8)
        for i in range(got):
            name = raw[12 + i * ETH_GSTRING_LEN : 12 + (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0]
            out[name.decode(errors="replace").strip()] = nums[i]
        return out
    finally:
        if own:
            s.close()
