"""The MIDILike grammar against its oracles: lark, plain-Python references, miditok."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator
from functools import cache, partial
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone import UnsupportedConfigError
from gramophone.grammar import REJECT, Automaton, Component, fsa
from gramophone.grammar.midilike import MAX_OPEN_PER_PITCH, MidiLikeGrammar, derive
from gramophone.grammar.schemes import base_vocab, compile_scheme, compile_tokenizer
from tests import scheme_helpers as helpers
from tests.reference import miditok_errors
from tests.reference_midilike import lark_accepts, reference_accepts, type_graph_errors

_SMALL: dict[str, Any] = {
    "pitch_range": (60, 62),
    "drums_pitch_range": (60, 62),
    "beat_res": {(0, 1): 2},
    "beat_res_rest": {(0, 1): 2},
}
_RICH: dict[str, Any] = {
    "use_rests": True,
    "use_tempos": True,
    "use_chords": True,
    "use_sustain_pedals": True,
    "use_pitch_bends": True,
}

#: Every supported option, alone and in combinations. "_max_open" is gramophone's bound on
#: the notes of one (program, pitch) open at once (``derive(..., max_open_per_pitch=)``).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-time-signatures": {"use_time_signatures": False},
    "rests": {"use_rests": True},
    "tempos": {"use_tempos": True},
    "chords": {"use_chords": True},
    "no-velocities": {"use_velocities": False},
    "no-pitchdrum": {"use_pitchdrum_tokens": False},
    "dedup": {"remove_duplicated_notes": True},
    "pedals": {"use_sustain_pedals": True},
    "pitch-bends": {"use_pitch_bends": True},
    "programs": {"use_programs": True, "programs": [-1, 0, 24]},
    "overlap-1": {"_max_open": 1},
    "overlap-2": {"_max_open": 2},
    "combo": _RICH,
    "combo-programs": {**_RICH, "use_programs": True, "programs": [0, 24]},
    "combo-bare": {
        "use_time_signatures": False,
        "use_rests": True,
        "use_velocities": False,
        "remove_duplicated_notes": True,
        "_max_open": 2,
    },
    # Small pitch ranges: the whole reachable product can be explored.
    "small": _SMALL,
    "small-rich": {**_SMALL, **_RICH},
    "small-programs": {
        **_SMALL,
        **_RICH,
        "pitch_range": (60, 61),
        "drums_pitch_range": (60, 61),
        "use_programs": True,
        "programs": [0, 1],
    },
    "small-programs-bare": {
        **_SMALL,
        "pitch_range": (60, 61),
        "drums_pitch_range": (60, 61),
        "use_programs": True,
        "programs": [0, 1],
        "use_rests": True,
    },
    "small-dedup-2": {**_SMALL, "use_rests": True, "remove_duplicated_notes": True, "_max_open": 2},
    "small-bare": {**_SMALL, "use_time_signatures": False, "use_velocities": False, "use_chords": True},
}
ALL = list(CONFIGS)
EXHAUSTIVE = [name for name in ALL if name.startswith("small")]
LARGE = [name for name in ALL if name not in EXHAUSTIVE]
#: Configs the slower oracles (lark's Earley parser, miditok's tokens_errors and decoder) run on.
ORACLE = ["default", "combo", "combo-programs", "combo-bare", "small-rich"]
MIDITOK = ["default", "combo", "combo-programs", "combo-bare"]
#: Configs every chorale is tokenized with, and those its streams are corrupted in.
CORPUS = ["default", "dedup", "combo", "combo-programs"]
CORRUPT = ["default", "combo", "combo-programs"]


@cache
def tokenizer_for(name: str) -> Any:
    from miditok import MIDILike, TokenizerConfig

    kwargs = {k: v for k, v in CONFIGS[name].items() if not k.startswith("_")}
    return MIDILike(TokenizerConfig(**kwargs))


def max_open_for(name: str) -> int:
    return int(CONFIGS[name].get("_max_open", MAX_OPEN_PER_PITCH))


@cache
def grammar_for(name: str) -> MidiLikeGrammar:
    return derive(tokenizer_for(name), max_open_per_pitch=max_open_for(name))


@cache
def automaton_for(name: str) -> Automaton:
    if max_open_for(name) == MAX_OPEN_PER_PITCH:
        return compile_tokenizer(tokenizer_for(name))
    return compile_scheme(grammar_for(name), base_vocab(tokenizer_for(name)), {})


def ref_accepts(name: str, tokens: list[str]) -> bool:
    cfg = tokenizer_for(name).config
    return reference_accepts(
        grammar_for(name).text,
        tokens,
        max_open=max_open_for(name),
        remove_duplicated_notes=bool(cfg.remove_duplicated_notes),
        ascending=bool(cfg.remove_duplicated_notes) and max_open_for(name) > 1,
        drum_pitches=bool(cfg.use_programs and cfg.use_pitchdrum_tokens),
    )


def ids_of(name: str, tokens: list[str]) -> list[int]:
    index = automaton_for(name).token_index
    return [index[t] for t in tokens]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """miditok's tokens_errors and decoder allocate a queue per program and pitch on every
    call (11,481 lists with the default programs); with the collector on, the full
    collections this triggers over the test session's heap dominate the suite's time."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def errors(tokenizer: object, ids: list[int]) -> float:
    """miditok's ``tokens_errors`` (special tokens left out)."""
    with _gc_paused():
        return miditok_errors(tokenizer, ids)


