"""The Structured grammar against its oracles: lark, a plain-Python reference, miditok."""

from __future__ import annotations

import warnings
from collections import Counter
from functools import cache, partial
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gramophone import UnsupportedConfigError
from gramophone.grammar import Automaton, compile_tokenizer, derive
from gramophone.grammar import structured as structured_scheme
from tests import scheme_helpers as helpers
from tests.reference_structured import (
    lark_accepts,
    miditok_errors,
    notes_of,
    order_ok,
    reference_accepts,
)

#: Every supported option, alone and in combinations.
CONFIGS: dict[str, dict[str, object]] = {
    "default": {},
    "dedup": {"remove_duplicated_notes": True},
    "no-velocities": {"use_velocities": False},
    "no-pitchdrum": {"use_pitchdrum_tokens": False},
    "programs": {"use_programs": True},
    "programs-dedup": {"use_programs": True, "remove_duplicated_notes": True},
    # Few programs and pitches: small enough to explore the whole product in the suite.
    "programs-few-dedup": {
        "use_programs": True,
        "programs": [-1, 0, 5, 33],
        "pitch_range": (40, 60),
        "drums_pitch_range": (35, 50),
        "remove_duplicated_notes": True,
    },
    # No drums among the programs (no Program_-1 token, PitchDrum tokens never used).
    "programs-no-drums": {"use_programs": True, "programs": [0, 1, 40], "remove_duplicated_notes": True},
    "programs-bare": {
        "use_programs": True,
        "use_velocities": False,
        "use_pitchdrum_tokens": False,
        "remove_duplicated_notes": True,
        "special_tokens": ["PAD", "BOS"],
    },
    "bare": {"use_velocities": False, "use_pitchdrum_tokens": False, "remove_duplicated_notes": True},
}
ALL_CONFIGS = list(CONFIGS)
DEDUP_CONFIGS = [name for name, kw in CONFIGS.items() if kw.get("remove_duplicated_notes")]
# Configs whose reachable dense product is small enough to explore exhaustively.
EXHAUSTIVE = [
    "default",
    "dedup",
    "no-velocities",
    "no-pitchdrum",
    "programs",
    "programs-few-dedup",
    "programs-no-drums",
    "bare",
]
# Configs the chorales are encoded with (each costs a few seconds).
CORPUS_CONFIGS = ["default", "programs-dedup", "bare"]

ZERO_SHIFT = "TimeShift_0.0.1"


@cache
def tokenizer_for(name: str) -> Any:  # a miditok Structured
    from miditok import Structured, TokenizerConfig

    return Structured(TokenizerConfig(**CONFIGS[name]))


@cache
def automaton_for(name: str) -> Automaton:
    return compile_tokenizer(tokenizer_for(name))


@cache
def grammar_for(name: str) -> structured_scheme.StructuredGrammar:
    grammar = derive(tokenizer_for(name))
    assert isinstance(grammar, structured_scheme.StructuredGrammar)
    return grammar


def ids_of(auto: Automaton, tokens: list[str]) -> list[int]:
    return [auto.token_index[t] for t in tokens]


def note(*tokens: str, shift: str = ZERO_SHIFT, velocity: str | None = "Velocity_63") -> list[str]:
    """One note's tokens: TimeShift, [Program], Pitch, [Velocity], Duration."""
    *head, pitch = tokens
    return [shift, *head, pitch, *([velocity] if velocity else []), "Duration_1.0.8"]


def random_walk(auto: Automaton, rng: np.random.Generator, length: int, eos: bool = True) -> list[int]:
    """A stream of the language (as ``tests.walks.random_walk``), with ``TimeShift_0.0.1``
    drawn as a type of its own so that simultaneous notes are as common as moves in time."""
    vocab = auto.vocab
    kinds = np.array(["TimeShift0" if tok == ZERO_SHIFT else tok.partition("_")[0] for tok in vocab])
    specials = np.isin(kinds, ["BOS", "EOS", "PAD", "MASK"])
    syntax = auto.components[0]
    states = auto.start_states.copy()
    out: list[int] = []
    while True:
        mask = auto.allowed(states) & ~specials
        cand = np.nonzero(mask)[0]
        if len(out) >= length:
            if auto.is_accepting(states):
                break
            d = syntax.distance[syntax.transitions[states[0], cand]]
            cand = cand[d == d.min()]
        assert cand.size, f"dead end after {[vocab[i] for i in out[-8:]]}"
        types = np.unique(kinds[cand])
        kind = types[rng.integers(len(types))]
        pool = cand[kinds[cand] == kind]
        tok = int(pool[rng.integers(len(pool))])
        nxt = auto.step(states, tok)
        assert nxt is not None
        states = nxt
        out.append(tok)
    if eos and "EOS_None" in auto.token_index:
        out.append(auto.token_index["EOS_None"])
    return out


