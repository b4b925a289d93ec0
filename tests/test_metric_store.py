"""The metric store: values, TTL expiry, series budget with overflow, removal by label."""

from __future__ import annotations

import time

from retina_otel.metrics.store import OVERFLOW_LABEL_VALUE, HistogramValue, MetricStore


def test_counter_gauge_histogram_values() -> None:
    store = MetricStore()
    c = store.counter("networkobservability_forward_count", "fwd", ("direction",))
    c.add_many([(("ingress",), 3), (("egress",), 2), (("ingress",), 1)])
    assert c.value(("ingress",)) == 4
    g = store.gauge("networkobservability_tcp_state", "state", ("state",))
    g.set(("ESTABLISHED",), 7)
    g.set(("ESTABLISHED",), 5)
    assert g.value(("ESTABLISHED",)) == 5
    h = store.histogram("networkobservability_adv_node_apiserver_latency", "lat", (), bounds=(1, 10, 100))
    h.observe_many((), [0.5, 1, 5, 50, 500])
    h.observe((), 10)
    value = h.value(())
    assert isinstance(value, HistogramValue)
    assert value.bucket_counts == [2, 2, 1, 1]
    assert value.count == 6
    assert value.total == 566.5


def test_ttl_expiry_counts_expired() -> None:
    store = MetricStore()
    fam = store.counter("networkobservability_adv_forward_count", "x", ("podname",), ttl_seconds=0.05)
    fam.add(("a",), 1)
    time.sleep(0.1)
    fam.add(("b",), 1)
    assert store.expire() == 1
    assert fam.value(("a",)) is None
    assert fam.value(("b",)) == 1
    expired = store.get("controlplane_networkobservability_expired_metrics_counter")
    assert expired is not None and expired.value(("networkobservability_adv_forward_count",)) == 1


def test_series_budget_folds_into_overflow() -> None:
    store = MetricStore()
    fam = store.counter("networkobservability_adv_forward_count", "x", ("podname", "direction"), max_series=3)
    for i in range(10):
        fam.add((f"pod{i}", "ingress"), 1)
    assert len(fam) == 4  # the budget's 3 series plus the one overflow series
    assert fam.value((OVERFLOW_LABEL_VALUE, OVERFLOW_LABEL_VALUE)) == 7
    folded = store.get("controlplane_networkobservability_overflow_series_counter")
    assert folded is not None and folded.value(("networkobservability_adv_forward_count",)) == 7
    # known series keep counting exactly
    fam.add(("pod0", "ingress"), 5)
    assert fam.value(("pod0", "ingress")) == 6


def test_remove_where() -> None:
    store = MetricStore()
    fam = store.counter("m", "x", ("podname", "direction"))
    fam.add_many([(("a", "ingress"), 1), (("a", "egress"), 1), (("b", "egress"), 1)])
    assert fam.remove_where("podname", ["a"]) == 2
    assert len(fam) == 1


def test_redeclaring_with_other_labels_fails() -> None:
    store = MetricStore()
    store.counter("m", "x", ("a",))
    assert store.counter("m", "x", ("a",)) is store.get("m")
    try:
        store.counter("m", "x", ("b",))
    except ValueError as exc:
        assert "already declared" in str(exc)
    else:
        raise AssertionError("expected ValueError")