def decode(tokenizer: Any, ids: list[int]) -> Any:
    """miditok's decoder, through gramophone's wrapper (a ``symusic.Score``)."""
    from gramophone.tokenizers import decode_ids

    with _gc_paused():
        return decode_ids(tokenizer, ids)


# -- walks ---------------------------------------------------------------------------------
SyntaxCounter = tuple[np.ndarray, np.ndarray, dict[tuple[int, int], int], np.ndarray]


@cache
def syntax_counter(name: str) -> SyntaxCounter:
    return product_of_syntax_and_counter(automaton_for(name))


def product_of_syntax_and_counter(auto: Automaton) -> SyntaxCounter:
    """The product of the syntax and the open-notes counter (the only non-safety
    components), over classes of tokens that act alike on both: its table, the distance to
    acceptance of each state, the index of each (syntax, counter) pair, each token's class."""
    syntax, counter = auto.components[0], auto.component("open-notes")
    columns = np.concatenate([syntax.transitions, counter.transitions], axis=0).T
    _, reps, token_class = np.unique(columns, axis=0, return_index=True, return_inverse=True)
    T, acc, _, states = fsa.product(
        [syntax.transitions[:, reps], counter.transitions[:, reps]],
        [syntax.accepting, counter.accepting],
        [syntax.start, counter.start],
    )
    index = {(int(a), int(b)): i for i, (a, b) in enumerate(states)}
    return T, fsa.distance_to_accept(T, acc), index, token_class.reshape(-1)


def walk(name: str, rng: np.random.Generator, length: int, eos: bool = True) -> list[int]:
    """A stream of the language: about ``length`` tokens, then the shortest way out.

    Token types are drawn uniformly, then a value. After ``length`` tokens only tokens that
    lower the distance to acceptance of the syntax x counter product by one are drawn: one
    always exists in the full product if its distances are that product's (asserted), and
    there is never a dead end (asserted).
    """
    auto = automaton_for(name)
    T, dist, index, token_class = syntax_counter(name)
    k_counter = [c.name for c in auto.components].index("open-notes")
    kinds = np.array([tok.partition("_")[0] for tok in auto.vocab])
    specials = np.isin(kinds, ["BOS", "EOS", "PAD", "MASK"])
    states = auto.start_states.copy()
    p = index[(int(states[0]), int(states[k_counter]))]
    out: list[int] = []
    while True:
        allowed = auto.allowed(states) & ~specials
        if len(out) >= length:
            if auto.is_accepting(states):
                assert dist[p] == 0
                break
            cand = np.nonzero(allowed)[0]
            cand = cand[dist[T[p, token_class[cand]]] == dist[p] - 1]
            assert cand.size, f"no step towards acceptance after {[auto.vocab[i] for i in out[-8:]]}"
        else:
            cand = np.nonzero(allowed)[0]
            if cand.size == 0 and auto.is_accepting(states):
                break
        assert cand.size, f"dead end after {[auto.vocab[i] for i in out[-8:]]}"
        types = np.unique(kinds[cand])
        pool = cand[kinds[cand] == types[rng.integers(len(types))]]
        tok = int(pool[rng.integers(len(pool))])
        nxt = auto.step(states, tok)
        assert nxt is not None
        states, p = nxt, int(T[p, token_class[tok]])
        assert index[(int(states[0]), int(states[k_counter]))] == p
        out.append(tok)
    if eos:
        out.append(auto.token_index["EOS_None"])
    return out


