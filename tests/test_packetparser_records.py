"""The kernel's flag-counter columns (the F_* bits of packetparser's pp_common.h) are TcpFlag's columns."""

from __future__ import annotations

import re
from pathlib import Path

from retina_otel.flows import TcpFlag
from retina_otel.receivers.packetparser import records

SOURCE = Path(records.__file__).with_name("pp_common.h")


def test_kernel_flag_bits_are_tcpflag_columns() -> None:
    text = SOURCE.read_text()
    bits = {name: int(bit) for name, bit in re.findall(r"^#define F_([A-Z]+) \(1 << (\d+)\)$", text, re.M)}
    n_flags = int(re.search(r"^#define N_FLAGS (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert len(bits) == n_flags == records.N_FLAGS == len(TcpFlag)
    assert bits == {flag.name: flag.value for flag in TcpFlag}
    assert tuple(sorted(bits, key=bits.__getitem__)) == records.KERNEL_FLAG_COLUMNS
