"""Trained vocabularies (REMI + BPE 10k and 30k trained on the chorales): decoding tables
and the mask step against the peer engines. Writes ``benchmarks/results/vocab.json`` and
``vocab.md`` (or ``--out DIR``).

    .venv/bin/python benchmarks/bench_vocab.py [--quick] [--out DIR]
"""

import sys
from pathlib import Path

from gramophone.bench import vocab

sys.path.insert(0, str(Path(__file__).parent))
from bench_peers import section_main

if __name__ == "__main__":
    title = "Trained vocabularies: decoding tables and mask step"
    sys.exit(
        section_main(
            None,
            doc=__doc__ or "",
            name="vocab",
            title=title,
            section=vocab,
            quick_help="10k only, fewer steps and systems",
        )
    )