# -- config support ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "kwargs"),
    [
        ("use_key_signatures", {"use_key_signatures": True}),
        ("use_control_changes", {"use_control_changes": True}),
        ("use_pitch_intervals", {"use_pitch_intervals": True}),
        ("sustain_pedal_duration", {"use_sustain_pedals": True, "sustain_pedal_duration": True}),
        ("program_changes", {"use_programs": True, "programs": [0], "program_changes": True}),
        ("one_token_stream_for_programs", {"use_programs": True, "one_token_stream_for_programs": False}),
        ("remove_duplicated_notes", {"use_programs": True, "programs": [0], "remove_duplicated_notes": True}),
        ("max_duration", {"max_duration": "4.0.4"}),
        ("programs: 129 programs", {"use_programs": True}),  # all of them, miditok's default
        ("programs must include 0", {"programs": [1, 2]}),
        ("use_note_duration_programs", {"use_note_duration_programs": [0]}),
        ("drums_pitch_range", {"pitch_range": (40, 100)}),
        ("attribute controls", {"ac_polyphony_track": True}),
    ],
)
def test_unsupported_option_is_a_clear_error(message: str, kwargs: dict[str, object]) -> None:
    from miditok import MIDILike, TokenizerConfig

    with pytest.raises(UnsupportedConfigError, match=message):
        derive(MIDILike(TokenizerConfig(**kwargs)))


def test_other_tokenizers_and_bad_bounds_are_refused() -> None:
    from miditok import REMI, TokenizerConfig

    from gramophone.grammar import derive as derive_any

    with pytest.raises(UnsupportedConfigError, match="MIDILike"):
        derive(REMI(TokenizerConfig()))
    with pytest.raises(ValueError, match="max_open_per_pitch"):
        derive(tokenizer_for("default"), max_open_per_pitch=0)
    assert isinstance(derive_any(tokenizer_for("default")), MidiLikeGrammar)  # the scheme seam


@pytest.mark.parametrize("name", ALL)
def test_compiles_and_caches(name: str) -> None:
    auto = automaton_for(name)
    assert auto.components[0].name == "syntax"
    assert auto.components[1].name == "open-notes"
    if max_open_for(name) == MAX_OPEN_PER_PITCH:
        assert compile_tokenizer(tokenizer_for(name)).hash == auto.hash
    pairing = [c for c in auto.components if c.name.startswith("pairing")]
    assert all(c.num_states <= 2048 and c.accepting.all() for c in pairing)
    covered = sorted(int(p) for c in pairing for p in c.info["pitches"])
    programs = max(1, len(grammar_for(name).programs))
    assert covered == sorted(list(grammar_for(name).pitches) * programs)


def test_default_config_sizes() -> None:
    """The numbers the module notes give for the default config."""
    auto = automaton_for("default")
    sizes = {c.name: c.num_states for c in auto.components}
    assert MAX_OPEN_PER_PITCH == 4
    assert sizes["open-notes"] == 89 * 4 + 1  # 0..356 open notes: 89 pitches, 4 each
    pairing = [n for name, n in sizes.items() if name.startswith("pairing[")]
    assert sorted(pairing) == [125] * 3 + [625] * 20  # counts 0..4 of 4 pitches (3 for three groups)
    assert len(sizes) == 25  # syntax, open-notes, 23 pairing components
    T, _, _, _ = syntax_counter("default")
    assert T.shape[0] == 1429  # the decoder's distance table: syntax x counter, reachable


