"""Training throughput: tokens/s per backend, structural loss share, fraction of GEMM peak;
and with 1 and 2 data-parallel replicas (torch DDP processes, JAX devices).

Writes ``benchmarks/results/train.json`` and ``train.md`` (or ``--out DIR``); with
``--parallel-only`` only the data-parallel part, into ``train_parallel.json``, ``.md`` and
``.png``. The measurements live in :mod:`gramophone.bench.train` (``gramophone bench`` runs
them too).

    .venv/bin/python benchmarks/bench_train.py [--quick] [--parallel-only] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gramophone.bench import train
from gramophone.bench.common import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer steps")
    parser.add_argument("--parallel-only", action="store_true", help="only 1 and 2 data-parallel replicas")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    parts = ("parallel",) if args.parallel_only else train.PARTS
    results = {"machine": machine(), "quick": args.quick, "records": train.run(args.quick, parts)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "train_parallel" if args.parallel_only else "train"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Training throughput", "", *train.markdown(results["records"]), ""]
    lines += [f"![{p.stem}]({p.name})" for p in train.plots(results["records"], out)]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
