"""What every benchmark shares: the machine's description, timing, records, tables."""

from __future__ import annotations

import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["machine", "markdown_table", "median_time", "record", "timed"]

_LIBRARIES = (
    "numpy",
    "torch",
    "jax",
    "flax",
    "optax",
    "miditok",
    "symusic",
    "lark",
    "xgrammar",
    "outlines_core",
    "llguidance",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine and library versions a result was measured with (no GPU is assumed)."""
    versions: dict[str, str | None] = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn``."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, repeat))


def record(benchmark: str, system: str, metric: str, value: Any, unit: str, **params: Any) -> dict[str, Any]:
    """One result row: ``benchmark``, ``system``, ``metric``, ``value``, ``unit``, parameters."""
    return {
        "benchmark": benchmark,
        "system": system,
        "metric": metric,
        "value": value,
        "unit": unit,
        **params,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """Markdown lines of a table of ``rows`` with these ``columns`` (missing: —)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


def import_section(module: str) -> ModuleType:
    """Import a benchmark section. The peer engines' adapters are benchmark code kept out
    of the library (``benchmarks/peers.py`` in the repository, not installed with the
    package): a section under ``benchmarks.`` is imported from the checkout this package
    runs from, and an :class:`ImportError` that says so when there is none."""
    if module.startswith("benchmarks."):
        root = Path(__file__).resolve().parents[2]
        if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"{module} is benchmark code in the repository's benchmarks/ folder, not installed with "
                f"the package: run gramophone bench from a checkout ({exc})"
            ) from exc
    return importlib.import_module(module)
