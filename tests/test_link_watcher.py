"""The link watcher when netlink drops link messages (ENOBUFS): counted, and a rescan at once."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from retina_otel.bpf.links import LinkWatcher
from retina_otel.sandbox import Sandbox

pytestmark = pytest.mark.kernel


def test_lost_link_messages_are_counted_and_rescanned(sandbox: Sandbox) -> None:
    """The watcher listens in a pod's namespace; while its first rescan is held, 250 veth pairs come
    and go there, more link messages than the socket's buffer holds: the kernel reports ENOBUFS."""
    pod = sandbox.add_pod("a")
    calls: list[float] = []
    hold = threading.Event()

    def on_change() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            hold.wait(30)

    watcher = LinkWatcher(on_change, rescan_interval=3600, name="test-links")
    with pod.entered():
        watcher.start()  # its socket is in the pod's namespace
    try:
        pod.run(["ip", "link", "add", "rotel_d0", "type", "veth", "peer", "name", "rotel_e0"])
        deadline = time.monotonic() + 10
        while not calls:
            assert time.monotonic() < deadline, "no rescan for a new link"
            time.sleep(0.01)
        pairs = (f"link add rotel_b{i} type veth peer name rotel_c{i}\nlink del rotel_b{i}\n" for i in range(250))
        subprocess.run(pod.exec_args(["ip", "-batch", "-"]), input="".join(pairs), text=True, check=True)
        assert watcher.overruns == 0  # not read yet: the thread is in the held rescan
        released = time.monotonic()
        hold.set()
        while watcher.overruns == 0 or len(calls) < 2:
            assert time.monotonic() - released < 10, (watcher.overruns, len(calls))
            time.sleep(0.01)
        assert watcher.overruns >= 1
        assert calls[1] - released < 5  # at once, not at the next safety-net rescan (an hour)
    finally:
        hold.set()
        watcher.stop()
