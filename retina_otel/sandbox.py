"""Pods without Kubernetes: network namespaces on veth pairs, routed through the host like a CNI.

Used by the tests, the benchmarks and the demo. Each :class:`Sandbox` owns its namespaces and links
and removes them on :meth:`Sandbox.close` (also when used as a context manager and the body fails).

Topology (the Calico-style routed model): every pod has ``eth0`` with a /32 (and /128) address and a
default route via a link-local next hop on its host-side veth, which answers ARP by proxy. The host
routes each pod address to its veth, so pod-to-pod traffic crosses the host namespace and both
host-side veths, where the agent's TC programs sit. Addresses come only from 198.18.0.0/15 and
2001:db8::/32.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["Pod", "Sandbox", "SandboxError", "remove_stale"]

HOST_MAC = "ee:ee:ee:ee:ee:ee"
HOST_LINK_LOCAL6 = "fe80::ecee:eeff:feee:eeee"  # EUI-64 link-local of HOST_MAC
GATEWAY4 = "169.254.1.1"
NETNS_PREFIX = "rotel-"


class SandboxError(RuntimeError):
    pass


def _free_subnet(preferred: int) -> int:
    """A third octet of 198.18.X.0/24 that no route of the host uses yet (concurrent sandboxes)."""
    routes = _run(["ip", "-4", "route", "show"], check=False).stdout
    used = {int(line.split(".")[2]) for line in routes.splitlines() if line.startswith("198.18.")}
    for offset in range(250):
        candidate = (preferred - 1 + offset) % 250 + 1
        if candidate not in used:
            return candidate
    raise SandboxError("every 198.18.X.0/24 is in use by other sandboxes")


def _run(args: Sequence[str], *, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input_text)
    if check and proc.returncode != 0:
        raise SandboxError(f"{shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    """setns(2) into a network namespace (os.setns needs Python 3.12)."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


