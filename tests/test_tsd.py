"""The TSD grammar against its oracles: lark, plain-Python references, miditok."""

from __future__ import annotations

import random
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone import UnsupportedConfigError
from gramophone.grammar import Automaton, check_ids, compile_tokenizer
from gramophone.grammar.schemes import base_vocab
from gramophone.grammar.tsd import TsdGrammar, derive
from tests import scheme_helpers as helpers
from tests.reference import miditok_errors
from tests.reference_tsd import lark_accepts, order_ok, reference_accepts, time_ok
from tests.walks import random_walk

#: Every supported option, alone and in combinations.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-time-signatures": {"use_time_signatures": False},
    "one-time-signature": {"time_signature_range": {4: [4]}},
    "rests": {"use_rests": True},
    "coarse-rests": {"use_rests": True, "beat_res_rest": {(0, 4): 2, (4, 12): 1}},
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
    "combo-everything": {
        "use_rests": True,
        "use_tempos": True,
        "use_chords": True,
        "use_programs": True,
        "use_sustain_pedals": True,
        "use_pitch_bends": True,
        "remove_duplicated_notes": True,
        "beat_res_rest": {(0, 4): 2, (4, 12): 1},
        "time_signature_range": {8: [6, 3], 4: [2, 3, 4]},
    },
}
NAMES = list(CONFIGS)

# Configs whose dense product is small enough to explore exhaustively in the suite.
EXHAUSTIVE = [
    "default",
    "no-time-signatures",
    "one-time-signature",
    "tempos",
    "chords",
    "no-velocities",
    "no-pitchdrum",
    "pedals",
    "pitch-bends",
    "combo-bare",  # rests (without time signatures) and note order: 25,887 product states
]


@cache
def tokenizer_for(name: str) -> Any:
    from miditok import TSD, TokenizerConfig

    return TSD(TokenizerConfig(**CONFIGS[name]))


@cache
def automaton_for(name: str) -> Automaton:
    return compile_tokenizer(tokenizer_for(name))


@cache
def grammar_for(name: str) -> TsdGrammar:
    return derive(tokenizer_for(name))


def ids_of(name: str, tokens: list[str]) -> list[int]:
    ix = automaton_for(name).token_index
    return [ix[t] for t in tokens]


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
    from miditok import TSD, TokenizerConfig

    kwargs: dict[str, Any] = {option: value}
    if option == "program_changes":
        kwargs["use_programs"] = True
    if option == "sustain_pedal_duration":
        kwargs["use_sustain_pedals"] = True
    with pytest.raises(UnsupportedConfigError, match=option):
        derive(TSD(TokenizerConfig(**kwargs)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"use_programs": True, "one_token_stream_for_programs": False}, "one_token_stream_for_programs"),
        ({"use_programs": True, "use_note_duration_programs": [0]}, "use_note_duration_programs"),
        ({"beat_res": {(0, 4): 8, (2, 8): 4}}, "beat_res"),  # overlapping ranges: values not increasing
        ({"use_rests": True, "beat_res_rest": {(0, 2): 4, (1, 4): 2}}, "beat_res_rest"),
        ({"beat_res": {(0, 4): 8, (4, 12): 3}}, "resolutions"),  # 1/3 beat is not a whole position
    ],
)
def test_other_unsupported_configs_are_clear_errors(kwargs: dict[str, Any], match: str) -> None:
    from miditok import TSD, TokenizerConfig

    with pytest.raises(UnsupportedConfigError, match=match):
        derive(TSD(TokenizerConfig(**kwargs)))


def test_attribute_controls_and_other_tokenizers_are_refused() -> None:
    from miditok import REMI, TSD, TokenizerConfig

    with pytest.raises(UnsupportedConfigError, match="attribute controls"):
        derive(TSD(TokenizerConfig(ac_polyphony_track=True)))
    with pytest.raises(UnsupportedConfigError, match="TSD"):
        derive(REMI(TokenizerConfig()))


@pytest.mark.parametrize("name", NAMES)
def test_compiles_through_the_scheme_seam(name: str) -> None:
    from gramophone.grammar.schemes import derive as derive_any

    auto = automaton_for(name)
    assert isinstance(derive_any(tokenizer_for(name)), TsdGrammar)
    assert auto.meta["scheme"] == "tsd"
    assert auto.vocab == tuple(base_vocab(tokenizer_for(name)))
    assert auto.components[0].name == "syntax"
    names = [c.name for c in auto.components]
    assert ("note-order" in names) == bool(CONFIGS[name].get("remove_duplicated_notes"))
    for c in auto.components[1:]:
        assert c.accepting.all(), f"{c.name} is a safety component"


