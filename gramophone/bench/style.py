"""The style a LoRA fine-tune aims at: Bach's chorales in minor keys, and how far a model's
pieces lean to minor (the seed's Model 0 and its fine-tune, ``benchmarks/bench_hf.py``).

* :func:`chorale_modes`: each chorale's mode, from the key signature music21 writes into
  its MIDI file (the corpus's own annotation: 161 chorales in minor, 189 in major).
* :func:`write_subset`: a folder of links to the MIDI files of the chorales of one mode in
  some of gramophone's splits (:func:`~gramophone.data.split_names`, the chorale model's
  own), for ``gramophone train --data DIR``. The minor chorales of the training split
  fine-tune; those of the validation and test splits, which neither the base model nor
  the fine-tune ever saw, measure.
* :func:`estimate_key`: the Krumhansl-Kessler key of a duration-weighted pitch-class
  histogram (sampled pieces carry no key signature: the shipped REMI config has no key
  tokens). The style statistic is the share of pieces it calls minor.
* :func:`pieces_nll`: a model's NLL per token over whole pieces (not transposed).

``python -m gramophone.bench.style --mode minor --splits train --out DIR`` writes a subset.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["chorale_modes", "estimate_key", "key_of", "minor_share", "pieces_nll", "write_subset"]

# Krumhansl & Kessler (1982) probe-tone profiles, C major and C minor.
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_PROFILES = np.stack([np.roll(p, t) for p in (_MAJOR, _MINOR) for t in range(12)])  # (24, 12)
MODES = ("major", "minor")


def chorale_modes(names: Iterable[str] | None = None) -> dict[str, str]:
    """Chorale name -> ``"major"`` or ``"minor"``: the mode of the first key signature in
    its MIDI file (converted on demand; chorales without one are left out)."""
    from symusic.core import ScoreTick

    from gramophone.data import chorale_midis, chorale_names, chorale_path

    chosen = list(chorale_names() if names is None else names)
    chorale_midis(progress=False, names=chosen)
    out = {}
    for name in chosen:
        keys = ScoreTick.from_file(str(chorale_path(name))).key_signatures
        if len(keys):
            out[name] = MODES[int(keys[0].tonality)]
    return out


def write_subset(dest: str | os.PathLike[str], mode: str, splits: Sequence[str] = ("train",)) -> list[Path]:
    """Link into ``dest`` (created; earlier links removed) the MIDI files of the chorales in
    ``mode`` whose split (:func:`~gramophone.data.split_names`, seed 0) is one of
    ``splits``; returns the links."""
    from gramophone.data import chorale_names, chorale_path, split_names

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    parts = split_names(chorale_names())
    names = [n for s in splits for n in parts[s]]
    modes = chorale_modes(names)
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.mid"):
        if old.is_symlink():
            old.unlink()
    links = []
    for name in names:
        if modes.get(name) == mode:
            src = chorale_path(name).resolve()
            link = folder / src.name
            link.symlink_to(src)
            links.append(link)
    return links


def estimate_key(weights: np.ndarray) -> tuple[int, str, float]:
    """``(tonic, mode, r)``: the key whose Krumhansl-Kessler profile correlates best (Pearson
    ``r``) with the pitch-class ``weights`` ``float[12]`` (C = 0). A piece without notes is
    ``(0, "major", nan)``.

    >>> estimate_key(np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1.0]))[:2]  # C major scale
    (0, 'major')
    >>> estimate_key(np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1.0]))[:2]  # C harmonic minor
    (0, 'minor')
    """
    w = np.asarray(weights, dtype=np.float64)
    if not w.any():
        return 0, "major", float("nan")
    r = np.array([np.corrcoef(w, p)[0, 1] for p in _PROFILES])
    best = int(np.nanargmax(r))
    return best % 12, MODES[best // 12], float(r[best])


def key_of(score: Any) -> tuple[int, str, float]:
    """:func:`estimate_key` of a symusic score, each non-drum note weighted by its duration."""
    weights = np.zeros(12)
    for track in score.tracks:
        if track.is_drum:
            continue
        for note in track.notes:
            weights[note.pitch % 12] += max(int(note.duration), 1)
    return estimate_key(weights)


def minor_share(scores: Iterable[Any]) -> tuple[float, int]:
    """``(share called minor, pieces with notes)`` over symusic scores."""
    modes = [key_of(s) for s in scores]
    keyed = [m for _, m, r in modes if np.isfinite(r)]
    return (sum(m == "minor" for m in keyed) / len(keyed) if keyed else float("nan")), len(keyed)


def pieces_nll(
    backend: Any, params: Any, names: Sequence[str], *, seq_len: int = 512, tokenizer: Any = None
) -> dict[str, float]:
    """A model's NLL per token (``nll``; ``nll_masked``: renormalised over the tokens the
    grammar allows; ``forbidden_mass``) over the chorales ``names``, whole and untransposed,
    every target scored once (:func:`~gramophone.training.evaluate_split` over every split
    of a dataset of those pieces); ``tokens`` and ``pieces`` counted."""
    from gramophone.data import chorale_midis
    from gramophone.data.dataset import DataConfig, build_dataset
    from gramophone.tokenizers import load_tokenizer, model_automaton
    from gramophone.training import evaluate_split

    tok = tokenizer if tokenizer is not None else load_tokenizer()
    paths = chorale_midis(progress=False, names=list(names))
    config = DataConfig(transpose=(0, 0))
    data = build_dataset(tok, model_automaton(tok), config, names=list(names), paths=paths, progress=False)
    total = {"nll": 0.0, "nll_masked": 0.0, "forbidden_mass": 0.0}
    tokens = 0
    for split in data.splits.values():
        if not split.num_targets:
            continue
        got = evaluate_split(backend, params, split, seq_len, batch_size=max(1, 16384 // seq_len))
        for key in total:
            total[key] += got[key] * got["tokens"]
        tokens += int(got["tokens"])
    out = {k: v / max(tokens, 1) for k, v in total.items()}
    return {**out, "tokens": tokens, "pieces": len(names)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="link the chorales of one mode into a folder (--data DIR)")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument(
        "--splits", default="train", help="comma-separated: train, validation, test (the chorale split)"
    )
    parser.add_argument("--out", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    links = write_subset(args.out, args.mode, args.splits.split(","))
    print(f"{args.out}: {len(links)} chorales in {args.mode} ({args.splits})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