# -- property 1: lark's language -----------------------------------------------------------
@cache
def lark_strategy(name: str) -> st.SearchStrategy[str]:
    return helpers.lark_streams(grammar_for(name), automaton_for(name).vocab)


@pytest.mark.parametrize("name", ["combo", "combo-programs", "combo-bare"])
@settings()
@given(data=st.data())
def test_lark_generated_streams_pass_the_syntax_automaton(name: str, data: st.DataObject) -> None:
    """... and break no rule of miditok's type graph: the grammar file alone is never looser."""
    text = data.draw(lark_strategy(name))
    tokens = helpers.assert_syntax_accepts(automaton_for(name), text)
    assert type_graph_errors(tokenizer_for(name), tokens) == 0, text


# -- property 2: the automaton is lark x the references --------------------------------------
def _walk_or_mutation(name: str) -> st.SearchStrategy[list[int]]:
    edits = partial(helpers.mutate, vocab_size=len(automaton_for(name).vocab))
    return helpers.walk_or_mutation(partial(walk, name), 30, edits)


@pytest.mark.parametrize("name", ORACLE)
@settings()
@given(data=st.data())
def test_automaton_accepts_iff_lark_and_references_accept(name: str, data: st.DataObject) -> None:
    ids = data.draw(_walk_or_mutation(name))
    auto = automaton_for(name)
    tokens = [auto.vocab[i] for i in ids]
    assert auto.accepts(ids) == ref_accepts(name, tokens), tokens


def test_reference_oracles_reject_what_they_should() -> None:
    """The oracles can fail (so agreement with them means something), and the automaton
    fails with them."""
    name = "combo"
    ok = ["TimeSig_4/4", "NoteOn_60", "Velocity_63", "TimeShift_1.0.8", "NoteOff_60"]
    assert ref_accepts(name, ok) and automaton_for(name).accepts(ids_of(name, ok))
    cases = {
        "NoteOn without its Velocity (miditok issue #208)": [
            "TimeSig_4/4",
            "NoteOn_60",
            "TimeShift_1.0.8",
            "NoteOff_60",
        ],
        "a note never closed": ok[:-1],
        "a NoteOff with no open note": [*ok, "NoteOff_60"],
        "a NoteOff of another pitch": [*ok[:-1], "NoteOff_61"],
        "a Rest right after a TimeShift": [*ok, "TimeShift_1.0.8", "Rest_1.0.4"],
        "a pitch struck a fifth time while held (the bound)": [
            *ok[:3],
            *["NoteOn_60", "Velocity_63"] * 4,
            *ok[3:],
            *["NoteOff_60"] * 4,
        ],
    }
    for why, tokens in cases.items():
        assert not ref_accepts(name, tokens), why
        assert not automaton_for(name).accepts(ids_of(name, tokens)), why
    assert not lark_accepts(grammar_for(name).text, cases["NoteOn without its Velocity (miditok issue #208)"])

    def held(n: int) -> list[str]:  # one pitch struck n times, all sounding at once
        return [*["NoteOn_60", "Velocity_63"] * n, "TimeShift_1.0.8", *["NoteOff_60"] * n]

    for bounded in ("overlap-1", "overlap-2", "default"):
        bound = max_open_for(bounded)
        assert automaton_for(bounded).accepts(ids_of(bounded, held(bound)))
        assert not automaton_for(bounded).accepts(ids_of(bounded, held(bound + 1)))
    # Duplicates at one onset: miditok's rule, and the canonical order with the bound above 1.
    dup = ["NoteOn_60", "NoteOn_60", "TimeShift_1.0.8", "NoteOff_60", "NoteOff_60"]
    down = ["NoteOn_61", "NoteOn_60", "TimeShift_1.0.8", "NoteOff_61", "NoteOff_60"]
    assert not ref_accepts("combo-bare", dup) and not automaton_for("combo-bare").accepts(
        ids_of("combo-bare", dup)
    )
    assert not ref_accepts("combo-bare", down) and not automaton_for("combo-bare").accepts(
        ids_of("combo-bare", down)
    )
    assert errors(tokenizer_for("combo-bare"), ids_of("combo-bare", dup)) > 0