# -- config support ---------------------------------------------------------------------
def test_derive_goes_through_the_scheme_seam() -> None:
    from miditok import Structured, TokenizerConfig

    grammar = derive(Structured(TokenizerConfig()))
    assert grammar.scheme == "structured"
    assert isinstance(grammar, structured_scheme.StructuredGrammar)


@pytest.mark.parametrize(
    "option",
    [
        "use_chords",
        "use_rests",
        "use_tempos",
        "use_time_signatures",
        "use_sustain_pedals",
        "use_pitch_bends",
        "use_control_changes",
        "use_pitch_intervals",
        "program_changes",
        "use_key_signatures",
    ],
)
def test_options_structured_turns_off(option: str) -> None:
    """miditok's Structured turns these options off itself (same vocabulary, same grammar as
    the default); one switched back on in the config afterwards is refused, naming it."""
    from miditok import Structured, TokenizerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # miditok warns that it disables some of them
        tok = Structured(TokenizerConfig(**{option: True}))
    assert getattr(tok.config, option) is False
    default = derive(Structured(TokenizerConfig()))
    assert derive(tok) == default
    setattr(tok.config, option, True)
    with pytest.raises(UnsupportedConfigError, match=option):
        derive(tok)


def test_attribute_controls_are_refused() -> None:
    from miditok import Structured, TokenizerConfig

    tok = Structured(TokenizerConfig(ac_polyphony_track=True))
    assert tok.config.ac_polyphony_track is False  # turned off by miditok
    tok.config.ac_polyphony_track = True
    with pytest.raises(UnsupportedConfigError, match="ac_polyphony_track"):
        derive(tok)


def test_programs_in_several_streams_are_refused() -> None:
    from miditok import Structured, TokenizerConfig

    tok = Structured(TokenizerConfig(use_programs=True, one_token_stream_for_programs=False))
    with pytest.raises(UnsupportedConfigError, match="one_token_stream_for_programs"):
        derive(tok)


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"use_note_duration_programs": list(range(128))}, "-1"),  # drum tracks without durations
        ({"use_programs": True, "programs": [0, 5], "use_note_duration_programs": [0]}, "5"),
    ],
)
def test_notes_without_durations_are_refused(kwargs: dict[str, object], missing: str) -> None:
    from miditok import Structured, TokenizerConfig

    with pytest.raises(UnsupportedConfigError, match=rf"use_note_duration_programs.*\[{missing}\]"):
        derive(Structured(TokenizerConfig(**kwargs)))


def test_other_tokenizers_are_refused() -> None:
    from miditok import REMI, TokenizerConfig

    with pytest.raises(UnsupportedConfigError, match="Structured"):
        structured_scheme.derive(REMI(TokenizerConfig()))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_compiles_and_caches(name: str) -> None:
    auto = automaton_for(name)
    again = compile_tokenizer(tokenizer_for(name))
    assert again.hash == auto.hash
    expected = ["syntax", "note-order"] if CONFIGS[name].get("remove_duplicated_notes") else ["syntax"]
    names = [c.name for c in auto.components]
    assert [n for n in names if not n.startswith("program-runs")] == expected
    runs = CONFIGS[name].get("remove_duplicated_notes") and CONFIGS[name].get("use_programs")
    assert any(n.startswith("program-runs") for n in names) == bool(runs)
    assert all(c.accepting.all() for c in auto.components[1:])  # constraints are safety automata


# -- property 1: lark's language ---------------------------------------------------------
@cache
def _lark_streams(name: str) -> st.SearchStrategy[str]:
    return helpers.lark_streams(grammar_for(name), automaton_for(name).vocab)


