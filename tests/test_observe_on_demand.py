"""Event records on demand, end to end: the real agent, real connections, a real Observer API client.

The agent runs packetparser on two sandbox pods' veths with only the observer exporter in its logs
pipeline (``event_records: while_following``, the default): while nobody follows live flows a TCP
connection reaches the observer's ring as records written on FIN (its SYN rides on one of them); while
a client follows, Retina's rule writes the SYN's own record; when the client leaves, the close rule is
back. Every connection's packets are counted the same way under both.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from retina_otel.config import parse_config
from retina_otel.flows import TcpFlag
from retina_otel.hubble import observer_pb2
from retina_otel.hubble.api import ObserverStub
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.test_e2e_metrics import pings, tcp_exchange

pytestmark = pytest.mark.kernel


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Agent, Pod, Pod, Path]]:
    with Sandbox() as sandbox:
        client = sandbox.add_pod("client", veth_prefix="od")
        server = sandbox.add_pod("server", veth_prefix="od")
        assert wait_for(lambda: pings(client, server.ipv4))
        socket_path = tmp_path / "observer.sock"
        config = {
            "receivers": {
                "packetparser": {
                    "interfaces": [f"od{sandbox.token}*"],
                    "host_interface": "none",
                    "report_interval": 300,
                    "batch_interval": 0.1,
                }
            },
            "exporters": {"observer": {"socket": f"unix://{socket_path}"}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {"logs": {"receivers": ["packetparser"], "exporters": ["observer"]}},
            },
        }
        agent = Agent(parse_config(config, env={}))
        assert agent.events_on_demand == {"packetparser"}
        agent.start()
        try:
            pp = _component(agent, "packetparser")
            veths = {client.host_veth, server.host_veth}
            assert wait_for(lambda: veths <= set(pp.attached_interfaces().values()), timeout=20)
            yield agent, client, server, socket_path
        finally:
            agent.shutdown()


def _component(agent: Agent, name: str) -> Any:
    return next(s.component for s in agent.states() if s.id == name)


def _records_of_port(agent: Agent, port: int) -> np.ndarray:
    """Every record in the observer's ring of the connection to ``port`` (both directions, both veths),
    after packetparser has reported what its kernel table still held."""
    _component(agent, "packetparser").flush()
    ring = _component(agent, "observer").ring
    _missed, view = ring.read(ring.oldest())
    records = view.records
    return records[(records["dst_port"] == port) | (records["src_port"] == port)]


def _syn_alone(records: np.ndarray) -> int:
    """Records that carry a SYN and no FIN: written for the SYN itself (Retina's rule), never on close."""
    flags = records["tcp_flags"]
    return int(np.count_nonzero((flags[:, TcpFlag.SYN] > 0) & (flags[:, TcpFlag.FIN] == 0)))


def _status(agent: Agent) -> str:
    return next(s.detail for s in agent.states() if s.id == "packetparser")


def test_a_following_client_brings_event_records_and_leaving_takes_them_away(
    running: tuple[Agent, Pod, Pod, Path],
) -> None:
    agent, client, server, socket_path = running
    assert "report rule close" in _status(agent)
    tcp_exchange(client, server, 7701, send=500, reply=700)
    before = _records_of_port(agent, 7701)
    assert len(before) and _syn_alone(before) == 0  # nobody follows: records on FIN, the SYN rides on them

    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = ObserverStub(channel).GetFlows(observer_pb2.GetFlowsRequest(follow=True))
        seen: list[observer_pb2.GetFlowsResponse] = []

        def read_until_cancelled() -> None:
            with contextlib.suppress(grpc.RpcError):
                for response in call:
                    seen.append(response)

        follower = threading.Thread(target=read_until_cancelled, daemon=True)
        follower.start()
        assert wait_for(lambda: agent.event_demand.wanted, timeout=10)
        assert "report rule events" in _status(agent)
        tcp_exchange(client, server, 7702, send=500, reply=700)
        during = _records_of_port(agent, 7702)
        # Retina's rule: the SYN's own record at each of the two veths, and the SYN-ACK's.
        assert _syn_alone(during) >= 2, during["tcp_flags"]
        assert wait_for(lambda: any(r.flow.l4.TCP.destination_port == 7702 for r in seen), timeout=10)
        call.cancel()
        follower.join(timeout=10)

    assert wait_for(lambda: not agent.event_demand.wanted, timeout=10)
    assert "report rule close" in _status(agent)
    tcp_exchange(client, server, 7703, send=500, reply=700)
    after = _records_of_port(agent, 7703)
    assert len(after) and _syn_alone(after) == 0
    # Every connection's flags counted whatever the rule: one SYN, one SYN-ACK and two FINs, at both veths.
    for records in (before, during, after):
        flags = records["tcp_flags"].sum(axis=0)
        assert (flags[TcpFlag.SYN], flags[TcpFlag.SYNACK], flags[TcpFlag.FIN]) == (2, 2, 4), flags
