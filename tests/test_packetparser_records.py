"""packetparser's records: the kernel's flag-counter columns (the F_* bits of pp_common.h) are TcpFlag's
columns, its observation points and the enum values it writes into reports are the Python enums', and a
report's bytes reach a flow row exactly (the ring reader, the receiver's pending rows, the batches it emits).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from retina_otel.component import CreateSettings
from retina_otel.flows import Direction, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict
from retina_otel.metrics.store import MetricStore
from retina_otel.receivers.packetparser import PacketParserConfig, records
from retina_otel.receivers.packetparser.ctmetrics import ConntrackMetrics
from retina_otel.receivers.packetparser.receiver import PacketParserReceiver
from retina_otel.receivers.packetparser.ringmem import RingMemory
from retina_otel.testing import CollectingConsumer

SOURCE = Path(records.__file__).with_name("pp_common.h")


def test_kernel_flag_bits_are_tcpflag_columns() -> None:
    text = SOURCE.read_text()
    bits = {name: int(bit) for name, bit in re.findall(r"^#define F_([A-Z]+) \(1 << (\d+)\)$", text, re.M)}
    n_flags = int(re.search(r"^#define N_FLAGS (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert len(bits) == n_flags == records.N_FLAGS == len(TcpFlag)
    assert bits == {flag.name: flag.value for flag in TcpFlag}
    assert tuple(sorted(bits, key=bits.__getitem__)) == records.KERNEL_FLAG_COLUMNS


def test_kernel_observation_points_are_the_enums() -> None:
    text = SOURCE.read_text()
    points = {name: int(v) for name, v in re.findall(r"^#define OBS_([A-Z_]+) (\d+)$", text, re.M)}
    assert points == {p.name: p.value for p in ObservationPoint if p.name not in ("UNKNOWN", "STACK")}


def test_report_cflags_are_the_enums_values() -> None:
    flags = dict(f.removeprefix("-D").split("=") for f in records.report_cflags())
    assert flags == {
        "DIR_OF_OBS_1": str(Direction.EGRESS.value),  # FROM_ENDPOINT: leaving the pod
        "DIR_OF_OBS_2": str(Direction.INGRESS.value),
        "DIR_OF_OBS_3": str(Direction.INGRESS.value),
        "DIR_OF_OBS_4": str(Direction.EGRESS.value),
        "DIR_UNKNOWN": str(Direction.UNKNOWN.value),
        "VERDICT_FORWARDED": str(Verdict.FORWARDED.value),
        "EVENT_FLOW": str(Event.FLOW.value),
    }


OFFSET = 1_700_000_000_000_000_000


def _ring_records(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` committed ring records of random reports as the kernel writes them, some without packets."""
    recs = np.zeros(n, dtype=records.RINGBUF_RECORD_DTYPE)
    raw = recs.view(np.uint8).reshape(n, recs.itemsize)  # every byte random, then the fields that matter
    raw[:] = rng.integers(0, 256, raw.shape, dtype=np.uint8)
    recs["hdr_len"] = records.REPORT_BYTES
    r = recs["report"]
    r["t_first"] = rng.integers(1, 1 << 50, n, dtype=np.uint64)
    r["t_last"] = r["t_first"] + rng.integers(0, 1 << 30, n, dtype=np.uint64)
    r["packets"] = rng.integers(1, 1 << 40, n, dtype=np.uint64)
    r["packets"][rng.random(n) < 0.05] = 0
    return recs


def _reference(reports: np.ndarray, offset: int) -> np.ndarray:
    """Each report with packets, column by column (flows.FLOW_DTYPE), as an independent reference."""
    reports = reports[reports["packets"] > 0]
    out = FlowBatch.empty(reports.shape[0]).records
    for field, column in records.FLOW_COLUMN_OF_REPORT.items():
        out[column] = reports[field]
    out["time_start_ns"] += np.uint64(offset)
    out["time_end_ns"] += np.uint64(offset)
    return out


