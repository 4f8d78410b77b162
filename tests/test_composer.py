"""Constraints a composer asks for (``--key``, ``--pitch-range``, ``--time-signature``,
``--max-notes-per-onset``, ``--notes-per-bar``) against plain-Python references written
from their musical definitions on token names, never from the components:

- every stream a random walk of the constrained decoding language draws satisfies each
  reference, is in the plain grammar's language (lark on the derived grammar too) and has
  zero miditok ``tokens_errors``;
- exactness: streams of the plain grammar (walks of looser constraints, of none, and
  mutated ones) are accepted by the constrained automaton iff the references say they
  satisfy the constraints; the tables have no dead end (the cheap mask is used);
- decoding end to end on torch and JAX with a random small model: constraints with
  ``--bars``, a prompt and a budget from the smallest that fits;
- ``gramophone check`` and ``decode`` options: violations in the checker's words, one-line
  errors, and the README's example of a constraint of one's own.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone.cli import main
from gramophone.decoding import INF, DecodeRequest, DecodingTables, Sampling, decoding_tables, prepare_prompt
from gramophone.decoding.framing import decoding_automaton
from gramophone.errors import ConstraintError, DecodingError, UnsupportedConfigError
from gramophone.grammar import Automaton, ComposerConstraints, compile_tokenizer, derive, with_constraints
from gramophone.grammar.checker import check_stream
from gramophone.kernels import numpy as kernels
from tests.profiles import scaled
from tests.reference import lark_parser, miditok_errors

# ----------------------------------------------------------------------------- tokenizers


def _shipped_options() -> dict[str, Any]:
    """The shipped REMI config's options, for the other schemes."""
    from gramophone.tokenizers import load_tokenizer

    config = load_tokenizer().config
    keys = (
        "pitch_range",
        "beat_res",
        "num_velocities",
        "special_tokens",
        "use_time_signatures",
        "remove_duplicated_notes",
        "time_signature_range",
    )
    out = {k: getattr(config, k) for k in keys}
    out["beat_res"] = {tuple(k) if isinstance(k, list) else k: v for k, v in out["beat_res"].items()}
    return out


#: Small configs beside the shipped one: programs with duplicated notes removed (the
#: "highest allowed pitch" rule), chords and tempos (tokens that commit to a note, or not).
SMALL = {
    "pitch_range": (40, 84),
    "beat_res": {(0, 4): 4},
    "num_velocities": 4,
    "special_tokens": ["PAD", "BOS", "EOS"],
    "time_signature_range": {4: [3, 4], 8: [6]},
}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "remi": ("REMI", {}),
    "remi-programs": (
        "REMI",
        {
            **SMALL,
            "use_time_signatures": True,
            "use_programs": True,
            "programs": [-1, 0, 1],
            "remove_duplicated_notes": True,
            "use_pitchdrum_tokens": True,
        },
    ),
    "remi-chords": ("REMI", {**SMALL, "use_time_signatures": True, "use_chords": True, "use_tempos": True}),
    "tsd": ("TSD", {}),
    "tsd-programs": (
        "TSD",
        {
            **SMALL,
            "use_time_signatures": True,
            "use_programs": True,
            "programs": [-1, 0, 1],
            "remove_duplicated_notes": True,
        },
    ),
    "midilike": ("MIDILike", {}),
    "structured": ("Structured", {}),
}


@functools.cache
def tokenizer(name: str) -> Any:
    import miditok

    from gramophone.tokenizers import load_tokenizer

    scheme, options = CONFIGS[name]
    if name == "remi":
        return load_tokenizer()
    config = miditok.TokenizerConfig(**(options or _shipped_options()))
    return getattr(miditok, scheme)(config)


@functools.cache
def automaton(name: str) -> Automaton:
    return compile_tokenizer(tokenizer(name))


def scheme_of(name: str) -> str:
    return CONFIGS[name][0].lower()


@functools.cache
def constrained(name: str, **options: str) -> Automaton:
    return with_constraints(automaton(name), ComposerConstraints.parse(**options))


@functools.cache
def tables(name: str, bars: int | None = None, **options: str) -> DecodingTables:
    return decoding_tables(constrained(name, **options), bars)


# ----------------------------------------------------------------------------- references

_NOTE_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def scale(key: str) -> set[int]:
    """Pitch classes of ``TONIC:MODE``, from the intervals of the scales: major W W H W W W
    H; minor: natural minor W H W W H W W, plus the raised 6th and 7th (melodic and
    harmonic minor)."""
    tonic, mode = key.split(":")
    root = (_NOTE_NAMES[tonic[0].upper()] + {"": 0, "#": 1, "b": -1}[tonic[1:]]) % 12
    steps = [2, 2, 1, 2, 2, 2] if mode == "major" else [2, 1, 2, 2, 1, 2]
    pcs, pc = {root}, root
    for s in steps:
        pc = (pc + s) % 12
        pcs.add(pc)
    if mode == "minor":
        pcs |= {(root + 9) % 12, (root + 11) % 12}
    return pcs


