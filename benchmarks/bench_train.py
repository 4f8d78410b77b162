"""Training throughput: tokens/s per backend, structural loss share, fraction of GEMM peak.

Writes ``benchmarks/results/train.json`` and ``train.md`` (or ``--out DIR``); the
measurements live in :mod:`gramophone.bench.train` (``gramophone bench`` runs them too).

    .venv/bin/python benchmarks/bench_train.py [--quick] [--out DIR]
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "quick": args.quick, "records": train.run(args.quick)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(results, indent=2) + "\n")
    text = "\n".join(["# Training throughput", "", *train.markdown(results["records"]), ""])
    (out / "train.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
