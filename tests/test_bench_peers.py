"""Peer engines of the benchmark suite: their grammars are our language, missing ones say so.

For each installed peer, its grammar at every level it is compiled at accepts exactly the
streams that gramophone's automaton (restricted to the same components) accepts, on real
chorales, random walks and corruptions of both. Peers that are not installed are skipped
here and must produce ``missing`` records.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import peers
from benchmarks.peer_grammars import (
    LEVELS,
    RemiTokens,
    peer_tokens,
    remi_grammar,
    render,
)
from gramophone.grammar import Automaton
from tests.conftest import automaton_for, tokenizer_for
from tests.walks import random_walk

#: The automaton's components each level stands for.
COMPONENTS = {
    "syntax": ("syntax",),
    "syntax+time": ("syntax", "time"),
    "syntax+note-order": ("syntax", "note-order"),
    "full": ("syntax", "time", "note-order"),
}
#: Levels each peer is checked at here: all, the full one included (the headline figures use
#: it; outlines-core's full regex takes 20-40 s to compile, once per test session).
CHECKED = {"xgrammar": LEVELS, "llguidance": LEVELS, "outlines-core": LEVELS}
INSTALLED = [p for p in peers.PEERS if peers.peer_available(p)]


def _restricted(auto: Automaton, level: str) -> Automaton:
    comps = tuple(auto.component(name) for name in COMPONENTS[level])
    return Automaton(auto.vocab, comps, auto.grammar_text, dict(auto.meta))


def _corruptions(auto: Automaton, stream: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Targeted corruptions (time backwards, descending or repeated pitch, missing duration)
    and random edits of one stream."""
    vocab = auto.vocab
    idx = auto.token_index
    names = [vocab[i] for i in stream]
    out = []
    positions = [i for i, n in enumerate(names) if n.startswith("Position_")]
    for a, b in itertools.pairwise(positions):
        if not any(names[k] == "Bar_None" for k in range(a, b)):
            out.append([*stream[:b], stream[a], *stream[b + 1 :]])  # same position again
            break
    pitches = [i for i, n in enumerate(names) if n.startswith("Pitch")]
    for a, b in itertools.pairwise(pitches):
        if b == a + 3:  # two notes at one onset: swap their pitches, then repeat the first
            swapped = list(stream)
            swapped[a], swapped[b] = stream[b], stream[a]
            out += [swapped, [*stream[:b], stream[a], *stream[b + 1 :]]]
            break
    durations = [i for i, n in enumerate(names) if n.startswith("Duration_")]
    if durations:
        d = durations[len(durations) // 2]
        out.append(stream[:d] + stream[d + 1 :])
    last_position = max((n for n in vocab if n.startswith("Position_")), key=lambda n: int(n[9:]))
    out.append([*stream, idx[last_position]])  # beyond most bars
    for _ in range(6):
        s = list(stream)
        k = int(rng.integers(len(s)))
        kind = rng.integers(3)
        if kind == 0:
            s[k] = int(rng.integers(len(vocab)))
        elif kind == 1:
            del s[k]
        else:
            s.insert(k, int(rng.integers(len(vocab))))
        out.append(s)
    return out


@cache
def _streams() -> tuple[tuple[int, ...], ...]:
    """Real chorales (whole), random walks, and corruptions of both."""
    from gramophone.bench.grammar import corpus_streams

    auto = automaton_for("shipped")
    rng = np.random.default_rng(5)
    real = corpus_streams(3)
    walks = [random_walk(auto, rng, 60) for _ in range(6)]
    bad = [c for s in [real[0][:300], *walks[:3]] for c in _corruptions(auto, s, rng)]
    return tuple(tuple(s) for s in real + walks + bad)


@cache
def _engine(system: str, level: str) -> peers.PeerEngine:
    tok = tokenizer_for("shipped")
    engine = peers.peer_engine(system, automaton_for("shipped").vocab)
    engine.compile(peers.grammar_text(system, RemiTokens.from_tokenizer(tok), level))
    return engine


@pytest.mark.parametrize("system", INSTALLED)
def test_peer_grammar_is_our_language(system: str) -> None:
    auto = automaton_for("shipped")
    streams = _streams()
    for level in CHECKED[system]:
        ours = _restricted(auto, level)
        engine = _engine(system, level)
        verdicts = [ours.accepts(s) for s in streams]
        assert sum(verdicts) >= 10 and not all(verdicts)  # both kinds are exercised
        for s, expected in zip(streams, verdicts, strict=True):
            assert engine.accepts(s) == expected, (system, level, [auto.vocab[i] for i in s][-12:])


@pytest.mark.parametrize("system", INSTALLED)
def test_peer_masks_are_our_masks(system: str) -> None:
    """Along real and random streams, the peer's mask is the automaton's allowed set (and its
    stop token exactly where the automaton accepts): the same work at every step."""
    from gramophone.bench.grammar import corpus_streams

    auto = automaton_for("shipped")
    rng = np.random.default_rng(3)
    streams = [corpus_streams(1)[0][:150], *(random_walk(auto, rng, 40) for _ in range(3))]
    for level in CHECKED[system]:
        ours = _restricted(auto, level)
        engine = _engine(system, level)
        for s in streams:
            got = engine.masks(s)
            states = ours.start_states
            for t in range(len(s) + 1):
                want = np.append(ours.allowed(states), ours.is_accepting(states))
                assert (got[t] == want).all(), (system, level, t, np.flatnonzero(got[t] != want))
                if t < len(s):
                    states = ours.step(states, s[t])


@pytest.mark.parametrize("system", INSTALLED)
def test_full_grammar_rejects_each_kind_of_corruption(system: str) -> None:
    """The compared grammar (the full level, as the headline figures use) expresses the
    constraints."""
    auto = automaton_for("shipped")
    idx = auto.token_index
    engine = _engine(system, "full")
    head = ["Bar_None", "TimeSig_4/4", "Position_4", "Pitch_60", "Velocity_63", "Duration_1.0.4"]
    ok = [*head, "Pitch_64", "Velocity_63", "Duration_1.0.4", "Position_8", "Pitch_62", "Velocity_63"]
    ok += ["Duration_1.0.4", "Bar_None", "TimeSig_3/4", "Position_11", "Pitch_60"]
    ok += ["Velocity_63", "Duration_1.0.4", "EOS_None", "PAD_None"]
    bad = {
        "backwards": [*head, "Position_2", "Pitch_62", "Velocity_63", "Duration_1.0.4"],
        "beyond the bar": [*head, "Position_16", "Pitch_62", "Velocity_63", "Duration_1.0.4"],
        "no duration": [*head[:5], "Pitch_64", "Velocity_63", "Duration_1.0.4"],
        "pad before eos": [*head, "PAD_None"],
    }
    bad["repeated pitch"] = [*head, "Pitch_60", "Velocity_63", "Duration_1.0.4"]
    bad["descending"] = [*head, "PitchDrum_59", "Velocity_63", "Duration_1.0.4"]
    assert engine.accepts([idx[n] for n in ok])
    for what, names in bad.items():
        assert not engine.accepts([idx[n] for n in names]), what


def test_the_three_dialects_render_every_level() -> None:
    tokens = RemiTokens.from_tokenizer(tokenizer_for("shipped"))
    for level in LEVELS:
        ebnf = render(remi_grammar(tokens, level), "ebnf")
        lark = render(remi_grammar(tokens, level), "lark")
        regex = render(remi_grammar(tokens, level, note_order="divide"), "regex")
        assert ebnf.splitlines()[1].startswith("root ::= ")
        assert '%llguidance {"no_forcing": true}' in lark
        assert regex.startswith("(?:BOS_None )?")
    with pytest.raises(ValueError, match="divide"):
        render(remi_grammar(tokens, "full"), "regex")
    # The delimiter makes the vocabulary prefix-free.
    toks = peer_tokens(automaton_for("shipped").vocab)
    assert not any(a != b and b.startswith(a) for a in toks for b in toks)


def test_unsupported_configs_are_refused() -> None:
    from gramophone.errors import UnsupportedConfigError

    with pytest.raises(UnsupportedConfigError, match="rests"):
        RemiTokens.from_tokenizer(tokenizer_for("rests"))


@pytest.mark.parametrize("name", ["default", "no-time-signatures"])
def test_other_configs_match_too(name: str) -> None:
    """miditok's default config (no time signatures, no note order) and the shipped one
    without time signatures: the peer grammar is still the automaton's language."""
    system = next((p for p in ("llguidance", "xgrammar") if peers.peer_available(p)), None)
    if system is None:
        pytest.skip("no grammar peer installed")
    auto = automaton_for(name)
    tokens = RemiTokens.from_tokenizer(tokenizer_for(name))
    engine = peers.peer_engine(system, auto.vocab)
    engine.compile(peers.grammar_text(system, tokens, "full"))
    rng = np.random.default_rng(1)
    streams = [random_walk(auto, rng, 50) for _ in range(4)]
    streams += [c for s in streams[:2] for c in _corruptions(auto, s, rng)]
    for s in streams:
        assert engine.accepts(s) == auto.accepts(s)


def test_missing_peers_give_missing_records(monkeypatch: pytest.MonkeyPatch) -> None:
    for modules in peers.PEERS.values():
        monkeypatch.setitem(sys.modules, modules[0], None)  # import fails: "not installed"
    assert not any(peers.peer_available(p) for p in peers.PEERS)
    streams = [list(s) for s in _streams()[:4]]
    records = peers.mask_step_records(streams, steps=8, repeats=1, systems=list(peers.PEERS))
    assert len(records) == len(peers.PEERS) * len(peers.BATCHES)
    for r in records:
        assert r["value"] is None and r["status"] == "missing" and r["benchmark"] == "mask_step"
        assert "not installed" in r["notes"]
    assert {r["batch"] for r in records} == set(peers.BATCHES)
    compile_missing = peers.missing_records("llguidance")
    assert [r["benchmark"] for r in compile_missing].count("compile") == 1
    assert all(r["value"] is None and r["status"] == "missing" for r in compile_missing)


def test_mask_step_records_walk_real_tokens() -> None:
    """A tiny run: every system that is installed picks the real tokens (status ok),
    gramophone's kernels in every framework (and JAX in both loops)."""
    streams = [list(s) for s in _streams()[:4]]
    systems = [*peers.OURS, *INSTALLED]
    records = peers.mask_step_records(
        streams, batches=(1, 3), steps=12, repeats=1, quick=True, systems=systems
    )
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["system"], []).append(r)
    assert set(by) == set(systems)
    for system, recs in by.items():
        assert all(r["status"] == "ok" and r["value"] > 0 for r in recs), (system, recs)
    assert {r["loop"] for r in by["gramophone-jax"]} == {"lax.scan", "python"}
    lines = peers.markdown(records)
    assert any(line.startswith("| gramophone-numpy |") for line in lines)


def test_rounds_keep_each_measurements_median() -> None:
    def rec(value: float | None, status: str = "ok") -> dict[str, Any]:
        return {"system": "s", "batch": 64, "value": value, "min_us": value, "status": status}

    merged = peers._merge_rounds([[rec(3.0), rec(9.0)], [rec(1.0), rec(None, "error")], [rec(2.0), rec(8.0)]])
    assert (
        merged[0]["value"] == 2.0
        and merged[0]["min_us"] == 1.0
        and merged[0]["round_values"] == [3.0, 1.0, 2.0]
    )
    assert merged[1]["status"] == "error" and merged[1]["value"] is None  # a failed round is kept as is
    assert peers._merge_rounds([[rec(4.0)]]) == [rec(4.0)]  # one round: the record itself


def test_importing_peers_imports_no_framework() -> None:
    code = (
        "import sys, gramophone, benchmarks.peers;"
        "bad = [m for m in ('torch', 'jax', 'xgrammar', 'llguidance', 'outlines_core') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
