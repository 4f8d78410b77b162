"""Listening to and looking at decoded pieces: MIDI -> WAV (FluidSynth) and piano rolls (PNG).

WAV files are rendered by FluidSynth through ``pretty_midi`` with the General MIDI
soundfont that ``pretty_midi`` ships (``TimGM6mb.sf2``). FluidSynth is a system library
(Debian: ``libfluidsynth3``) driven by the ``pyfluidsynth`` package; when either is missing
:func:`render_wav` raises :class:`AudioUnavailableError` with what to install, and callers
write everything else. Piano rolls are drawn with matplotlib's Agg canvas (no display, no
global pyplot state).

Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import inspect
import os
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gramophone.errors import MissingDependencyError

if TYPE_CHECKING:
    from symusic.core import ScoreTick

__all__ = [
    "AudioUnavailableError",
    "check_wav",
    "draw_piano_roll",
    "piano_roll",
    "render_wav",
    "soundfont_path",
]


class AudioUnavailableError(MissingDependencyError):
    """FluidSynth (the library or its Python binding), pretty_midi or matplotlib (piano
    rolls) is not installed."""


def soundfont_path() -> Path:
    """The General MIDI soundfont shipped with ``pretty_midi``."""
    try:
        import pretty_midi
    except ImportError as exc:
        raise AudioUnavailableError(
            f"pretty_midi is not installed ({exc}): pip install 'gramophone[audio]'"
        ) from None
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def check_wav() -> Path:
    """The soundfont, once pretty_midi and FluidSynth are known to load: what
    :func:`render_wav` needs; :class:`AudioUnavailableError` saying what to install."""
    sf2 = soundfont_path()
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth; loads libfluidsynth)
    except (ImportError, OSError) as exc:
        raise AudioUnavailableError(
            f"FluidSynth is not available ({exc}); install the library (Debian: apt-get install "
            "libfluidsynth3) and pip install pyfluidsynth"
        ) from None
    return sf2


def render_wav(
    midi_path: str | os.PathLike[str], wav_path: str | os.PathLike[str], sample_rate: int = 22050
) -> Path:
    """Render a MIDI file to a 16-bit mono WAV file with FluidSynth; returns its path.

    Raises :class:`AudioUnavailableError` when FluidSynth cannot be used.
    """
    sf2 = check_wav()
    import pretty_midi

    try:
        midi = pretty_midi.PrettyMIDI(str(midi_path))
        # pretty_midi >= 0.2.11 takes the soundfont as ``synthesizer`` (``sf2_path`` before)
        new_api = "synthesizer" in inspect.signature(midi.fluidsynth).parameters
        font = {"synthesizer": str(sf2)} if new_api else {"sf2_path": str(sf2)}
        audio = midi.fluidsynth(fs=sample_rate, **font)  # float, peak-normalized
    except (ImportError, OSError) as exc:
        raise AudioUnavailableError(f"FluidSynth failed to start ({exc})") from None
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float64))
    if audio.size == 0:
        audio = np.zeros(sample_rate // 10)
    pcm = (np.clip(audio, -1.0, 1.0) * 0.9 * 32767).astype("<i2")
    out = Path(wav_path)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return out


def _bar_lines(score: ScoreTick, end: int) -> list[float]:
    """Bar starts in quarter notes, from the score's time signatures (4/4 if none)."""
    tpq = score.ticks_per_quarter
    sigs = sorted((ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures) or [(0, 4, 4)]
    lines: list[float] = []
    for i, (time, num, den) in enumerate(sigs):
        stop = sigs[i + 1][0] if i + 1 < len(sigs) else max(end, time + 1)
        step = max(1.0, num * tpq * 4 / den)
        t = float(time)
        while t < stop:
            lines.append(t / tpq)
            t += step
    return lines


def _score(score: ScoreTick | str | os.PathLike[str]) -> Any:
    """A symusic score, read from a MIDI file when given a path."""
    if hasattr(score, "tracks"):
        return score
    from symusic import Score

    return Score(str(score))


def draw_piano_roll(ax: Any, score: ScoreTick | str | os.PathLike[str], title: str = "") -> float:
    """Draw the notes of a score (or a MIDI file) on the matplotlib axes ``ax``: time in
    quarter notes, one row per pitch, bar lines dotted, darker for louder notes; returns
    the piece's length in quarter notes (``ax=None``: only that)."""
    sc = _score(score)
    tpq = sc.ticks_per_quarter
    notes = [(n.time, n.duration, n.pitch, n.velocity) for t in sc.tracks for n in t.notes]
    arr = np.array(notes, dtype=np.float64).reshape(-1, 4)
    end = int((arr[:, 0] + arr[:, 1]).max()) if len(arr) else 4 * tpq
    if ax is None:
        return end / tpq
    if len(arr):
        shade = 0.35 + 0.65 * arr[:, 3] / 127.0
        colors = [(0.1, 0.25, 0.6, a) for a in shade]
        ax.barh(arr[:, 2], arr[:, 1] / tpq, left=arr[:, 0] / tpq, height=0.8, color=colors, edgecolor="none")
        ax.set_ylim(arr[:, 2].min() - 2, arr[:, 2].max() + 2)
    for x in _bar_lines(sc, end):
        ax.axvline(x, color="0.6", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, end / tpq)
    ax.set_xlabel("time (quarter notes)")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title)
    return end / tpq


def piano_roll(
    score: ScoreTick | str | os.PathLike[str], png_path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Draw the notes of a ``symusic`` score (or a MIDI file) as a piano roll PNG: time in
    quarter notes, one row per pitch, bar lines dotted, darker for louder notes.

    Raises :class:`AudioUnavailableError` when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise AudioUnavailableError(
            f"matplotlib is not installed ({exc}): pip install 'gramophone[audio]'"
        ) from None

    sc = _score(score)
    end_quarters = draw_piano_roll(None, sc)
    fig = Figure(figsize=(max(6.0, min(24.0, end_quarters / 4)), 4), dpi=100)
    FigureCanvasAgg(fig)
    draw_piano_roll(fig.add_subplot(), sc, title=title)
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out)
    return out