def pitched_notes(names: Sequence[str]) -> list[int]:
    """MIDI numbers of the pitched notes: Pitch and NoteOn tokens, but not under Program_-1
    (drums); PitchDrum and DrumOn are drums."""
    out, program = [], None
    for tok in names:
        kind, _, value = tok.partition("_")
        if kind == "Program":
            program = int(value)
        elif kind in ("Pitch", "NoteOn") and program != -1:
            out.append(int(value))
    return out


def beats(value: str) -> Fraction:
    a, b, c = (int(x) for x in value.split("."))
    return Fraction(a) + Fraction(b, c)


def onset_sizes(names: Sequence[str], scheme: str) -> list[int]:
    """How many notes start at each time: REMI's times are (bar, position); the others add
    up their TimeShift values (these configs have no rests)."""
    times: Counter[object] = Counter()
    bar, position, now = 0, -1, Fraction(0)
    for tok in names:
        kind, _, value = tok.partition("_")
        assert kind != "Rest"
        if kind == "Bar":
            bar, position = bar + 1, -1
        elif kind == "Position":
            position = int(value)
        elif kind == "TimeShift":
            now += beats(value)
        elif kind in ("Pitch", "PitchDrum", "NoteOn", "DrumOn"):
            times[(bar, position) if scheme == "remi" else now] += 1
    return list(times.values())


def bar_sizes(names: Sequence[str]) -> list[int]:
    """Notes in each bar, from one Bar token to the next (the last bar to the end)."""
    sizes: list[int] = []
    for tok in names:
        if tok == "Bar_None":
            sizes.append(0)
        elif tok.startswith(("Pitch_", "PitchDrum_")):
            assert sizes, "a note before the first bar"
            sizes[-1] += 1
    return sizes


def satisfies(names: Sequence[str], scheme: str, options: dict[str, str]) -> bool:
    """The references: does the stream (token names) satisfy every constraint asked for?"""
    pitches = pitched_notes(names)
    if "key" in options:
        pcs = scale(options["key"])
        if any(p % 12 not in pcs for p in pitches):
            return False
    if "pitch_range" in options:
        lo, hi = (int(x) for x in options["pitch_range"].split(":"))
        if any(not lo <= p <= hi for p in pitches):
            return False
    if "time_signature" in options:
        ts = options["time_signature"]
        if any(t.startswith("TimeSig_") and t != f"TimeSig_{ts}" for t in names):
            return False
        body = [t for t in names if t.partition("_")[0] not in ("BOS", "EOS", "PAD")]
        if scheme == "midilike" and ts != "4/4" and body and body[0] != f"TimeSig_{ts}":
            return False  # miditok's default 4/4 would hold until the first TimeSig
    most = int(options.get("max_notes_per_onset", 1 << 30))
    if max(onset_sizes(names, scheme), default=0) > most:
        return False
    if "notes_per_bar" in options:
        lo, hi = (int(x) for x in options["notes_per_bar"].split(":"))
        if any(not lo <= n <= hi for n in bar_sizes(names)):
            return False
    return True


# ----------------------------------------------------------------------------- walks


def walk(tab: DecodingTables, rng: np.random.Generator, budget: int, prefix: Sequence[int] = ()) -> list[int]:
    """A stream of the decoding language (BOS ... EOS) within ``budget`` tokens: uniform
    among the allowed tokens (the numpy kernels' mask), after ``prefix``."""
    ids = [tab.bos, *prefix] if not prefix or prefix[0] != tab.bos else list(prefix)
    state = tab.run(ids)[None, :]
    while ids[-1] != tab.eos:
        allowed = kernels.allowed(tab, state, budget - len(ids))[0]
        assert allowed.any(), f"stuck after {[tab.vocab[i] for i in ids[-8:]]}"
        tok = int(rng.choice(np.nonzero(allowed)[0]))
        ids.append(tok)
        state = kernels.advance(tab, state, np.array([tok]))
    assert len(ids) <= budget
    return ids


def names_of(auto: Automaton, ids: Sequence[int]) -> list[str]:
    return [auto.vocab[i] for i in ids]


