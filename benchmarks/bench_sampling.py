"""Sampling rules: a decoding step's cost under greedy, temperature, top-k and top-p (the
numba step and the numpy kernels, batch 64, the shipped config and a 30k BPE vocabulary),
and the cost of drawing the Gumbel noise. Writes ``benchmarks/results/sampling.json`` and
``sampling.md`` (or ``--out DIR``).

    .venv/bin/python benchmarks/bench_sampling.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gramophone.bench import sampling
from gramophone.bench.common import machine

sys.path.insert(0, str(Path(__file__).parent))
from bench_peers import machine_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the shipped config alone, fewer steps")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    m = machine()
    m["load_average"] = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    records = sampling.run(quick=args.quick)
    m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - t0)
    results = {"machine": m, "quick": args.quick, "seconds": seconds, "records": records}
    (out / "sampling.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [
        "# Sampling rules: the cost of a decoding step",
        "",
        *machine_lines(m),
        "",
        *sampling.markdown(records),
    ]
    (out / "sampling.md").write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