@pytest.mark.parametrize("name", ["default", "combo-everything"])
def test_compiled_automata_are_cached(name: str) -> None:
    assert compile_tokenizer(tokenizer_for(name)).hash == automaton_for(name).hash


# -- property 1: lark's language ---------------------------------------------------------
@cache
def _lark_streams(name: str) -> st.SearchStrategy[str]:
    return helpers.lark_streams(grammar_for(name), automaton_for(name).vocab)


@pytest.mark.parametrize("name", ["combo-rests-programs", "combo-controls", "combo-bare"])
@settings()
@given(data=st.data())
def test_lark_generated_streams_pass_the_syntax_automaton(name: str, data: st.DataObject) -> None:
    text = data.draw(_lark_streams(name))
    helpers.assert_syntax_accepts(automaton_for(name), text)


# -- property 2: the automaton is the conjunction of its oracles -----------------------------
def _mutate_time(draw: st.DrawFn, ids: list[int], vocab: tuple[str, ...]) -> list[int]:
    """Replace one time token (TimeShift, Rest, Duration, TimeSig) by another of its type:
    the mutations the time constraints, not the syntax, must catch."""
    spots = [
        i for i, t in enumerate(ids) if vocab[t].split("_")[0] in ("TimeShift", "Rest", "Duration", "TimeSig")
    ]
    if not spots:
        return ids
    i = draw(st.sampled_from(spots))
    kind = vocab[ids[i]].split("_")[0]
    ids = list(ids)
    ids[i] = draw(st.sampled_from([j for j, t in enumerate(vocab) if t.split("_")[0] == kind]))
    return ids


@st.composite
def walk_or_mutation(draw: st.DrawFn, name: str) -> list[int]:
    auto = automaton_for(name)
    seed = draw(st.integers(0, 2**32 - 1))
    length = draw(st.integers(0, 80))
    ids = random_walk(auto, np.random.default_rng(seed), length, eos=draw(st.booleans()))
    how = draw(st.sampled_from(["walk", "mutation", "time"]))
    if how == "mutation":
        ids = helpers.mutate(draw, ids, len(auto.vocab))
    elif how == "time":
        ids = _mutate_time(draw, ids, auto.vocab)
    return ids


@pytest.mark.parametrize("name", NAMES)
@settings()
@given(data=st.data())
def test_automaton_accepts_iff_lark_and_references_accept(name: str, data: st.DataObject) -> None:
    ids = data.draw(walk_or_mutation(name))
    auto = automaton_for(name)
    tokens = [auto.vocab[i] for i in ids]
    expected = reference_accepts(grammar_for(name), tokenizer_for(name), tokens)
    assert auto.accepts(ids) == expected, tokens


def _note(pitch: int = 60, duration: str = "1.0.8", program: int | None = None) -> list[str]:
    head = [] if program is None else [f"Program_{program}"]
    return [*head, f"Pitch_{pitch}", "Velocity_63", f"Duration_{duration}"]


