"""Sampled pieces next to the chorales: the four statistics and two pictures.

``gramophone bench --only music`` (this section) decodes 32 pieces with the bundled model
at each sampling setting of :func:`settings` (torch, seed 0, as ``gramophone decode
--backend torch --num 32 --formats midi``), takes every chorale of the held-out test split,
and records for each set the mean of each statistic of :mod:`gramophone.bench.music_stats`
(MusPy's definitions) with the per-piece values, and each sampled set's distance from the
chorales against issue 11's targets (:func:`target_gaps`); the decode default
(:data:`~gramophone.decoding.rules.DEFAULT_SAMPLING`) was chosen with :func:`best_setting`.
Its plots, drawn for the default setting, are the two pictures of the README:

* :func:`stats_picture`: pitch-class histograms of both sets side by side, and the four
  statistics as box plots (``music-stats.png``);
* :func:`roll_picture`: a piano roll of a sampled piece above one of a chorale, on one time
  and pitch scale (``sampled-vs-chorale.png``).

Both take MIDI files, so any two sets can be compared. ``python -m gramophone.bench.music
--out DIR`` draws the two pictures alone (``--num 32``); the README's are those of the
committed run, ``benchmarks/results/model/``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gramophone.bench.common import markdown_table, record
from gramophone.bench.music_stats import (
    SILENCE,
    STATS,
    mean_stats,
    midi_stats,
    muspy_available,
    pitch_class_histogram,
    silence_profile,
)

__all__ = ["markdown", "plots", "roll_picture", "run", "stats_picture"]

SAMPLED = "sampled (bundled model)"
REFERENCE = "held-out chorales"
PICTURES = ("music-stats.png", "sampled-vs-chorale.png")
_PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_COLORS = ("#2b5aa8", "#c9732c")
_TITLES = {
    "pitch_class_entropy": "pitch-class entropy (bits)",
    "scale_consistency": "scale consistency",
    "polyphony": "polyphony (pitches)",
    "empty_beat_rate": "empty-beat rate",
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def stats_picture(
    sampled: Sequence[str | os.PathLike[str]],
    reference: Sequence[str | os.PathLike[str]],
    png: str | os.PathLike[str],
    labels: tuple[str, str] = (SAMPLED, REFERENCE),
) -> Path:
    """One PNG comparing two sets of MIDI files: the mean pitch-class histogram of each (a
    bar per set and pitch class, the spread over pieces as a line), and each of the four
    statistics as a box plot per set."""
    from symusic import Score

    sets = [list(sampled), list(reference)]
    hists = [np.array([pitch_class_histogram(Score(str(p))) for p in paths]) for paths in sets]
    stats = [midi_stats(paths) for paths in sets]
    fig = _figure(15.0, 4.2)
    grid = fig.add_gridspec(1, 5, width_ratios=[3.4, 1, 1, 1, 1], wspace=0.45)
    ax = fig.add_subplot(grid[0, 0])
    width = 0.4
    x = np.arange(12)
    for j, (h, label) in enumerate(zip(hists, labels, strict=True)):
        ax.bar(
            x + (j - 0.5) * width,
            h.mean(axis=0),
            width,
            yerr=h.std(axis=0),
            color=_COLORS[j],
            error_kw={"elinewidth": 0.8, "ecolor": "0.35"},
            label=f"{label} (n = {len(h)})",
        )
    ax.set_xticks(x, _PITCH_CLASSES)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("share of notes")
    ax.set_title("pitch-class histogram (mean over pieces, ± sd)")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    for k, key in enumerate(STATS):
        ax = fig.add_subplot(grid[0, k + 1])
        values = [np.array([s[key] for s in rows], dtype=np.float64) for rows in stats]
        box = ax.boxplot(
            [v[np.isfinite(v)] for v in values], widths=0.55, patch_artist=True, medianprops={"color": "k"}
        )
        for patch, color in zip(box["boxes"], _COLORS, strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.75)
        ax.set_xticks([1, 2], ["sampled", "chorales"], fontsize=8)
        ax.set_title(_TITLES[key], fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.88, bottom=0.11)
    out = Path(png)
    fig.savefig(out)
    return out


def roll_picture(
    sampled: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    png: str | os.PathLike[str],
    titles: tuple[str, str] | None = None,
) -> Path:
    """One PNG: the piano roll of ``sampled`` above that of ``reference`` (MIDI files), on
    one time axis (quarter notes) and one pitch axis."""
    from symusic import Score

    from gramophone.audio import draw_piano_roll

    titles = titles or (
        f"sampled with the bundled model (masked decoding): {Path(sampled).stem}",
        f"Bach chorale (held out from training): {Path(reference).stem}",
    )
    fig = _figure(13.0, 6.4)
    top = fig.add_subplot(2, 1, 1)
    bottom = fig.add_subplot(2, 1, 2, sharex=top, sharey=top)
    scores: list[Any] = [Score(str(sampled)), Score(str(reference))]
    ends = [draw_piano_roll(ax, sc, t) for ax, sc, t in zip((top, bottom), scores, titles, strict=True)]
    pitches = [n.pitch for sc in scores for t in sc.tracks for n in t.notes]
    if pitches:  # the axes are shared: each drawing set the range of its own notes
        top.set_ylim(min(pitches) - 2, max(pitches) + 2)
    top.set_xlim(0, max(ends))
    top.set_xlabel("")
    fig.tight_layout()
    out = Path(png)
    fig.savefig(out)
    return out


# ----------------------------------------------------------------------------- the bench section

#: Issue 11's targets for pieces sampled at the default settings, next to held-out
#: chorales: per statistic, the tolerance and whether it is relative to the chorales' mean.
TOLERANCES: dict[str, tuple[float, bool]] = {
    "pitch_class_entropy": (0.10, True),
    "scale_consistency": (0.10, True),
    "polyphony": (0.15, True),
    "empty_beat_rate": (0.03, False),
}


def settings() -> tuple[Any, ...]:
    """The sampling settings the full section compares (the decode default is chosen among
    them, see :func:`best_setting`): temperatures 1 to 0.7, nucleus sampling at 0.95 and
    0.9, and the two together."""
    from gramophone.decoding.rules import Sampling

    return (
        Sampling(),
        Sampling(temperature=0.9),
        Sampling(temperature=0.8),
        Sampling(temperature=0.7),
        Sampling(top_p=0.95),
        Sampling(top_p=0.9),
        Sampling(temperature=0.9, top_p=0.95),
        Sampling(temperature=0.9, top_p=0.9),
    )


def setting_label(sampling: Any) -> str:
    """``temperature 0.9, top-p 0.95`` (what the decode options say)."""
    if sampling.greedy:
        return "greedy"
    parts = [f"temperature {sampling.temperature:g}"]
    if sampling.top_k is not None:
        parts.append(f"top-k {sampling.top_k}")
    if sampling.top_p is not None and sampling.top_p < 1:
        parts.append(f"top-p {sampling.top_p:g}")
    return ", ".join(parts)


def target_gaps(sampled: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Per statistic, the distance of ``sampled`` from ``reference`` (means) as a share of
    its tolerance (:data:`TOLERANCES`): at most 1 is within the target.

    >>> target_gaps({"polyphony": 3.45, "empty_beat_rate": 0.04},
    ...             {"polyphony": 3.0, "empty_beat_rate": 0.01})
    {'polyphony': 1.0, 'empty_beat_rate': 1.0}
    """
    out = {}
    for key, value in sampled.items():
        if key not in TOLERANCES:
            continue
        tol, relative = TOLERANCES[key]
        allowed = tol * abs(reference[key]) if relative else tol
        out[key] = round(abs(value - reference[key]) / allowed, 6)
    return out


