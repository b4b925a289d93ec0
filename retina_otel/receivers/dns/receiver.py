"""The dns receiver: a packet source (TC chain or packet socket), a reader thread, per-interval publishing."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time

from retina_otel.bpf.chain import ProgramChain
from retina_otel.bpf.directchain import DirectChain
from retina_otel.bpf.tc import FilterSpec, TcError
from retina_otel.component import CreateSettings, FlowConsumer, Host
from retina_otel.extension_keys import DNS_CHAIN
from retina_otel.flows import FlowBatch, ip_to_bytes
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import Worker
from retina_otel.receivers.dns.config import DnsConfig
from retina_otel.receivers.dns.source import PacketSource
from retina_otel.receivers.dns.tracker import DnsTracker
from retina_otel.signals import NopConsumer
from retina_otel.wakeup import Wakeup

__all__ = ["CHAIN_EXTENSION", "LATENCY_BOUNDS_MS", "DnsReceiver", "local_addresses"]

log = logging.getLogger(__name__)

LATENCY_BOUNDS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
CHAIN_EXTENSION = DNS_CHAIN.name
_MAX_WAIT_SECONDS = 5.0  # the reader re-checks its state at least this often
"""The extension packetparser offers for the TC source (a :class:`~retina_otel.bpf.chain.ProgramChain`)."""


def local_addresses() -> set[bytes]:
    """This namespace's own addresses, in the 16-byte flow form."""
    from pyroute2 import IPRoute

    found: set[bytes] = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if address:
                with contextlib.suppress(ValueError):
                    found.add(ip_to_bytes(address.split("%")[0]))
    return found


DIRECT_FILTER_SPEC = FilterSpec(name="retina_otel_dns", prio=0x1E8, handle=0x1E8A)
"""How the receiver's own TC programs are attached (``tc`` without packetparser): next to packetparser's."""


def choose_chain(config: DnsConfig, host: Host, component_id: str = "dns") -> ProgramChain | None:
    """The chain the TC source plugs into: packetparser's DNS chain when the agent has one, else the
    receiver's own hooks on the same interfaces; None for ``source: socket``."""
    if config.source == "socket":
        return None
    chain = host.get_extension(DNS_CHAIN)
    if chain is not None:
        return chain
    return DirectChain(DIRECT_FILTER_SPEC, config.pod_interfaces, config.host_interface, name=f"{component_id}-links")


