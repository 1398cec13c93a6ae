"""Benchmark runner: ``python -m benchmarks [NAME_SUBSTRING ...]`` runs every benchmark.

Each ``benchmarks/bench_*.py`` module exposes ``BENCHMARKS``, a mapping of name to a function
returning a dict of figures.  Every benchmark runs in a fresh process (so that its peak RSS
is its own); the runner adds ``wall_s`` and ``peak_rss_mib`` and writes
``benchmarks/results/<module>.json`` and the table ``benchmarks/results/summary.md``.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path
from queue import Empty
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _child(module: str, name: str, queue: Any) -> None:
    bench = importlib.import_module(f"benchmarks.{module}").BENCHMARKS[name]
    started = time.perf_counter()
    figures = bench()
    wall = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"wall_s": round(wall, 3), "peak_rss_mib": round(rss, 1), **figures})


def run_one(module: str, name: str) -> dict[str, Any]:
    """One benchmark in a spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(module, name, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"benchmark {module}.{name} failed") from None
    proc.join()
    return result


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return "…"
    return str(value)


def main(argv: list[str]) -> int:
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        module = path.stem
        names = importlib.import_module(f"benchmarks.{module}").BENCHMARKS
        results = {}
        for name in names:
            if argv and not any(a in name for a in argv):
                continue
            print(f"{module}.{name} ...", flush=True)
            results[name] = run_one(module, name)
            rows.append((f"{module}.{name}", results[name]))
        if results:
            out = RESULTS / f"{module}.json"
            old = json.loads(out.read_text()) if out.exists() else {}
            out.write_text(json.dumps({**old, **results}, indent=2) + "\n")
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{mp.cpu_count()} cores, Python {platform.python_version()}",
        "",
        "| benchmark | wall s | peak RSS MiB | figures |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in rows:
        extra = ", ".join(
            f"{k} {_cell(v)}" for k, v in r.items() if k not in ("wall_s", "peak_rss_mib")
        )
        lines.append(f"| {name} | {r['wall_s']:.2f} | {r['peak_rss_mib']:.0f} | {extra} |")
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
