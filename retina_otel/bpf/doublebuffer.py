"""Exact draining of a map the kernel counts into: two maps, switched through a map-in-map.

Reading a map in batches and deleting (or zeroing) what was read leaves a window in which another CPU
can add to an entry after it was copied: that increment would be lost. So a program that counts keeps
two maps, ``<name>0`` and ``<name>1``, and reaches the one to write through a one-slot
``BPF_MAP_TYPE_ARRAY_OF_MAPS`` named ``<name>_active``::

    BPF_HASH(drop_flows0, ...);
    BPF_HASH(drop_flows1, ...);
    BPF_ARRAY_OF_MAPS(drop_flows_active, "drop_flows0", 1);
    ...
    void *flows = drop_flows_active.lookup(&zero);   // NULL only before user space first set it:
    v = flows ? bpf_map_lookup_elem(flows, &key)     // then use <name>0, as the slot will say
              : drop_flows0.lookup(&key);

:meth:`DoubleBuffer.swap` points the slot at the other map and returns the one written until then,
which no program writes any more when ``swap`` returns. The guarantee is the kernel's, not a timing:

* ``BPF_MAP_UPDATE_ELEM`` on an ``ARRAY_OF_MAPS`` (``map_update_elem`` in ``kernel/bpf/syscall.c``)
  stores the new inner map with ``xchg`` (``bpf_fd_array_map_update_elem`` in
  ``kernel/bpf/arraymap.c``) and then, on success, calls ``maybe_wait_bpf_programs(map)``, which for
  ``BPF_MAP_TYPE_HASH_OF_MAPS``/``ARRAY_OF_MAPS`` is ``synchronize_rcu()``: "Wait for any running
  non-sleepable BPF programs to complete so that userspace, when we return to it, knows that all
  non-sleepable programs that could be running use the new map value" (the kernel's comment; the wait
  came with v4.20, the comment and the wait-only-on-success in this form with v6.8, unchanged in 6.18).
* Our programs are not sleepable: tracepoint, raw-tracepoint and TC programs run inside an RCU
  read-side critical section (``rcu_read_lock()`` in the trace and TC run paths; BH-disabled TC runs
  count as one since v4.20's consolidated RCU), which ``synchronize_rcu()`` waits for on every CPU.
* ``xchg`` is a full barrier, so what user space wrote to a map before the swap (the zeroed half of
  packetparser's flow cache) is visible to every program that reads the new slot value.

A swap therefore takes one RCU grace period (~8 ms measured on the 2-CPU test VM, against ~7 us for an
update of a plain array; it sleeps, it does not spin).

Considered and not taken: flipping a generation number in a plain array and then forcing a grace
period with an update of some unrelated map-in-map (correct as well, since ``synchronize_rcu()`` waits
for every reader on every CPU, but it leans on that side effect, and what user space zeroed before the
flip would need a barrier of its own); ``membarrier(2)`` (its guarantee is about the memory order of
user-space threads; that ``MEMBARRIER_CMD_GLOBAL`` waits through ``synchronize_rcu()`` is again a side
effect); ``BPF_PROG_TEST_RUN`` of a program that does the flip (an atomic
exchange in the kernel, but no wait for programs already running).
"""

from __future__ import annotations

import ctypes as ct
from typing import Any

__all__ = ["DoubleBuffer"]


class DoubleBuffer:
    """The pair ``<name>0``/``<name>1`` of bcc object ``bpf`` and its switch ``<name>_active``.

    Creating it publishes ``<name>0`` (the map programs fall back to while the slot is empty), so the
    first :meth:`swap` returns ``<name>0``. One user-space owner: callers serialise :meth:`swap`.
    """

    def __init__(self, bpf: Any, name: str) -> None:
        self._bpf = bpf
        self._names = (f"{name}0", f"{name}1")
        self._switch = bpf[f"{name}_active"]
        self._active = 0
        self._publish(0)

    @property
    def active(self) -> str:
        """The map the programs write now."""
        return self._names[self._active]

    def swap(self) -> str:
        """Point the programs at the other map; return the name of the one they wrote until now. When
        this returns, no program is still writing it (see the module docstring)."""
        idle = self._active
        self._publish(1 - idle)
        return self._names[idle]

    def _publish(self, index: int) -> None:
        fd = self._bpf[self._names[index]].map_fd
        self._switch[ct.c_int(0)] = ct.c_int(fd)  # BPF_MAP_UPDATE_ELEM: xchg, then synchronize_rcu()
        self._active = index
