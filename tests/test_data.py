"""The corpus cache: splits, voice selection, track merging, MIDI conversion and reuse."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from symusic.core import NoteTick, ScoreTick, TempoTick, TimeSignatureTick, TrackTick

from gramophone import _files as cache
from gramophone.data import chorale_midis, chorale_names, chorale_path, chorales, split_names

# ---------------------------------------------------------------------------------------
# Splits


def test_split_is_deterministic_disjoint_and_covering() -> None:
    names = [f"bach/bwv{i}.{j}" for i in range(400) for j in range(5)]
    splits = split_names(names)
    assert list(splits) == ["train", "validation", "test"]
    assert splits == split_names(list(names))
    sets = {k: set(v) for k, v in splits.items()}
    assert sum(len(s) for s in sets.values()) == len(names)
    assert set().union(*sets.values()) == set(names)
    for share, split in zip((0.8, 0.1, 0.1), splits, strict=True):
        assert abs(len(splits[split]) / len(names) - share) < 0.03, (split, len(splits[split]))
    for members in splits.values():  # each list keeps the order of the input
        assert members == sorted(members, key=names.index)


def test_split_is_by_name_only() -> None:
    names = [f"piece{i}" for i in range(500)]
    base = split_names(names, seed=3)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    assert {k: set(v) for k, v in split_names(shuffled, seed=3).items()} == {
        k: set(v) for k, v in base.items()
    }
    # Adding pieces (and repeating one) moves none of the others.
    grown = split_names([*names, "new1", "new2", "piece7"], seed=3)
    for split, members in base.items():
        assert [n for n in grown[split] if not n.startswith("new")] == members
    assert split_names(names, seed=4) != base  # the seed matters
    assert split_names(names, seed=3, fractions=(1.0, 0.0, 0.0))["train"] == names
    assert split_names([]) == {"train": [], "validation": [], "test": []}


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.05, -0.05)])
def test_split_rejects_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_names(["a"], fractions=fractions)


# ---------------------------------------------------------------------------------------
# Pieces of the conversion that need no music21


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAMOPHONE_CACHE", str(tmp_path / "a" / "b"))
    assert cache.cache_dir() == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert chorale_path("bach/bwv269") == tmp_path / "a/b/chorales-v1/bach/bwv269.mid"
    monkeypatch.delenv("GRAMOPHONE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "gramophone"


@pytest.mark.parametrize("bad", ["", "../x", "bach//x", "a/./b", "a\\b"])
def test_chorale_path_rejects_odd_names(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAMOPHONE_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="corpus name"):
        chorale_path(bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "sub" / "x.mid"
    cache.atomic_write_bytes(dest, b"one")
    assert dest.read_bytes() == b"one"

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.atomic_write_bytes(dest, b"two")
    assert dest.read_bytes() == b"one"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.mid"]


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    """Files written atomically (decode's MIDI, WAV, index.html; exported models) get the
    mode a plain ``open`` gives under the umask, not the temporary file's private 0600; a
    replaced file keeps its own mode."""
    mask = os.umask(0o027)
    try:
        from gramophone import _files

        _files._new_file_mode.cache_clear()
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        new = _files.atomic_write(tmp_path / "new.html", "<html></html>")
        assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o640
        new.chmod(0o604)
        _files.atomic_write(new, "<html>again</html>")
        assert new.stat().st_mode & 0o777 == 0o604
        from gramophone.tokenizers import _atomic_write  # token files: several at once

        _atomic_write({tmp_path / "a.json": "[]", tmp_path / "a.txt": ""})
        assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.json", "a.txt")} == {0o640}
    finally:
        os.umask(mask)
        _files._new_file_mode.cache_clear()


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    old, fresh = tmp_path / "a" / ".x.mid.1.tmp", tmp_path / ".y.mid.2.tmp"
    old.parent.mkdir()
    old.write_bytes(b"")
    fresh.write_bytes(b"")
    os.utime(old, (0, 0))
    assert cache.remove_stale_temp_files(tmp_path) == 1
    assert not old.exists()
    assert fresh.exists()


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["Soprano", "Alto", "Tenor", "Bass"], [0, 1, 2, 3]),
        (["Horn 1", "Horn 2", "Timpani", "Soprano", "Alto", "Tenor", "Bass"], [3, 4, 5, 6]),
        (["Soprano", "Alto", "Tenor", "Bass", "Continuo"], [0, 1, 2, 3]),
        (["Violin", "Soprano", "Alto", "Tenor", "Bass", "Organ"], [1, 2, 3, 4]),
        (["Soprano 1", "Soprano 2", "Alto", "Tenor", "Bass"], [0, 1, 2, 3, 4]),
        (
            [
                "Trumpet 1",
                "Timpani",
                "Soprano Oboe 1 Violin1",
                "Alto Oboe 2",
                "Tenor Viola",
                "Bass Continuo",
            ],
            [2, 3, 4, 5],
        ),
        ([None, None, None, None], [0, 1, 2, 3]),
        ([None, None, None, None, None], [1, 2, 3, 4]),
        (["Altus", "Basso", "Tenore"], [0, 1, 2]),  # "Altus" is not "Alto": names unusable
        (["Soprano", "Alto"], [0, 1]),
    ],
)
def test_select_voices(names: list[str | None], expected: list[int]) -> None:
    assert chorales.select_voices(names) == expected


def test_module_doctests() -> None:
    import doctest

    assert doctest.testmod(chorales).failed == 0


@pytest.mark.parametrize(
    ("measures", "starts", "bars"),
    [
        # Pickup, 2 bars, the bar split by a repeat (3 + 1), 2 bars, the last bar (3).
        (
            [(1, 4, 3), (4, 4, 0), (4, 4, 0), (3, 4, 0), (1, 4, 3), (4, 4, 0), (3, 4, 0)],
            [3, 4, 8, 12, 15, 16, 20],
            [0, 4, 8, 12, 16, 20],
        ),
        # The same without padding information: the halves still make one bar.
        (
            [(1, 4, 0), (4, 4, 0), (3, 4, 0), (1, 4, 0), (4, 4, 0)],
            [3, 4, 8, 11, 12],
            [0, 4, 8, 12],
        ),
        # A shortened bar (rest after), an upbeat (rest before), an overfull measure.
        (
            [(4, 4, 0), (3, 4, 0), (4, 4, 0), (1, 4, 0), (4, 4, 0), (10, 4, 0), (4, 4, 0)],
            [0, 4, 8, 15, 16, 20, 32],
            [0, 4, 8, 12, 16, 20, 32],
        ),
        # 3/4 with a one-beat pickup, then 4/4; fragments that do not fit in one bar.
        (
            [(1, 3, 2), (3, 3, 0), (2, 4, 0), (3, 4, 0), (4, 4, 0)],
            [2, 3, 6, 10, 14],
            [0, 3, 6, 10, 14],
        ),
    ],
)
def test_layout_measures(
    measures: list[tuple[float, float, float]], starts: list[float], bars: list[float]
) -> None:
    got_starts, got_bars = chorales.layout_measures(measures)
    assert got_starts == starts
    assert [start for start, _ in got_bars] == bars
    for start, i in got_bars:  # a bar is opened by a measure that starts in it
        assert start <= got_starts[i] < start + measures[i][1]


def test_layout_skips_silent_measures() -> None:
    measures = [(4, 4, 0), (1, 4, 0), (4, 4, 0), (4, 4, 0), (2, 4, 0), (4, 4, 0)]
    silent = [True, False, False, True, True, False]  # an intro and an interlude
    starts, bars = chorales.layout_measures(measures, silent)
    assert starts == [0, 3, 4, 8, 8, 8]  # the first sung measure is an upbeat
    assert bars == [(0, 1), (4, 2), (8, 5)]


def test_silent_measures() -> None:
    spans = [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]
    notes = [(0, 5), (12, 20), (18, 21), (35, 45)]
    assert chorales._silent_measures(spans, notes) == [False, False, False, False, False]
    assert chorales._silent_measures(spans, [(12, 20)]) == [True, False, True, True, True]
    assert chorales._silent_measures(spans, []) == [True] * 5


def test_time_map() -> None:
    tmap = chorales._TimeMap([0, 10, 40], [5, 20, 60])
    assert [tmap.start(t) for t in (0, 9, 10, 39, 40, 50)] == [5, 14, 20, 49, 60, 70]
    # A note ending on a bar line ends with its measure, one held over stretches.
    assert [tmap.end(t) for t in (10, 11, 40, 41)] == [15, 21, 50, 61]


def _score(tracks: list[list[tuple[int, int, int]]]) -> ScoreTick:
    score = ScoreTick(4)
    for notes in tracks:
        track = TrackTick("v", 0, False)
        for time, duration, pitch in notes:
            track.notes.append(NoteTick(time, duration, pitch, 90))
        score.tracks.append(track)
    for time in (0, 0, 32):
        score.time_signatures.append(TimeSignatureTick(time, 3, 4))
    score.time_signatures.append(TimeSignatureTick(48, 4, 4))
    score.tempos.append(TempoTick(0, qpm=120))
    score.tempos.append(TempoTick(0, qpm=120))
    return score


def test_merge_tracks_keeps_what_sounds() -> None:
    src = _score(
        [
            [(0, 8, 60), (8, 4, 64), (12, 4, 67), (20, 0, 70)],  # a zero-length note: dropped
            [(0, 4, 60), (4, 4, 62), (10, 8, 64), (12, 4, 67)],  # unison, re-strike, unison
            [(16, 4, 48)],
        ]
    )
    out = chorales._merge_tracks(src, chorales._TimeMap([0], [2]))
    assert len(out.tracks) == 1
    track = out.tracks[0]
    assert (track.program, track.is_drum) == (0, False)
    notes = [(n.time, n.duration, n.pitch) for n in track.notes]
    assert notes == [
        (2, 8, 60),  # 60 twice at 0: the longer one
        (6, 4, 62),
        (10, 2, 64),  # 64 from 8 to 12, cut where the other voice strikes it again at 10 ...
        (12, 8, 64),  # ... which then sounds to the end of both: 18 (+2)
        (14, 4, 67),  # 67 twice at 12
        (18, 4, 48),
    ]
    assert [(t.time, t.numerator, t.denominator) for t in out.time_signatures] == [
        (0, 3, 4),
        (50, 4, 4),
    ]
    assert [(t.time, t.qpm) for t in out.tempos] == [(0, 120)]


# ---------------------------------------------------------------------------------------
# Conversion with music21 (a temporary cache)


def _music21_settings_state() -> tuple[bool, float]:
    from music21 import environment

    path = Path(environment.UserSettings().getSettingsPath())
    return path.exists(), path.stat().st_mtime if path.exists() else 0.0


def test_convert_three_chorales_then_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("music21")
    monkeypatch.setenv("GRAMOPHONE_CACHE", str(tmp_path))
    settings_before = _music21_settings_state()

    names = chorale_names()
    assert len(names) >= 340
    assert len(set(names)) == len(names)
    assert names[:3] == ["bach/bwv269", "bach/bwv347", "bach/bwv153.1"]
    assert names == chorale_names()  # now from the index
    three = [*names[:2], "bach/bwv277"]  # bwv277 has malformed repeats: they are ignored

    # Two (and a name that does not exist) through the process pool, one in-process.
    with pytest.warns(RuntimeWarning, match="bach/bwv99999"):
        paths = chorale_midis(progress=False, workers=2, names=[*three[:2], "bach/bwv99999"])
    assert paths == [chorale_path(n) for n in three[:2]]
    paths = chorale_midis(progress=False, workers=1, names=three)
    assert paths == [chorale_path(n) for n in three]
    assert paths[0] == tmp_path / "chorales-v1" / "bach" / "bwv269.mid"
    assert not list(tmp_path.rglob("bwv99999*"))

    for path in paths:
        score = ScoreTick.from_file(path)
        assert len(score.tracks) == 1
        track = score.tracks[0]
        assert (track.program, track.is_drum) == (0, False)
        assert len(track.notes) > 100
        assert len(score.time_signatures) >= 1
        assert score.time_signatures[0].time == 0
        assert len(score.tempos) >= 1
        starts = [(n.time, n.pitch) for n in track.notes]
        assert starts == sorted(starts)
        assert len(set(starts)) == len(starts)  # no duplicate simultaneous notes
        assert all(n.duration > 0 for n in track.notes)
        assert all(36 <= n.pitch <= 84 for n in track.notes)
    # bwv269 is in 3/4 with a one-beat pickup: its first note comes on the third beat.
    first = ScoreTick.from_file(paths[0])
    assert (first.time_signatures[0].numerator, first.time_signatures[0].denominator) == (3, 4)
    assert first.tracks[0].notes[0].time == 2 * first.ticks_per_quarter

    # music21's scratch folder was the cache's, and no music21 settings file was written.
    assert any((tmp_path / "music21-scratch").iterdir())
    assert _music21_settings_state() == settings_before
    assert not list(tmp_path.rglob("*.tmp"))

    # Second call: nothing converted again.
    mtimes = [p.stat().st_mtime_ns for p in paths]

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(chorales, "_convert_all", no_conversion)
    assert chorale_midis(progress=False, names=three) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes

    # ... and, in a fresh process, music21 is not even imported.
    code = textwrap.dedent(
        f"""
        import json, sys
        from gramophone.data import chorale_midis, chorale_names
        names = chorale_names()
        paths = chorale_midis(progress=False, names={three!r})
        print(json.dumps([len(names), [str(p) for p in paths], "music21" in sys.modules]))
        """
    )
    env = {**os.environ, "GRAMOPHONE_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    n_names, sub_paths, imported = json.loads(done.stdout)
    assert n_names == len(names)
    assert sub_paths == [str(p) for p in paths]
    assert not imported


# ---------------------------------------------------------------------------------------
# The whole corpus, into the real cache


@pytest.mark.slow
def test_whole_corpus_in_the_cache() -> None:
    """Fills the shared cache (a few minutes the first time, about a second afterwards)."""
    names = chorale_names()
    paths = chorale_midis(progress=False)
    # 371 Riemenschneider numbers, 350 distinct files; every one converts.
    assert len(names) >= 350
    assert len(paths) == len(names)
    for path in paths:
        score = ScoreTick.from_file(path)
        assert len(score.tracks) == 1
        assert score.note_num() > 0
        assert score.time_signatures[0].time == 0


def test_a_cache_folder_keeps_its_recently_used_entries_under_the_cap(tmp_path: Path) -> None:
    """Cache keys follow the code, so old entries would pile up: the least recently used go
    first (a read marks an entry used), the newest always stays."""
    import os

    for i, name in enumerate(["old", "used", "mid", "new"]):
        (tmp_path / f"{name}.npz").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"{name}.npz", (1000 + i, 1000 + i))
    (tmp_path / ".x.npz.tmp").write_bytes(b"x" * 1000)  # a write in progress: not an entry
    cache.touch(tmp_path / "used.npz")
    assert cache.keep_cache_under(tmp_path, 250) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.npz.tmp", "new.npz", "used.npz"]
    assert cache.keep_cache_under(tmp_path, 0) == 1  # the newest entry stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.npz.tmp", "used.npz"]