def assert_valid(name: str, ids: Sequence[int], options: dict[str, str], bars: int | None = None) -> None:
    """The stream is a valid framed piece of the plain grammar (the automaton, lark) with no
    miditok error, and satisfies every reference."""
    auto = automaton(name)
    names = names_of(auto, ids)
    assert names[0] == "BOS_None" and names[-1] == "EOS_None", names
    assert decoding_automaton(auto).accepts(ids), names
    lark_parser(derive(tokenizer(name)).text).parse(" ".join(names))
    assert miditok_errors(tokenizer(name), ids) == 0, names
    assert satisfies(names, scheme_of(name), options), (options, names)
    if bars is not None:
        assert names.count("Bar_None") == bars, names


# ----------------------------------------------------------------------------- cases

#: (config, constraints, looser constraints whose walks often, not always, satisfy them)
CASES: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("remi", {"key": "D:minor"}, {}),
    ("remi", {"pitch_range": "55:67"}, {"pitch_range": "53:69"}),
    ("remi", {"time_signature": "3/4"}, {}),
    ("remi", {"max_notes_per_onset": "2"}, {"max_notes_per_onset": "3"}),
    ("remi", {"notes_per_bar": "2:5"}, {"notes_per_bar": "1:6"}),
    (
        "remi",
        {
            "key": "C:major",
            "pitch_range": "48:72",
            "time_signature": "4/4",
            "max_notes_per_onset": "2",
            "notes_per_bar": "1:5",
        },
        {"pitch_range": "48:72", "max_notes_per_onset": "3", "notes_per_bar": "0:6"},
    ),
    (
        "remi-programs",
        {"key": "A:minor", "pitch_range": "50:64", "max_notes_per_onset": "3", "notes_per_bar": "0:5"},
        {"pitch_range": "48:66", "notes_per_bar": "0:6"},
    ),
    (
        "remi-chords",
        {"key": "Bb:major", "max_notes_per_onset": "2", "notes_per_bar": "1:3"},
        {"max_notes_per_onset": "3", "notes_per_bar": "0:4"},
    ),
    ("tsd", {"key": "F#:major", "pitch_range": "50:80", "time_signature": "4/4"}, {"pitch_range": "50:80"}),
    ("tsd", {"max_notes_per_onset": "2"}, {"max_notes_per_onset": "3"}),
    ("tsd-programs", {"key": "E:minor", "pitch_range": "45:60", "max_notes_per_onset": "2"}, {}),
    (
        "midilike",
        {"key": "E:minor", "pitch_range": "52:64", "max_notes_per_onset": "2", "time_signature": "3/4"},
        {"pitch_range": "52:64", "max_notes_per_onset": "3"},
    ),
    (
        "structured",
        {"key": "G:major", "pitch_range": "55:67", "max_notes_per_onset": "2"},
        {"pitch_range": "55:67"},
    ),
]
IDS = [f"{name}:{'+'.join(options)}" for name, options, _ in CASES]


@pytest.mark.parametrize(("name", "options", "looser"), CASES, ids=IDS)
def test_the_tables_have_no_dead_end(name: str, options: dict[str, str], looser: dict[str, str]) -> None:
    """Exact tables whose cheap mask is usable (no reachable dead end), for the constraints
    and for the looser ones the exactness tests draw from."""
    for opts in (options, looser):
        tab = tables(name, **opts)
        assert tab.exact
        assert tab.max_distance < INF, (name, opts, tab.groups)


@pytest.mark.parametrize(("name", "options", "looser"), CASES, ids=IDS)
@settings(max_examples=scaled(12))
@given(seed=st.integers(0, 2**32 - 1), budget=st.integers(0, 70))
def test_walks_satisfy_the_references(
    name: str, options: dict[str, str], looser: dict[str, str], seed: int, budget: int
) -> None:
    del looser
    tab = tables(name, **options)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        ids = walk(tab, rng, tab.shortest() + budget)
        assert_valid(name, ids, options)


def _mutations(
    auto: Automaton, ids: list[int], options: dict[str, str], rng: np.random.Generator
) -> Iterator[list[int]]:
    """Streams near ``ids``: a pitch moved a semitone or into the key, a TimeSig changed, a
    note's three tokens repeated or dropped, a Bar moved."""
    names = names_of(auto, ids)
    index = auto.token_index
    notes = [i for i, t in enumerate(names) if t.startswith(("Pitch_", "NoteOn_"))]
    if notes:
        i = int(rng.choice(notes))
        kind, _, value = names[i].partition("_")
        for delta in (-1, 1):
            tok = f"{kind}_{int(value) + delta}"
            if tok in index:
                yield [*ids[:i], index[tok], *ids[i + 1 :]]
        if "key" in options:  # every pitch moved down into the key (may break their order)
            pcs = scale(options["key"])
            moved = []
            for t in names:
                k, _, v = t.partition("_")
                down = (
                    f"{k}_{int(v) - 1}"
                    if k in ("Pitch", "NoteOn", "NoteOff") and int(v) % 12 not in pcs
                    else t
                )
                moved.append(index.get(down, index[names[0]]))
            yield moved
        if i + 3 <= len(ids):  # a note repeated, or dropped (REMI/TSD/Structured: Pitch Velocity Duration)
            yield [*ids[: i + 3], *ids[i : i + 3], *ids[i + 3 :]]
            yield [*ids[:i], *ids[i + 3 :]]
    sigs = [i for i, t in enumerate(names) if t.startswith("TimeSig_")]
    others = [t for t in auto.vocab if t.startswith("TimeSig_")]
    if sigs and others:
        i = int(rng.choice(sigs))
        yield [*ids[:i], index[str(rng.choice(others))], *ids[i + 1 :]]
    bars = [i for i, t in enumerate(names) if t == "Bar_None"]
    if len(bars) > 1:
        i = bars[-1]
        yield [*ids[:i], *ids[i + 1 : i + 4], ids[i], *ids[i + 4 :]]