def test_notes_pair_per_program_and_drums_share_keys() -> None:
    """miditok keys open notes by (program, pitch); DrumOn/DrumOff pair like NoteOn/NoteOff."""
    name = "programs"
    auto = automaton_for(name)
    on = ["Program_0", "NoteOn_60", "Velocity_63", "TimeShift_1.0.8"]
    assert auto.accepts(ids_of(name, [*on, "Program_0", "NoteOff_60"]))
    other = [*on, "Program_24", "NoteOff_60"]
    assert not auto.accepts(ids_of(name, other)) and not ref_accepts(name, other)
    assert errors(tokenizer_for(name), ids_of(name, other)) > 0
    # Two programs hold the same pitch at once.
    both = ["Program_0", "NoteOn_60", "Velocity_63", "Program_24", "NoteOn_60", "Velocity_63"]
    closed = [*both, "TimeShift_1.0.8", "Program_24", "NoteOff_60", "Program_0", "NoteOff_60"]
    assert auto.accepts(ids_of(name, closed))
    drums = ["Program_-1", "DrumOn_40", "Velocity_63", "TimeShift_1.0.8", "Program_-1", "DrumOff_40"]
    assert auto.accepts(ids_of(name, drums)) and errors(tokenizer_for(name), ids_of(name, drums)) == 0
    # miditok pairs a DrumOn with a NoteOff too (one key), but never writes NoteOff for drums.
    mixed = [*drums[:-1], "NoteOff_40"]
    assert errors(tokenizer_for(name), ids_of(name, mixed)) == 0
    assert not auto.accepts(ids_of(name, mixed)) and not ref_accepts(name, mixed)


def test_masks_after_a_note_on() -> None:
    """After a NoteOn only its Velocity; EOS only once every note is closed; a fifth
    NoteOn of a sounding pitch is refused (the bound)."""
    auto = automaton_for("default")
    ix = auto.token_index
    states: np.ndarray | None = auto.start_states
    for tok in ["BOS_None", "NoteOn_60"]:
        assert states is not None
        states = auto.step(states, ix[tok])
    assert states is not None
    names = {auto.vocab[i] for i in np.nonzero(auto.allowed(states))[0]}
    assert names == {t for t in auto.vocab if t.startswith("Velocity_")}
    for tok in ["Velocity_63", "TimeShift_1.0.8"]:
        assert states is not None
        states = auto.step(states, ix[tok])
    assert states is not None
    allowed = auto.allowed(states)
    assert not allowed[ix["EOS_None"]] and not allowed[ix["NoteOff_61"]] and allowed[ix["NoteOff_60"]]
    assert allowed[ix["NoteOn_60"]] and allowed[ix["NoteOn_61"]]  # a pitch may sound 4 times at once
    for tok in ["NoteOn_60", "Velocity_63"] * 3:
        assert states is not None
        states = auto.step(states, ix[tok])
    assert states is not None
    allowed = auto.allowed(states)
    assert not allowed[ix["NoteOn_60"]] and allowed[ix["NoteOn_61"]]


@pytest.mark.parametrize(
    ("stream", "rejected_by", "says"),
    [
        (
            " ".join(["NoteOn_60 Velocity_63"] * 4 + ["NoteOn_60"]),
            "pairing[",
            "strikes pitch 60 again while 4 notes of it are still sounding",
        ),
        (
            "NoteOn_60 Velocity_63 TimeShift_1.0.8 NoteOff_62",
            "pairing[",
            "closes no sounding note of pitch 62",
        ),
        (
            "NoteOn_60 Velocity_63 TimeShift_1.0.8 NoteOn_64 Velocity_63 EOS_None",
            "open-notes",
            "leaves 2 notes",
        ),
    ],
)
def test_pairing_violations_are_explained(stream: str, rejected_by: str, says: str) -> None:
    """The checker names the pairing bound, an unmatched NoteOff and the notes left open."""
    from gramophone.grammar.checker import check_stream

    auto = automaton_for("default")
    report = check_stream(auto, [auto.token_index[t] for t in ["BOS_None", *stream.split()]])
    assert report.violation is not None
    assert report.violation.rejected_by.startswith(rejected_by) and says in report.violation.reason


