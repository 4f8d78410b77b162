"""Corpus building: files/s, tokens/s and peak memory of 1 and 2 workers against miditok's loop.

Writes ``benchmarks/results/corpus.json``, ``corpus.md`` and ``corpus_build.png`` (or
``--out DIR``); the measurements live in :mod:`gramophone.bench.corpus` (``gramophone bench``
runs them too). The corpus (20,000 small MIDI files; ``--quick``: 2,000) is generated with
symusic in a temporary folder and removed afterwards.

    .venv/bin/python benchmarks/bench_corpus.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gramophone.bench import corpus
from gramophone.bench.common import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files instead of 20,000")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "quick": args.quick, "records": corpus.run(args.quick)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Corpus building", "", *corpus.markdown(results["records"]), ""]
    lines += [f"![{p.stem}]({p.name})" for p in corpus.plots(results["records"], out)]
    text = "\n".join(lines) + "\n"
    (out / "corpus.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
