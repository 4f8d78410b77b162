"""music21's Bach chorales, converted once to single-track MIDI files and cached.

What the cache holds (``cache_dir()/chorales-v1/``):

* ``names.json``: the list of chorale names (see :func:`chorale_names`) and the music21
  version it came from, so that a call on a complete cache needs no music21 at all.
* ``bach/bwv269.mid``, ...: one MIDI file per chorale (:func:`chorale_path`).

Choices made in the conversion (change them only with a new version tag, ``chorales-v2``):

* **Names.** music21's Riemenschneider iterator yields 371 numbers but only 350 distinct
  files: some harmonisations appear twice (or three times) in Riemenschneider's edition
  and music21 maps them to the same file. :func:`chorale_names` keeps each file once, in
  the order of its first number, so that no piece is duplicated in the training data.
* **Voices.** Parts whose name starts with Soprano, Alto, Tenor or Bass are the voices
  (``Soprano 1``/``Soprano 2`` both count, so is a doubled ``Bass Continuo``); the
  instruments some chorales add (horns, trumpets, timpani, continuo, organ ...) are
  dropped. When the part names do not name all four voices (three chorales have no part
  names at all), the last four parts are kept (all of them if there are four or fewer).
* **One track.** The kept voices are written by music21 to MIDI, read back with symusic
  and merged into one piano track (program 0, not drums). Per pitch, the merged track
  sounds exactly when at least one voice sounds that pitch: notes of equal pitch and
  equal onset become one (the longest), and a held note is cut where another voice
  strikes the same pitch (the new note then lasts until both voices have released it).
  Zero-length notes are dropped.
* **Meter.** Time signatures, tempos (music21 writes 120 quarter notes per minute) and
  key signatures of the score are kept (duplicates across tracks removed). A pickup
  (anacrusis) is padded with a rest so that bar lines computed from the time signatures
  fall on the score's bar lines: music21 starts a pickup measure at time 0, which would
  shift every downbeat of most chorales.
* Velocities are those music21 writes (90), the resolution is music21's (10080 ticks per
  quarter note), repeats are not expanded, lyrics and markers are dropped.

music21 and symusic are imported only where a conversion runs: importing this module is
cheap, and a complete cache is served without either.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from gramophone._files import atomic_write_bytes, cache_dir, remove_stale_temp_files
from gramophone.errors import MissingDependencyError

if TYPE_CHECKING:
    from symusic.core import ScoreTick

__all__ = [
    "CHORALES_VERSION",
    "chorale_dir",
    "chorale_midis",
    "chorale_names",
    "chorale_path",
    "layout_measures",
    "select_voices",
    "split_names",
]

CHORALES_VERSION = "v1"
"""Version tag of the converted corpus; part of the folder name, bump it to invalidate."""

SPLITS = ("train", "validation", "test")

_VOICE_RE = re.compile(r"^\s*(soprano|alto|tenor|bass)\b", re.IGNORECASE)
_INDEX_NAME = "names.json"
_MISSING_MUSIC21 = (
    "music21 is needed to build the chorale cache (pip install 'gramophone[data]'); "
    "a cache built elsewhere can be reused by pointing GRAMOPHONE_CACHE to it"
)


# ---------------------------------------------------------------------------------------
# Where things live


def chorale_dir() -> Path:
    """The folder of the converted chorales, ``cache_dir()/chorales-v1`` (created)."""
    path = cache_dir() / f"chorales-{CHORALES_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def chorale_path(name: str) -> Path:
    """Where the MIDI file of chorale *name* (e.g. ``'bach/bwv269'``) is cached."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"not a corpus name: {name!r}")
    return chorale_dir().joinpath(*parts[:-1], parts[-1] + ".mid")


def _scratch_dir() -> Path:
    path = cache_dir() / "music21-scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _music21_version() -> str | None:
    try:
        return metadata.version("music21")
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------
# Names and splits


def chorale_names() -> list[str]:
    """The chorales of music21's corpus, e.g. ``'bach/bwv269'``, in a deterministic order.

    Taken from ``music21.corpus.chorales.Iterator(numberingSystem='riemenschneider',
    returnType='filename')``: Riemenschneider's numbers 1..371 in order, each distinct
    file kept once (350 names with music21 10.5; see the module notes). The list is
    cached in ``names.json`` next to the MIDI files with the music21 version it came
    from; it is read from there (without importing music21) while that version is
    installed, or when music21 is not installed at all.
    """
    index = chorale_dir() / _INDEX_NAME
    version = _music21_version()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(index.read_text(encoding="utf-8"))
        names = data["names"]
        if (version is None or data["music21"] == version) and all(isinstance(n, str) for n in names):
            return list(names)
    if version is None:
        raise MissingDependencyError(_MISSING_MUSIC21)
    try:
        from music21 import corpus
    except ImportError as exc:  # installed but broken (or blocked)
        raise MissingDependencyError(f"{_MISSING_MUSIC21} ({exc})") from None

    iterator = corpus.chorales.Iterator(numberingSystem="riemenschneider", returnType="filename")
    names = list(dict.fromkeys(str(n) for n in iterator))
    payload = {"music21": version, "numbering": "riemenschneider", "names": names}
    atomic_write_bytes(index, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))
    return names