@pytest.mark.parametrize(("name", "options", "looser"), CASES, ids=IDS)
@settings(max_examples=scaled(12))
@given(seed=st.integers(0, 2**32 - 1), budget=st.integers(0, 60))
def test_exactly_the_pieces_that_satisfy_them(
    name: str, options: dict[str, str], looser: dict[str, str], seed: int, budget: int
) -> None:
    """Valid pieces of the plain grammar are accepted by the constrained automaton (framed
    for decoding, and unframed as ``check`` runs it) iff the references say they satisfy
    the constraints."""
    auto = automaton(name)
    framed, plain = decoding_automaton(auto), decoding_automaton(constrained(name, **options))
    unframed = constrained(name, **options)
    rng = np.random.default_rng(seed)
    pieces = []
    for opts in (looser, {}, options):
        tab = tables(name, **opts)
        for _ in range(2):
            ids = walk(tab, rng, tab.shortest() + budget)
            pieces.append(ids)
            pieces += list(_mutations(auto, ids, options, rng))
    agree: Counter[bool] = Counter()
    for ids in pieces:
        names = names_of(auto, ids)
        expected = framed.accepts(ids) and satisfies(names, scheme_of(name), options)
        assert plain.accepts(ids) == expected, (expected, names)
        body = [i for i, t in zip(ids, names, strict=True) if t not in ("BOS_None", "EOS_None")]
        assert unframed.accepts(body) == (
            auto.accepts(body) and satisfies(names, scheme_of(name), options)
        ), names
        agree[expected] += 1
    assert agree[True] >= 2  # the constrained walks at least


#: Small configs whose full product (note order and pairing included) can be built.
TINY = {
    "beat_res": {(0, 4): 2},
    "num_velocities": 2,
    "special_tokens": ["PAD", "BOS", "EOS"],
    "use_time_signatures": True,
    "time_signature_range": {4: [3, 4]},
    "use_pitchdrum_tokens": False,
}
_REMI_DRUMS = {
    "pitch_range": (55, 70),
    "remove_duplicated_notes": True,
    "use_programs": True,
    "programs": [-1, 0],
    "use_pitchdrum_tokens": True,
}
EXACT_CASES = [
    (
        "REMI",
        {"pitch_range": (55, 70), "remove_duplicated_notes": True},
        {"notes_per_bar": "2:4", "max_notes_per_onset": "2", "key": "C:major"},
    ),
    (
        "REMI",
        {"pitch_range": (55, 70), "remove_duplicated_notes": True, "use_chords": True, "use_tempos": True},
        {"notes_per_bar": "3:5", "pitch_range": "58:66"},
    ),
    (
        "REMI",
        _REMI_DRUMS,
        {"key": "D:minor", "pitch_range": "56:64", "max_notes_per_onset": "1"},
    ),
    (
        "REMI",
        {"pitch_range": (55, 64), "use_programs": True, "programs": [0, 1]},
        {"notes_per_bar": "2:4", "max_notes_per_onset": "2", "key": "E:minor"},
    ),
    (
        "TSD",
        {"pitch_range": (55, 70), "remove_duplicated_notes": True, "use_programs": True, "programs": [0, 1]},
        {"key": "C:major", "max_notes_per_onset": "2"},
    ),
    (
        "Structured",
        {"pitch_range": (55, 70), "remove_duplicated_notes": True},
        {"key": "D:minor", "pitch_range": "56:64", "max_notes_per_onset": "1"},
    ),
    (
        "MIDILike",
        {"pitch_range": (60, 66), "use_chords": True},
        {"key": "C:major", "pitch_range": "60:62", "max_notes_per_onset": "1", "time_signature": "3/4"},
    ),
    (
        "MIDILike",
        {"pitch_range": (60, 65), "use_programs": True, "programs": [0, 1], "_max_open": 1},
        {"key": "C:major", "max_notes_per_onset": "2"},
    ),
    # MIDILike with remove_duplicated_notes: note-ons at one onset ascend (onset-order, with
    # more than one open note per key); no chord asks for a note, so a key's pitches are free.
    (
        "MIDILike",
        {"pitch_range": (60, 66), "remove_duplicated_notes": True, "_max_open": 2},
        {"key": "C:major", "pitch_range": "60:64", "max_notes_per_onset": "2"},
    ),
    # The plain grammars with drums: the highest drum pitch above the highest pitch (miditok's
    # default ranges the other way round); note order must send a program back to its run
    # only below the highest pitch of its own kind (a hypothesis walk found the dead end).
    (
        "REMI",
        _REMI_DRUMS,
        {},
    ),
    (
        "TSD",
        {
            "pitch_range": (55, 70),
            "drums_pitch_range": (50, 60),
            "remove_duplicated_notes": True,
            "use_programs": True,
            "programs": [-1, 0],
            "use_pitchdrum_tokens": True,
        },
        {},
    ),
]


