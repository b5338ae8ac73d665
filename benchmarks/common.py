"""Benchmark plumbing: results go to stdout as a table and to benchmarks/results/<name>.json."""

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BAKED = Path(__file__).resolve().parent.parent / ".pytest_cache/d/baked-image"


def baked_test_images() -> list[Path]:
    """The test suite's bakes in pytest's cache (``<digest>/`` and ``<digest>-rebake/``),
    oldest first."""
    return sorted(BAKED.glob("*/k8simg-*.qcow2"), key=lambda p: p.stat().st_mtime)


def ruler() -> float:
    """Seconds a fixed pure-Python loop takes here, the best of three: a yardstick for figures
    taken on different days. The machines here have run the same emulated boot at a third
    of their best speed some afternoons (README), so a figure says little without it."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - t)
    return round(best, 3)


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ruler_s": ruler()}


def report(name: str, rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    sys.stdout.flush()
