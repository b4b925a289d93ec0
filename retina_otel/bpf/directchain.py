"""A :class:`~retina_otel.bpf.chain.ProgramChain` that attaches the plugged programs to the interfaces itself.

packetparser attaches its entry programs through it; a component whose TC programs normally ride on
packetparser's hooks (the dns receiver's, by tail call after packetparser has counted a packet) uses it
for hooks of its own when the agent has no packetparser. The places: the host side of pod veths
(ingress = ``from_endpoint``, egress = ``to_endpoint``) and the host interface (ingress =
``from_network``, egress = ``to_network``), kept current as links come and go. A TC program costs every
packet on those hooks the kernel's price of a hook (see docs/cost.md), far less than a packet socket,
which clones every transmitted packet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from retina_otel.bpf.chain import check_points
from retina_otel.bpf.links import LinkWatcher, list_links, select_links
from retina_otel.bpf.tc import Attacher, AttachMode, FilterSpec, Hook, TcError, make_attacher

__all__ = ["DirectChain"]

log = logging.getLogger(__name__)


class DirectChain:
    """Attach plugged programs (observation point -> fd) where packetparser would observe; see module doc.

    ``plug`` attaches at once and starts a link watcher; ``unplug`` detaches everything it attached and
    stops the watcher. With ``strict`` an interface refusing a program at ``plug`` raises
    :class:`~retina_otel.bpf.tc.TcError`; otherwise, and always for interfaces that appear later, it is
    logged and skipped.
    """

    def __init__(
        self,
        spec: FilterSpec,
        patterns: Sequence[str],
        host_interface: str,
        *,
        attach_mode: AttachMode = "auto",
        rescan_interval: float = 30.0,
        name: str = "direct-chain",
        strict: bool = True,
    ) -> None:
        self._spec = spec
        self._patterns = tuple(patterns)
        self._host_interface = host_interface
        self._attach_mode: AttachMode = attach_mode
        self._rescan_interval = rescan_interval
        self._name = name
        self._strict = strict
        self._lock = threading.RLock()
        self._programs: dict[str, int] = {}
        self._attacher: Attacher | None = None
        self._watcher: LinkWatcher | None = None
        self._attached: dict[int, str] = {}

    def plug(self, programs: Mapping[str, int]) -> None:
        check_points(programs)
        self.unplug()
        with self._lock:
            self._programs = dict(programs)
            self._attacher = make_attacher(self._spec, self._attach_mode)
            try:
                self._rescan(raise_errors=self._strict)
            except BaseException:
                self._close_locked()
                raise
        watcher = LinkWatcher(self.rescan, self._rescan_interval, name=self._name)
        watcher.start()
        self._watcher = watcher

    def unplug(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        with self._lock:
            self._close_locked()

    def available(self) -> bool:
        with self._lock:
            return self._attacher is not None

    def attached_interfaces(self) -> dict[int, str]:
        with self._lock:
            return dict(self._attached)

    @property
    def link_overruns(self) -> int:
        """Times the link watcher lost netlink messages (ENOBUFS) since :meth:`plug` (each one rescanned)."""
        watcher = self._watcher
        return watcher.overruns if watcher is not None else 0

    def rescan(self) -> None:
        """Attach to matching interfaces not attached yet; forget vanished ones."""
        with self._lock:
            self._rescan(raise_errors=False)

    def _rescan(self, raise_errors: bool) -> None:
        attacher = self._attacher
        if attacher is None:
            return
        ipr = attacher.iproute()
        links = list_links(ipr)
        host, pods = select_links(ipr, self._patterns, self._host_interface)
        for idx in list(self._attached):
            if links.get(idx) != self._attached[idx]:
                attacher.forget(idx)
                del self._attached[idx]
        for idx, name in {**host, **pods}.items():
            if idx in self._attached:
                continue
            points = ("from_network", "to_network") if idx in host else ("from_endpoint", "to_endpoint")
            try:
                hooks: tuple[Hook, Hook] = ("ingress", "egress")
                for hook, point in zip(hooks, points, strict=True):
                    fd = self._programs.get(point)
                    if fd is not None:
                        attacher.attach(idx, hook, fd)
                self._attached[idx] = name
            except TcError as exc:
                if raise_errors:
                    raise
                if idx in list_links(ipr):  # a vanished link is not worth a warning
                    log.warning("%s: %s", self._name, exc)

    def _close_locked(self) -> None:
        attacher, self._attacher = self._attacher, None
        self._attached.clear()
        self._programs = {}
        if attacher is not None:
            attacher.close()
