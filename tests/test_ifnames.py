"""network.interface.name on flow records: resolved per batch, cached, invalidated on link changes."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from retina_otel.flows import FlowBatch
from retina_otel.flowschema import interface_names, record_attributes
from retina_otel.ifnames import InterfaceNames
from retina_otel.sandbox import Sandbox

LO = socket.if_nametoindex("lo")
UNKNOWN = 0xFFFFFFF0


def test_names_resolve_a_whole_column_at_once() -> None:
    cache = InterfaceNames()
    try:
        column = np.array([LO, 0, UNKNOWN, LO], dtype=np.uint32)
        assert cache.names(column).tolist() == ["lo", "", "", "lo"]
        assert cache.name(LO) == "lo" and cache.name(0) == ""
        # One searchsorted per batch (its cost per row: benchmarks/bench_ifnames.py).
        big = np.resize(np.array([LO, UNKNOWN], np.uint32), 100_000)
        cache.names(big)  # an unknown index: at most one rebuild per min_refresh_interval
        assert cache._sock is not None  # other tests' links come and go on this host: stop listening,
        cache._sock.close()  # so only the unknown index could cause rebuilds below
        cache._sock = None
        builds = cache.builds
        for _ in range(10):
            names = cache.names(big)
        assert names[0] == "lo" and names[1] == ""
        assert cache.builds == builds  # unknown indices did not rebuild the table on every batch
    finally:
        cache.close()


@pytest.mark.kernel
def test_a_new_and_a_removed_link_are_seen_through_netlink() -> None:
    cache = InterfaceNames(min_refresh_interval=3600)  # unknown indices alone would not rebuild now
    try:
        assert cache.names(np.array([LO], np.uint32)).tolist() == ["lo"]
        builds = cache.builds
        with Sandbox() as other:
            pod = other.add_pod("ifn")
            index = pod.host_ifindex
            assert cache.name(index) == pod.host_veth
            assert cache.builds > builds
        assert cache.name(index) == ""  # gone: the deletion's message invalidated the table
    finally:
        cache.close()


def test_flow_records_carry_the_name_beside_the_index() -> None:
    batch = FlowBatch.empty(3)
    batch.records["ifindex"] = [LO, 0, UNKNOWN]
    names = interface_names(batch)
    assert names == ["lo", "", ""]
    attrs = [record_attributes(batch, i, names[i]) for i in range(3)]
    assert attrs[0]["network.interface.index"] == LO and attrs[0]["network.interface.name"] == "lo"
    assert "network.interface.name" not in attrs[1] and "network.interface.index" not in attrs[1]
    assert attrs[2]["network.interface.index"] == UNKNOWN and "network.interface.name" not in attrs[2]
    assert record_attributes(batch, 0)["network.interface.name"] == "lo"  # one row: looked up alone


def test_otlp_log_records_carry_the_name() -> None:
    from opentelemetry.sdk.resources import Resource

    from retina_otel.exporters.otlp.convert import flows_to_log_records

    batch = FlowBatch.empty(2)
    batch.records["ifindex"] = [LO, 0]
    records = flows_to_log_records(batch, Resource({}))
    assert records[0].log_record.attributes["network.interface.name"] == "lo"  # type: ignore[index]
    assert "network.interface.name" not in records[1].log_record.attributes  # type: ignore[operator]


@pytest.mark.kernel
def test_an_overflowing_netlink_socket_still_invalidates_instead_of_failing() -> None:
    """More link messages than the socket buffer holds make recv fail with ENOBUFS: that is a change too."""
    cache = InterfaceNames(min_refresh_interval=3600)
    try:
        cache.names(np.array([LO], np.uint32))
        assert cache._sock is not None
        cache._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum: ~2 KB
        with Sandbox() as other:
            pods = [other.add_pod(f"ifo{i}") for i in range(3)]  # dozens of link messages
            assert [cache.name(p.host_ifindex) for p in pods] == [p.host_veth for p in pods]
    finally:
        cache.close()
