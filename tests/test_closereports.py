"""The decision of ``report_on_close: auto`` (packetparser's closereports): when a finished connection
needs its record on FIN/RST because the connection table could fill up before the next flush."""

from __future__ import annotations

from retina_otel.receivers.packetparser.closereports import MARGIN_S, needs_close_reports

MAX = 262_144


def test_an_empty_quiet_table_needs_no_records() -> None:
    assert not needs_close_reports(0, 0.0, 30.0, MAX, on_now=True)
    assert not needs_close_reports(0, 0.0, 30.0, MAX, on_now=False)


def test_the_projection_counts_the_rate_until_the_next_flush_and_a_margin() -> None:
    # 1,000 new entries a second for the 30 s to the next flush and the margin: 32,000 < 65,536.
    assert not needs_close_reports(20_000, 1_000.0, 30.0, MAX, on_now=False)
    # 2,000 a second: 20,000 + 64,000 > a quarter of the table.
    assert needs_close_reports(20_000, 2_000.0, 30.0, MAX, on_now=False)
    # Right before a flush only the margin's worth counts.
    assert not needs_close_reports(20_000, 2_000.0, 0.0, MAX, on_now=False)
    assert needs_close_reports(MAX // 4 - int(2_000 * MARGIN_S), 2_000.0, 0.0, MAX, on_now=False)


def test_hysteresis_records_go_off_only_below_an_eighth() -> None:
    between = MAX // 5  # between an eighth and a quarter
    assert not needs_close_reports(between, 0.0, 30.0, MAX, on_now=False)  # stays off
    assert needs_close_reports(between, 0.0, 30.0, MAX, on_now=True)  # stays on
    assert not needs_close_reports(MAX // 10, 0.0, 30.0, MAX, on_now=True)  # below an eighth: off


def test_an_overdue_flush_counts_as_due_now() -> None:
    assert needs_close_reports(0, 20_000.0, -5.0, MAX, on_now=False) == (20_000 * MARGIN_S >= MAX / 4)