def test_the_cap_per_program_is_explained() -> None:
    """With 3 programs the counter holds 16 open notes per program: the 17th is named."""
    from gramophone.grammar.checker import check_stream

    auto = automaton_for("programs")
    notes = [t for p in range(40, 57) for t in ("Program_0", f"NoteOn_{p}", "Velocity_63")]
    report = check_stream(auto, [auto.token_index[t] for t in ["BOS_None", *notes]])
    assert report.violation is not None and report.violation.rejected_by == "open-notes"
    assert "would be note 17 sounding at once in its program" in report.violation.reason
    assert "at most 16 per program" in report.violation.reason


def test_special_tokens() -> None:
    auto = automaton_for("default")
    body = ids_of("default", ["TimeSig_4/4", "NoteOn_60", "Velocity_63", "TimeShift_1.0.8", "NoteOff_60"])
    bos, eos, _ = helpers.assert_special_tokens(auto, body)  # body[:-1] leaves a note open: no EOS there
    assert not auto.accepts([bos, eos])


# -- property 3: no dead ends, and distances are the syntax x counter product's -----------------
@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_no_dead_ends_and_exact_distances_in_the_reachable_product(name: str) -> None:
    check_full_product(automaton_for(name))


@pytest.mark.parametrize("name", ["small-programs", "small-programs-bare"])
def test_a_binding_cap_per_program_keeps_distances_exact(name: str) -> None:
    """With 3 or 4 programs the counter caps the open notes of a program below its keys:
    the product stays free of dead ends and its distances the syntax x counter product's."""
    grammar = dataclasses.replace(grammar_for(name), max_open_per_program=1)
    auto = compile_scheme(grammar, base_vocab(tokenizer_for(name)), {})
    assert auto.component("open-notes").num_states == 2 * 2 * 2  # counts 0..1 per program, current
    check_full_product(auto)


@pytest.mark.parametrize("name", ALL)
def test_no_dead_ends_in_the_syntax_x_counter_product(name: str) -> None:
    """The decoder's distance table is that small product's: every state of it that is
    reachable, even where the pairing components would have stopped the way there (the
    same key opened twice), can still reach acceptance."""
    _, dist, _, _ = syntax_counter(name)
    assert (dist >= 0).all()


def check_full_product(auto: Automaton) -> None:
    T, acc, states = helpers.assert_no_dead_ends(auto)
    full = fsa.distance_to_accept(T, acc)
    _, dist2, index, _ = product_of_syntax_and_counter(auto)
    k = [c.name for c in auto.components].index("open-notes")
    coarse = np.array([dist2[index[(int(s[0]), int(s[k]))]] for s in states])
    np.testing.assert_array_equal(full, coarse)


@pytest.mark.parametrize("name", LARGE)
@settings()
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 150))
def test_no_dead_ends_along_long_walks(name: str, seed: int, length: int) -> None:
    """Products too large to tabulate: long random walks never get stuck and always find a
    token that lowers the syntax x counter distance (``walk`` asserts both)."""
    ids = walk(name, np.random.default_rng(seed), length)
    assert automaton_for(name).accepts(ids)


# -- property 4: miditok's own verdict on random walks ------------------------------------------
@pytest.mark.parametrize("name", MIDITOK)
@settings()
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 100))
def test_random_walks_have_no_miditok_errors_and_decode(name: str, seed: int, length: int) -> None:
    auto = automaton_for(name)
    ids = walk(name, np.random.default_rng(seed), length)
    body, score = helpers.assert_decodes_without_errors(
        auto, tokenizer_for(name), ids, errors=errors, decode=decode
    )
    ons = sum(1 for i in body if auto.vocab[i].split("_")[0] in ("NoteOn", "DrumOn"))
    assert sum(len(track.notes) for track in score.tracks) == ons  # every note is decoded