def split_names(
    names: Iterable[str],
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, list[str]]:
    """Split pieces into ``"train"``, ``"validation"`` and ``"test"`` by name.

    Each name goes to a split decided by a hash of ``(seed, name)`` alone (SHA-256 read
    as a number in [0, 1) and compared with the cumulative *fractions*), so the split is
    deterministic, independent of the order of *names*, and adding or removing pieces
    never moves the others. The fractions are met on average, not exactly. Repeated
    names are kept once; each list keeps the order of *names*.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    bounds = (fractions[0], fractions[0] + fractions[1])
    out: dict[str, list[str]] = {split: [] for split in SPLITS}
    for name in dict.fromkeys(names):
        digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        index = 0 if u < bounds[0] else 1 if u < bounds[1] else 2
        out[SPLITS[index]].append(name)
    return out


# ---------------------------------------------------------------------------------------
# Conversion of one chorale (runs in worker processes)


def select_voices(part_names: Sequence[str | None]) -> list[int]:
    """Indices of the parts to keep, given the score's part names (see the module notes).

    >>> select_voices(["Horn 1", "Soprano", "Alto", "Tenor", "Bass", "Continuo"])
    [1, 2, 3, 4]
    >>> select_voices([None, None, None, None, None])
    [1, 2, 3, 4]
    """
    voices = [(i, m.group(1).lower()) for i, n in enumerate(part_names) if (m := _VOICE_RE.match(n or ""))]
    if {v for _, v in voices} == {"soprano", "alto", "tenor", "bass"}:
        return [i for i, _ in voices]
    return list(range(max(0, len(part_names) - 4), len(part_names)))


@contextlib.contextmanager
def _music21_scratch(path: Path) -> Iterator[None]:
    """Point music21's scratch folder at *path* in this process only (no settings file)."""
    from music21 import environment

    env = environment.Environment()
    old = env["directoryScratch"]
    env["directoryScratch"] = str(path)
    try:
        yield
    finally:
        env["directoryScratch"] = old


def _init_worker(scratch: str) -> None:
    """Worker initializer: music21's scratch folder inside the cache, in-process only."""
    from music21 import environment

    environment.Environment()["directoryScratch"] = scratch


def layout_measures(
    measures: Sequence[tuple[float, float, float]],
    silent: Sequence[bool] | None = None,
) -> tuple[list[float], list[tuple[float, int]]]:
    """Place measures on whole bars; returns (start of each measure, bars).

    *measures* gives, for each measure in playing order (repeats expanded), its length,
    the length of a bar in its time signature and its left padding (music21's
    ``paddingLeft``: how much of the bar a pickup measure leaves out), all in quarter
    notes. A complete measure starts a bar. Incomplete ones fill bars together: a measure
    with a left padding starts that far into its bar (a pickup); the first measure, and
    a short one (at most half a bar) followed by a complete one, are upbeats that end
    with their bar; another incomplete measure continues the bar left open before it if
    it fits (the two halves of a bar split by a repeat), else it opens a bar of its own.
    What is left of a bar is a rest; an overfull measure is padded to whole bars. The
    measures marked in *silent* take no time (they start where the next one would). The
    bars (start, index of the measure whose time signature they take) are listed where a
    measure opens one.

    >>> layout_measures([(1, 4, 3), (4, 4, 0), (3, 4, 0), (1, 4, 3), (4, 4, 0), (3, 4, 0)])
    ([3.0, 4.0, 8.0, 11.0, 12.0, 16.0], [(0.0, 0), (4.0, 1), (8.0, 2), (12.0, 4), (16.0, 5)])
    """
    eps = 1e-6
    played = [i for i in range(len(measures)) if not (silent and silent[i])]
    following = dict(itertools.pairwise(played))  # next played measure
    starts: list[float] = []
    bars: list[tuple[float, int]] = []
    bar = 0.0  # start of the open bar (or of the next one)
    open_len: float | None = None  # length of the bar left open by incomplete measures
    fill = 0.0  # how much of the open bar is used
    for i, (length, bar_len, pad) in enumerate(measures):
        if silent and silent[i]:
            starts.append(bar if open_len is None else bar + fill)
            continue
        if length >= bar_len - eps:  # complete, or overfull
            if open_len is not None:
                bar += open_len
                open_len = None
            starts.append(bar)
            bars.append((bar, i))
            bar += bar_len * max(1, math.ceil(length / bar_len - eps))
            continue
        if open_len is not None:
            at = pad if pad > eps else fill
            if abs(open_len - bar_len) < eps and at >= fill - eps and at + length <= bar_len + eps:
                starts.append(bar + at)
                fill = at + length
                if fill >= bar_len - eps:
                    bar += bar_len
                    open_len = None
                continue
            bar += open_len
            open_len = None
        nxt = following.get(i)
        upbeat = i == played[0] or (
            nxt is not None and measures[nxt][0] >= measures[nxt][1] - eps and length <= bar_len / 2 + eps
        )
        if pad > eps:
            at = min(pad, bar_len - length)
        elif upbeat:
            at = bar_len - length
        else:
            at = 0.0
        starts.append(bar + at)
        bars.append((bar, i))
        fill = at + length
        if fill >= bar_len - eps:
            bar += bar_len
        else:
            open_len = bar_len
    return starts, bars