def best_setting(gaps: dict[str, dict[str, float]]) -> str:
    """The setting (label) whose largest gap is smallest: the one furthest inside the
    targets, or nearest to them when none is inside."""
    return min(gaps, key=lambda label: max(gaps[label].values()))


def _sampled(n: int, folder: Path, sampling: Any = None) -> list[Path]:
    """``n`` pieces decoded with the bundled model into ``folder`` (MIDI only), at
    ``sampling`` (default: the decode default)."""
    from gramophone.decoding import DecodeOptions, decode_to_folder

    extra = {} if sampling is None else {"sampling": sampling}
    options = DecodeOptions(
        backend="torch", out=folder, num=n, seed=0, formats=("midi",), progress=False, **extra
    )
    decode_to_folder(options)
    return sorted(folder.glob("piece-*.mid"))


def _chorales(n: int | None) -> list[Path]:
    """The first ``n`` chorales of the held-out test split (``None``: all of them)."""
    from gramophone.data import chorale_midis, chorale_names, split_names

    test = split_names(chorale_names())["test"][:n]
    return chorale_midis(progress=False, names=test)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Records ``music``: per set and statistic the mean (``value``), the per-piece
    ``values`` and, for sampled sets, the ``target_gap`` (:func:`target_gaps`); per set the
    MIDI files (metric ``files``) that :func:`plots` draws. Sampled sets: one per sampling
    setting (key ``setting``; ``default``: the decode default), ``n`` = 32 pieces each
    (quick: 4 pieces, two settings); the reference: every held-out test chorale (quick: 4)."""
    from gramophone._files import cache_dir
    from gramophone.decoding.rules import DEFAULT_SAMPLING

    n = 4 if quick else 32
    chosen = settings()[:2] if quick else settings()
    if DEFAULT_SAMPLING not in chosen:
        chosen = (DEFAULT_SAMPLING, *chosen)
    engine = "muspy" if muspy_available() else "numpy"
    reference = _chorales(4 if quick else None)
    ref_stats = midi_stats(reference)
    ref_means = mean_stats(ref_stats)
    records = [
        record(
            "music",
            REFERENCE,
            key,
            value,
            "",
            pieces=len(reference),
            values=_rounded(ref_stats, key),
            via=engine,
        )
        for key, value in ref_means.items()
    ]
    records.append(
        record("music", REFERENCE, "files", [str(p) for p in reference], "paths", pieces=len(reference))
    )
    records += _silence_records(REFERENCE, reference, pieces=len(reference))
    for i, sampling in enumerate(chosen):
        label = setting_label(sampling)
        default = sampling == DEFAULT_SAMPLING
        sampled = _sampled(n, cache_dir() / "bench-music" / f"sampled-{n}-{i}", sampling)
        stats = midi_stats(sampled)
        means = mean_stats(stats)
        gaps = target_gaps(means, ref_means)
        system = SAMPLED if default else f"sampled ({label})"
        keys = {"pieces": len(sampled), "setting": label, "default": default}
        for key, value in means.items():
            records.append(
                record(
                    "music",
                    system,
                    key,
                    value,
                    "",
                    values=_rounded(stats, key),
                    via=engine,
                    target_gap=gaps[key],
                    **keys,
                )
            )
        records.append(record("music", system, "files", [str(p) for p in sampled], "paths", **keys))
        if default:
            records += _silence_records(system, sampled, **keys)
    return records


def _silence_records(system: str, paths: Sequence[Path], **keys: Any) -> list[dict[str, Any]]:
    """Means of :func:`~gramophone.bench.music_stats.silence_profile` over ``paths``: where
    the empty beats are (the opening's upbeat, or later)."""
    from symusic import Score

    means = mean_stats(silence_profile(Score(str(p))) for p in paths)
    return [record("music", system, key, round(means[key], 6), "", **keys) for key in SILENCE]


def _rounded(stats: Sequence[dict[str, float]], key: str) -> list[float]:
    return [round(s[key], 6) for s in stats]


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    table: dict[str, dict[str, Any]] = {}
    gaps: dict[str, dict[str, float]] = {}
    for r in records:
        if r["metric"] in STATS:
            row = table.setdefault(r["system"], {"system": r["system"], "pieces": r["pieces"]})
            row[r["metric"]] = r["value"]
            if "target_gap" in r:
                gaps.setdefault(r.get("setting", r["system"]), {})[r["metric"]] = r["target_gap"]
                row["setting"] = r.get("setting", "")
                row["default"] = "yes" if r.get("default") else ""
    for row in table.values():
        got = gaps.get(row.get("setting", row["system"]))
        if got:
            row["worst_gap"] = round(max(got.values()), 3)
            row["within_targets"] = "yes" if max(got.values()) <= 1 else "no"
    via = next((r.get("via") for r in records if r.get("via")), "numpy")
    lines = [
        "Means over pieces (MusPy's definitions; computed with "
        f"{'MusPy' if via == 'muspy' else 'the numpy implementation, MusPy not installed'}; the empty-beat "
        "rate is ours: see `gramophone/bench/music_stats.py`). Sampled pieces: the bundled model, "
        "seed 0, masked decoding, one row per sampling setting (`default`: the decode default). "
        "`worst_gap`: the largest distance from the held-out chorales as a share of its target "
        "(pitch-class entropy and scale consistency within 10%, polyphony within 15%, empty-beat "
        "rate within 0.03): at most 1 is within every target.",
        "",
        *markdown_table(
            table.values(), ["system", "setting", "default", "pieces", *STATS, "worst_gap", "within_targets"]
        ),
    ]
    if gaps:
        lines += ["", f"Smallest worst gap in this run: {best_setting(gaps)}."]
    silence: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["metric"] in SILENCE:
            silence.setdefault(r["system"], {"system": r["system"]})[r["metric"]] = r["value"]
    if silence:
        lines += [
            "",
            "Where the empty beats are (means over pieces; not targets): `beats`, the beats up to "
            "the last note's end (the empty-beat rate's denominator); `opening_beats`, the empty "
            "beats before the first note's beat (an upbeat); `empty_beat_rate_after_opening`, the "
            "rate from that beat on.",
            "",
            *markdown_table(silence.values(), ["system", *SILENCE]),
        ]
    return lines


def plots(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    files = {r["system"]: [Path(p) for p in r["value"]] for r in records if r["metric"] == "files"}
    sampled, reference = files.get(SAMPLED, []), files.get(REFERENCE, [])
    if not sampled or not reference or not all(p.is_file() for p in (*sampled, *reference)):
        return []
    return [
        stats_picture(sampled, reference, out / PICTURES[0]),
        roll_picture(sampled[0], reference[0], out / PICTURES[1]),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gramophone.bench.music --out DIR [--num N]``: the section's two pictures
    (and its table, printed) into ``DIR`` (docs/ for the README's)."""
    parser = argparse.ArgumentParser(prog="python -m gramophone.bench.music", description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder for the two PNG files")
    parser.add_argument("--num", type=int, default=32, help="pieces per set (default 32)")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sampled = _sampled(args.num, Path(tmp) / "sampled")
        reference = _chorales(args.num)
        args.out.mkdir(parents=True, exist_ok=True)
        stats_picture(sampled, reference, args.out / PICTURES[0])
        roll_picture(sampled[0], reference[0], args.out / PICTURES[1])
        print(f"wrote {args.out / PICTURES[0]} and {args.out / PICTURES[1]}")
        for system, paths in ((SAMPLED, sampled), (REFERENCE, reference)):
            means = mean_stats(midi_stats(paths))
            print(f"{system} (n = {len(paths)}): " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
