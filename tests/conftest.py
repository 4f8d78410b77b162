"""Shared fixtures; the hypothesis profiles live in :mod:`tests.profiles`."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

import tests.profiles  # noqa: F401 - registers and loads the hypothesis profiles

#: Every supported option, alone and in combinations (issue: grammar core).
CONFIGS: dict[str, dict[str, object]] = {
    "default": {},
    "no-time-signatures": {"use_time_signatures": False},
    "rests": {"use_rests": True},
    "tempos": {"use_tempos": True},
    "chords": {"use_chords": True},
    "programs": {"use_programs": True},
    "no-velocities": {"use_velocities": False},
    "no-pitchdrum": {"use_pitchdrum_tokens": False},
    "dedup": {"remove_duplicated_notes": True},
    "pedals": {"use_sustain_pedals": True},
    "pitch-bends": {"use_pitch_bends": True},
    "combo-rests-programs": {
        "use_rests": True,
        "use_programs": True,
        "use_chords": True,
        "use_tempos": True,
        "remove_duplicated_notes": True,
    },
    "combo-bare": {
        "use_time_signatures": False,
        "use_rests": True,
        "use_velocities": False,
        "remove_duplicated_notes": True,
    },
    "combo-controls": {
        "use_sustain_pedals": True,
        "use_pitch_bends": True,
        "use_programs": True,
        "use_pitchdrum_tokens": False,
        "remove_duplicated_notes": True,
    },
}


@cache
def tokenizer_for(name: str):  # type: ignore[no-untyped-def]
    from miditok import REMI, TokenizerConfig

    from gramophone.tokenizers import load_tokenizer

    if name == "shipped":
        return load_tokenizer()
    return REMI(TokenizerConfig(**CONFIGS[name]))


@cache
def automaton_for(name: str):  # type: ignore[no-untyped-def]
    from gramophone.grammar import compile_remi

    return compile_remi(tokenizer_for(name))


@cache
def grammar_for(name: str):  # type: ignore[no-untyped-def]
    from gramophone.grammar import derive

    return derive(tokenizer_for(name))


ALL_CONFIGS = ["shipped", *CONFIGS]


@pytest.fixture(scope="session")
def chorale_midis():  # type: ignore[no-untyped-def]
    """All chorales as MIDI (converted once into the shared cache; minutes the first time)."""
    from gramophone.data import chorale_midis as convert
    from gramophone.data import chorale_names

    paths = convert(progress=False)
    # 371 Riemenschneider numbers name 350 distinct files in music21's corpus (the others
    # are repeated harmonisations); every one of them must convert.
    assert len(paths) == len(chorale_names()) >= 350
    return paths


# -- real music of other composers ------------------------------------------------------------
#: Works of music21's corpus (no Bach chorale) that test_composers tokenizes, as (corpus
#: name, number of the piece in a collection or None): string quartets and other chamber
#: music, madrigals and a mass, folk songs and fiddle tunes, an aria, a rag, a trecento
#: piece. Meters 2/4 3/4 4/4 6/4 3/8 6/8 9/8 2/2 4/2; changes of meter: 6/8 <-> 2/4 <-> 4/4
#: in the Grosse Fuge (notes held from 6/8 into 4/4 bars, then rests: what the old REMI
#: rests model falsely rejected), 2/2 -> 6/8, 4/4 -> 3/4; pickups; meters miditok's default
#: vocabulary lacks (9/8, 2/2, 4/2, 1/32). (music21 10.5 writes MIDI longer than the
#: measures of some works, with their repeats, and fails on some folk songs that change
#: meter: those are not in the list.)
COMPOSER_WORKS: tuple[tuple[str, int | None], ...] = (
    ("haydn/opus1no1/movement1", None),  # string quartet, 6/8, pickup
    ("haydn/opus1no1/movement4", None),  # 3/4, pickup
    ("haydn/opus74no1/movement3", None),  # 3/4
    ("mozart/k156/movement1", None),  # 3/8
    ("mozart/k155/movement2", None),  # 3/4
    ("mozart/k458/movement3", None),  # 4/4
    ("mozart/k80/movement2", None),  # 4/4
    ("beethoven/opus18no1/movement2", None),  # 9/8
    ("beethoven/opus59no3/movement3", None),  # 3/4
    ("beethoven/opus133", None),  # Grosse Fuge: 6/8 2/4 4/4 changes, notes held across them
    ("schumann_robert/opus41no1/movement1", None),  # 2/4 -> 6/8, 374 bars
    ("schumann_robert/opus41no1/movement2", None),  # 6/8
    ("schumann_robert/opus41no1/movement3", None),  # 2/2 -> 6/8
    ("schumann_clara/opus17/movement3", None),  # piano trio, 6/8
    ("schumann_clara/polonaise_op1n1", None),  # piano, 3/4
    ("monteverdi/madrigal.3.1", None),  # five voices, 4/4
    ("monteverdi/madrigal.3.10", None),
    ("palestrina/Agnus_01", None),  # 4/2
    ("palestrina/Kyrie_00", None),  # 4/2
    ("essenFolksong/altdeu10", 7),  # 6/4, pickup
    ("essenFolksong/altdeu10", 10),  # 6/8, pickup
    ("essenFolksong/ballad10", 16),  # 2/2 -> 6/8, pickup
    ("essenFolksong/ballad10", 17),  # 3/8, pickup
    ("essenFolksong/kinder0", 34),  # 6/8, pickup
    ("ryansMammoth/42dHighlandRegimentStrathspey", None),  # 4/4 with 1/32 bars, pickup
    ("ryansMammoth/7thRegimentReel", None),  # 2/4
    ("handel/rinaldo/Lascia_chio_pianga", None),  # aria, 4/4 -> 3/4
    ("verdi/laDonnaEMobile", None),  # 3/8
    ("joplin/maple_leaf_rag", None),  # 2/4, pickup
    ("trecento/Fava_Dicant_nunc_iudei", None),  # 6/8
)


def _composer_work_path(name: str, number: int | None) -> Path:
    from gramophone._files import cache_dir

    stem = name.replace("/", "-") + (f"-{number}" if number is not None else "")
    return cache_dir() / "composers-v1" / f"{stem}.mid"


def _composer_work_to_midi(name: str, number: int | None, scratch: Path) -> bytes:
    """A work of music21's corpus as MIDI bytes: every part a track (music21's instrument
    program), measures laid out on whole bars as the chorales are (a pickup starts where
    its bar would, time signatures where the layout's bars change meter; chorales.py's
    helpers), tempos and key signatures kept."""
    from music21 import corpus, stream
    from symusic.core import NoteTick, ScoreTick, TrackTick

    from gramophone.data.chorales import (
        _dedupe_meta,
        _measures_and_midi,
        _TimeMap,
        bar_time_signatures,
        layout_measures,
    )

    parsed = corpus.parse(name) if number is None else corpus.parse(name, number=number)
    if isinstance(parsed, stream.Opus):
        parsed = parsed.scores[0]
    measures, rows, signatures, src = _measures_and_midi(parsed, scratch)
    tpq = src.ticks_per_quarter
    new_starts, bars = layout_measures(rows)
    tmap = _TimeMap([round(float(m.offset) * tpq) for m in measures], [round(t * tpq) for t in new_starts])
    out = ScoreTick(tpq)
    for track in src.tracks:
        moved = TrackTick(track.name, track.program, track.is_drum)
        for n in track.notes:
            start, end = tmap.start(n.time), tmap.end(n.time + n.duration)
            if end > start:
                moved.notes.append(NoteTick(start, end - start, n.pitch, n.velocity))
        if len(moved.notes):
            out.tracks.append(moved)
    for tempo in _dedupe_meta(src.tempos, lambda e: e.mspq, tmap):
        out.tempos.append(tempo)
    for ks in _dedupe_meta(src.key_signatures, lambda e: (e.key, e.tonality), tmap):
        out.key_signatures.append(ks)
    for sig in bar_time_signatures(bars, signatures, tpq):
        out.time_signatures.append(sig)
    if out.note_num() == 0:
        raise ValueError(f"{name}: no notes")
    return bytes(out.dumps_midi())


@pytest.fixture(scope="session")
def composer_midis() -> list[Path]:
    """Every work of :data:`COMPOSER_WORKS` as MIDI, converted once into the gramophone
    cache (``cache_dir()/composers-v1``, atomically; a minute or two the first time). A work
    music21 cannot convert fails the fixture: the list never shrinks silently."""
    from gramophone._files import atomic_write_bytes, remove_stale_temp_files
    from gramophone.data.chorales import _music21_scratch, _scratch_dir

    paths = [_composer_work_path(name, number) for name, number in COMPOSER_WORKS]
    todo = [(work, path) for work, path in zip(COMPOSER_WORKS, paths, strict=True) if not path.is_file()]
    if todo:
        remove_stale_temp_files(paths[0].parent)
        scratch = _scratch_dir()
        with _music21_scratch(scratch):
            for (name, number), path in todo:
                atomic_write_bytes(path, _composer_work_to_midi(name, number, scratch))
    assert len(set(paths)) == len(COMPOSER_WORKS) >= 20
    assert all(path.stat().st_size > 0 for path in paths)
    return paths
