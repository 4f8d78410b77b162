"""How much of its context the bundled model uses: Pitch NLL with the whole window
against its last 16 / 64 tokens (``pitch_nll_gain_nats``).

Writes ``benchmarks/results/context.json`` and ``context.md`` (or ``--out DIR``); the
measurements live in :mod:`gramophone.bench.context` (``gramophone bench`` runs them too).

    .venv/bin/python benchmarks/bench_context.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gramophone.bench import context
from gramophone.bench.common import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first 8 windows only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "quick": args.quick, "records": context.run(args.quick)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "context.json").write_text(json.dumps(results, indent=2) + "\n")
    title = "# How much of its context the model uses"
    text = "\n".join([title, "", *context.markdown(results["records"]), ""])
    (out / "context.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
