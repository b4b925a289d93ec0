"""Tail-call chains between components' BPF programs, without the components importing each other.

A component that runs TC programs on the interfaces (packetparser) can hand selected packets on to another
component's programs by tail call through a program array indexed by observation point. It offers the
array as a :class:`ProgramChain` extension (packetparser: ``"dns_chain"``); the other component plugs its
program fds in by observation-point name (``"from_endpoint"``, ``"to_endpoint"``, ``"from_network"``,
``"to_network"``).

:class:`PendingChain` is the implementation the offering side uses: plugs made before the offering side
has loaded its BPF object are kept and written into the program array when it binds one (so the agent's
start order does not matter), and unbinding (the offering side shutting down) forgets the array while
keeping the plugs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

__all__ = ["OBSERVATION_POINTS", "PendingChain", "ProgramChain", "check_points"]

OBSERVATION_POINTS = ("from_endpoint", "to_endpoint", "from_network", "to_network")
"""Observation point names in the order of their numbers (1-based): program-array index = number - 1."""


@runtime_checkable
class ProgramChain(Protocol):
    """A program array another component's programs tail-call into, one slot per observation point."""

    def plug(self, programs: Mapping[str, int]) -> None:
        """Put these program fds (observation point name -> fd) in the chain, replacing any plugged before.

        Accepted before the offering component has loaded: applied when it does. The fds must stay open
        until :meth:`unplug`."""

    def unplug(self) -> None:
        """Take every plugged program out of the chain (idempotent)."""

    def available(self) -> bool:
        """True while the offering component's programs are loaded and attached, so plugged programs run."""


def check_points(programs: Mapping[str, int]) -> None:
    """Raise ValueError naming any key of ``programs`` that is not an observation point."""
    unknown = set(programs) - set(OBSERVATION_POINTS)
    if unknown:
        raise ValueError(f"unknown observation points {sorted(unknown)}; expected {OBSERVATION_POINTS}")


SlotWriter = Callable[[int, int | None], None]
"""Writes one program-array slot: ``(index, fd)`` sets it, ``(index, None)`` clears it."""


class PendingChain:
    """:class:`ProgramChain` whose program array comes and goes with the offering component."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._programs: dict[str, int] = {}
        self._writer: SlotWriter | None = None

    # -- the plugging side -------------------------------------------------------------------------
    def plug(self, programs: Mapping[str, int]) -> None:
        check_points(programs)
        with self._lock:
            self._programs = dict(programs)
            if self._writer is not None:
                self._write(self._writer)

    def unplug(self) -> None:
        with self._lock:
            self._programs = {}
            if self._writer is not None:
                self._write(self._writer)

    def available(self) -> bool:
        with self._lock:
            return self._writer is not None

    def plugged(self) -> dict[str, int]:
        with self._lock:
            return dict(self._programs)

    # -- the offering side ---------------------------------------------------------------------------
    def bind(self, writer: SlotWriter) -> None:
        """The offering component has loaded and attached its programs: write the plugs now and on change."""
        with self._lock:
            self._writer = writer
            self._write(writer)

    def unbind(self) -> None:
        """The offering component is shutting down: stop writing (its array goes with its BPF object)."""
        with self._lock:
            self._writer = None

    def _write(self, writer: SlotWriter) -> None:
        for index, point in enumerate(OBSERVATION_POINTS):
            writer(index, self._programs.get(point))
