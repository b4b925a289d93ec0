"""The RTT table's vectorised join against a plain dictionary of the same flows."""

from __future__ import annotations

import numpy as np
import pytest

from retina_otel.receivers.tcplatency.receiver import FLOW_KEY_DTYPE, FLOW_VALUE_DTYPE
from retina_otel.receivers.tcplatency.table import KEY_BYTES, LatencyTable


def _flows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    keys = np.zeros(n, FLOW_KEY_DTYPE)
    raw = keys.view(np.uint8).reshape(n, -1)
    raw[:, :KEY_BYTES] = rng.integers(0, 256, (n, KEY_BYTES), dtype=np.uint8)
    raw[: n // 2, :10] = 0  # half of them IPv4-mapped, as the kernel writes IPv4 sockets
    raw[: n // 2, 10:12] = 0xFF
    raw[: n // 2, 16:26] = 0
    raw[: n // 2, 26:28] = 0xFF
    values = np.zeros(n, FLOW_VALUE_DTYPE)
    values["srtt_us"] = rng.integers(0, 5000, n)
    values["handshake_us"] = rng.integers(0, 5000, n)
    return keys, values


@pytest.mark.parametrize("size", [1, 2, 3, 17, 1000, 70_000])
def test_join_matches_a_dictionary(size: int) -> None:
    rng = np.random.default_rng(size)
    keys, values = _flows(size, rng)
    raw = keys.view(np.uint8).reshape(size, -1)[:, :KEY_BYTES]
    reference = {bytes(raw[i]): (int(values["srtt_us"][i]), int(values["handshake_us"][i])) for i in range(size)}
    table = LatencyTable(keys, values)
    # queries: flows of the table in their own and in the reverse orientation, and unknown flows
    n = 3000
    pick = rng.integers(0, size, n)
    src, dst = raw[pick, :16].copy(), raw[pick, 16:32].copy()
    sport, dport = raw[pick, 32:34].copy().view("<u2")[:, 0], raw[pick, 34:36].copy().view("<u2")[:, 0]
    reverse = rng.random(n) < 0.3
    unknown = rng.random(n) < 0.2
    src[reverse], dst[reverse] = dst[reverse], src[reverse].copy()
    sport[reverse], dport[reverse] = dport[reverse], sport[reverse].copy()
    src[unknown, 15] ^= 0x5A
    srtt, handshake, known = table.join(src.view("V16")[:, 0], dst.view("V16")[:, 0], sport, dport)
    for i in range(n):
        key = (
            src[i].tobytes()
            + dst[i].tobytes()
            + int(sport[i]).to_bytes(2, "little")
            + int(dport[i]).to_bytes(2, "little")
        )
        rkey = (
            dst[i].tobytes()
            + src[i].tobytes()
            + int(dport[i]).to_bytes(2, "little")
            + int(sport[i]).to_bytes(2, "little")
        )
        forward, backward = reference.get(key), reference.get(rkey)
        assert bool(known[i]) == (forward is not None or backward is not None)
        if forward is None and backward is None:
            assert (srtt[i], handshake[i]) == (0, 0)
            continue
        want_srtt = forward[0] if forward is not None and forward[0] > 0 else (backward or forward or (0, 0))[0]
        want_handshake = max((forward or (0, 0))[1], (backward or (0, 0))[1])
        assert (int(srtt[i]), int(handshake[i])) == (want_srtt, want_handshake)
    assert table.lookup(src[0].tobytes(), dst[0].tobytes(), int(sport[0]), int(dport[0])) == (
        (int(srtt[0]), int(handshake[0])) if known[0] else None
    )


def test_empty_table_joins_nothing() -> None:
    table = LatencyTable(np.zeros(0, FLOW_KEY_DTYPE), np.zeros(0, FLOW_VALUE_DTYPE))
    addresses = np.zeros(4, "V16")
    ports = np.zeros(4, np.uint16)
    srtt, handshake, known = table.join(addresses, addresses, ports, ports)
    assert not known.any() and not srtt.any() and not handshake.any() and len(table) == 0


def test_keys_that_differ_only_in_a_port_spread_over_the_directory() -> None:
    """Every connection between the same two pods: the same addresses, one port counting up (the client's
    sockets) or fixed (the server's). A join steps through a bucket per row, so no bucket may be long."""
    n = 65_536
    keys = np.zeros(n, FLOW_KEY_DTYPE)
    raw = keys.view(np.uint8).reshape(n, -1)
    raw[:, 10:12] = 0xFF
    raw[:, 12:16] = (198, 18, 1, 2)
    raw[:, 26:28] = 0xFF
    raw[:, 28:32] = (198, 18, 2, 2)
    ports = np.arange(n, dtype=np.uint32)
    client = ports < n // 2
    raw[:, 32:34] = np.where(client, 1024 + ports, 18082).astype("<u2").view(np.uint8).reshape(n, 2)
    raw[:, 34:36] = np.where(client, 18082, 1024 + ports).astype("<u2").view(np.uint8).reshape(n, 2)
    raw[~client, :16], raw[~client, 16:32] = raw[~client, 16:32].copy(), raw[~client, :16].copy()
    table = LatencyTable(keys, np.zeros(n, FLOW_VALUE_DTYPE))
    assert table.largest_bucket <= 16


def test_a_long_bucket_is_still_joined_exactly() -> None:
    """Keys whose hashes share their top bits (forced here: a directory of two buckets of ~150 keys)
    are found by the binary-search fallback."""
    rng = np.random.default_rng(7)
    keys, values = _flows(300, rng)
    table = LatencyTable(keys, values)
    table._shift = np.uint64(63)  # the directory by the top bit only
    half = int(np.searchsorted(table._hashes, np.uint64(1 << 63)))
    table._start = np.array([0, half, len(table)], np.int32)
    assert table.largest_bucket > 100
    raw = keys.view(np.uint8).reshape(300, -1)[:, :KEY_BYTES]
    src, dst = raw[:, :16].copy().view("V16")[:, 0], raw[:, 16:32].copy().view("V16")[:, 0]
    sport, dport = raw[:, 32:34].copy().view("<u2")[:, 0], raw[:, 34:36].copy().view("<u2")[:, 0]
    _srtt, handshake, known = table.join(src, dst, sport, dport)
    assert known.all()
    assert (handshake >= values["handshake_us"]).all()
