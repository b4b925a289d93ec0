"""TC attachment of BPF programs: clsact qdisc plus a cls_bpf filter in direct-action mode.

Shared by every receiver that hooks interfaces with TC. Each receiver picks its own distinctive
``(prio, handle, name)`` triple, which is how it recognises its own filters: a restarted agent finds
the filter it left behind and replaces it atomically (``replace-filter``) instead of stacking a second
one, and filters of other programs (Cilium, Calico, a sibling receiver) are never touched.

The programs must return ``TC_ACT_UNSPEC`` (continue with the next filter, then the default action),
so an observer never changes a packet's fate and later filters still run.

:class:`TcAttacher` remembers what it added and whether it created the ``clsact`` qdisc, and
:meth:`TcAttacher.detach_all` removes exactly that: its filters, and the qdisc only when it created it
and no other filter remains on it.

TCX links (Linux >= 6.6) are the alternative, in :mod:`retina_otel.bpf.tcx`; :func:`make_attacher` picks
one of the two by a component's ``attach_mode``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "EGRESS_PARENT",
    "INGRESS_PARENT",
    "AttachMode",
    "Attacher",
    "FilterSpec",
    "Hook",
    "TcAttacher",
    "TcError",
    "list_filters",
    "make_attacher",
]

log = logging.getLogger(__name__)

INGRESS_PARENT = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
EGRESS_PARENT = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)
_ETH_P_ALL = 0x0003  # pyroute2 converts to network order itself

Hook = Literal["ingress", "egress"]
AttachMode = Literal["auto", "tcx", "clsact"]


class TcError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """How a component's filters look: ``prio`` and ``handle`` are what the kernel keys them by."""

    name: str  # shown by ``tc filter show``; also used to recognise ours
    prio: int  # 1..65535; lower runs earlier
    handle: int  # cls_bpf handle


@dataclass(frozen=True, slots=True)
class _Attached:
    ifindex: int
    hook: Hook


def _parent(hook: Hook) -> int:
    return INGRESS_PARENT if hook == "ingress" else EGRESS_PARENT


def _filter_name(msg: Any) -> str:
    options = msg.get_attr("TCA_OPTIONS")
    if not options:
        return ""
    try:
        return str(options.get_attr("TCA_BPF_NAME") or "")
    except AttributeError:  # pragma: no cover - non-bpf filters parse differently
        return ""


_GONE = (errno.ENODEV, errno.ENOENT, errno.EINVAL)  # link, filter or clsact qdisc no longer there


def _log_detach_failure(what: str, exc: Exception) -> None:
    """A failed removal is logged: at debug when what it removes is already gone (a deleted veth), as a
    warning otherwise (a filter may be left behind: the clean-shutdown promise needs to know)."""
    if getattr(exc, "code", None) in _GONE:
        log.debug("%s: already gone (%s)", what, exc)
    else:
        log.warning("%s failed; it may be left attached: %s", what, exc)


def list_filters(
    ipr: Any, ifindex: int, hook: Hook, *, detaching: bool = False
) -> list[tuple[int, int, str, str]]:
    """``(prio, handle, kind, name)`` of every filter on one clsact hook (empty without clsact). When
    ``detaching``, a failure to list is logged (see :func:`_log_detach_failure`)."""
    out: list[tuple[int, int, str, str]] = []
    try:
        msgs = ipr.get_filters(index=ifindex, parent=_parent(hook))
    except Exception as exc:  # no clsact qdisc / link gone
        if detaching:
            _log_detach_failure(f"listing filters on ifindex {ifindex} {hook} to detach", exc)
        return out
    for msg in msgs:
        handle = int(msg["handle"])
        if handle == 0:  # the per-prio chain head, not a filter
            continue
        prio = (int(msg["info"]) >> 16) & 0xFFFF
        out.append((prio, handle, str(msg.get_attr("TCA_KIND") or ""), _filter_name(msg)))
    return out


