"""Shared fixtures and hypothesis profiles (``ci``: bounded; ``dev``: larger, local)."""

from __future__ import annotations

import os
from functools import cache

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

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