def _silent_measures(spans: Sequence[tuple[int, int]], notes: Iterable[tuple[int, int]]) -> list[bool]:
    """For each measure span [start, end) in ticks: does no note sound in it?"""
    sounding: list[list[int]] = []  # union of the notes' spans, sorted
    for start, end in sorted(notes):
        if sounding and start <= sounding[-1][1]:
            sounding[-1][1] = max(sounding[-1][1], end)
        else:
            sounding.append([start, end])
    firsts = [s for s, _ in sounding]
    silent = []
    for start, end in spans:
        i = bisect.bisect_left(firsts, end) - 1  # the last sounding span that starts before end
        silent.append(i < 0 or sounding[i][1] <= start)
    return silent


class _TimeMap:
    """Moves ticks measure by measure: from where music21 wrote them to the bar layout."""

    def __init__(self, old_starts: Sequence[int], new_starts: Sequence[int]) -> None:
        self.old = list(old_starts)
        self.new = list(new_starts)

    def start(self, tick: int) -> int:
        """The new time of an event at *tick* (in the measure that begins at or before)."""
        i = max(0, bisect.bisect_right(self.old, tick) - 1)
        return self.new[i] + tick - self.old[i]

    def end(self, tick: int) -> int:
        """The new time of a note ending at *tick* (in the measure it ends in)."""
        i = max(0, bisect.bisect_left(self.old, tick) - 1)
        return self.new[i] + tick - self.old[i]


def _dedupe_meta(events: Iterable[Any], key: Any, tmap: _TimeMap) -> list[Any]:
    """Copies of meta events, sorted and re-timed (those at time 0 stay there).

    One event per time (the first), and none that repeats the one before it (music21
    writes the score's meta events into every track).
    """
    out: list[Any] = []
    for event in sorted(events, key=lambda e: e.time):
        time = tmap.start(event.time) if event.time > 0 else 0
        if out and (out[-1].time == time or key(out[-1]) == key(event)):
            continue
        copy = event.copy()
        copy.time = time
        out.append(copy)
    return out


def _merge_tracks(src: ScoreTick, tmap: _TimeMap) -> ScoreTick:
    """One piano track holding every note of *src*; all events re-timed by *tmap*."""
    from symusic.core import NoteTick, ScoreTick, TrackTick

    raw = sorted(
        {
            (n.pitch, tmap.start(n.time), tmap.end(n.time + n.duration), n.velocity)
            for track in src.tracks
            if not track.is_drum
            for n in track.notes
            if n.duration > 0
        },
        key=lambda x: (x[0], x[1], -x[2], -x[3]),
    )
    merged: list[list[int]] = []  # [time, duration, pitch, velocity]
    group_end = 0  # end of the sound of the current pitch so far
    for pitch, time, end_time, velocity in raw:
        end = end_time
        prev = merged[-1] if merged else None
        if prev is not None and prev[2] == pitch:
            if time == prev[0]:  # same pitch, same onset: the longest one is kept already
                continue
            if time < group_end:  # strikes a pitch still held: cut, and hold on after
                prev[1] = time - prev[0]
                end = max(end, group_end)
        else:
            group_end = 0
        group_end = max(group_end, end)
        merged.append([time, end - time, pitch, velocity])
    merged.sort(key=lambda x: (x[0], x[2]))

    out = ScoreTick(src.ticks_per_quarter)
    track = TrackTick("Piano", 0, False)
    for time, duration, pitch, velocity in merged:
        track.notes.append(NoteTick(time, duration, pitch, velocity))
    out.tracks.append(track)
    for ts in _dedupe_meta(src.time_signatures, lambda e: (e.numerator, e.denominator), tmap):
        out.time_signatures.append(ts)
    for tempo in _dedupe_meta(src.tempos, lambda e: e.mspq, tmap):
        out.tempos.append(tempo)
    for ks in _dedupe_meta(src.key_signatures, lambda e: (e.key, e.tonality), tmap):
        out.key_signatures.append(ks)
    return out