#: label: (config, tokens, lark accepts, time_ok, order_ok)
ORACLE_CASES: dict[str, tuple[str, list[str], bool, bool, bool]] = {
    "ok": ("default", ["TimeSig_4/4", *_note()], True, True, True),
    "no opening TimeSig": ("default", _note(), False, False, True),
    # A 3/4 bar is 3 beats: a change after 2 beats is off the bar line, after 3 on it.
    "TimeSig off the bar line": (
        "default",
        ["TimeSig_3/4", *_note(), "TimeShift_2.0.8", "TimeSig_4/4"],
        True,
        False,
        True,
    ),
    "TimeSig on the bar line": (
        "default",
        ["TimeSig_3/4", *_note(), "TimeShift_3.0.8", "TimeSig_4/4"],
        True,
        True,
        True,
    ),
    "TimeSig that changes nothing": (
        "default",
        ["TimeSig_3/4", *_note(), "TimeShift_3.0.8", "TimeSig_3/4"],
        True,
        False,
        True,
    ),
    "a gap spelt in two": (
        "default",
        ["TimeSig_4/4", *_note(), "TimeShift_0.4.8", "TimeShift_0.4.8", *_note(62)],
        True,
        False,
        True,
    ),
    "a gap past 12 beats": (
        "default",
        ["TimeSig_4/4", *_note(), "TimeShift_12.0.4", "TimeShift_1.0.8", *_note(62)],
        True,
        True,
        True,
    ),
    # With rests, silence after the note's end is a Rest, not a TimeShift.
    "TimeShift past the note end": (
        "rests",
        ["TimeSig_4/4", *_note(), "TimeShift_2.0.8", *_note(62)],
        True,
        False,
        True,
    ),
    "Rest after the note end": (
        "rests",
        ["TimeSig_4/4", *_note(), "Rest_1.0.4", *_note(62)],
        True,
        True,
        True,
    ),
    "TimeShift within the note": (
        "rests",
        ["TimeSig_4/4", *_note(duration="2.0.8"), "TimeShift_1.0.8", *_note(62)],
        True,
        True,
        True,
    ),
    # Rests of half a beat at least: a quarter of a beat of silence is a TimeShift, and
    # after rests a TimeShift covers less than the smallest rest.
    "short silence": (
        "coarse-rests",
        ["TimeSig_4/4", *_note(), "TimeShift_1.2.8", *_note(62)],
        True,
        True,
        True,
    ),
    "rest then remainder": (
        "coarse-rests",
        ["TimeSig_4/4", *_note(), "Rest_1.0.2", "TimeShift_0.2.8", *_note(62)],
        True,
        True,
        True,
    ),
    "remainder too long": (
        "coarse-rests",
        ["TimeSig_4/4", *_note(), "Rest_1.0.2", "TimeShift_0.4.8", *_note(62)],
        True,
        False,
        True,
    ),
    "duplicated note": ("dedup", ["TimeSig_4/4", *_note(), *_note()], True, True, False),
    "descending pitches": ("dedup", ["TimeSig_4/4", *_note(62), *_note(60)], True, True, False),
    # Runs of programs in the score's track order (miditok's), each once at a time.
    "descending programs": (
        "combo-rests-programs",
        ["TimeSig_4/4", *_note(program=5), *_note(62, program=0)],
        True,
        True,
        True,
    ),
    "a program comes back": (
        "combo-rests-programs",
        ["TimeSig_4/4", *_note(program=5), *_note(62, program=0), *_note(64, program=5)],
        True,
        True,
        False,
    ),
    "chord after its notes": (
        "combo-rests-programs",
        ["TimeSig_4/4", *_note(program=0), "Program_0", "Chord_maj", *_note(64, program=0)],
        True,
        True,
        False,
    ),
    "incomplete note": ("default", ["TimeSig_4/4", "Pitch_60", "Velocity_63"], False, True, True),
    "ends on time": ("default", ["TimeSig_4/4", "TimeShift_1.0.8"], False, True, True),
    "pedal off after pedal": ("pedals", ["TimeSig_4/4", "Pedal_0", "PedalOff_0"], False, True, True),
}


@pytest.mark.parametrize("label", list(ORACLE_CASES))
def test_reference_oracles_reject_what_they_should(label: str) -> None:
    """The oracles themselves can fail (so agreement with them means something), and the
    automaton agrees on each case."""
    name, tokens, lark_ok, t_ok, o_ok = ORACLE_CASES[label]
    grammar, tok = grammar_for(name), tokenizer_for(name)
    got = (lark_accepts(grammar, tokens), time_ok(tok, tokens), order_ok(tok, tokens))
    assert got == (lark_ok, t_ok, o_ok)
    assert automaton_for(name).accepts(ids_of(name, tokens)) == all(got)


# -- property 3: no dead ends --------------------------------------------------------------
@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_no_dead_ends_in_the_reachable_product(name: str) -> None:
    helpers.assert_no_dead_ends(automaton_for(name))


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(EXHAUSTIVE)))
@settings()
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 400))
def test_no_dead_ends_along_long_walks(name: str, seed: int, length: int) -> None:
    """Products too large to tabulate: long random walks never get stuck (the walk
    asserts a non-empty allowed set at every step and ends accepted)."""
    auto = automaton_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length)
    assert auto.accepts(ids)


# -- property 4: miditok's own verdict on random walks ---------------------------------------
@pytest.mark.parametrize("name", NAMES)
@settings()
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 200))
def test_random_walks_have_no_miditok_errors_and_decode(name: str, seed: int, length: int) -> None:
    auto = automaton_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length)
    helpers.assert_decodes_without_errors(auto, tokenizer_for(name), ids)


def test_special_tokens() -> None:
    auto = automaton_for("default")
    body = ids_of("default", ["TimeSig_4/4", "Pitch_60", "Velocity_63", "Duration_1.0.8"])
    bos, eos, _ = helpers.assert_special_tokens(auto, body)
    assert not auto.accepts([bos, *body, eos, *body])
    assert not auto.accepts([auto.token_index["MASK_None"], *body])


