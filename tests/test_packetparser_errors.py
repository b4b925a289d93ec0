"""A failure that repeats on every turn of packetparser's reader (a broken next consumer) is logged a
few times and then rarely, with the count, not on every turn."""

from __future__ import annotations

import logging
import time

import pytest

from retina_otel.component import CreateSettings
from retina_otel.errorlog import RepeatedError
from retina_otel.flows import FlowBatch
from retina_otel.receivers.packetparser import FACTORY, PacketParserConfig
from retina_otel.receivers.packetparser.receiver import PacketParserReceiver
from retina_otel.sandbox import Sandbox
from retina_otel.testing import TestHost


def test_repeated_error_logs_first_then_every_nth(caplog: pytest.LogCaptureFixture) -> None:
    errors = RepeatedError(logging.getLogger("test.errorlog"), "it failed", first=3, every=10)
    with caplog.at_level(logging.ERROR, logger="test.errorlog"):
        for _ in range(25):
            try:
                raise OSError("broken")
            except OSError:
                errors.exception()
    assert [r.getMessage() for r in caplog.records] == [f"it failed ({n} so far)" for n in (1, 2, 3, 10, 20)]
    assert all(r.exc_info for r in caplog.records) and errors.count == 25


class _Broken:
    def __init__(self) -> None:
        self.calls = 0

    def consume_flows(self, batch: FlowBatch) -> None:
        self.calls += 1
        raise ConnectionError("exporter down")


@pytest.mark.kernel
def test_broken_consumer_does_not_flood_the_log(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    consumer = _Broken()
    cfg = PacketParserConfig(interfaces=(f"ro{sandbox.token}*",), host_interface="none", aggregation="low",
                             batch_interval=0.05)  # fmt: skip
    receiver = FACTORY.create(CreateSettings("packetparser", "receiver"), cfg, consumer)
    assert isinstance(receiver, PacketParserReceiver)
    try:
        with caplog.at_level(logging.ERROR, logger="retina_otel.receivers.packetparser.receiver"):
            receiver.start(TestHost())
            pinger = a.popen(["ping", "-i", "0.02", "-c", "150", "-q", b.ipv4])
            deadline = time.monotonic() + 20
            while consumer.calls < 12:
                assert time.monotonic() < deadline, consumer.calls
                time.sleep(0.05)
            pinger.wait(timeout=20)
    finally:
        receiver.shutdown()
    logged = [r.getMessage() for r in caplog.records if "next consumer failed" in r.getMessage()]
    assert consumer.calls >= 12
    assert logged == [f"packetparser: next consumer failed ({n} so far)" for n in range(1, 6)]