@pytest.mark.parametrize(
    "name", ["default", "no-pitchdrum", "programs", "programs-bare", "programs-no-drums"]
)
@given(data=st.data())
def test_lark_generated_streams_pass_the_syntax_automaton(name: str, data: st.DataObject) -> None:
    text = data.draw(_lark_streams(name))
    helpers.assert_syntax_accepts(automaton_for(name), text)


# -- property 2: the automaton agrees with lark + the plain-Python reference ---------------
@st.composite
def mutation(draw: st.DrawFn, ids: list[int], vocab: tuple[str, ...]) -> list[int]:
    """1-3 edits: a random token replaced, inserted or deleted, two tokens swapped, a note
    duplicated at its own onset, or two notes' pitches exchanged (order errors)."""
    ids = list(ids)
    zero = vocab.index(ZERO_SHIFT)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from([*helpers.EDITS, "duplicate", "exchange"]))
        i = draw(st.integers(0, max(0, len(ids) - 1)))
        tok = draw(st.integers(0, len(vocab) - 1))
        shifts = [k for k, t in enumerate(ids) if vocab[t].startswith("TimeShift_")]
        if op in helpers.EDITS:
            helpers.edit(ids, op, i, tok)
        elif op == "duplicate" and shifts:
            k = draw(st.sampled_from(shifts))
            end = next((m for m in shifts if m > k), len(ids))
            ids[end:end] = [zero, *ids[k + 1 : end]]
        elif op == "exchange" and len(shifts) > 1:
            pitches = [k for k, t in enumerate(ids) if vocab[t].startswith(("Pitch_", "PitchDrum_"))]
            if len(pitches) > 1:
                a = draw(st.integers(0, len(pitches) - 2))
                x, y = pitches[a], pitches[a + 1]
                ids[x], ids[y] = ids[y], ids[x]
    return ids


def _walk_or_mutation(name: str) -> st.SearchStrategy[list[int]]:
    auto = automaton_for(name)
    return helpers.walk_or_mutation(
        partial(random_walk, auto), 60, lambda draw, ids: draw(mutation(ids, auto.vocab))
    )


@pytest.mark.parametrize("name", ALL_CONFIGS)
@given(data=st.data())
def test_automaton_accepts_iff_lark_and_references_accept(name: str, data: st.DataObject) -> None:
    ids = data.draw(_walk_or_mutation(name))
    auto = automaton_for(name)
    tokens = [auto.vocab[i] for i in ids]
    assert auto.accepts(ids) == reference_accepts(grammar_for(name), tokens), tokens


def test_reference_oracles_reject_what_they_should() -> None:
    """The oracles themselves can fail, so agreement with them means something."""
    g = grammar_for("programs-dedup")
    chord = [
        *note("Program_-1", "PitchDrum_36", shift="TimeShift_1.0.8"),
        *note("Program_0", "Pitch_60"),
        *note("Program_0", "Pitch_64"),
    ]
    assert reference_accepts(g, chord)
    assert not order_ok(g, [*chord, *note("Program_0", "Pitch_64")])  # duplicate
    assert not order_ok(g, [*chord, *note("Program_-1", "PitchDrum_40")])  # program comes back
    assert order_ok(g, [*chord, *note("Program_3", "Pitch_40")])  # any order of programs
    assert order_ok(g, [*chord, *note("Program_-1", "PitchDrum_40", shift="TimeShift_0.1.8")])
    assert not lark_accepts(g, [*chord, *note("Program_0", "PitchDrum_70")])  # drum pitch, piano
    assert not lark_accepts(g, [*chord, *note("Program_-1", "Pitch_70")])  # pitch, drums
    assert not lark_accepts(g, chord[:-1])  # a note without its duration
    assert not lark_accepts(g, chord[1:])  # no TimeShift first
    assert not lark_accepts(g, [])  # no note at all
    plain = grammar_for("dedup")
    drums = [*note("PitchDrum_36", shift="TimeShift_1.0.8"), *note("PitchDrum_38")]
    assert reference_accepts(plain, drums)
    assert not lark_accepts(plain, [*drums, *note("Pitch_60")])  # one kind of note per stream
    assert order_ok(grammar_for("default"), [*drums, *note("PitchDrum_38")])  # no dedup: any order