# -- properties 5 and 6: real data ------------------------------------------------------------
@cache
def corpus_streams(name: str) -> tuple[tuple[int, ...], ...]:
    return helpers.encode_chorales(tokenizer_for(name))


def accepts_all(auto: Automaton, streams: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``bool[B]``: each stream accepted, all run in lockstep (one gather per token over a
    flat table of every component, with a dead row and a padding column)."""
    V = len(auto.vocab)
    flats, offsets, size = [], [], 0
    for c in auto.components:
        S = c.num_states
        table = np.empty((S + 1, V + 1), dtype=np.int64)
        table[:S, :V] = np.where(c.transitions == REJECT, S, c.transitions)
        table[S] = S  # dead
        table[:, V] = np.arange(S + 1)  # padding: stay
        flats.append(table.ravel())
        offsets.append(size)
        size += table.size
    flat = np.concatenate(flats)
    offs = np.array(offsets, dtype=np.int64)
    B, L = len(streams), max(len(s) for s in streams)
    ids = np.full((B, L), V, dtype=np.int64)
    for b, s in enumerate(streams):
        ids[b, : len(s)] = s
    cur = np.tile(auto.start_states.astype(np.int64), (B, 1))  # (B, K)
    for t in range(L):
        cur = flat[offs + cur * (V + 1) + ids[:, t, None]]
    ok = np.ones(B, dtype=bool)
    for k, c in enumerate(auto.components):
        alive = cur[:, k] < c.num_states
        ok &= alive & c.accepting[np.where(alive, cur[:, k], 0)]
    return ok


def test_accepts_all_agrees_with_the_automaton() -> None:
    streams = tuple(tuple(walk("combo", np.random.default_rng(s), 80, eos=False)) for s in range(6))
    streams += tuple(s[:-1] for s in streams) + tuple(s[1:] for s in streams)
    auto = automaton_for("combo")
    np.testing.assert_array_equal(accepts_all(auto, streams), [auto.accepts(s) for s in streams])
    assert not accepts_all(auto, streams).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS)
def test_every_chorale_is_accepted(name: str, chorale_midis: list[Any]) -> None:
    from gramophone.grammar import check_ids

    auto = automaton_for(name)
    streams = corpus_streams(name)
    assert len(streams) == len(chorale_midis)  # one stream per chorale
    ok = accepts_all(auto, streams)
    rejected = [str(check_ids(auto, streams[b])) for b in np.nonzero(~ok)[0][:1]]
    assert ok.all(), f"{int((~ok).sum())} false rejections, first: {rejected}"


@pytest.mark.slow
@pytest.mark.parametrize("name", CORRUPT)
@settings()
@given(data=st.data())
def test_corruptions_miditok_flags_are_rejected(name: str, data: st.DataObject) -> None:
    """The mask is never looser than ``tokens_errors`` on real streams."""
    auto = automaton_for(name)
    ids = list(data.draw(st.sampled_from(corpus_streams(name))))
    vocab = auto.vocab

    def drop_kind_or_strike_again(ids: list[int], op: str, i: int, tok: int) -> None:
        if op == "drop-kind":  # a model forgets a Velocity, a NoteOff, a Program ...
            kind = vocab[tok].split("_")[0]
            j = next((k for k in range(i, len(ids)) if vocab[ids[k]].split("_")[0] == kind), None)
            if j is not None and len(ids) > 1:
                del ids[j]
        else:  # strike a sounding note again
            j = next((k for k in range(i, len(ids)) if vocab[ids[k]].split("_")[0] == "NoteOn"), None)
            if j is not None:
                ids[j + 2 : j + 2] = ids[j : j + 2]

    ops = ["replace", "insert", "delete", "drop-kind", "duplicate-note"]
    helpers.corrupt(data, ids, vocab, ops, drop_kind_or_strike_again)
    if errors(tokenizer_for(name), ids) > 0:
        assert not auto.accepts(ids)


def test_corruption_test_can_fail() -> None:
    """Corruptions of a real stream that miditok flags, rejected: a dropped Velocity
    (issue #208), a dropped NoteOff, a NoteOff moved before its NoteOn."""
    auto = automaton_for("default")
    tok = tokenizer_for("default")
    ids = list(walk("default", np.random.default_rng(7), 60, eos=False))
    kinds = [auto.vocab[i].split("_")[0] for i in ids]
    assert errors(tok, ids) == 0 and auto.accepts(ids)
    for kind in ("Velocity", "NoteOff"):
        j = kinds.index(kind)
        broken = ids[:j] + ids[j + 1 :]
        assert errors(tok, broken) > 0 and not auto.accepts(broken)
    j = kinds.index("NoteOff")
    early = [ids[j], *ids[:j], *ids[j + 1 :]]
    assert errors(tok, early) > 0 and not auto.accepts(early)


# -- the components alone ---------------------------------------------------------------------
def test_pairing_component_counts_in_mixed_radix() -> None:
    from gramophone.grammar.midilike import pairing_components

    vocab = ["Program_0", "Program_1", "NoteOn_60", "NoteOn_61", "NoteOff_60", "DrumOff_61", "Velocity_9"]
    (comp,) = pairing_components(vocab, [60, 61], [0], max_open=2)
    assert isinstance(comp, Component) and comp.num_states == 9 * 2  # 3 ** 2 counts, program flag
    ix = {t: i for i, t in enumerate(vocab)}
    s = comp.start  # the current program is 0 before any Program token, as in miditok
    for tok in ["NoteOn_61", "NoteOn_61"]:
        s = comp.transitions[s, ix[tok]]
    assert comp.transitions[s, ix["NoteOn_61"]] == REJECT  # the bound
    s1 = comp.transitions[s, ix["Program_1"]]
    assert comp.transitions[s1, ix["NoteOn_61"]] == s1  # another program's note: not ours
    s = comp.transitions[s1, ix["Program_0"]]
    s = comp.transitions[s, ix["DrumOff_61"]]
    s = comp.transitions[s, ix["DrumOff_61"]]
    assert s == comp.start and comp.transitions[s, ix["NoteOff_60"]] == REJECT


@pytest.mark.slow
def test_a_bpe_vocabulary_over_midilike() -> None:
    """Issue #208's setting: a MIDILike vocabulary trained with BPE (miditok's recipe on a
    few chorales). Learned ids are checked over their base tokens: chorales pass, and a
    NoteOn written without its Velocity is rejected where miditok counts an error."""
    from miditok import TokSequence
    from symusic import Score

    from gramophone.grammar.checker import check_stream
    from gramophone.tokenizers import encode_score
    from gramophone.tokenizers.learned import learned_vocab
    from tests.learned_fixtures import chorales, trained_tokenizer

    tok = trained_tokenizer("MIDILike", "BPE", "no")
    auto = compile_tokenizer(tok)
    learned = learned_vocab(tok)
    assert learned.trained and any(len(p) > 2 for p in learned.pieces)
    scores = [Score(str(path)) for path in chorales()[:8]]
    streams = [ids for score in scores for ids in encode_score(tok, score)]  # type: ignore[arg-type]
    assert all(check_stream(auto, ids, learned=learned).valid for ids in streams)
    ids = streams[0]
    note_on = learned.pieces.index((auto.token_index["NoteOn_60"],))
    j = next(
        k for k, i in enumerate(ids) if k > 0 and learned.base[learned.pieces[i][0]].startswith("TimeShift")
    )
    broken = [*ids[:j], note_on, *ids[j:]]
    report = check_stream(auto, broken, learned=learned)
    assert report.violation is not None and report.violation.learned_index == j + 1
    assert report.violation.before[-1] == "NoteOn_60"
    with _gc_paused():  # miditok decodes the learned ids itself
        assert tok.tokens_errors(TokSequence(ids=broken, are_ids_encoded=True)) > 0
        assert tok.tokens_errors(TokSequence(ids=list(ids), are_ids_encoded=True)) == 0
