"""Driver statistics (what ``ethtool -S`` prints) through pyroute2's ethtool ioctl.

pyroute2's public :class:`pyroute2.Ethtool` has no statistics call (0.9); its ioctl layer
(:class:`pyroute2.ethtool.ioctl.IoctlEthtool`) does: ``ETHTOOL_GSSET_INFO`` (how many statistics),
``ETHTOOL_GSTRINGS`` (their names) and ``ETHTOOL_GSTATS`` (the u64 values), the same keys as ``ethtool -S``.
The ioctl runs on a datagram socket of the caller's network namespace, so a thread inside a pod sees the
pod's interfaces. This module maps its errors onto two of ours.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2.ethtool.ioctl import IoctlEthtool, NotSupportedError

__all__ = ["EthtoolError", "EthtoolUnsupported", "IoctlEthtool", "interface_stats"]

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP)


class EthtoolError(OSError):
    """The ioctl failed for another reason than "no statistics" (e.g. the interface vanished)."""


class EthtoolUnsupported(EthtoolError):
    """The interface's driver exposes no ethtool statistics (loopback, bridges, tun...)."""


def interface_stats(ifname: str, reader: Any = None) -> dict[str, int]:
    """``{statistic: value}`` for one interface, as ``ethtool -S`` shows it.

    ``reader``: an :class:`IoctlEthtool` to reuse for many interfaces (the caller closes it); without
    one, a socket is opened and closed for this call. Raises :class:`EthtoolUnsupported` when the driver
    has no statistics, :class:`EthtoolError` otherwise.
    """
    own = reader is None
    ioctl = IoctlEthtool() if own else reader
    try:
        ioctl.change_ifname(ifname)
        pairs = ioctl.get_statistics()
    except NotSupportedError:
        raise EthtoolUnsupported(errno.EOPNOTSUPP, f"{ifname}: no ethtool statistics") from None
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise EthtoolUnsupported(exc.errno, f"{ifname}: no ethtool statistics") from None
        raise EthtoolError(exc.errno, f"{ifname}: {exc.strerror}") from None
    finally:
        if own:
            ioctl.close()
    if not pairs:
        raise EthtoolUnsupported(errno.EOPNOTSUPP, f"{ifname}: no ethtool statistics")
    return {str(name): int(value) for name, value in pairs}