def test_note_order_examples() -> None:
    auto = automaton_for("programs-dedup")
    head = [*note("Program_0", "Pitch_60", shift="TimeShift_1.0.8")]
    assert auto.accepts(ids_of(auto, [*head, *note("Program_0", "Pitch_64"), *note("Program_3", "Pitch_40")]))
    assert not auto.accepts(ids_of(auto, [*head, *note("Program_0", "Pitch_60")]))
    assert not auto.accepts(ids_of(auto, [*head, *note("Program_0", "Pitch_59")]))
    # Programs in the order of the score's tracks (miditok's), each once at an onset.
    later = [*head, *note("Program_-1", "PitchDrum_40")]
    assert auto.accepts(ids_of(auto, later))
    assert auto.accepts(ids_of(auto, [*later, *note("Program_3", "Pitch_40")]))
    assert not auto.accepts(ids_of(auto, [*later, *note("Program_0", "Pitch_64")]))  # 0 comes back
    # A new onset starts afresh.
    assert auto.accepts(ids_of(auto, [*head, *note("Program_-1", "PitchDrum_40", shift="TimeShift_0.1.8")]))
    # Without remove_duplicated_notes the same stream (a duplicated note) is fine.
    loose = automaton_for("programs")
    assert loose.accepts(ids_of(loose, [*head, *note("Program_0", "Pitch_60")]))


# -- property 3: no dead ends --------------------------------------------------------------
@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_no_dead_ends_in_the_reachable_product(name: str) -> None:
    helpers.assert_no_dead_ends(automaton_for(name))


@pytest.mark.parametrize("name", sorted(set(ALL_CONFIGS) - set(EXHAUSTIVE)))
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 400))
def test_no_dead_ends_along_long_walks(name: str, seed: int, length: int) -> None:
    """Products too large to tabulate in the suite: long random walks never get stuck
    (the walk asserts a non-empty allowed set at every step and ends accepted)."""
    auto = automaton_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length)
    assert auto.accepts(ids)


@pytest.mark.parametrize("name", ["dedup", "programs-few-dedup"])
def test_no_zero_shift_after_the_last_possible_note(name: str) -> None:
    """After the highest pitch (of the last program left: each has one run at an onset) no
    note can follow at that onset, so TimeShift_0.0.1 (which announces one) is not allowed
    there."""
    auto = automaton_for(name)
    ix = auto.token_index
    top = max(int(t.split("_")[1]) for t in ix if t.startswith("Pitch_"))

    def allowed_after(tokens: list[str]) -> np.ndarray:
        states: np.ndarray | None = auto.start_states
        for tok in tokens:
            assert states is not None
            states = auto.step(states, ix[tok])
        assert states is not None
        return auto.allowed(states)

    if name == "dedup":
        allowed = allowed_after(note(f"Pitch_{top}", shift="TimeShift_1.0.8"))
        assert not allowed[ix[ZERO_SHIFT]]
        assert allowed[ix["TimeShift_0.1.8"]]
        return
    # programs -1, 0, 5, 33: each in its own run, the last at its top pitch
    runs = [("Program_-1", "PitchDrum_40"), ("Program_5", "Pitch_45"), ("Program_0", "Pitch_41")]
    head = [*note(*runs[0], shift="TimeShift_1.0.8"), *[t for run in runs[1:] for t in note(*run)]]
    allowed = allowed_after([*head, *note("Program_33", f"Pitch_{top}")])
    assert not allowed[ix[ZERO_SHIFT]]
    assert allowed[ix["TimeShift_0.1.8"]]
    # a program left, or a higher pitch left for the last one: a note may follow
    assert allowed_after([*head[:-5], *note("Program_33", f"Pitch_{top}")])[ix[ZERO_SHIFT]]
    assert allowed_after([*head, *note("Program_33", f"Pitch_{top - 1}")])[ix[ZERO_SHIFT]]
    wide = automaton_for("programs-dedup")  # its top pitch: other programs are left
    wide_top = max(int(t.split("_")[1]) for t in wide.token_index if t.startswith("Pitch_"))
    states = wide.start_states
    for tok in note("Program_127", f"Pitch_{wide_top}", shift="TimeShift_1.0.8"):
        states = wide.step(states, wide.token_index[tok])
    assert states is not None and wide.allowed(states)[wide.token_index[ZERO_SHIFT]]