# -- properties 5 and 6: real data ------------------------------------------------------------
CORPUS_CONFIGS = ["default", "coarse-rests", "combo-rests-programs", "combo-bare"]


@cache
def corpus_streams(name: str) -> tuple[tuple[int, ...], ...]:
    return helpers.encode_chorales(tokenizer_for(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS_CONFIGS)
def test_every_chorale_is_accepted(name: str, chorale_midis: list[Any]) -> None:
    auto = automaton_for(name)
    streams = corpus_streams(name)
    assert len(streams) == len(chorale_midis)  # one track per chorale, one stream
    rejected = [str(check_ids(auto, ids)) for ids in streams if not auto.accepts(ids)]
    assert not rejected, f"{len(rejected)} false rejections, first: {rejected[0]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "combo-rests-programs", "combo-bare"])
@settings()
@given(data=st.data())
def test_corruptions_miditok_flags_are_rejected(name: str, data: st.DataObject) -> None:
    auto = automaton_for(name)
    ids = list(data.draw(st.sampled_from(corpus_streams(name))))
    note_length = 3 if tokenizer_for(name).config.use_velocities else 2  # Pitch [Velocity] Duration
    ops = ["replace", "insert", "delete", "duplicate"]
    helpers.corrupt(data, ids, auto.vocab, ops, helpers.note_duplicator(auto.vocab, note_length))
    if miditok_errors(tokenizer_for(name), ids) > 0:
        assert not auto.accepts(ids)


def test_corruption_test_can_fail() -> None:
    """A duplicated note is flagged by miditok (dedup config) and rejected by us."""
    ids = ids_of("dedup", ["TimeSig_4/4", "Pitch_60", "Velocity_63", "Duration_1.0.8"])
    dup = ids + ids[1:4]
    assert miditok_errors(tokenizer_for("dedup"), dup) > 0
    assert not automaton_for("dedup").accepts(dup)
    assert miditok_errors(tokenizer_for("dedup"), ids) == 0 and automaton_for("dedup").accepts(ids)


# -- what miditok writes for scores beyond the chorales --------------------------------------
def random_score(rng: random.Random, tokenizer: Any) -> Any:
    """A multi-track score with time signature changes (each at a bar line of the previous
    meter, as miditok would move it), tempos, pedals and pitch bends, at a tick resolution
    finer than the tokenizer's."""
    from symusic import Note, Pedal, PitchBend, Score, Tempo, TimeSignature, Track

    cfg = tokenizer.config
    tpq = 480
    score: Any = Score(tpq)
    tick, meter = 0, None
    if cfg.use_time_signatures:
        for _ in range(rng.randint(1, 4)):
            meter = rng.choice([m for m in tokenizer.time_signatures if m != meter])
            score.time_signatures.append(TimeSignature(tick, *meter))
            tick += rng.randint(1, 4) * meter[0] * tpq * 4 // meter[1]
    for _ in range(rng.randint(0, 3)):
        score.tempos.append(Tempo(rng.randint(0, 40) * tpq // 2, rng.uniform(40, 240)))
    for _ in range(rng.randint(1, 3)):
        # Without programs miditok only has Pedal_0 tokens (a drum track's pedal is Pedal_-1).
        drum = rng.random() < 0.2 and not (cfg.use_sustain_pedals and not cfg.use_programs)
        program = rng.choice([0, 5, 40, 73]) if cfg.use_programs else 0
        track: Any = Track(program=program, is_drum=drum)
        for _ in range(rng.randint(1, 40)):
            start = rng.randint(0, 60) * rng.choice([60, 120, 160, 240])
            duration = rng.randint(1, 16) * rng.choice([30, 60, 120, 480])
            track.notes.append(Note(start, duration, rng.randint(30, 90), rng.randint(1, 127)))
        if cfg.use_sustain_pedals:
            for _ in range(rng.randint(0, 4)):
                track.pedals.append(Pedal(rng.randint(0, 40) * 240, rng.randint(1, 8) * 240))
        if cfg.use_pitch_bends:
            for _ in range(rng.randint(0, 4)):
                track.pitch_bends.append(PitchBend(rng.randint(0, 40) * 240, rng.randint(-8192, 8191)))
        track.notes.sort()
        track.pedals.sort()
        track.pitch_bends.sort()
        score.tracks.append(track)
    score.tempos.sort()
    return score


@pytest.mark.parametrize(
    "name", ["default", "rests", "coarse-rests", "combo-rests-programs", "combo-controls", "combo-everything"]
)
@settings()
@given(seed=st.integers(0, 2**32 - 1))
def test_what_miditok_writes_cleanly_is_accepted(name: str, seed: int) -> None:
    """miditok's encoding of a random score, when its own tokens_errors finds nothing, is
    accepted (no false rejection beyond the chorales: time signature changes, mixed
    denominators, tempos, several programs, drums, pedals, pitch bends)."""
    from gramophone.tokenizers import encode_score

    tok = tokenizer_for(name)
    auto = automaton_for(name)
    for ids in encode_score(tok, random_score(random.Random(seed), tok)):
        if ids and miditok_errors(tok, ids) == 0:
            violation = check_ids(auto, ids)
            assert violation is None, str(violation)


@pytest.mark.parametrize(
    ("meters", "note"),
    [
        # 6/8 -> 2/4: the note ends at tick 59, between two 2/4 positions; the rests start
        # at the next 2/4 position (miditok drops the sub-position remainder of the gap),
        # and the TimeSig they lead to is on its bar line (in the decoder's exact ticks it
        # would be one tick early).
        ([(0, 6, 8), (48, 2, 4), (112, 3, 4)], (40, 19)),
        # 6/8 -> 2/4 -> 6/8: the note (ending at tick 91) outlives the 2/4 bar; back in 6/8
        # the rests start at its exact end again (a found regression: rounding the note end
        # up when entering 2/4 and keeping it rounded put the next TimeSig one tick late).
        ([(0, 6, 8), (48, 2, 4), (80, 6, 8), (176, 2, 4)], (41, 50)),
    ],
)
def test_note_ends_across_meters_of_different_beats(
    meters: list[tuple[int, int, int]], note: tuple[int, int]
) -> None:
    """A note sounding across a change between x/8 and x/4 meters, then silence written
    with rests: what miditok writes is accepted, by the references and the automaton."""
    from symusic import Note, Score, TimeSignature, Track

    from gramophone.tokenizers import encode_score

    tok = tokenizer_for("rests")
    # 16 ticks per quarter (miditok's resolution for these meters): a 6/8 position is one
    # tick, a 2/4 position two. A 6/8 bar is 48 ticks, a 2/4 bar 32.
    score: Any = Score(16)
    for tick, n, d in meters:
        score.time_signatures.append(TimeSignature(tick, n, d))
    track: Any = Track(program=0)
    track.notes.append(Note(note[0], note[1], 60, 100))
    track.notes.append(Note(meters[-1][0], 16, 62, 100))  # at the last change
    score.tracks.append(track)
    [ids] = encode_score(tok, score)
    tokens = [automaton_for("rests").vocab[i] for i in ids]
    assert any(t.startswith("Rest_") for t in tokens) and tokens.count("TimeSig_2/4") >= 1, tokens
    assert miditok_errors(tok, ids) == 0
    assert time_ok(tok, tokens) and automaton_for("rests").accepts(ids), tokens


def test_a_stream_whose_own_time_drifts_is_rejected() -> None:
    """A known limitation, pinned: miditok 3.1 picks the tick resolution (16 per quarter,
    for 6/8) before it drops the 6/8 that shares its tick with a 4/4; the 5/4 bar is then
    on a grid finer than its positions, a note at an odd tick loses a tick to the
    TimeShift, and the TimeSig_4/4 it writes at the bar line is one position early in the
    stream's own time. tokens_errors sees nothing; gramophone rejects the stream (its
    decoding has a time signature off the bar line)."""
    from symusic import Note, Score, TimeSignature, Track

    from gramophone.tokenizers import encode_score

    tok = tokenizer_for("default")
    score: Any = Score(480)
    for tick, n, d in [(0, 5, 4), (2400, 6, 8), (2400, 4, 4)]:  # one 5/4 bar, then two at once
        score.time_signatures.append(TimeSignature(tick, n, d))
    track: Any = Track(program=0)
    track.notes.append(Note(450, 480, 60, 100))  # tick 15 of 16 per quarter: between positions
    track.notes.append(Note(2400, 480, 62, 100))
    score.tracks.append(track)
    [ids] = encode_score(tok, score)
    tokens = [automaton_for("default").vocab[i] for i in ids]
    assert [tokens[i] for i in (0, 1, 5, 6)] == [
        "TimeSig_5/4",
        "TimeShift_0.7.8",
        "TimeShift_4.0.4",
        "TimeSig_4/4",
    ]
    assert miditok_errors(tok, ids) == 0
    assert not time_ok(tok, tokens) and not automaton_for("default").accepts(ids)