@pytest.mark.parametrize(("scheme", "config", "options"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_distances_are_exact_with_neutral_components_left_out(
    scheme: str, config: dict[str, Any], options: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder leaves neutral components (note order, pairing) out of its distance table
    when the table grows large; forced to here, its distance still equals that of the full
    product of every component, in every reachable state, and (but for MIDILike with
    programs and a limit per onset) no reachable state is a dead end."""
    import miditok

    from gramophone.decoding import tables as tables_module
    from gramophone.grammar import fsa
    from gramophone.grammar.midilike import derive as derive_midilike
    from gramophone.grammar.schemes import base_vocab, compile_scheme

    monkeypatch.setattr(tables_module, "NEUTRAL_CELLS", 1)
    max_open = config.get("_max_open")  # MIDILike's bound, below the default: a full product that fits
    tok = getattr(miditok, scheme)(
        miditok.TokenizerConfig(**{**TINY, **{k: v for k, v in config.items() if k[0] != "_"}})
    )
    grammar = (
        compile_tokenizer(tok)
        if max_open is None
        else compile_scheme(
            derive_midilike(tok, max_open_per_pitch=max_open), base_vocab(tok), {"scheme": "midilike"}
        )
    )
    auto = with_constraints(grammar, ComposerConstraints.parse(**options))
    bars = 2 if scheme == "REMI" else None
    tab = decoding_tables(auto, bars, use_cache=False)
    if any(c.neutral for c in auto.components):
        assert any(stride == 0 for stride in tab.strides)  # something was left out
    full = decoding_automaton(auto, bars)
    T, acc, _, tuples = full.product_tables()
    exact = fsa.distance_to_accept(T, acc)
    names = [c.name for c in full.components]
    sizes = [c.num_states for c in full.components]
    for p in range(T.shape[0]):
        state = []
        for group in tab.groups:
            local, inner = 0, 1
            for name in group:
                i = names.index(name)
                local, inner = local + int(tuples[p, i]) * inner, inner * sizes[i]
            state.append(local)
        assert tab.distance(np.array(state)) == (INF if exact[p] < 0 else exact[p])
    dead_ends = scheme == "MIDILike" and "programs" in config
    assert (exact >= 0).all() != dead_ends
    assert (tab.max_distance < INF) != dead_ends


# ----------------------------------------------------------------------------- what is refused


def test_midilike_pitches_with_chords_and_dedup_are_refused() -> None:
    """A MIDILike chord asks for a note-on above its onset's last pitch on a key not yet
    full, which the pitch constraints do not track: refused in one line, naming why."""
    import miditok

    tok = miditok.MIDILike(miditok.TokenizerConfig(**{**TINY, "pitch_range": (60, 66), "use_chords": True,
                                                      "remove_duplicated_notes": True}))  # fmt: skip
    with pytest.raises(UnsupportedConfigError, match="not supported for MIDILike with chords and remove_dup"):
        with_constraints(compile_tokenizer(tok), ComposerConstraints.parse(key="C:major"))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("tsd", {"notes_per_bar": "1:4"}, "not supported for TSD: its streams have no Bar tokens"),
        ("midilike", {"notes_per_bar": "0:4"}, "not supported for MIDILike"),
        ("structured", {"notes_per_bar": "0:4"}, "not supported for Structured"),
        ("structured", {"time_signature": "4/4"}, "no time signatures .Structured has none"),
        ("remi", {"time_signature": "7/8"}, r"no TimeSig_7/8 \(it has 3/8, 6/8"),
        (
            "remi-programs",
            {"notes_per_bar": "1:4"},
            "not supported with programs and remove_duplicated_notes",
        ),
    ],
)
def test_what_a_scheme_cannot_have_is_a_clear_error(name: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(UnsupportedConfigError, match=message):
        constrained(name, **options)


def test_structured_with_programs_and_order_refuses_a_key() -> None:
    from miditok import Structured, TokenizerConfig

    auto = compile_tokenizer(Structured(TokenizerConfig(use_programs=True, remove_duplicated_notes=True)))
    with pytest.raises(
        UnsupportedConfigError, match="--key C:major: not supported for Structured with programs"
    ):
        with_constraints(auto, ComposerConstraints.parse(key="C:major"))
    with_constraints(auto, ComposerConstraints.parse(max_notes_per_onset="2"))  # that one is fine


def test_rests_and_no_time_signatures() -> None:
    from miditok import REMI, TokenizerConfig

    rests = compile_tokenizer(REMI(TokenizerConfig(use_rests=True)))
    with pytest.raises(UnsupportedConfigError, match="not supported with rests"):
        with_constraints(rests, ComposerConstraints.parse(notes_per_bar="1:4"))
    plain = compile_tokenizer(REMI(TokenizerConfig(use_time_signatures=False)))
    with pytest.raises(UnsupportedConfigError, match="use_time_signatures is off"):
        with_constraints(plain, ComposerConstraints.parse(time_signature="4/4"))
    # without time signatures every bar is 4/4: notes per bar still work
    tab = decoding_tables(with_constraints(plain, ComposerConstraints.parse(notes_per_bar="2:3")), 2)
    ids = walk(tab, np.random.default_rng(0), tab.shortest() + 10)
    assert bar_sizes(names_of(plain, ids)) and all(2 <= n <= 3 for n in bar_sizes(names_of(plain, ids)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": "H:major"}, "--key H:major: unknown tonic 'H'"),
        ({"key": "C:lydian"}, "--key C:lydian: unknown mode 'lydian'"),
        ({"key": "Cmajor"}, "--key Cmajor: expected TONIC:MODE"),
        ({"pitch_range": "72:60"}, "--pitch-range 72:60: LO is above HI"),
        ({"pitch_range": "60-72"}, "--pitch-range 60-72: expected LO:HI"),
        ({"pitch_range": "0:200"}, "MIDI note numbers are 0..127"),
        ({"time_signature": "3:4"}, "--time-signature 3:4: expected N/D"),
        ({"max_notes_per_onset": "0"}, "--max-notes-per-onset 0: must be at least 1"),
        ({"max_notes_per_onset": "x"}, "expected a whole number"),
        ({"notes_per_bar": "5:3"}, "--notes-per-bar 5:3: LO is above HI"),
    ],
)
def test_malformed_options(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConstraintError, match=re.escape(message)):
        ComposerConstraints.parse(**options)


def test_keys_and_their_spellings() -> None:
    parse = ComposerConstraints.parse
    assert parse(key="d:MINOR").key is not None
    for key in ("C:major", "D:minor", "F#:major", "Bb:major", "bb:minor", "Eb:minor", "B:major", "Cb:major"):
        got = parse(key=key).key
        assert got is not None and set(got.pitch_classes) == scale(
            key.capitalize() if key[0].islower() else key
        )
    assert len(scale("D:minor")) == 9 and len(scale("F#:major")) == 7
    assert str(parse(key="bb:minor").key) == "Bb:minor"
    with pytest.raises(ConstraintError, match=r"no pitch of the vocabulary \(24..96\) satisfies them"):
        constrained("remi", key="C:major", pitch_range="61:61")


def test_a_constraint_that_leaves_no_piece_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "decode",
            "--backend",
            "torch",
            "--num",
            "1",
            "--notes-per-bar",
            "0:0",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "no valid piece satisfies --notes-per-bar 0:0" in err


# ----------------------------------------------------------------------------- decoding


def _model(backend: str, vocab_size: int) -> Any:
    from gramophone.backends import ModelConfig, get_backend
    from gramophone.backends.base import init_weights

    config = ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64)
    be = get_backend(backend)
    return be, be.from_numpy(init_weights(config, 0), config)


DECODE_CASES = [
    (
        "remi",
        {"key": "D:minor", "pitch_range": "50:74", "max_notes_per_onset": "2", "notes_per_bar": "1:4"},
        2,
    ),
    ("tsd", {"key": "F#:major", "time_signature": "4/4", "max_notes_per_onset": "2"}, None),
]


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize(("name", "options", "bars"), DECODE_CASES, ids=["remi", "tsd"])
def test_decoding_on_the_device_loops(
    backend: str, name: str, options: dict[str, str], bars: int | None
) -> None:
    """A random small Transformer on the torch and JAX loops, a prompt drawn from the
    constrained language, budgets from the smallest that fits: every piece is valid and
    satisfies the constraints (and the MIDI miditok decodes agrees on keys and onsets)."""
    from gramophone.decoding.driver import sampler_for

    tab = tables(name, bars, **options)
    be, params = _model(backend, tab.vocab_size)
    sample = sampler_for(be, params)
    rng = np.random.default_rng(7)
    for k, extra in enumerate((0, 1, 3, 12)):
        prompt_walk = walk(tab, rng, 64)
        cut = int(rng.integers(1, max(2, min(12, len(prompt_walk) - 1))))
        prompt = prepare_prompt(tab, constrained(name, **options), prompt_walk[1:cut])
        budget = min(64, prompt.min_total + extra)
        sampling = Sampling(greedy=True) if k == 0 else Sampling(temperature=1.5)
        request = DecodeRequest(prompt.ids, prompt.state, 3, budget, sampling, seed=k, capacity=64)
        for ids in sample(tab, request).streams():
            assert len(ids) <= budget and tuple(ids[: len(prompt.ids)]) == prompt.ids
            assert_valid(name, ids, options, bars)
            _score_agrees(name, ids, options)


def _score_agrees(name: str, ids: list[int], options: dict[str, str]) -> None:
    """What miditok decodes: pitched notes in the key and range, at most N notes per onset."""
    from gramophone.tokenizers import decode_ids

    tok = tokenizer(name)
    specials = {tok.vocab[t] for t in tok.special_tokens}
    score = decode_ids(tok, [i for i in ids if i not in specials])
    notes = [(n.time, n.pitch, t.is_drum) for t in score.tracks for n in t.notes]
    assert notes
    if "key" in options:  # drum notes are free: PitchDrum notes decode into a one-track stream's track
        pcs = scale(options["key"])
        drums = Counter(
            int(t.split("_")[1]) for t in names_of(automaton(name), ids) if t.startswith("PitchDrum_")
        )
        outside = Counter(p for _, p, drum in notes if not drum and p % 12 not in pcs)
        assert not outside - drums, (outside, drums)
    if "max_notes_per_onset" in options:
        assert max(Counter(time for time, _, _ in notes).values()) <= int(options["max_notes_per_onset"])


@settings(max_examples=scaled(6))
@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 6), cut=st.integers(0, 20))
def test_numpy_loop_with_adversarial_models(seed: int, extra: int, cut: int) -> None:
    """The numpy loop with a stand-in model that puts its mass on random tokens (forbidden
    ones included), every constraint at once, --bars 3 and a prompt: tight budgets still
    end valid."""
    from gramophone.decoding import sample_numpy

    options = {
        "key": "G:minor",
        "pitch_range": "55:70",
        "time_signature": "4/4",
        "max_notes_per_onset": "2",
        "notes_per_bar": "2:3",
    }
    tab = tables("remi", 3, **options)
    rng = np.random.default_rng(seed)
    prefix = walk(tab, rng, 64)[1:cut]
    prompt = prepare_prompt(tab, constrained("remi", **options), prefix)
    hot = rng.random(tab.vocab_size) < 0.3
    logits = rng.normal(size=(8, tab.vocab_size)).astype(np.float32) * 5

    class Model:
        def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
            return np.where(hot, np.float32(1e9), logits[lengths % 8]), None

        def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
            return np.where(hot, np.float32(1e9), logits[(positions + token) % 8]), None

    budget = prompt.min_total + extra
    request = DecodeRequest(prompt.ids, prompt.state, 2, budget, Sampling(), seed=seed)
    for ids in sample_numpy(Model(), tab, request).streams():
        assert len(ids) <= budget
        assert_valid("remi", ids, options, 3)


def test_a_trained_vocabulary() -> None:
    """REMI with a BPE vocabulary: the constraints lifted to learned tokens, tight budgets."""
    from gramophone.decoding import sample_numpy
    from gramophone.tokenizers import model_vocab
    from tests.learned_fixtures import trained_tokenizer

    tok = trained_tokenizer("REMI", "BPE")
    options = {"key": "D:minor", "max_notes_per_onset": "2", "notes_per_bar": "1:4"}
    auto = with_constraints(compile_tokenizer(tok), ComposerConstraints.parse(**options))
    learned = model_vocab(tok)
    tab = decoding_tables(auto, 2, learned=learned)
    assert tab.max_distance < INF
    prompt = prepare_prompt(tab, auto)
    rng = np.random.default_rng(0)

    class Model:
        def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
            return rng.normal(size=(len(ids), tab.vocab_size)).astype(np.float32) * 3, None

        def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
            return rng.normal(size=(len(token), tab.vocab_size)).astype(np.float32) * 3, None

    for extra in (0, 2, 30):
        budget = prompt.min_total + extra
        request = DecodeRequest(prompt.ids, prompt.state, 4, budget, Sampling(), seed=extra)
        for ids in sample_numpy(Model(), tab, request).streams():
            assert len(ids) <= budget
            base = learned.expand(ids)[0]
            names = names_of(auto, base)
            assert check_stream(decoding_automaton(compile_tokenizer(tok), 2), base).valid, names
            assert satisfies(names, "remi", options), names


def test_a_prompt_that_breaks_a_constraint() -> None:
    auto = constrained("remi", key="C:major")
    tab = tables("remi", key="C:major")
    ix = auto.token_index
    prompt = [ix[t] for t in ["Bar_None", "TimeSig_4/4", "Position_0", "Pitch_61"]]
    with pytest.raises(DecodingError, match=r"rejected by key=C:major: Pitch_61 is not in C major"):
        prepare_prompt(tab, auto, prompt)


# ----------------------------------------------------------------------------- the command line

IN_KEY = (
    "Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_95 Duration_1.0.4 Pitch_64 Velocity_95 Duration_1.0.4"
)
OUT_OF_KEY = (
    "Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_95 Duration_1.0.4 Pitch_66 Velocity_95 Duration_1.0.4"
)


def test_check_names_the_violated_constraint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(IN_KEY)
    bad.write_text(OUT_OF_KEY)
    assert main(["check", "--key", "C:major", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["check", "--key", "C:major", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "rejected by key=C:major: Pitch_66 is not in C major (its pitch classes: C D E F G A B)" in out
    assert main(["check", str(bad)]) == 0  # the grammar alone accepts it
    capsys.readouterr()
    assert main(["check", "--json", "--notes-per-bar", "3:4", "--max-notes-per-onset", "2", str(good)]) == 1
    record = json.loads(capsys.readouterr().out)
    assert (
        record["rejected_by"] == "end" and "notes-per-bar=3:4: the last bar has 2 notes" in record["reason"]
    )
    assert main(["check", "--max-notes-per-onset", "1", "--pitch-range", "50:70", str(good)]) == 1
    assert "rejected by max-notes-per-onset=1: Pitch_64 would be note 2 at one onset (at most 1)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "H:major"], "--key H:major: unknown tonic 'H'"),
        (["--pitch-range", "90:20"], "--pitch-range 90:20: LO is above HI"),
        (["--time-signature", "7/8"], "--time-signature 7/8: the tokenizer's vocabulary has no TimeSig_7/8"),
        (["--notes-per-bar", "a:b"], "--notes-per-bar a:b: expected LO:HI"),
        (["--max-notes-per-onset", "-1"], "--max-notes-per-onset -1: must be at least 1"),
    ],
)
def test_bad_options_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.txt"
    good.write_text(IN_KEY)
    for command in (
        ["check", *args, str(good)],
        ["decode", "--backend", "torch", *args, "--out", str(tmp_path / "o")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_decode_with_constraints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled model through ``gramophone decode``: every piece satisfies the
    constraints, ``check`` with the same options agrees, and summary.json records them."""
    out = tmp_path / "out"
    options = [
        "--key",
        "D:minor",
        "--pitch-range",
        "50:74",
        "--notes-per-bar",
        "1:4",
        "--max-notes-per-onset",
        "2",
    ]
    args = [
        "decode",
        "--backend",
        "torch",
        "--num",
        "3",
        "--bars",
        "2",
        "--max-tokens",
        "48",
        "--formats",
        "tokens",
    ]
    assert main([*args, *options, "--out", str(out)]) == 0
    assert "all 3 valid" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["constraints"] == {
        "key": "D:minor",
        "pitch-range": "50:74",
        "notes-per-bar": "1:4",
        "max-notes-per-onset": "2",
    }
    refs = {"key": "D:minor", "pitch_range": "50:74", "notes_per_bar": "1:4", "max_notes_per_onset": "2"}
    for piece in sorted(out.glob("piece-*.json")):
        ids = json.loads(piece.read_text())["ids"]
        assert_valid("remi", ids, refs, bars=2)
    assert main(["check", *options, *map(str, sorted(out.glob("piece-*.json")))]) == 0


# ----------------------------------------------------------------------------- README


def test_the_readme_example_runs() -> None:
    """The README's example of a constraint of one's own (section "Writing a new one") runs
    as written and does what it says."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Writing a new one", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    scope: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)
    streams = scope["streams"]
    assert streams
    for ids in streams:
        names = names_of(scope["automaton"], ids)
        assert satisfies(names, "remi", {"key": "D:minor"})
        assert len({t for t in names if t.startswith("Velocity_")}) <= 2