class DnsReceiver:
    """See the package docstring. ``flush()`` reads what the source holds and publishes now."""

    def __init__(self, settings: CreateSettings, config: DnsConfig, next_consumer: FlowConsumer | None) -> None:
        self.settings = settings
        self.config = config
        self._next: FlowConsumer = next_consumer if next_consumer is not None else NopConsumer()
        self._host: Host | None = None
        self._source: PacketSource | None = None
        self._chain: ProgramChain | None = None
        self._chain_warned = False
        self._tracker = DnsTracker(
            query_timeout=config.query_timeout,
            max_pending=config.max_pending,
            max_records=config.max_records,
            receiver=settings.id,
        )
        self._lock = threading.Lock()  # source and tracker
        self._reader = Worker(f"{settings.id}-reader")
        self._wake: Wakeup | None = None  # shutdown() wakes the reader's select
        self._requests: Family | None = None
        self._responses: Family | None = None
        self._latency: Family | None = None
        self.packets_read = 0

    @property
    def source(self) -> str:
        """``"tc"`` or ``"socket"`` once started, else ``""``."""
        return self._source.name if self._source is not None else ""

    @property
    def chain(self) -> ProgramChain | None:
        """The program chain the TC source is plugged into (None with the socket source)."""
        return self._chain

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        self._host = host
        self._requests = host.metrics.counter("networkobservability_dns_request_count", "DNS requests")
        self._responses = host.metrics.counter("networkobservability_dns_response_count", "DNS responses")
        self._latency = host.metrics.histogram(
            "networkobservability_dns_response_latency_ms",
            "Time from a DNS query to its response, matched on id and endpoints",
            (),
            LATENCY_BOUNDS_MS,
            unit="ms",
        )
        indexes = [socket.if_nametoindex(name) for name in self.config.interfaces]
        chain = choose_chain(self.config, host, self.settings.id)
        source: PacketSource | None = None
        if chain is not None:
            from retina_otel.receivers.dns.tc_source import TcSource

            own = isinstance(chain, DirectChain)
            try:
                source = TcSource(chain, indexes)
            except (TcError, OSError) as exc:
                if self.config.source == "tc" or not own:
                    raise
                log.warning("dns: cannot attach TC programs (%s); taking DNS from a packet socket instead", exc)
            else:
                self._chain = chain
                if own:
                    log.info("dns: source tc (own programs on pod veths and the host interface)")
                else:
                    log.info(
                        "dns: source tc (packetparser's DNS chain, %s)",
                        "active" if chain.available() else "applied when packetparser has loaded",
                    )
        if source is None:
            from retina_otel.receivers.dns.socket_source import SocketSource

            source = SocketSource(self.config, indexes)
            log.info("dns: source socket (%s)", "configured" if self.config.source == "socket" else "fallback")
        try:
            source.set_local(local_addresses())
        except BaseException:
            source.close()
            raise
        self._source = source
        self._wake = Wakeup()
        self._reader.start(self._run)

    def shutdown(self) -> None:
        self._reader.signal()
        if self._wake is not None:
            self._wake.wake()
        self._reader.stop(timeout=10)
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        with self._lock:
            source, self._source = self._source, None
            if source is not None:
                source.close()

    # -- reading ----------------------------------------------------------------------------------
    def _run(self) -> None:
        next_flush = time.monotonic() + self.config.interval
        while not self._reader.stopping:
            source = self._source
            if source is None:
                return
            try:
                # Sleep until DNS arrives, the next flush or shutdown (the wake pipe): an idle node costs
                # this thread nothing.
                wake = [self._wake.fileno()] if self._wake is not None else []
                timeout = min(max(0.0, next_flush - time.monotonic()), _MAX_WAIT_SECONDS)
                ready, _, _ = select.select(source.fds() + wake, [], [], timeout)
                if self._reader.stopping:
                    return
                if set(ready) - set(wake):
                    with self._lock:
                        self.packets_read += source.read(self._tracker)
                if time.monotonic() >= next_flush:
                    next_flush += self.config.interval
                    self.flush()
            except Exception:
                if self._reader.stopping:
                    return
                log.exception("dns: reader failed")
                time.sleep(0.5)

    # -- publishing -------------------------------------------------------------------------------
    def flush(self) -> FlowBatch | None:
        """Read everything queued in the source, then publish counts, latencies, losses and records."""
        with self._lock:
            source = self._source
            if self._host is None or source is None:
                return None
            while n := source.read(self._tracker):
                self.packets_read += n
            out = self._tracker.take(time.time_ns())
            for reason, count in source.take_lost().items():
                out.lost[reason] += count
            with contextlib.suppress(Exception):
                source.set_local(local_addresses())
            self._check_chain()
            host = self._host
            assert self._requests is not None and self._responses is not None and self._latency is not None
            if out.requests:
                self._requests.add((), out.requests)
            if out.responses:
                self._responses.add((), out.responses)
            if out.latencies_ms:
                self._latency.observe_many((), out.latencies_ms)
            for reason, count in out.lost.items():
                host.count_lost("dns", reason, count)
            batch = out.batch
            if batch is not None:
                batch.attributes["k8s.node.name"] = host.node_name
        if batch is not None:
            self._next.consume_flows(batch)
        return batch

    def _check_chain(self) -> None:
        """Warn (once per outage) while the TC source's chain is not running: packetparser not started
        yet, failed to start, or shut down."""
        if self._chain is None:
            return
        if self._chain.available():
            self._chain_warned = False
        elif not self._chain_warned:
            self._chain_warned = True
            log.warning("dns: packetparser's DNS chain is not running (packetparser not started or failed)")
