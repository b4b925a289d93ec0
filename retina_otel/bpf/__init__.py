"""Shared bcc plumbing: loading a program with a clear error when the kernel headers are missing.

bcc stays at the edge: only receivers import this package, and only in ``start()``.

Memory: bcc compiles in-process with clang/LLVM. Measured on the default config (seven programs), the
agent's RSS went from ~50 MB before the first compile to ~250 MB after the last, of which only ~15 MB
are allocations bcc keeps per loaded program (its LLVM module, needed for map access and clean-up).
The rest is (a) freed heap that glibc keeps (~55 MB) and (b) pages of libLLVM/libclang-cpp touched
while compiling (~65 MB, file-backed and clean). :func:`release_compiler_memory` runs after every
load and gives both back: ``malloc_trim(0)`` returns free heap pages, ``madvise(MADV_PAGEOUT)`` on the
two libraries' mappings drops their pages (kernel >= 5.4; pages another process also maps are kept,
so the saving shows when the agent runs alone, as in its pod). A later compile faults the pages back
from disk. Tried and not kept: a low ``M_MMAP_THRESHOLD`` during compiles (no gain once trimmed),
compiling in a helper process and passing the fds back (the receivers use bcc's map and program
objects, which need bcc, hence libLLVM, loaded in the agent anyway: ~60 MB at import, which the page-out
also reclaims).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BpfUnavailable",
    "bpf_source",
    "check_environment",
    "load_bpf",
    "loaded_objects",
    "release_compiler_memory",
]

log = logging.getLogger(__name__)

_MADV_PAGEOUT = 21
_COMPILER_LIBRARIES = ("libLLVM", "libclang")
_LOADED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


class BpfUnavailable(RuntimeError):
    """bcc, kernel headers or privileges are missing; the message says what to do."""


def check_environment() -> None:
    """Raise :class:`BpfUnavailable` naming the missing piece (headers, bcc, root, mounts)."""
    if os.geteuid() != 0:
        raise BpfUnavailable("eBPF receivers need root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)")
    release = platform.release()
    build = Path("/lib/modules") / release / "build"
    if not (build / "include").exists():
        raise BpfUnavailable(
            f"kernel headers for {release} not found at {build}: install linux-headers and link them "
            "(scripts/setup.sh does this), or mount the node's /lib/modules and /usr/src into the container"
        )
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        raise BpfUnavailable(
            "python bcc module not importable: apt-get install python3-bpfcc and run scripts/setup.sh"
        ) from exc


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.-]+\.h)"[ \t]*$')


def bpf_source(src_file: Path) -> str:
    """The program's text with its own headers inlined: each ``#include "name.h"`` naming a file next to
    it is replaced by that file (recursively, each header once), between ``#line`` markers, so compiler
    messages still name the header and its line.

    Why not ``-I``: bcc compiles the text as one virtual main file and rewrites its map syntax
    (``table.lookup(&key)``, ``events.ringbuf_reserve(...)``, ``prog_array.call(...)``) only there; in
    an included header the same code compiles but the program is rejected at load. Inlined, a header may
    declare maps and use them like the main file."""
    seen: set[Path] = set()

    def expand(path: Path) -> list[str]:
        out = [f'#line 1 "{path.name}"']
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            found = _LOCAL_INCLUDE.match(line)
            header = path.with_name(found.group(1)) if found else None
            if header is None or not header.is_file():
                out.append(line)
                continue
            if header not in seen:
                seen.add(header)
                out.extend(expand(header))
            out.append(f'#line {number + 1} "{path.name}"')
        return out

    return "\n".join(expand(src_file)) + "\n"


def load_bpf(src_file: Path, cflags: Sequence[str] = ()) -> Any:
    """Compile and load a ``.bpf.c`` file with bcc; parameters go in as ``-D`` cflags, headers next to the
    file are inlined (:func:`bpf_source`)."""
    check_environment()
    from bcc import BPF

    try:
        bpf = BPF(text=bpf_source(src_file).encode(), cflags=list(cflags))
    except Exception as exc:
        raise BpfUnavailable(f"failed to compile/load {src_file.name}: {exc}") from exc
    finally:
        release_compiler_memory()
    _LOADED[bpf] = src_file.name.split(".", 1)[0]
    return bpf


def loaded_objects() -> list[tuple[Any, str]]:
    """The bcc objects :func:`load_bpf` made that are still alive, each with its source's name
    (``packetparser``, ``dns_tc``, ...): how the agent's self-metrics name programs and maps."""
    return list(_LOADED.items())


def release_compiler_memory() -> None:
    """Give back what a compile left resident: free heap pages, and clang/LLVM library pages."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not os.path.basename(fields[5].strip()).startswith(_COMPILER_LIBRARIES):
            continue
        start, _, end = fields[0].partition("-")
        if madvise(int(start, 16), int(end, 16) - int(start, 16), _MADV_PAGEOUT) != 0:
            log.debug("madvise(MADV_PAGEOUT) on %s: %s", fields[5].strip(), os.strerror(ctypes.get_errno()))
            return  # an older kernel (EINVAL): nothing else will work either