def _expanded_measures(score: Any) -> list[Any]:
    """The measures of the score's first part in playing order (repeats written out).

    music21's MIDI writer expands the repeats of every part the same way, so these are
    the measures of the MIDI file. Where the repeats are malformed (music21 cannot
    expand them), they are removed from the whole score and each measure plays once.
    """
    from music21 import bar, repeat, spanner, stream

    first = score.parts.first()
    try:
        expanded = first.expandRepeats()
    except Exception:  # music21's ExpanderException: e.g. a start repeat after an end repeat
        for measure in score.recurse().getElementsByClass(stream.Measure):
            if isinstance(measure.leftBarline, bar.Repeat):
                measure.leftBarline = None
            if isinstance(measure.rightBarline, bar.Repeat):
                measure.rightBarline = bar.Barline("regular")
        for mark in list(score.recurse().getElementsByClass(repeat.RepeatExpression)):
            mark.activeSite.remove(mark)
        for bracket in list(score.spannerBundle.getByClass(spanner.RepeatBracket)):
            score.remove(bracket, recurse=True)
        expanded = first
    return list(expanded.getElementsByClass(stream.Measure))


def _measures_and_midi(
    score: Any, scratch: Path
) -> tuple[list[Any], list[tuple[float, float, float]], list[tuple[int, int]], ScoreTick]:
    """The measures of the first part in playing order, each one's ``(length, bar length,
    pickup padding)`` in quarter notes and time signature, and the score as music21's MIDI
    writer plays it (read back with symusic). :class:`ValueError` without measures, or when
    the writer plays more than the measures listed (repeats it expanded differently)."""
    from music21 import meter
    from symusic.core import ScoreTick

    measures = _expanded_measures(score)
    if not measures:
        raise ValueError("no measures")
    ts = measures[0].timeSignature or measures[0].getContextByClass(meter.TimeSignature)
    ts = ts or meter.TimeSignature("4/4")
    rows: list[tuple[float, float, float]] = []
    signatures: list[tuple[int, int]] = []
    for m in measures:
        ts = m.timeSignature or ts
        rows.append(
            (float(m.duration.quarterLength), float(ts.barDuration.quarterLength), float(m.paddingLeft))
        )
        signatures.append((int(ts.numerator), int(ts.denominator)))
    fd, tmp = tempfile.mkstemp(prefix="gramophone-", suffix=".mid", dir=scratch)
    os.close(fd)
    try:
        score.write("midi", fp=tmp)
        src = ScoreTick.from_file(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
    tpq = src.ticks_per_quarter
    # The writer expands the repeats itself: check that it played the measures listed here.
    written_end = max((n.time + n.duration for t in src.tracks for n in t.notes), default=0)
    measures_end = (float(measures[-1].offset) + rows[-1][0]) * tpq
    if written_end > measures_end + 1:
        raise ValueError(
            f"music21's MIDI ends at {written_end / tpq} quarter notes, its measures at {measures_end / tpq}"
        )
    return measures, rows, signatures, src


def bar_time_signatures(
    bars: Sequence[tuple[float, int]], signatures: Sequence[tuple[int, int]], tpq: int
) -> list[Any]:
    """A time signature at each bar of the layout (:func:`layout_measures`) whose measure's
    meter differs from the bar before."""
    from symusic.core import TimeSignatureTick

    out = []
    last: tuple[int, int] | None = None
    for start, i in bars:
        if signatures[i] != last:
            last = signatures[i]
            out.append(TimeSignatureTick(round(start * tpq), *last))
    return out


def _chorale_to_score(name: str, scratch: Path) -> ScoreTick:
    """Parse chorale *name* with music21 and make the single-track symusic score."""
    from music21 import corpus, stream

    score = corpus.parse(name)
    if not isinstance(score, stream.Score):
        raise TypeError(f"music21 parsed {name} as {type(score).__name__}, not a Score")
    parts = list(score.parts)
    keep = select_voices([p.partName for p in parts])
    for i, part in enumerate(parts):
        if i not in keep:
            score.remove(part)

    measures, rows, signatures, src = _measures_and_midi(score, scratch)
    tpq = src.ticks_per_quarter
    # Measures where no voice sings (instrumental interludes) are left out.
    spans = [
        (round(float(m.offset) * tpq), round((float(m.offset) + r[0]) * tpq))
        for m, r in zip(measures, rows, strict=True)
    ]
    silent = _silent_measures(
        spans,
        ((n.time, n.time + n.duration) for t in src.tracks for n in t.notes if n.duration > 0),
    )
    new_starts, bars = layout_measures(rows, silent)
    tmap = _TimeMap([start for start, _ in spans], [round(t * tpq) for t in new_starts])
    out = _merge_tracks(src, tmap)
    out.time_signatures.clear()  # written again where the bars of the layout change meter
    for sig in bar_time_signatures(bars, signatures, tpq):
        out.time_signatures.append(sig)
    if out.note_num() == 0:
        raise ValueError("no notes")
    return out


def _convert_one(name: str, dest: str, scratch: str) -> tuple[str, str | None]:
    """Convert one chorale into *dest* (atomically); returns (name, error or None)."""
    try:
        data = _chorale_to_score(name, Path(scratch)).dumps_midi()
        atomic_write_bytes(Path(dest), data)
    except Exception as exc:  # reported by name by the caller; never kills the run
        return name, f"{type(exc).__name__}: {exc}"
    return name, None


# ---------------------------------------------------------------------------------------
# The cache


def _is_cached(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def chorale_midis(
    progress: bool = True,
    workers: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """The chorales as MIDI files, converting the ones not cached yet.

    Converts each chorale of *names* (default: :func:`chorale_names`) once into
    :func:`chorale_path` (see the module notes for what the files hold), in parallel
    over *workers* processes (default ``os.cpu_count()``; 1 converts in this process),
    with a progress bar on stderr unless *progress* is false. Each file is written to a
    temp file and renamed into place, so an interrupted run leaves no broken MIDI and the
    next call converts only what is missing. A complete cache is answered without
    importing music21. A chorale that fails to convert is reported in a
    ``RuntimeWarning`` naming it, and left out.

    Returns the paths of the chorales that exist, in the order of *names*.
    """
    todo_names = chorale_names() if names is None else list(dict.fromkeys(names))
    paths = {name: chorale_path(name) for name in todo_names}
    todo = [name for name in todo_names if not _is_cached(paths[name])]
    if todo:
        if _music21_version() is None:
            raise MissingDependencyError(_MISSING_MUSIC21)
        remove_stale_temp_files(chorale_dir())
        failures = _convert_all(todo, paths, progress=progress, workers=workers)
        for name, error in failures:
            warnings.warn(
                f"chorale {name} could not be converted to MIDI and is skipped: {error}",
                RuntimeWarning,
                stacklevel=2,
            )
    return [paths[name] for name in todo_names if _is_cached(paths[name])]


def _convert_all(
    todo: list[str], paths: dict[str, Path], *, progress: bool, workers: int | None
) -> list[tuple[str, str]]:
    """Convert *todo*; returns the failures as (name, error), in the order of *todo*."""
    scratch = _scratch_dir()
    n_workers = min(len(todo), max(1, workers if workers is not None else os.cpu_count() or 1))
    errors: dict[str, str] = {}
    bar = tqdm(
        total=len(todo),
        desc="chorales -> MIDI",
        unit="chorale",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        if n_workers == 1:
            with _music21_scratch(scratch):
                for name in todo:
                    _, error = _convert_one(name, str(paths[name]), str(scratch))
                    if error is not None:
                        errors[name] = error
                    bar.update(1)
        else:
            # spawn, not fork: the caller may hold threads (torch, JAX) that fork would copy
            # in a locked state.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=n_workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(str(scratch),),
            ) as pool:
                futures = {
                    pool.submit(_convert_one, name, str(paths[name]), str(scratch)): name for name in todo
                }
                try:
                    for future in as_completed(futures):
                        name = futures[future]
                        try:
                            _, error = future.result()
                        except Exception as exc:  # a worker died (killed, out of memory)
                            error = f"worker failed: {type(exc).__name__}: {exc}"
                        if error is not None:
                            errors[name] = error
                        bar.update(1)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    return [(name, errors[name]) for name in todo if name in errors]
