"""Run the benchmarks: ``.venv/bin/python benchmarks/run.py [--quick] [NAME ...]``.

Each ``benchmarks/bench_<name>.py`` defines ``run(quick: bool) -> dict`` returning
``{"rows": [{column: value, ...}, ...], "targets": {...}, "notes": "..."}``; this runner adds the
machine facts and a timestamp, prints each result as a table and writes
``benchmarks/results/<name>.json``. Every benchmark measures its baseline side by side in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(lines)


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. packetforward")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    files = sorted(HERE.glob("bench_*.py"))
    if args.names:
        files = [f for f in files if f.stem.removeprefix("bench_") in args.names]
    RESULTS.mkdir(exist_ok=True)
    failed = 0
    for path in files:
        name = path.stem.removeprefix("bench_")
        print(f"== {name} ==", flush=True)
        started = time.time()
        try:
            result = _load(path).run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others
            failed += 1
            print(f"FAILED: {exc!r}")
            continue
        result.update(
            name=name,
            quick=args.quick,
            seconds=round(time.time() - started, 1),
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            machine={"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        )
        print(_table(result.get("rows", [])))
        if result.get("targets"):
            print("targets:", json.dumps(result["targets"]))
        if result.get("notes"):
            print(result["notes"])
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
