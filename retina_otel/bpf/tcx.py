"""TCX attachment of BPF programs: BPF links on an interface's TCX ingress/egress hook (Linux >= 6.6).

TCX (``BPF_LINK_CREATE`` with ``BPF_TCX_INGRESS``/``BPF_TCX_EGRESS``) is the kernel's native
multi-program TC hook. Compared to clsact + cls_bpf (:mod:`retina_otel.bpf.tc`):

* No qdisc, no filter, no netlink: one ``bpf(2)`` call returns a **link fd**, and closing it detaches.
  The link belongs to this process: when the agent dies, however it dies, the kernel closes its fds and
  the programs go with them. A crashed agent leaves nothing behind, and a restart cannot double-attach.
* The hook runs its TCX programs first, in order, then the clsact qdisc's filters. A program's return
  value decides whether the chain goes on (``include/net/tcx.h``, ``tcx_action_code()``, and
  ``net/core/dev.c``, ``tcx_run()`` / ``sch_handle_ingress()`` / ``sch_handle_egress()``, since v6.6):
  ``TCX_NEXT`` (-1) runs the next TCX program and, after the last one, the classic clsact/cls_bpf chain
  (``if (sch_ret != TC_ACT_UNSPEC) goto verdict; sch_ret = tc_run(...)``); ``TCX_PASS`` (0),
  ``TCX_DROP`` (2) and ``TCX_REDIRECT`` (7) end it with that verdict; any other value also ends the TCX
  chain but is mapped to ``TCX_NEXT`` for the classic one. ``TC_ACT_UNSPEC`` is -1 (``pkt_cls.h``),
  i.e. exactly ``TCX_NEXT``: the observer programs here, which return ``TC_ACT_UNSPEC`` in both modes,
  never change a packet's fate and every later TCX program and cls_bpf filter still runs
  (``tests/test_tcx.py`` counts the packets of a ping at a later TCX link and a cls_bpf filter).
* Ordering: our links are appended (no ``BPF_F_BEFORE``/``BPF_F_AFTER``, no relative anchor), so programs
  attached before ours (a CNI's) keep their places and run first. As with a lower-``prio`` cls_bpf filter
  in clsact mode, a program before ours that returns a final verdict (PASS/DROP/REDIRECT) ends the chain
  and ours does not see that packet; putting ours first would change the order other tools chose.

Raw ``bpf(2)`` through ctypes (:mod:`retina_otel.bpf.syscall`: x86_64 and arm64), as
:mod:`retina_otel.receivers.packetparser.kernel` does for ``BPF_PROG_TEST_RUN``: bcc 0.26 and pyroute2
have no TCX API. Structures follow ``union bpf_attr`` of ``include/uapi/linux/bpf.h`` (v6.6+; the
Debian 6.1 headers on the test machines predate TCX), each zero-padded to :data:`_ATTR_SIZE` bytes: the
kernel accepts a larger attr when the bytes it does not know are zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from .syscall import bpf
from .tc import FilterSpec, Hook, TcAttacher, TcError, list_filters

__all__ = [
    "BPF_TCX_EGRESS",
    "BPF_TCX_INGRESS",
    "LinkInfo",
    "TcxAttacher",
    "TcxEntry",
    "link_info",
    "prog_info",
    "tcx_link_create",
    "tcx_link_update",
    "tcx_query",
    "tcx_supported",
]

log = logging.getLogger(__name__)

_ATTR_SIZE = 128  # room for every member used here; bytes past the kernel's own union must be zero

# enum bpf_cmd
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_PROG_QUERY = 16
_BPF_LINK_CREATE = 28
_BPF_LINK_UPDATE = 29
# enum bpf_attach_type
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
_BPF_LINK_TYPE_TCX = 11
_BPF_OBJ_NAME_LEN = 16
_MAX_QUERY = 64  # BPF_MPROG_MAX: a TCX hook holds at most 64 programs
_HOOKS: tuple[Hook, ...] = ("ingress", "egress")


def _attach_type(hook: Hook) -> int:
    return BPF_TCX_INGRESS if hook == "ingress" else BPF_TCX_EGRESS


class _LinkCreateAttr(ctypes.Structure):
    """``bpf_attr.link_create`` with its ``tcx`` member."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),  # BPF_F_BEFORE / BPF_F_AFTER / BPF_F_ID ...: none used
        ("relative_fd", ctypes.c_uint32),  # union with relative_id
        ("_hole", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),  # 0: no check
        ("_pad", ctypes.c_uint8 * (_ATTR_SIZE - 32)),
    ]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [
        ("link_fd", ctypes.c_uint32),
        ("new_prog_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint8 * (_ATTR_SIZE - 16)),
    ]


class _QueryAttr(ctypes.Structure):
    """``bpf_attr.query`` as of v6.6 (``target_ifindex``, ``count``, ``link_ids``, ``revision``)."""

    _fields_ = [
        ("target_ifindex", ctypes.c_uint32),  # union with target_fd
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("count", ctypes.c_uint32),  # union with prog_cnt; in: capacity, out: programs attached
        ("_hole", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
        ("_pad", ctypes.c_uint8 * (_ATTR_SIZE - 64)),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
        ("_pad", ctypes.c_uint8 * (_ATTR_SIZE - 16)),
    ]


class _GetFdByIdAttr(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint8 * (_ATTR_SIZE - 12)),
    ]


class _LinkInfoStruct(ctypes.Structure):
    """The head of ``struct bpf_link_info`` and its ``tcx`` member (the union starts at offset 16)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_hole", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
    ]


class _ProgInfoStruct(ctypes.Structure):
    """The head of ``struct bpf_prog_info`` up to ``name`` (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * _BPF_OBJ_NAME_LEN),
    ]


