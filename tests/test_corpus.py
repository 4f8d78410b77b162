"""Real data: all of music21's Bach chorales (350 distinct files), under every supported config."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import scheme_helpers as helpers
from tests.conftest import ALL_CONFIGS, automaton_for, tokenizer_for
from tests.profiles import scaled
from tests.reference import miditok_errors

pytestmark = pytest.mark.slow


@cache
def corpus_streams(name: str) -> tuple[tuple[int, ...], ...]:
    return helpers.encode_chorales(tokenizer_for(name))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_chorale_is_accepted(name: str, chorale_midis: list) -> None:  # type: ignore[type-arg]
    from gramophone.grammar import check_ids

    auto = automaton_for(name)
    streams = corpus_streams(name)
    assert len(streams) == len(chorale_midis)  # one stream per chorale
    rejected = []
    for ids in streams:
        violation = check_ids(auto, ids)
        if violation is not None:
            rejected.append(str(violation))
    assert not rejected, f"{len(rejected)} false rejections, first: {rejected[0]}"


@pytest.mark.parametrize("name", ["shipped", "dedup", "combo-rests-programs", "combo-bare"])
@settings(max_examples=scaled(60))
@given(data=st.data())
def test_corruptions_miditok_flags_are_rejected(name: str, data: st.DataObject) -> None:
    auto = automaton_for(name)
    streams = corpus_streams(name)
    ids = list(data.draw(st.sampled_from(streams)))
    ops = ["replace", "insert", "delete", "duplicate"]
    duplicate = helpers.note_duplicator(auto.vocab, 3)  # a note: Pitch Velocity Duration
    helpers.corrupt(data, ids, auto.vocab, ops, duplicate)
    if miditok_errors(tokenizer_for(name), ids) > 0:
        assert not auto.accepts(ids)


def test_corruption_test_can_fail() -> None:
    """A duplicated note is flagged by miditok (dedup config) and rejected by us."""
    auto = automaton_for("dedup")
    ix = auto.token_index
    ids = [
        ix[t] for t in ["Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.8"]
    ]
    dup = ids + ids[3:6]
    assert miditok_errors(tokenizer_for("dedup"), dup) > 0
    assert not auto.accepts(dup)
    assert (
        np.isfinite(miditok_errors(tokenizer_for("dedup"), ids))
        and miditok_errors(tokenizer_for("dedup"), ids) == 0
    )
