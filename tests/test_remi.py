"""The REMI grammar against its oracles: lark, plain-Python references, miditok."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone import UnsupportedConfigError
from gramophone.grammar import compile_remi, derive
from tests import scheme_helpers as helpers
from tests.conftest import ALL_CONFIGS, automaton_for, grammar_for, tokenizer_for
from tests.profiles import scaled
from tests.reference import lark_accepts, miditok_errors, reference_accepts
from tests.walks import random_walk

# Configs whose dense product is small enough to explore exhaustively in the suite.
EXHAUSTIVE = ["shipped", "default", "no-time-signatures", "tempos", "chords", "no-velocities", "pedals"]


# -- config support ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("use_key_signatures", True),
        ("use_control_changes", True),
        ("use_pitch_intervals", True),
        ("sustain_pedal_duration", True),
        ("program_changes", True),
    ],
)
def test_unsupported_option_is_a_clear_error(option: str, value: object) -> None:
    from miditok import REMI, TokenizerConfig

    kwargs = {option: value}
    if option in ("program_changes",):
        kwargs["use_programs"] = True
    if option == "sustain_pedal_duration":
        kwargs["use_sustain_pedals"] = True
    with pytest.raises(UnsupportedConfigError, match=option):
        derive(REMI(TokenizerConfig(**kwargs)))


def test_bar_end_tokens_and_other_tokenizers_are_refused() -> None:
    from miditok import REMI, CPWord, TokenizerConfig

    with pytest.raises(UnsupportedConfigError, match="use_bar_end_tokens"):
        derive(REMI(TokenizerConfig(use_bar_end_tokens=True)))
    with pytest.raises(UnsupportedConfigError, match=r"CPWord is not supported \(supported: REMI, TSD"):
        derive(CPWord(TokenizerConfig()))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_compiles_and_caches(name: str) -> None:
    auto = automaton_for(name)
    again = compile_remi(tokenizer_for(name))
    assert again.hash == auto.hash
    assert auto.components[0].name == "syntax"


# -- property 1: lark's language ---------------------------------------------------------
@pytest.mark.parametrize("name", ["shipped", "rests", "combo-rests-programs", "combo-controls", "combo-bare"])
@settings(max_examples=scaled(30))
@given(data=st.data())
def test_lark_generated_streams_pass_the_syntax_automaton(name: str, data: st.DataObject) -> None:
    text = data.draw(helpers.lark_streams(grammar_for(name), automaton_for(name).vocab))
    helpers.assert_syntax_accepts(automaton_for(name), text)


def _walk_or_mutation(name: str) -> st.SearchStrategy[list[int]]:
    auto = automaton_for(name)
    return helpers.walk_or_mutation(
        partial(random_walk, auto), 60, partial(helpers.mutate, vocab_size=len(auto.vocab))
    )


@pytest.mark.parametrize("name", ALL_CONFIGS)
@settings(max_examples=scaled(60))
@given(data=st.data())
def test_automaton_accepts_iff_lark_and_references_accept(name: str, data: st.DataObject) -> None:
    ids = data.draw(_walk_or_mutation(name))
    auto = automaton_for(name)
    tokens = [auto.vocab[i] for i in ids]
    assert auto.accepts(ids) == reference_accepts(grammar_for(name), tokens, tokenizer_for(name)), tokens


def test_reference_oracles_reject_what_they_should() -> None:
    """The oracles themselves can fail (so agreement with them means something)."""
    g = grammar_for("rests")
    ok = ["Bar_None", "TimeSig_4/4", "Position_4", "Pitch_60", "Velocity_63", "Duration_1.0.8"]
    assert lark_accepts(g, ok) and reference_accepts(g, ok)
    back = [*ok, "Position_2", "Pitch_62", "Velocity_63", "Duration_1.0.8"]
    assert lark_accepts(g, back) and not reference_accepts(g, back)
    # A rest from the end of the note (position 4 + 8) by 1 beat ends at 20: Position_16 is early.
    rest = [*ok, "Rest_1.0.4", "Position_16", "Pitch_62", "Velocity_63", "Duration_1.0.8"]
    assert lark_accepts(g, rest) and not reference_accepts(g, rest)
    rest_ok = [*ok, "Rest_1.0.4", "Position_20", "Pitch_62", "Velocity_63", "Duration_1.0.8"]
    assert reference_accepts(g, rest_ok) and automaton_for("rests").accepts(
        [automaton_for("rests").token_index[t] for t in rest_ok]
    )
    assert not lark_accepts(g, ok[:-1])


def test_rests_cross_bar_lines_without_bar_tokens() -> None:
    auto = automaton_for("rests")
    ix = auto.token_index
    # Note at 28 lasting 2 beats ends at 44 = next bar, position 12; a 1-beat rest -> 20.
    stream = [
        "Bar_None",
        "TimeSig_4/4",
        "Position_28",
        "Pitch_60",
        "Velocity_63",
        "Duration_2.0.8",
        "Rest_1.0.4",
    ]
    assert auto.accepts(
        [ix[t] for t in [*stream, "Position_20", "Pitch_60", "Velocity_63", "Duration_1.0.8"]]
    )
    assert not auto.accepts(
        [ix[t] for t in [*stream, "Position_19", "Pitch_60", "Velocity_63", "Duration_1.0.8"]]
    )
    # Landing exactly on a bar line allows a time signature there.
    land = [
        "Bar_None",
        "TimeSig_4/4",
        "Position_0",
        "Pitch_60",
        "Velocity_63",
        "Duration_2.0.8",
        "Rest_2.0.2",
        "TimeSig_3/4",
    ]
    assert auto.accepts([ix[t] for t in [*land, "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.8"]])
    # ... and the new bar is 24 positions long.
    assert not auto.accepts(
        [ix[t] for t in [*land, "Position_24", "Pitch_60", "Velocity_63", "Duration_1.0.8"]]
    )


# -- property 3: no dead ends --------------------------------------------------------------
@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_no_dead_ends_in_the_reachable_product(name: str) -> None:
    helpers.assert_no_dead_ends(automaton_for(name))


@pytest.mark.parametrize("name", sorted(set(ALL_CONFIGS) - set(EXHAUSTIVE)))
@settings(max_examples=scaled(20))
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 400))
def test_no_dead_ends_along_long_walks(name: str, seed: int, length: int) -> None:
    """Products too large to tabulate: long random walks never get stuck (the walk
    asserts a non-empty allowed set at every step and ends accepted)."""
    auto = automaton_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length)
    assert auto.accepts(ids)


def test_no_dead_end_after_a_programs_highest_pitch() -> None:
    """Regression (found by the walks above): after a program's highest pitch at an onset,
    its Program token may not come back (nothing could follow it)."""
    auto = automaton_for("combo-controls")
    ix = auto.token_index
    top = max(int(t.split("_")[1]) for t in ix if t.startswith("Pitch_"))
    head = ["Bar_None", "TimeSig_4/4", "Position_0", "Program_127", f"Pitch_{top}", "Velocity_63"]
    duration = next(t for t in ix if t.startswith("Duration_"))
    states = auto.start_states
    for tok in [*head, duration]:
        states = auto.step(states, ix[tok])
        assert states is not None
    allowed = auto.allowed(states)
    assert not allowed[ix["Program_127"]]
    assert allowed[ix["Position_1"]]


# -- property 5: miditok's own verdict on random walks ---------------------------------------
@pytest.mark.parametrize("name", ALL_CONFIGS)
@settings(max_examples=scaled(25))
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 200))
def test_random_walks_have_no_miditok_errors_and_decode(name: str, seed: int, length: int) -> None:
    auto = automaton_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length)
    helpers.assert_decodes_without_errors(auto, tokenizer_for(name), ids)


def test_special_tokens() -> None:
    auto = automaton_for("shipped")
    ix = auto.token_index
    body = [
        ix[t] for t in ["Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.4"]
    ]
    bos, eos, _ = helpers.assert_special_tokens(auto, body)
    assert not auto.accepts([bos, *body, eos, *body])


# -- rests across changes of meter: miditok's ticks (regressions) ----------------------------
def _encode(
    name: str, tpq: int, meters: list[tuple[int, int, int]], notes: list[tuple[int, int, int]]
) -> list[int]:
    from symusic import Note, Score, TimeSignature, Track

    from gramophone.tokenizers import encode_score

    score: Any = Score(tpq)
    for meter in meters:
        score.time_signatures.append(TimeSignature(*meter))
    track: Any = Track(program=0)
    for time, duration, pitch in notes:
        track.notes.append(Note(time, duration, pitch, 90))
    score.tracks.append(track)
    [ids] = encode_score(tokenizer_for(name), score)
    return ids


def test_a_note_held_from_6_8_into_4_4_then_a_rest() -> None:
    """The reported false rejection (a string quartet): a note crosses from a 6/8 bar into
    a 4/4 bar, then `Bar TimeSig_4/4 Rest_1.2.4 Position_20`. The note ends a quarter into
    the 4/4 bar (8 of its positions; 16 positions of 6/8, which the old model kept), the
    rest of 1.5 beats ends at position 20."""
    name = "combo-rests-programs"
    ids = _encode(name, 480, [(0, 6, 8), (1440, 4, 4)], [(0, 480, 60), (960, 960, 62), (2640, 240, 64)])
    auto = automaton_for(name)
    tokens = [auto.vocab[i] for i in ids]
    i = tokens.index("TimeSig_4/4")
    assert tokens[i - 1 : i + 3] == ["Bar_None", "TimeSig_4/4", "Rest_1.2.4", "Position_20"], tokens
    assert miditok_errors(tokenizer_for(name), ids) == 0
    assert auto.accepts(ids) and reference_accepts(grammar_for(name), tokens, tokenizer_for(name))
    early = [*tokens[: i + 2], "Position_19", *tokens[i + 3 :]]
    assert not auto.accepts([auto.token_index[t] for t in early])
    assert not reference_accepts(grammar_for(name), early, tokenizer_for(name))


@pytest.mark.parametrize(
    ("meters", "notes", "expected"),
    [
        # 6/8 -> 4/4 (16 ticks a quarter: a 6/8 position is 1 tick, a 4/4 position 2): the
        # note ends 3 ticks into the 4/4 bar, between two positions; the rest from there
        # (12 ticks) ends at tick 15 and the note after it is on position 8 (tick 16).
        ([(0, 6, 8), (48, 4, 4)], [(45, 6, 60), (64, 8, 62)], ["Rest_0.6.8", "Position_8"]),
        # ... the rests end one tick before the next bar line: a Bar token follows them.
        (
            [(0, 6, 8), (48, 4, 4)],
            [(45, 6, 60), (112, 8, 62)],
            ["Rest_3.1.2", "Rest_0.2.8", "Bar_None", "TimeSig_4/4", "Position_0"],
        ),
        # 4/4 -> 6/8: a note of 2 quarters from position 28 of a 4/4 bar ends 3 eighths (24
        # positions) into the 6/8 bar (12 positions, in the old model's 4/4 positions); a
        # rest of 2 beats (eighths) ends at position 40.
        ([(0, 4, 4), (64, 6, 8)], [(56, 32, 60), (104, 8, 62)], ["Rest_2.0.2", "Position_40"]),
    ],
)
def test_note_ends_across_meters_are_kept_in_ticks(
    meters: list[tuple[int, int, int]], notes: list[tuple[int, int, int]], expected: list[str]
) -> None:
    """What miditok writes is accepted (automaton and reference), and the Position after
    the rests cannot move one position earlier."""
    ids = _encode("rests", 16, meters, notes)
    auto = automaton_for("rests")
    tokens = [auto.vocab[i] for i in ids]
    text = " ".join(tokens)
    assert " ".join(expected) in text, tokens
    assert miditok_errors(tokenizer_for("rests"), ids) == 0
    assert auto.accepts(ids) and reference_accepts(grammar_for("rests"), tokens, tokenizer_for("rests"))
    k = max(i for i, t in enumerate(tokens) if t.startswith("Position_"))
    q = int(tokens[k].split("_")[1])
    if q > 0 and tokens[k - 1].startswith("Rest_"):
        early = [*tokens[:k], f"Position_{q - 1}", *tokens[k + 1 :]]
        assert not auto.accepts([auto.token_index[t] for t in early])
        assert not reference_accepts(grammar_for("rests"), early, tokenizer_for("rests"))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_the_reference_clock_rebuilt_from_the_config_is_miditok_s(name: str) -> None:
    """reference.time_ok without a tokenizer (as the decoding tests call it) counts in the
    same ticks as with one (miditok's own tables)."""
    from tests.reference import MiditokClock

    tok = tokenizer_for(name)
    own, rebuilt = MiditokClock.of(tok), MiditokClock.rebuilt(grammar_for(name))
    assert own.ticks_per_quarter == rebuilt.ticks_per_quarter
    for den, tpb in rebuilt.ticks_per_beat.items():
        assert own.ticks_per_beat[den] == tpb
        for value in {t.split("_")[1] for t in tok.vocab if t.startswith("Rest_")}:
            assert own.rest_ticks(value, tpb) == rebuilt.rest_ticks(value, tpb)
        for value in {t.split("_")[1] for t in tok.vocab if t.startswith("Duration_")}:
            assert own.duration_ticks(value, tpb) == rebuilt.duration_ticks(value, tpb)


@pytest.mark.parametrize(
    ("notes_at_0", "expected"),
    [
        # Two programs' pitch bends at one onset, no note there.
        (False, ["Position_0", "Program_0", "PitchBend", "Program_40", "PitchBend", "Position_8"]),
        # A later program's pitch bend after an earlier program's notes, no note of its own.
        (True, ["Duration_1.0.8", "Program_40", "PitchBend", "Position_8"]),
    ],
)
def test_a_program_s_pitch_bend_alone_at_an_onset(notes_at_0: bool, expected: list[str]) -> None:
    """Regression (found by test_random_scores): a program's run at an onset may be its
    pitch bend alone, as miditok writes it (and its tokens_errors accepts)."""
    from symusic import Note, PitchBend, Score, TimeSignature, Track

    from gramophone.tokenizers import encode_score

    name = "combo-controls"
    score: Any = Score(480)
    score.time_signatures.append(TimeSignature(0, 4, 4))
    for program in (0, 40):
        track: Any = Track(program=program)
        track.pitch_bends.append(PitchBend(0, 0 if program == 0 else 512))
        track.notes.append(Note(0 if notes_at_0 and program == 0 else 480, 480, 60 + program // 8, 90))
        score.tracks.append(track)
    [ids] = encode_score(tokenizer_for(name), score)
    auto = automaton_for(name)
    tokens = [auto.vocab[i] for i in ids]
    shape = ["PitchBend" if t.startswith("PitchBend_") else t for t in tokens]  # values: miditok's bins
    assert " ".join(expected) in " ".join(shape), tokens
    assert miditok_errors(tokenizer_for(name), ids) == 0
    assert auto.accepts(ids) and reference_accepts(grammar_for(name), tokens, tokenizer_for(name))
