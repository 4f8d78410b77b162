"""Corpus building: MIDI files to training data, against miditok's own tokenizing loop.

A corpus of small MIDI files is generated with symusic in a temporary folder (20,000 files;
``quick``: 2,000; nothing is downloaded): one piano track of 2 to 8 bars in 4/4 or 3/4, 1 to
3 distinct pitches per onset on an eighth- or sixteenth-note grid. Each variant runs in a
process of its own, into a cache folder of its own, on the same files:

* ``miditok``: miditok's loop, ``tokenizer.encode(path)`` over every file in one process
  (what a user of miditok writes; no framing, no automaton, nothing written);
* ``gramophone, N workers``: :func:`~gramophone.data.corpus.build_corpus` with ``workers=N``
  (1: in the measuring process; 2: a pool of two spawned processes): reading and hashing
  every file, tokenizing, running the automaton along each stream, checking window starts,
  writing the shards and assembling the memory-mapped view;
* ``gramophone, cached``: the same build again over the 2-worker build's cache (every file
  found by its content hash; the view read back).

Figures: wall seconds, files/s and tokens/s (each system's own tokens: gramophone's streams
are miditok's plus BOS and EOS), and peak memory as the peak resident set size
(``resource.getrusage``'s ``ru_maxrss``) of the measuring process (``peak_rss_mib``; its size
before the build, after importing and loading the tokenizer and automaton, is
``base_rss_mib``) and of its largest worker process (``worker_rss_mib``, ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gramophone.bench.common import markdown_table, record

__all__ = ["generate_corpus", "main", "markdown", "plots", "run"]

BENCH = "corpus_build"
FILES, QUICK_FILES = 20_000, 2_000
FILES_PER_FOLDER = 1000


def generate_corpus(root: Path, n: int, seed: int = 0) -> int:
    """Write ``n`` small MIDI files under ``root`` (see the module notes); their total bytes."""
    import numpy as np
    from symusic.core import NoteTick, ScoreTick, TimeSignatureTick, TrackTick

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        score = ScoreTick(480)
        beats = 3 if i % 4 == 0 else 4
        score.time_signatures.append(TimeSignatureTick(0, beats, 4))
        track = TrackTick("piano", 0, False)
        end = int(rng.integers(2, 9)) * beats * 480
        t = 0
        while t < end:
            dur = int(rng.choice([120, 240, 480, 960]))
            for pitch in rng.choice(np.arange(40, 85), size=int(rng.integers(1, 4)), replace=False):
                track.notes.append(NoteTick(t, dur, int(pitch), int(rng.integers(40, 110))))
            t += int(rng.choice([120, 240, 240, 480]))
        score.tracks.append(track)
        folder = root / f"{i // FILES_PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = bytes(score.dumps_midi())
        (folder / f"piece{i:05d}.mid").write_bytes(data)
        total += len(data)
    return total


def _rss_mib(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # KiB on Linux


def _measure(variant: str, root: Path, workers: int, cache: Path) -> dict[str, Any]:
    """One variant in this process (``main`` runs it in a process of its own), building into
    the cache folder ``cache`` (the tokenizer and automaton come from the usual one)."""
    from gramophone.data.corpus import build_corpus, find_midi_files
    from gramophone.data.dataset import DataConfig
    from gramophone.tokenizers import load_tokenizer, model_automaton

    tokenizer = load_tokenizer()
    files = [f.path for f in find_midi_files([str(root)])]
    out: dict[str, Any] = {"files": len(files)}
    if variant == "miditok":
        base = _rss_mib(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        tokens = 0
        for path in files:
            seqs = tokenizer.encode(path)
            tokens += sum(len(s.ids) for s in (seqs if isinstance(seqs, list) else [seqs]))
        out |= {"seconds": time.perf_counter() - t0, "tokens": tokens, "used": len(files)}
    else:
        automaton = model_automaton(tokenizer)  # from the usual cache, before it moves
        os.environ["GRAMOPHONE_CACHE"] = str(cache)
        base = _rss_mib(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        _, report = build_corpus(
            tokenizer, automaton, DataConfig(paths=(str(root),)), workers=workers, progress=False
        )
        out |= {
            "seconds": time.perf_counter() - t0,
            "tokens": sum(report.tokens.values()),
            "used": report.num_used,
            "skipped": len(report.skipped),
            "tokenized": report.tokenized,
            "cached": report.cached,
        }
    return out | {
        "base_rss_mib": base,
        "peak_rss_mib": _rss_mib(resource.RUSAGE_SELF),
        "worker_rss_mib": _rss_mib(resource.RUSAGE_CHILDREN),
    }


def _variant(variant: str, root: Path, workers: int, cache: Path) -> dict[str, Any]:
    """``_measure`` in a fresh process with ``cache`` as its cache folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gramophone.bench.corpus", "--variant", variant, "--root", str(root)]
    cmd += ["--workers", str(workers), "--cache", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} (workers {workers}) failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][7:])
    return result


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Generate the corpus and measure every variant (see the module notes)."""
    n = QUICK_FILES if quick else FILES
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gramophone-bench-corpus-") as tmp:
        root = Path(tmp) / "midi"
        t0 = time.perf_counter()
        size = generate_corpus(root, n)
        made = time.perf_counter() - t0
        common = {
            "corpus_files": n,
            "corpus_mib": round(size / 2**20, 2),
            "generate_s": round(made, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        runs = [
            ("miditok", "miditok encode loop", 1, "miditok"),
            ("gramophone", "gramophone, 1 worker", 1, "w1"),
            ("gramophone", "gramophone, 2 workers", 2, "w2"),
            ("gramophone", "gramophone, cached", 2, "w2"),
        ]
        for variant, system, workers, cache in runs:
            got = _variant(variant, root, workers, Path(tmp) / f"cache-{cache}")
            seconds = got.pop("seconds")
            params = {**common, **got, "workers": workers, "seconds": round(seconds, 2)}
            records.append(
                record(BENCH, system, "files_per_s", round(got["files"] / seconds, 1), "files/s", **params)
            )
            records.append(
                record(BENCH, system, "tokens_per_s", round(got["tokens"] / seconds), "tokens/s", **params)
            )
            records.append(record(BENCH, system, "peak_rss_mib", got["peak_rss_mib"], "MiB", **params))
    return records


def markdown(records: list[Mapping[str, Any]]) -> list[str]:
    """The section's table."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("benchmark") != BENCH:
            continue
        row = rows.setdefault(
            r["system"],
            {
                "system": r["system"],
                "seconds": r.get("seconds"),
                "files used": r.get("used"),
                "tokens": r.get("tokens"),
                "peak RSS MiB (main)": r.get("peak_rss_mib"),
                "before build MiB": r.get("base_rss_mib"),
                "largest worker MiB": r.get("worker_rss_mib") or None,
            },
        )
        row[{"files_per_s": "files/s", "tokens_per_s": "tokens/s"}.get(r["metric"], r["metric"])] = r["value"]
    first = next(iter(records), {})
    miditok = rows.get("miditok encode loop", {}).get("files/s")
    lines = [
        f"{first.get('corpus_files', 0):,} generated MIDI files ({first.get('corpus_mib')} MiB; one piano "
        "track of 2-8 bars each), the shipped REMI tokenizer; each variant in a fresh process with an "
        f"empty cache folder; 1-minute load average {first.get('load_avg_1m')} at the start.",
        "",
        *markdown_table(
            rows.values(),
            [
                "system",
                "seconds",
                "files/s",
                "tokens/s",
                "files used",
                "tokens",
                "peak RSS MiB (main)",
                "before build MiB",
                "largest worker MiB",
            ],
        ),
        "",
    ]
    if miditok:
        ratios = ", ".join(
            f"{name}: {row['files/s'] / miditok:.2f}x"
            for name, row in rows.items()
            if name != "miditok encode loop"
        )
        lines += [f"Files/s against miditok's loop: {ratios}.", ""]
    lines += [
        "Peak memory is `resource.getrusage`'s `ru_maxrss` (peak resident set size): of the measuring "
        "process, and of its largest worker process (spawned; each loads the tokenizer and automaton). "
        "Tokens: miditok's count its own ids; gramophone's streams add BOS and EOS to each.",
    ]
    return lines


def plots(records: list[Mapping[str, Any]], out: Path) -> list[Path]:
    """Files/s per system, as bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = [r for r in records if r.get("benchmark") == BENCH and r.get("metric") == "files_per_s"]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(7, 3))
    names = [r["system"] for r in rows]
    ax.barh(names, [r["value"] for r in rows], color=["tab:gray", *["tab:blue"] * (len(rows) - 1)])
    ax.set_xlabel("files / s (higher is better)")
    ax.set_title(f"Tokenizing {rows[0].get('corpus_files', 0):,} small MIDI files")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "corpus_build.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def main(argv: Sequence[str] | None = None) -> int:
    """One variant, in the process this starts (see :func:`run`)."""
    parser = argparse.ArgumentParser(
        description="one corpus-building measurement (see gramophone.bench.corpus)"
    )
    parser.add_argument("--variant", required=True, choices=("miditok", "gramophone"))
    parser.add_argument("--root", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cache", required=True, help="the cache folder of this build")
    args = parser.parse_args(argv)
    result = _measure(args.variant, Path(args.root), args.workers, Path(args.cache))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
