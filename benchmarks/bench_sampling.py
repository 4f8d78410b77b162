"""Sampling rules: a decoding step's cost under greedy, temperature, top-k and top-p (the
numba step and the numpy kernels, batch 64, the shipped config and a 30k BPE vocabulary),
and the cost of drawing the Gumbel noise. Writes ``benchmarks/results/sampling.json`` and
``sampling.md`` (or ``--out DIR``).

    .venv/bin/python benchmarks/bench_sampling.py [--quick] [--out DIR]
"""

import sys
from pathlib import Path

from gramophone.bench import sampling

sys.path.insert(0, str(Path(__file__).parent))
from bench_peers import section_main

if __name__ == "__main__":
    title = "Sampling rules: the cost of a decoding step"
    sys.exit(
        section_main(
            None,
            doc=__doc__ or "",
            name="sampling",
            title=title,
            section=sampling,
            quick_help="the shipped config alone, fewer steps",
        )
    )