# -- the syscalls --------------------------------------------------------------------------------------
def tcx_link_create(prog_fd: int, ifindex: int, hook: Hook) -> int:
    """Attach ``prog_fd`` (a SCHED_CLS program) at the end of ``ifindex``'s TCX ``hook``; the link's fd.

    The interface is looked up in the calling thread's network namespace. Close the fd to detach."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=_attach_type(hook))
    return bpf(_BPF_LINK_CREATE, attr, "BPF_LINK_CREATE")


def tcx_link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program of an existing link atomically (it keeps its place in the chain).

    ``ENOLINK`` when the link's interface is gone."""
    bpf(_BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=prog_fd), "BPF_LINK_UPDATE")


@dataclass(frozen=True, slots=True)
class TcxEntry:
    """One program on a TCX hook, in run order. ``link_id`` is 0 for a program attached without a link
    (``BPF_PROG_ATTACH``); ``prog_name`` is empty when the program could not be opened."""

    prog_id: int
    link_id: int
    prog_name: str


_Ids = ctypes.Array[ctypes.c_uint32]


def _query(ifindex: int, attach_type: int, capacity: int) -> tuple[_QueryAttr, _Ids, _Ids]:
    prog_ids = (ctypes.c_uint32 * max(capacity, 1))()
    link_ids = (ctypes.c_uint32 * max(capacity, 1))()
    attr = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type, count=capacity)
    if capacity:
        attr.prog_ids = ctypes.addressof(prog_ids)
        attr.link_ids = ctypes.addressof(link_ids)
    bpf(_BPF_PROG_QUERY, attr, "BPF_PROG_QUERY")
    return attr, prog_ids, link_ids


