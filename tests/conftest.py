"""Shared fixtures. Kernel tests run as root; under CI=true a missing privilege or tool fails the test
(tests/support/requirements.py), locally it is skipped with the reason in the summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import wait_for
from tests.support.requirements import kernel_problems, unavailable


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") and kernel_problems():
        unavailable(f"kernel test: {'; '.join(kernel_problems())}")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh set of network-namespace pods, removed after the test whatever happens."""
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def client_server(sandbox: Sandbox) -> Iterator[tuple[Pod, Pod]]:
    """Two pods, ``client`` and ``server``, the server reachable from the client over IPv4 and IPv6."""
    client, server = sandbox.add_pod("client"), sandbox.add_pod("server")
    for address in (server.ipv4, server.ipv6):
        assert address
        assert wait_for(lambda a=address: client.run(["ping", "-c1", "-W1", a], check=False).returncode == 0)
    yield client, server