@dataclass
class Pod:
    """One network namespace with ``eth0``, its host-side veth, and its addresses."""

    name: str
    netns: str
    host_veth: str
    ipv4: str
    ipv6: str | None
    sandbox: Sandbox = field(repr=False)

    @property
    def host_ifindex(self) -> int:
        return int(Path(f"/sys/class/net/{self.host_veth}/ifindex").read_text())

    def exec_args(self, args: Sequence[str]) -> list[str]:
        """``args`` wrapped to run inside this pod's namespace."""
        return ["ip", "netns", "exec", self.netns, *args]

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.exec_args(args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SandboxError(f"in {self.name}: {shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """A background process in the pod; the sandbox kills it on close if it still runs."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.exec_args(args), **kwargs)  # type: ignore[call-overload]
        self.sandbox.kill_on_close(proc)
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[Pod]:
        """Run the body of a ``with`` block with this thread inside the pod's namespace (for sockets)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            _setns(target)
            yield self
        finally:
            _setns(own)
            os.close(own)
            os.close(target)


class Sandbox:
    """A set of pods that exist together; ``close()`` removes all of them."""

    def __init__(self, *, subnet_index: int | None = None) -> None:
        """No I/O here: :meth:`open` (``with Sandbox()``, or the first :meth:`add_pod`) picks the subnet and
        turns forwarding on."""
        self.token = secrets.token_hex(2)
        self._subnet_index = subnet_index
        self._third = 0  # 198.18.<third>.<n>: the third octet separates concurrent sandboxes (set by open)
        self.pods: list[Pod] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._saved_sysctls: dict[str, str] = {}
        self._opened = False
        self._closed = False

    def open(self) -> Sandbox:
        """Pick a free subnet and turn IP forwarding on (once)."""
        if not self._opened:
            self._opened = True
            index = self._subnet_index
            self._third = index if index is not None else _free_subnet(int(self.token, 16) % 250 + 1)
            self._enable_forwarding()
        return self

    def __enter__(self) -> Sandbox:
        return self.open()

    def kill_on_close(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill ``proc`` on :meth:`close` if it still runs."""
        self._processes.append(proc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _set_sysctl(self, key: str, value: str) -> None:
        path = _sysctl_path(key)
        current = path.read_text().strip()
        if current != value:
            self._saved_sysctls.setdefault(key, current)
            path.write_text(value)

    def _enable_forwarding(self) -> None:
        self._set_sysctl("net.ipv4.ip_forward", "1")
        self._set_sysctl("net.ipv6.conf.all.forwarding", "1")

    def add_pod(self, name: str, *, ipv6: bool = True, veth_prefix: str = "ro") -> Pod:
        """A pod routed through the host. Its host-side veth is ``<veth_prefix><token>p<n>``: the default
        ``ro`` matches packetparser's default interface patterns; another prefix keeps the pod out of them."""
        self.open()
        index = len(self.pods) + 1
        if index > 250:
            raise SandboxError("a sandbox holds at most 250 pods")
        netns = f"{NETNS_PREFIX}{self.token}-{name}"
        host_veth = f"{veth_prefix}{self.token}p{index}"
        ipv4 = f"198.18.{self._third}.{index}"
        ipv6_addr = f"2001:db8:{self._third:x}::{index:x}" if ipv6 else None
        _run(["ip", "netns", "add", netns])
        pod = Pod(name, netns, host_veth, ipv4, ipv6_addr, self)
        self.pods.append(pod)  # registered before the links, so close() removes a half-built pod too
        _run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "link", "set", host_veth, "address", HOST_MAC])
        _run(["sysctl", "-qw", f"net.ipv4.conf.{host_veth}.proxy_arp=1"])
        # Proxy ARP answers after a random delay of up to 0.8 s by default: none here.
        _run(["sysctl", "-qw", f"net.ipv4.neigh.{host_veth}.proxy_delay=0"])
        _run(["sysctl", "-qw", f"net.ipv6.conf.{host_veth}.accept_dad=0"])
        _run(["ip", "link", "set", host_veth, "up"])
        _run(["ip", "route", "add", f"{ipv4}/32", "dev", host_veth])
        inside = ["ip", "netns", "exec", netns]
        _run([*inside, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        _run([*inside, "ip", "link", "set", "lo", "up"])
        _run([*inside, "ip", "addr", "add", f"{ipv4}/32", "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])
        _run([*inside, "ip", "route", "add", GATEWAY4, "dev", "eth0", "scope", "link"])
        _run([*inside, "ip", "route", "add", "default", "via", GATEWAY4, "dev", "eth0"])
        if ipv6_addr:
            _run([*inside, "ip", "-6", "addr", "add", f"{ipv6_addr}/128", "dev", "eth0", "nodad"])
            _run([*inside, "ip", "-6", "route", "add", "default", "via", HOST_LINK_LOCAL6, "dev", "eth0"])
            _run(["ip", "-6", "route", "add", f"{ipv6_addr}/128", "dev", host_veth])
        return pod

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for pod in self.pods:
            _run(["ip", "link", "del", pod.host_veth], check=False)
            _run(["ip", "netns", "del", pod.netns], check=False)
        if _other_sandboxes_exist():
            # Another sandbox (maybe another process) still routes through the host: turning forwarding
            # off under it would break its traffic. So forwarding may stay on once all have closed.
            return
        for key, value in self._saved_sysctls.items():
            with contextlib.suppress(OSError):
                _sysctl_path(key).write_text(value)


def _other_sandboxes_exist() -> bool:
    """Whether namespaces of any (other, since ours are gone) sandbox are still present."""
    listing = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    return any(line.split(" ", 1)[0].startswith(NETNS_PREFIX) for line in listing)


def remove_stale() -> int:
    """Remove namespaces and links left by sandboxes of processes that died; returns how many."""
    removed = 0
    for ns in _run(["ip", "netns", "list"], check=False).stdout.split("\n"):
        name = ns.split(" ", 1)[0]
        if name.startswith(NETNS_PREFIX):
            _run(["ip", "netns", "del", name], check=False)
            removed += 1
    return removed

