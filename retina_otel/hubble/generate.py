"""Regenerate the checked-in ``*_pb2.py``/``*_pb2.pyi`` modules from the ``.proto`` files beside them.

Needs grpcio-tools (a dev dependency): ``.venv/bin/python -m retina_otel.hubble.generate``. The
protos import each other by their path in the repository (``retina_otel/hubble/flow.proto``), so
the generated modules import each other as ``retina_otel.hubble.*_pb2``. Only messages are
generated: the service is wired with grpc's generic handlers (``retina_otel.hubble.api``).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTOS = ("flow.proto", "relay.proto", "observer.proto", "retina.proto")


def main() -> int:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    here = Path(__file__).resolve().parent
    root = here.parent.parent
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        *(str(Path("retina_otel/hubble") / name) for name in PROTOS),
    ]
    code = int(protoc.main(args))
    if code:
        print("protoc failed", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
