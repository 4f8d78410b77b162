"""Grammar core benchmarks: compile time (cold, cached), automaton sizes, checker throughput.

Writes ``benchmarks/results/grammar.json`` and ``grammar.md`` (or ``--out DIR``); the
measurements live in :mod:`gramophone.bench.grammar` (``gramophone bench`` runs them too).

    .venv/bin/python benchmarks/bench_grammar.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gramophone.bench import grammar
from gramophone.bench.common import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a corpus subset")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    records = grammar.run(args.quick)
    results = {"machine": machine(), "records": records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grammar.json").write_text(json.dumps(results, indent=2) + "\n")
    text = "\n".join(["# Grammar core benchmarks", "", *grammar.markdown(records)])
    (out / "grammar.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
