"""Grammar core benchmarks: compile time (cold, cached), automaton sizes, checker throughput.

Writes ``benchmarks/results/grammar.json`` and ``grammar.md`` (or ``--out DIR``).
Each question has its own record; ratios are measured in one run on one machine.

    .venv/bin/python benchmarks/bench_grammar.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "numpy": np.__version__,
        "miditok": version("miditok"),
    }


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_compile(records: list[dict[str, Any]], quick: bool) -> None:
    from miditok import REMI, TokenizerConfig

    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer

    configs = {"shipped": load_tokenizer(), "miditok-default": REMI(TokenizerConfig())}
    if not quick:
        configs["rests+programs+dedup"] = REMI(
            TokenizerConfig(use_rests=True, use_programs=True, remove_duplicated_notes=True)
        )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAMOPHONE_CACHE"] = cache
        for name, tok in configs.items():
            cold = timed(lambda tok=tok: compile_remi(tok, use_cache=False), 3 if quick else 5)
            compile_remi(tok)  # fill the cache
            warm = timed(lambda tok=tok: compile_remi(tok), 5 if quick else 20)
            auto = compile_remi(tok)
            for kind, samples in (("cold", cold), ("cached", warm)):
                records.append(
                    {
                        "benchmark": "compile",
                        "system": "gramophone",
                        "metric": "ms",
                        "value": round(1000 * statistics.median(samples), 2),
                        "unit": "ms (median)",
                        "config": name,
                        "cache": kind,
                    }
                )
            for comp in auto.components:
                records.append(
                    {
                        "benchmark": "automaton_size",
                        "system": "gramophone",
                        "metric": "states",
                        "value": comp.num_states,
                        "unit": "states",
                        "config": name,
                        "component": comp.name,
                        "table_mb": round(comp.transitions.nbytes / 2**20, 2),
                        "vocab": len(auto.vocab),
                    }
                )
            try:
                dense = auto.product(max_states=500_000)
                value: int | None = dense.num_states
            except ValueError:
                value = None
            records.append(
                {
                    "benchmark": "automaton_size",
                    "system": "gramophone",
                    "metric": "states",
                    "value": value,
                    "unit": "states (None: over 500k)",
                    "config": name,
                    "component": "dense product (reachable)",
                    "table_mb": round(value * len(auto.vocab) * 4 / 2**20, 1) if value else None,
                    "vocab": len(auto.vocab),
                }
            )
        del os.environ["GRAMOPHONE_CACHE"]


def bench_checker(records: list[dict[str, Any]], quick: bool) -> None:
    from miditok import TokSequence
    from symusic import Score

    from gramophone.data import chorale_midis
    from gramophone.grammar import compile_remi
    from gramophone.grammar.checker import check_stream
    from gramophone.tokenizers import encode_score, load_tokenizer

    tok = load_tokenizer()
    auto = compile_remi(tok)
    paths = chorale_midis(progress=False)
    if quick:
        paths = paths[:60]
    streams = [ids for p in paths for ids in encode_score(tok, Score(str(p)))]
    n_tokens = sum(len(s) for s in streams)

    def ours() -> None:
        for ids in streams:
            assert check_stream(auto, ids).valid

    def batch() -> None:
        width = max(len(s) for s in streams)
        arr = np.zeros((len(streams), width), dtype=np.int64)
        for i, s in enumerate(streams):
            arr[i, : len(s)] = s
        auto.run_batch(arr)

    def miditok_errors() -> None:
        for ids in streams:
            tok.tokens_errors(TokSequence(ids=list(ids)))

    for system, fn in (
        ("gramophone check (per stream)", ours),
        ("gramophone run_batch (numpy, all streams at once)", batch),
        ("miditok tokens_errors", miditok_errors),
    ):
        best = min(timed(fn, 2 if quick else 3))
        records.append(
            {
                "benchmark": "checker",
                "system": system,
                "metric": "tokens_per_s",
                "value": round(n_tokens / best),
                "unit": "tokens/s (best of runs)",
                "streams": len(streams),
                "tokens": n_tokens,
            }
        )


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Grammar core benchmarks",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in results["machine"].items()),
        "",
    ]
    recs = results["records"]
    lines += ["## Compile time", "", "| config | cold (ms) | cached (ms) |", "|---|---|---|"]
    by_cfg: dict[str, dict[str, Any]] = {}
    for r in recs:
        if r["benchmark"] == "compile":
            by_cfg.setdefault(r["config"], {})[r["cache"]] = r["value"]
    for cfg, v in by_cfg.items():
        lines.append(f"| {cfg} | {v.get('cold')} | {v.get('cached')} |")
    lines += [
        "",
        "## Automaton sizes",
        "",
        "| config | component | states | table (MiB) | vocab |",
        "|---|---|---|---|---|",
    ]
    for r in recs:
        if r["benchmark"] == "automaton_size":
            lines.append(
                f"| {r['config']} | {r['component']} | {r['value']} | {r['table_mb']} | {r['vocab']} |"
            )
    lines += [
        "",
        "## Checker throughput (Bach chorales, shipped config)",
        "",
        "| system | tokens/s | streams | tokens |",
        "|---|---|---|---|",
    ]
    for r in recs:
        if r["benchmark"] == "checker":
            lines.append(f"| {r['system']} | {r['value']:,} | {r['streams']} | {r['tokens']:,} |")
    ours = next((r["value"] for r in recs if r["system"] == "gramophone check (per stream)"), None)
    theirs = next((r["value"] for r in recs if r["system"] == "miditok tokens_errors"), None)
    if ours and theirs:
        lines += ["", f"gramophone check / miditok tokens_errors: **{ours / theirs:.2f}x** (same run)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a corpus subset")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    records: list[dict[str, Any]] = []
    bench_compile(records, args.quick)
    bench_checker(records, args.quick)
    results = {"machine": machine(), "records": records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grammar.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "grammar.md").write_text(markdown(results))
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
