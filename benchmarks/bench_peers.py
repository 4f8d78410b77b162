"""Mask step and compile time against the peer engines (xgrammar, outlines-core, llguidance).

Writes ``benchmarks/results/peers.json`` and ``peers.md`` (or ``--out DIR``): the records of
:mod:`benchmarks.peers`, the machine they were measured on, and what each peer's
grammar cannot express. Peers come with ``pip install 'gramophone[bench]'``; one that is
not installed is recorded as ``missing``.

    .venv/bin/python benchmarks/bench_peers.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.peers
from benchmarks import peers
from gramophone.bench.common import machine


def machine_lines(m: dict[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items() if v)
    missing = ", ".join(k for k, v in m.get("libraries", {}).items() if not v)
    lines = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, no GPU; "
        f"{m.get('platform')}, Python {m.get('python')}.",
        "",
        f"Libraries: {libs}" + (f"; not installed: {missing}." if missing else "."),
    ]
    if m.get("load_average"):
        lines += [
            "",
            f"Load average (1, 5, 15 min) when the run started: {m['load_average']}, when it "
            f"ended: {m.get('load_average_end')} (the machine is shared: a busy machine slows "
            "every system, so compare figures within one run).",
        ]
    return lines


def section_main(
    argv: list[str] | None,
    *,
    doc: str,
    name: str,
    title: str,
    section: Any,
    quick_help: str,
) -> int:
    """The command line of a section script (``bench_vocab.py``, ``bench_sampling.py``):
    ``section.run(quick=...)``, then ``NAME.json`` (records, machine, load, seconds) and
    ``NAME.md`` (``title``, the machine, ``section.markdown(records)``) in ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    m = machine()
    m["load_average"] = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    records = section.run(quick=args.quick)
    m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - t0)
    results = {"machine": m, "quick": args.quick, "seconds": seconds, "records": records}
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", *machine_lines(m), "", *section.markdown(records)]
    (out / f"{name}.md").write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    m = machine()
    if hasattr(os, "getloadavg"):  # the machine may be shared: say how busy it was
        m["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        m["libraries"]["numba"] = metadata.version("numba")
    except metadata.PackageNotFoundError:
        m["libraries"]["numba"] = None
    t0 = time.perf_counter()
    records = peers.run(quick=args.quick)
    if hasattr(os, "getloadavg"):
        m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {
        "machine": m,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t0),
        "records": records,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = ["# Mask step and compile time against the peer engines", ""]
    if args.quick:
        lines += ["*Quick run: fewer steps and repeats; figures are indicative only.*", ""]
    lines += [*machine_lines(m), "", *peers.markdown(records)]
    (out / "peers.md").write_text("\n".join(lines))
    peers.plots(records, out)  # mask_step.png
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
