"""Decoding throughput per backend, with and without the grammar's mask; cost of context.

Writes ``benchmarks/results/decode.json`` and ``decode.md`` (or ``--out DIR``); the
measurements live in :mod:`gramophone.bench.decode` (``gramophone bench`` runs them too).

    .venv/bin/python benchmarks/bench_decode.py [--quick] [--backend torch|jax] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gramophone.bench import decode
from gramophone.bench.common import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer rounds")
    parser.add_argument("--backend", action="append", choices=["torch", "jax"], help="default: both")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    backends = args.backend or ["torch", "jax"]
    records = decode.run(args.quick, backends, args.threads)
    results = {"machine": machine(), "quick": args.quick, "torch_threads": args.threads, "records": records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(results, indent=2) + "\n")
    text = "\n".join(["# Decoding throughput and the cost of the mask", "", *decode.markdown(records)])
    (out / "decode.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
