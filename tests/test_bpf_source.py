"""load_bpf's source: headers next to a program are inlined once, between #line markers; system
includes and names that are not files next to it stay as they are."""

from __future__ import annotations

from pathlib import Path

from retina_otel.bpf import bpf_source


def test_local_headers_inlined_once_with_line_markers(tmp_path: Path) -> None:
    (tmp_path / "a.h").write_text('#include "b.h"\nint a;\n')
    (tmp_path / "b.h").write_text("int b;\n")
    main = tmp_path / "prog.bpf.c"
    main.write_text('#include <uapi/linux/bpf.h>\n#include "a.h"\n#include "b.h"\n#include "none.h"\nint main_;\n')
    assert bpf_source(main).splitlines() == [
        '#line 1 "prog.bpf.c"',
        "#include <uapi/linux/bpf.h>",
        '#line 1 "a.h"',
        '#line 1 "b.h"',
        "int b;",
        '#line 2 "a.h"',
        "int a;",
        '#line 3 "prog.bpf.c"',
        '#line 4 "prog.bpf.c"',  # b.h again: already inlined
        '#include "none.h"',  # no such file here: the compiler reports it
        "int main_;",
    ]


def test_packetparser_parts_are_all_inlined() -> None:
    from retina_otel.receivers.packetparser.receiver import BPF_SOURCE

    text = bpf_source(BPF_SOURCE)
    assert '#include "' not in text
    for part in ("pp_common.h", "pp_parse.h", "pp_conntrack.h", "pp_report.h", "pp_flowcache.h", "pp_fastpath.h"):
        assert f'#line 1 "{part}"' in text
