"""Round trips through miditok: a random walk of the language, decoded by miditok and encoded
again, against the walk. An oracle that knows no grammar: it holds the language to what
miditok's own decoder and encoder do.

- **Every config**: miditok's re-encoding is accepted by the automaton (no false rejection of
  what miditok writes from the music of a walk) and decodes to the same notes as the walk.
- **Where miditok's round trip is exact** (no rests, tempos, chords, programs, pedals or
  pitch bends: the configs whose language gives one spelling to a piece), the re-encoding
  *is* the walk, up to what miditok's decoder cannot keep: bars after the last note (a
  score ends with its last note) and, without programs, PitchDrum tokens (a stream decodes
  as a melodic track, so they come back as Pitch).

Where the round trip is not exact, the language is knowingly looser than miditok's encoder,
never stricter (the first property): a gap may be written with a Position alone where
miditok writes a Rest, a piece may start without a Tempo, the programs at one onset may come
in any order, a Chord token is not recomputed from its notes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import test_tsd as tsd
from tests.conftest import CONFIGS as REMI_CONFIGS
from tests.conftest import automaton_for as remi_automaton
from tests.conftest import tokenizer_for as remi_tokenizer
from tests.walks import random_walk

LOOSE = ("use_rests", "use_tempos", "use_chords", "use_programs", "use_sustain_pedals", "use_pitch_bends")
SPECIALS = ("BOS_None", "EOS_None", "PAD_None", "MASK_None")

CASES = [("REMI", name) for name in REMI_CONFIGS] + [("TSD", name) for name in tsd.CONFIGS]


def _setup(scheme: str, name: str) -> tuple[Any, Any, dict[str, Any]]:
    if scheme == "REMI":
        return remi_tokenizer(name), remi_automaton(name), dict(REMI_CONFIGS[name])
    return tsd.tokenizer_for(name), tsd.automaton_for(name), dict(tsd.CONFIGS[name])


def _notes(score: Any) -> list[tuple[int, int, int, int, int]]:
    """(time, duration, pitch, velocity, program) of every note, sorted."""
    return sorted(
        (n.time, n.duration, n.pitch, n.velocity, -1 if t.is_drum else t.program)
        for t in score.tracks
        for n in t.notes
    )


def _trimmed(tokens: list[str]) -> list[str]:
    """Without what follows the last note's tokens (bars, time signatures, time shifts)."""
    last = max(
        (i for i, t in enumerate(tokens) if t.startswith(("Duration_", "Velocity_", "Pitch"))), default=-1
    )
    return tokens[: last + 1]


@pytest.mark.parametrize(("scheme", "name"), CASES)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 160))
def test_a_walk_decoded_and_encoded_again_by_miditok(scheme: str, name: str, seed: int, length: int) -> None:
    from gramophone.tokenizers import decode_ids, encode_score

    tok, auto, config = _setup(scheme, name)
    specials = {auto.token_index[t] for t in SPECIALS if t in auto.token_index}
    walk = [i for i in random_walk(auto, np.random.default_rng(seed), length, eos=False) if i not in specials]
    score = decode_ids(tok, list(walk))
    streams = encode_score(tok, score)
    if not _notes(score):  # nothing musical to encode: miditok writes no stream
        return
    (again,) = streams
    assert auto.accepts(again), [auto.vocab[i] for i in again]
    assert _notes(decode_ids(tok, list(again))) == _notes(score)
    if not any(config.get(option) for option in LOOSE):
        want = [auto.vocab[i] for i in walk]
        if not config.get("use_programs"):
            want = [t.replace("PitchDrum_", "Pitch_") for t in want]
        got = [auto.vocab[i] for i in again]
        assert _trimmed(got) == _trimmed(want), (got, want)