def tcx_query(ifindex: int, hook: Hook, *, names: bool = True) -> list[TcxEntry]:
    """Every program on ``ifindex``'s TCX ``hook`` (empty when none), in the order they run.

    Raises ``OSError`` (``EINVAL`` on kernels without TCX, ``ENODEV`` for an unknown ifindex)."""
    attr, prog_ids, link_ids = _query(ifindex, _attach_type(hook), _MAX_QUERY)
    n = min(int(attr.count), _MAX_QUERY)
    out = []
    for i in range(n):
        pid = int(prog_ids[i])
        name = ""
        if names:
            with contextlib.suppress(OSError):
                name = prog_name_by_id(pid)
        out.append(TcxEntry(prog_id=pid, link_id=int(link_ids[i]), prog_name=name))
    return out


@dataclass(frozen=True, slots=True)
class LinkInfo:
    id: int
    prog_id: int
    ifindex: int  # 0 once the interface is gone (the link is then detached, only the fd remains)
    hook: Hook | None  # None for a link that is not a TCX link


def link_info(link_fd: int) -> LinkInfo:
    info = _LinkInfoStruct()
    attr = _InfoAttr(bpf_fd=link_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(_BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")
    hook: Hook | None = None
    if info.type == _BPF_LINK_TYPE_TCX:
        hook = "ingress" if info.attach_type == BPF_TCX_INGRESS else "egress"
    return LinkInfo(id=int(info.id), prog_id=int(info.prog_id), ifindex=int(info.ifindex), hook=hook)


def prog_info(prog_fd: int) -> tuple[int, str]:
    """``(id, name)`` of a loaded program (the name is cut to 15 characters by the kernel)."""
    info = _ProgInfoStruct()
    attr = _InfoAttr(bpf_fd=prog_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(_BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")
    return int(info.id), info.name.decode(errors="replace")


def prog_name_by_id(prog_id: int) -> str:
    fd = bpf(_BPF_PROG_GET_FD_BY_ID, _GetFdByIdAttr(id=prog_id), "BPF_PROG_GET_FD_BY_ID")
    try:
        return prog_info(fd)[1]
    finally:
        os.close(fd)


@functools.cache
def tcx_supported() -> bool:
    """Whether this kernel has TCX, probed once per process.

    The probe is ``BPF_PROG_QUERY`` for ``BPF_TCX_INGRESS`` on ifindex 1 (loopback, present in every
    network namespace): it attaches nothing and needs no program. A kernel without TCX (< 6.6, or
    built without ``CONFIG_NET_XGRESS``) rejects the attach type with ``EINVAL``; with TCX it answers
    (usually 0 programs). Any other error (``EPERM`` without CAP_NET_ADMIN/CAP_BPF, ...) also means TCX
    cannot be used here and is logged; attaching would fail the same way."""
    try:
        _query(1, BPF_TCX_INGRESS, 0)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            log.info("TCX probe failed (%s); using clsact", exc)
        return False
    return True


# -- the attacher --------------------------------------------------------------------------------------
def _ifname(ifindex: int) -> str:
    try:
        return f"{socket.if_indextoname(ifindex)} (ifindex {ifindex})"
    except OSError:
        return f"ifindex {ifindex}"


class TcxAttacher:
    """Attach one component's programs to interfaces through TCX links; the same surface as
    :class:`~retina_otel.bpf.tc.TcAttacher`.

    What is ours is simply the set of link fds this attacher holds, so other programs' TCX links and
    cls_bpf filters are never touched. With ``remove_clsact_leftovers`` (the default) the first
    attachment to an interface also removes cls_bpf filters of ours (``spec``'s prio, handle and name)
    that an agent in clsact mode left behind when it was killed, so an upgrade to TCX does not run the
    old programs next to the new ones. Thread-safe; the netlink socket (``iproute()``, used for link
    listing and that cleanup) is created lazily in the caller's network namespace.
    """

    def __init__(self, spec: FilterSpec, *, remove_clsact_leftovers: bool = True) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._clsact = TcAttacher(spec)  # owns the netlink socket; attaches nothing
        self._remove_leftovers = remove_clsact_leftovers
        self._checked: set[int] = set()  # interfaces already cleaned of clsact leftovers
        self._links: dict[tuple[int, Hook], int] = {}  # (ifindex, hook) -> link fd

    def iproute(self) -> Any:
        return self._clsact.iproute()

    # -- queries --------------------------------------------------------------------------------
    def attached(self) -> set[tuple[int, str]]:
        with self._lock:
            return set(self._links)

    def link_fd(self, ifindex: int, hook: Hook) -> int | None:
        """Our link's fd on that hook (for :func:`link_info`), or None."""
        with self._lock:
            return self._links.get((ifindex, hook))

    # -- attach / detach ------------------------------------------------------------------------
    def attach(self, ifindex: int, hook: Hook, prog_fd: int) -> None:
        """Attach ``prog_fd`` to ``ifindex``'s ``hook``, or swap the program of our earlier link there
        (atomically, keeping its place); never a second link of ours on one hook."""
        with self._lock:
            if self._remove_leftovers and ifindex not in self._checked:
                self._remove_clsact_leftovers(ifindex)
            key = (ifindex, hook)
            old = self._links.get(key)
            try:
                if old is not None:
                    try:
                        tcx_link_update(old, prog_fd)
                        return
                    except OSError:  # e.g. ENOLINK: the interface was replaced; start afresh
                        del self._links[key]
                        with contextlib.suppress(OSError):
                            os.close(old)
                self._links[key] = tcx_link_create(prog_fd, ifindex, hook)
            except OSError as exc:
                raise TcError(
                    f"attaching {self.spec.name} via TCX to {_ifname(ifindex)} {hook}: {exc.strerror or exc}"
                ) from exc

    def _remove_clsact_leftovers(self, ifindex: int) -> None:
        try:
            before = self._clsact_count(ifindex)
            if before:
                self._clsact.detach(ifindex)
                log.info("removed %d leftover clsact filter(s) %s from %s", before, self.spec.name, _ifname(ifindex))
        except Exception as exc:  # best effort: a vanished link, a netlink hiccup
            log.debug("clsact leftovers on %s: %s", _ifname(ifindex), exc)
            return
        self._checked.add(ifindex)

    def _clsact_count(self, ifindex: int) -> int:
        ipr = self.iproute()
        n = 0
        for hook in _HOOKS:
            for prio, handle, _kind, name in list_filters(ipr, ifindex, hook):
                if (prio, handle, name) == (self.spec.prio, self.spec.handle, self.spec.name):
                    n += 1
        return n

    def _close_locked(self, ifindex: int) -> None:
        for hook in _HOOKS:
            fd = self._links.pop((ifindex, hook), None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def detach(self, ifindex: int) -> None:
        """Remove our links from one interface (both hooks)."""
        with self._lock:
            self._close_locked(ifindex)

    def forget(self, ifindex: int) -> None:
        """The interface vanished (or was renamed): close our links there; never raises. The kernel
        detached the links of a deleted interface already; only the fds were left."""
        with self._lock:
            self._close_locked(ifindex)
            self._checked.discard(ifindex)

    def detach_all(self) -> None:
        """Close every link this attacher made."""
        with self._lock:
            for fd in self._links.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._links.clear()
            self._checked.clear()

    def close(self) -> None:
        self.detach_all()
        self._clsact.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m retina_otel.bpf.tcx [IFNAME ...]``: the TCX programs of every (or the named) interface
    of this network namespace, in run order (bpftool 7.1's ``net show`` does not list TCX)."""
    import sys

    names = sys.argv[1:] if argv is None else argv
    links = [(i, n) for i, n in socket.if_nameindex() if not names or n in names]
    for ifindex, name in links:
        for hook in _HOOKS:
            for pos, e in enumerate(tcx_query(ifindex, hook)):
                print(f"{name}({ifindex}) tcx/{hook} #{pos}: prog {e.prog_id} {e.prog_name!r} link {e.link_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