# -- property 4: miditok's own verdict on random walks ---------------------------------------
def _decoded_notes(name: str, ids: list[int]) -> list[tuple[int, int, int]]:
    from gramophone.tokenizers import decode_ids

    tok = tokenizer_for(name)
    specials = {tok.vocab[t] for t in tok.special_tokens}
    score = decode_ids(tok, [i for i in ids if i not in specials])
    assert score.dumps_midi()[:4] == b"MThd"
    use_programs = bool(CONFIGS[name].get("use_programs"))
    return sorted(
        ((-1 if tr.is_drum else tr.program) if use_programs else 0, n.time, n.pitch)
        for tr in score.tracks
        for n in tr.notes
    )


@pytest.mark.parametrize("name", ALL_CONFIGS)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 200))
def test_random_walks_have_no_miditok_errors_and_decode(name: str, seed: int, length: int) -> None:
    """miditok finds no error in a walk, and decodes every note where the tokens put it."""
    auto = automaton_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length)
    tokens = [auto.vocab[i] for i in ids]
    assert miditok_errors(tokenizer_for(name), ids) == 0.0, tokens
    tpq = int(tokenizer_for(name).time_division)
    assert _decoded_notes(name, ids) == sorted(notes_of(tokens, tpq)), tokens


@pytest.mark.parametrize("name", DEDUP_CONFIGS)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 200))
def test_dedup_walks_round_trip_through_miditok(name: str, seed: int, length: int) -> None:
    """With remove_duplicated_notes the language is what miditok writes: a walk decoded and
    encoded again gives the same tokens, up to the order of the programs' runs at each
    onset (miditok writes them in the order of the decoded score's tracks, one order for the
    whole piece; the language allows any order at each onset). Without programs miditok
    decodes a stream as a non-drum track, so PitchDrum comes back as Pitch."""
    from gramophone.tokenizers import decode_ids, encode_score

    auto = automaton_for(name)
    tok = tokenizer_for(name)
    ids = random_walk(auto, np.random.default_rng(seed), length, eos=False)
    score: Any = decode_ids(tok, ids)
    (again,) = encode_score(tok, score)
    expected = [auto.vocab[i] for i in ids]
    if not CONFIGS[name].get("use_programs"):
        expected = [t.replace("PitchDrum_", "Pitch_") for t in expected]
    tokens = [auto.vocab[i] for i in again]
    assert runs_at_onsets(tokens) == runs_at_onsets(expected)
    if not CONFIGS[name].get("use_programs"):
        assert tokens == expected


def runs_at_onsets(tokens: list[str]) -> list[tuple[str, list[list[tuple[str, ...]]]]]:
    """Per onset: its TimeShift and its programs' runs (each a list of notes, in order),
    the runs sorted: the stream with the order of runs at each onset left out."""
    notes: list[list[str]] = []
    for tok in tokens:
        if tok.startswith("TimeShift_"):
            notes.append([tok])
        else:
            notes[-1].append(tok)
    onsets: list[tuple[str, list[list[tuple[str, ...]]]]] = []
    for shift, *rest in notes:
        if shift != ZERO_SHIFT or not onsets:  # the first onset may be at time 0
            onsets.append((shift, []))
        runs = onsets[-1][1]
        program = rest[0] if rest[0].startswith("Program_") else ""
        if runs and runs[-1][0][0] == program:
            runs[-1].append((program, *rest[1:]))
        else:
            runs.append([(program, *rest[1:])])
    return [(shift, sorted(runs)) for shift, runs in onsets]


def test_special_tokens() -> None:
    auto = automaton_for("default")
    body = ids_of(auto, note("Pitch_60", shift="TimeShift_0.2.8"))
    bos, eos, _ = helpers.assert_special_tokens(auto, body)
    assert not auto.accepts([bos, *body, eos, *body])
    bare = automaton_for("programs-bare")  # special tokens PAD and BOS only
    assert "EOS_None" not in bare.token_index and "BOS_None" in bare.token_index