class TcAttacher:
    """Attach one component's programs to interfaces, remember them, and remove exactly those.

    Thread-safe. ``ipr`` is created lazily in the caller's network namespace (the first call).
    """

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._ipr: Any = None
        self._attached: set[_Attached] = set()
        self._created_clsact: set[int] = set()

    def iproute(self) -> Any:
        """The attacher's netlink socket (pyroute2 ``IPRoute``), opened on first use in the caller's
        network namespace; also for the caller's own link queries, closed by :meth:`close`."""
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    # -- queries --------------------------------------------------------------------------------
    def attached(self) -> set[tuple[int, str]]:
        with self._lock:
            return {(a.ifindex, a.hook) for a in self._attached}

    def _has_clsact(self, ifindex: int) -> bool:
        ipr = self.iproute()
        return any(m.get_attr("TCA_KIND") == "clsact" for m in ipr.get_qdiscs(index=ifindex))

    def _is_ours(self, prio: int, handle: int, name: str) -> bool:
        return prio == self.spec.prio and handle == self.spec.handle and name == self.spec.name

    # -- attach / detach ------------------------------------------------------------------------
    def attach(self, ifindex: int, hook: Hook, prog_fd: int) -> None:
        """Attach (or atomically replace our own earlier) filter on ``ifindex``'s ``hook``."""
        with self._lock:
            ipr = self.iproute()
            try:
                if not self._has_clsact(ifindex):
                    ipr.tc("add", "clsact", ifindex)
                    self._created_clsact.add(ifindex)
                for prio, handle, _kind, name in list_filters(ipr, ifindex, hook):
                    if prio == self.spec.prio and handle == self.spec.handle and not self._is_ours(prio, handle, name):
                        raise TcError(
                            f"ifindex {ifindex} {hook}: a foreign filter {name!r} holds prio {prio} handle "
                            f"{handle:#x}; refusing to replace it"
                        )
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    ifindex,
                    self.spec.handle,
                    fd=prog_fd,
                    name=self.spec.name,
                    parent=_parent(hook),
                    classid=1,
                    direct_action=True,
                    prio=self.spec.prio,
                    protocol=_ETH_P_ALL,
                )
            except TcError:
                raise
            except Exception as exc:
                raise TcError(f"attaching {self.spec.name} to ifindex {ifindex} {hook}: {exc}") from exc
            self._attached.add(_Attached(ifindex, hook))

    def _detach_locked(self, ifindex: int, hook: Hook) -> None:
        ipr = self.iproute()
        for prio, handle, _kind, name in list_filters(ipr, ifindex, hook, detaching=True):
            if self._is_ours(prio, handle, name):
                try:
                    ipr.tc(
                        "del-filter",
                        "bpf",
                        ifindex,
                        handle,
                        parent=_parent(hook),
                        prio=prio,
                        protocol=_ETH_P_ALL,
                    )
                except Exception as exc:
                    _log_detach_failure(f"detaching {self.spec.name} from ifindex {ifindex} {hook}", exc)
        self._attached.discard(_Attached(ifindex, hook))

    def _maybe_remove_clsact(self, ifindex: int) -> None:
        if ifindex not in self._created_clsact:
            return
        ipr = self.iproute()
        if not list_filters(ipr, ifindex, "ingress") and not list_filters(ipr, ifindex, "egress"):
            try:
                ipr.tc("del", "clsact", ifindex)
            except Exception as exc:
                _log_detach_failure(f"removing the clsact qdisc {self.spec.name} added to ifindex {ifindex}", exc)
        self._created_clsact.discard(ifindex)

    def detach(self, ifindex: int) -> None:
        """Remove our filters from one interface (both hooks)."""
        with self._lock:
            hooks: tuple[Hook, ...] = ("ingress", "egress")
            for hook in hooks:
                self._detach_locked(ifindex, hook)
            self._maybe_remove_clsact(ifindex)

    def forget(self, ifindex: int) -> None:
        """The interface vanished: drop our records of it without talking to the kernel."""
        with self._lock:
            self._attached = {a for a in self._attached if a.ifindex != ifindex}
            self._created_clsact.discard(ifindex)

    def detach_all(self) -> None:
        """Remove every filter this attacher added (and clsact qdiscs it created, when left empty)."""
        with self._lock:
            if self._ipr is None:
                return
            for a in list(self._attached):
                try:
                    self._detach_locked(a.ifindex, a.hook)
                except Exception as exc:
                    _log_detach_failure(f"detaching {self.spec.name} from ifindex {a.ifindex} {a.hook}", exc)
            for ifindex in list(self._created_clsact):
                try:
                    self._maybe_remove_clsact(ifindex)
                except Exception as exc:
                    _log_detach_failure(f"removing the clsact qdisc added to ifindex {ifindex}", exc)
            self._attached.clear()
            self._created_clsact.clear()

    def close(self) -> None:
        self.detach_all()
        with self._lock:
            if self._ipr is not None:
                with contextlib.suppress(Exception):
                    self._ipr.close()
                self._ipr = None


class Attacher(Protocol):
    """What :class:`TcAttacher` and :class:`~retina_otel.bpf.tcx.TcxAttacher` both offer."""

    spec: FilterSpec

    def iproute(self) -> Any: ...
    def attached(self) -> set[tuple[int, str]]: ...
    def attach(self, ifindex: int, hook: Hook, prog_fd: int) -> None: ...
    def detach(self, ifindex: int) -> None: ...
    def forget(self, ifindex: int) -> None: ...
    def detach_all(self) -> None: ...
    def close(self) -> None: ...


def make_attacher(spec: FilterSpec, mode: AttachMode) -> Attacher:
    """``"tcx"``: TCX links (:class:`~retina_otel.bpf.tcx.TcxAttacher`, which also removes clsact
    filters of ``spec`` left by an earlier agent), a :class:`TcError` when the kernel has no TCX.
    ``"clsact"``: clsact + cls_bpf (:class:`TcAttacher`). ``"auto"``: TCX where the kernel offers it
    (:func:`~retina_otel.bpf.tcx.tcx_supported`), else clsact."""
    from .tcx import TcxAttacher, tcx_supported

    if mode == "clsact":
        return TcAttacher(spec)
    if tcx_supported():
        return TcxAttacher(spec)
    if mode == "tcx":
        raise TcError(
            f"{spec.name}: attach_mode 'tcx' needs TCX (Linux >= 6.6 with CONFIG_NET_XGRESS, and CAP_NET_ADMIN); "
            f"this kernel ({os.uname().release}) does not offer it: use 'auto' or 'clsact'"
        )
    return TcAttacher(spec)
