"""Trained vocabularies (REMI + BPE 10k and 30k trained on the chorales): decoding tables
and the mask step against the peer engines. Writes ``benchmarks/results/vocab.json`` and
``vocab.md`` (or ``--out DIR``).

    .venv/bin/python benchmarks/bench_vocab.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gramophone.bench import vocab
from gramophone.bench.common import machine

sys.path.insert(0, str(Path(__file__).parent))
from bench_peers import machine_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k only, fewer steps and systems")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    m = machine()
    m["load_average"] = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    records = vocab.run(quick=args.quick)
    m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - t0)
    results = {"machine": m, "quick": args.quick, "seconds": seconds, "records": records}
    (out / "vocab.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    title = "# Trained vocabularies: decoding tables and mask step"
    lines = [title, "", *machine_lines(m), "", *vocab.markdown(records)]
    (out / "vocab.md").write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