# -- properties 5 and 6: real data -------------------------------------------------------------
@cache
def corpus_streams(name: str) -> tuple[tuple[int, ...], ...]:
    return helpers.encode_chorales(tokenizer_for(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS_CONFIGS)
def test_every_chorale_is_accepted(name: str, chorale_midis: list[Any]) -> None:
    from gramophone.grammar import check_ids

    auto = automaton_for(name)
    streams = corpus_streams(name)
    assert len(streams) == len(chorale_midis)  # one stream per chorale (each is one track)
    rejected = [str(v) for ids in streams if (v := check_ids(auto, ids)) is not None]
    assert not rejected, f"{len(rejected)} false rejections, first: {rejected[0]}"
    if CONFIGS[name].get("remove_duplicated_notes"):  # the order constraint is exercised
        zero = auto.token_index[ZERO_SHIFT]
        assert sum(ids.count(zero) for ids in streams) > 10_000


@st.composite
def scores(draw: st.DrawFn) -> Any:  # a symusic Score
    """Small multi-track scores: drums, repeated programs, simultaneous and duplicated
    notes, notes out of range, zero durations, long pauses."""
    from symusic import Note, Score, Track

    score: Any = Score(96)
    for _ in range(draw(st.integers(1, 4))):
        track: Any = Track(program=draw(st.sampled_from([0, 0, 5, 33, 127])), is_drum=draw(st.booleans()))
        times = st.integers(0, 12).map(lambda q: q * 48) | st.integers(0, 3000)
        for _ in range(draw(st.integers(1, 12))):
            track.notes.append(
                Note(
                    draw(times),
                    draw(st.integers(0, 500)),
                    draw(st.integers(20, 110)),
                    draw(st.integers(1, 127)),
                )
            )
        score.tracks.append(track)
    return score


@pytest.mark.parametrize(
    "name", ["default", "bare", "programs", "programs-dedup", "programs-no-drums", "programs-bare"]
)
@given(data=st.data())
def test_miditok_encodings_of_generated_scores_are_accepted(name: str, data: st.DataObject) -> None:
    """What miditok writes for any score (tracks sorted as encode_score does) is accepted;
    a score whose notes all fall outside the ranges gives an empty stream, not a piece."""
    from gramophone.grammar import check_ids
    from gramophone.tokenizers import encode_score

    auto = automaton_for(name)
    score = data.draw(scores())
    for ids in encode_score(tokenizer_for(name), score):
        if ids:
            assert check_ids(auto, ids) is None, [auto.vocab[i] for i in ids]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "programs-dedup"])
@given(data=st.data())
def test_corruptions_miditok_flags_are_rejected(name: str, data: st.DataObject) -> None:
    auto = automaton_for(name)
    ids = list(data.draw(st.sampled_from(corpus_streams(name))))
    specials = {i for i, t in enumerate(auto.vocab) if t.split("_")[0] in ("PAD", "BOS", "EOS", "MASK")}
    tokens = st.integers(0, len(auto.vocab) - 1).filter(lambda t: t not in specials)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(ids) - 1))
        op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "replace":
            ids[i] = data.draw(tokens)
        elif op == "insert":
            ids.insert(i, data.draw(tokens))
        elif len(ids) > 1:
            del ids[i]
    if miditok_errors(tokenizer_for(name), ids) > 0:
        assert not auto.accepts(ids)


def test_what_miditok_flags_and_what_it_misses() -> None:
    """A broken type succession is flagged by miditok and rejected by us; a duplicated note
    at one onset is *not* flagged by miditok (its duplicate check forgets the onset's
    pitches at every TimeShift, TimeShift_0.0.1 included) but rejected under dedup."""
    auto = automaton_for("dedup")
    tok = tokenizer_for("dedup")
    ok = ids_of(auto, [*note("Pitch_60", shift="TimeShift_1.0.8"), *note("Pitch_64")])
    assert miditok_errors(tok, ok) == 0 and auto.accepts(ok)
    broken = ok[:2] + ok[3:]  # Pitch -> Duration without its Velocity
    assert miditok_errors(tok, broken) > 0 and not auto.accepts(broken)
    duplicated = ok + ids_of(auto, note("Pitch_64"))
    assert miditok_errors(tok, duplicated) == 0
    assert not auto.accepts(duplicated)


def test_state_counts() -> None:
    """The note-order component has one state per (program, last pitch of its kind) plus
    a start; with programs Program_-1 is written with PitchDrum (62 values) and the others
    with Pitch (89 values)."""
    counts = Counter({c.name: c.num_states for c in automaton_for("programs-dedup").components})
    assert counts["note-order"] == 1 + 129 + 62 + 128 * 89
    assert {c.name: c.num_states for c in automaton_for("dedup").components}["note-order"] == 1 + 89 + 62