def test_reports_to_batch_keeps_every_byte_of_each_report() -> None:
    reports = _ring_records(3000, np.random.default_rng(1))["report"]  # strided: inside ring records
    batch = records.reports_to_batch(reports, OFFSET, "packetparser")
    want = _reference(reports, OFFSET)
    assert 0 < len(batch) < 3000 and batch.records.tobytes() == want.tobytes()
    assert (batch.records["src_endpoint"] == -1).all() and (batch.records["dst_endpoint"] == -1).all()


@pytest.mark.parametrize("max_batch_size", [1, 97, 16384])
def test_ring_to_batches_exact_with_discards_busy_and_wrap(max_batch_size: int) -> None:
    """The receiver's own path (_drain_ring, _emit) over a ring in memory: records wrap around its end,
    discarded ones are left out, reading stops at the first record still being written; each row is its
    report's bytes; batches of at most max_batch_size rows, small ones copied off the pending buffer."""
    rng = np.random.default_rng(max_batch_size)
    ring = RingMemory(1 << 16)  # 455 records of 144 bytes
    consumer = CollectingConsumer()
    config = PacketParserConfig(max_batch_size=max_batch_size, enable_conntrack_metrics=False)
    receiver = PacketParserReceiver(CreateSettings("packetparser", "receiver"), config, consumer)
    receiver._ring = ring.reader(records.RINGBUF_RECORD_DTYPE)
    receiver._clock_offset_ns = OFFSET
    wanted = []
    for round_ in range(6):  # 6 x 300 records through a 455-record ring: the runs wrap
        recs = _ring_records(300, rng)
        discard = rng.random(300) < 0.03
        recs["hdr_len"][discard] |= 1 << 30
        if round_ == 2:
            recs["hdr_len"][200] |= 1 << 31  # BUSY: records from here on are not read yet
        ring.publish(recs)
        receiver._drain_ring()
        if round_ == 2:
            assert ring.consumer_pos == ring.producer_pos - 100 * recs.itemsize
            recs["hdr_len"][200] &= ~np.uint32(1 << 31)  # committed now
            ring.producer[:8].view("<u8")[0] -= 100 * recs.itemsize
            ring.publish(recs[200:])
            receiver._drain_ring()
        assert ring.consumer_pos == ring.producer_pos
        wanted.append(_reference(recs["report"][~discard], OFFSET))
        receiver._emit()
    got = consumer.records()
    assert got.tobytes() == np.concatenate(wanted).tobytes()
    assert all(0 < len(b) <= max_batch_size for b in consumer.batches)
    for b in consumer.batches:  # the buffer itself only for a batch of at least half of it
        pending_rows = b.records.base.shape[0] if b.records.base is not None else len(b)
        assert pending_rows == len(b) or (pending_rows == max_batch_size and len(b) * 2 >= max_batch_size)


def test_read_leaves_out_discarded_records_and_stops_at_a_busy_one() -> None:
    ring = RingMemory(1 << 16)
    reader = ring.reader(records.RINGBUF_RECORD_DTYPE)
    recs = _ring_records(10, np.random.default_rng(3))
    recs["hdr_len"][[2, 5]] |= 1 << 30  # DISCARD
    recs["hdr_len"][8] |= 1 << 31  # BUSY
    ring.publish(recs)
    got = reader.read()
    assert got.tobytes() == recs[[0, 1, 3, 4, 6, 7]].tobytes()
    assert ring.consumer_pos == 8 * recs.itemsize
    assert reader.read().shape[0] == 0  # still busy


def test_count_records_sums_by_observation_point() -> None:
    store = MetricStore()
    metrics = ConntrackMetrics(store)
    batch = FlowBatch.empty(6).records
    batch["observation_point"] = [1, 2, 3, 4, 0, 5]
    batch["packets"] = [1, 10, 100, 1000, 10000, 100000]
    batch["bytes"] = batch["packets"] * 3
    metrics.count_records(batch)
    metrics.count_records(batch[:0])
    values = {f.name: f.snapshot().series[0][1] for f in store.families() if "packetparser" in f.name}
    assert values == {
        "networkobservability_packetparser_packets_tx": 1001.0,  # FROM_ENDPOINT and TO_NETWORK
        "networkobservability_packetparser_packets_rx": 110110.0,  # everything else
        "networkobservability_packetparser_bytes_tx": 3003.0,
        "networkobservability_packetparser_bytes_rx": 330330.0,
    }
