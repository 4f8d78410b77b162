"""Constrained decoding on both backends, against oracles that do not use the automaton.

Every stream a loop emits (random small Transformers, adversarial stand-in models whose
logits hypothesis draws, random sampling rules, batch sizes, seeds, budgets from the
smallest that fits upwards, prompts drawn from the language) must be accepted by lark on
the derived grammar plus the plain-Python constraint references (tests/reference.py), have
zero miditok ``tokens_errors``, hold a note and decode to MIDI with one. On a tiny grammar,
sampling frequencies must match the model's distribution renormalized over the tokens an
enumeration of the language allows (chi-square).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gramophone.backends import ModelConfig, get_backend
from gramophone.cli import main
from gramophone.decoding import (
    INF,
    DecodeRequest,
    DecodeResult,
    DecodingTables,
    Sampling,
    decoding_tables,
    prepare_prompt,
    sample_numpy,
)
from gramophone.decoding.distance import layered_distance
from gramophone.decoding.driver import check_budget, split_batches
from gramophone.decoding.framing import decoding_automaton
from gramophone.decoding.loop import backend_model
from gramophone.errors import DecodingError
from gramophone.grammar import REJECT, Automaton, Component, compile_grammar, fsa
from gramophone.kernels import numpy as numpy_kernels
from gramophone.models import checkpoint_meta
from gramophone.tokenizers import decode_ids
from tests.conftest import CONFIGS, automaton_for, grammar_for, tokenizer_for
from tests.reference import lark_parser, miditok_errors, reference_accepts
from tests.walks import random_walk

BACKENDS = ["torch", "jax"]
CAP = 64  # cache length of every loop in these tests: one compiled shape per batch size
V_SHIPPED = 229
TINY_MODEL = ModelConfig(
    vocab_size=V_SHIPPED, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=CAP, dropout=0.0
)
FEWER = settings(max_examples=max(5, settings.default.max_examples // 2))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Two OpenMP threads on a busy two-core machine make every small torch op wait for a
    scheduler slice (~100x slower); the loops are the same with one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- fixtures


@functools.cache
def shipped_tables(bars: int | None = None) -> DecodingTables:
    return decoding_tables(automaton_for("shipped"), bars)


@functools.cache
def dense_next() -> np.ndarray:
    """The stand-in models' own tracker: the dense product of the decoding automaton
    (int32[S+1, V], row S dead), built here so the models never read the tables under test."""
    T = decoding_automaton(automaton_for("shipped")).product().transitions
    S = T.shape[0]
    return np.vstack([np.where(T == REJECT, S, T), np.full((1, T.shape[1]), S, np.int32)])


@functools.cache
def gpt_params(backend: str, seed: int, head_scale: float = 1.0) -> Any:
    """A random small Transformer; ``head_scale`` spreads the logits (fewer near-ties)."""
    from gramophone.backends.base import init_weights

    weights = init_weights(TINY_MODEL, seed)
    weights["head.weight"] = weights["head.weight"] * np.float32(head_scale)
    return get_backend(backend).from_numpy(weights, TINY_MODEL)


def run_gpt(backend: str, params: Any, tables: DecodingTables, request: DecodeRequest) -> DecodeResult:
    if backend == "torch":
        from gramophone.decoding.torch_loop import gpt_model, sample_torch

        return sample_torch(gpt_model(params), tables, request)
    from gramophone.decoding.jax_loop import gpt_model as jax_gpt
    from gramophone.decoding.jax_loop import sample_jax

    return sample_jax(jax_gpt(), params, tables, request)


# -- stand-in models: logits = table[(position + token) % R], with ``spike`` on every
# token the dense automaton forbids (the model tracks the automaton state in its cache).


def _standin_logits_np(table: np.ndarray, spike: float, ns: np.ndarray, where: tuple[Any, ...]) -> Any:
    state, positions, token = where
    base = table[(positions + token) % table.shape[0]]
    return np.where(ns[state] == ns.shape[0] - 1, np.float32(spike), base)


@functools.cache
def standin_jax() -> Any:
    import jax.numpy as jnp
    from jax import lax

    from gramophone.decoding.jax_loop import JaxModel

    def logits(args: Any, state: Any, positions: Any, token: Any) -> Any:
        table, spike, ns = args
        base = table[(positions + token) % table.shape[0]]
        return jnp.where(ns[state] == ns.shape[0] - 1, spike, base)

    def prefill(args: Any, ids: Any, lengths: Any, cache_len: int) -> Any:
        ns = args[2]
        B, P = ids.shape

        def body(i: Any, s: Any) -> Any:
            return jnp.where(i < lengths, ns[s, ids[:, i]], s)

        state = lax.fori_loop(0, P, body, jnp.zeros((B,), jnp.int32))
        last = ids[jnp.arange(B), lengths - 1]
        return logits(args, state, lengths - 1, last), state

    def step(args: Any, token: Any, state: Any, positions: Any) -> Any:
        state = args[2][state, token]
        return logits(args, state, positions, token), state

    return JaxModel(prefill, step)


def run_standin(
    backend: str, table: np.ndarray, spike: float, tables: DecodingTables, request: DecodeRequest
) -> DecodeResult:
    ns = dense_next()
    if backend == "numpy":

        class Model:
            def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
                state = np.zeros(len(ids), np.int64)
                for i in range(ids.shape[1]):
                    state = np.where(i < lengths, ns[state, ids[:, i]], state)
                last = ids[np.arange(len(ids)), lengths - 1]
                return _standin_logits_np(table, spike, ns, (state, lengths - 1, last)), state

            def step(self, token: np.ndarray, state: Any, positions: np.ndarray) -> Any:
                state = ns[state, token]
                return _standin_logits_np(table, spike, ns, (state, positions, token)), state

        return sample_numpy(Model(), tables, request)
    if backend == "torch":
        import torch

        from gramophone.decoding.torch_loop import TorchModel, sample_torch

        t_table = torch.from_numpy(table)
        t_ns = torch.from_numpy(ns.astype(np.int64))
        dead = ns.shape[0] - 1

        def logits(state: Any, positions: Any, token: Any) -> Any:
            base = t_table[(positions + token) % t_table.shape[0]]
            return torch.where(t_ns[state] == dead, torch.tensor(spike, dtype=torch.float32), base)

        def prefill(ids: Any, lengths: Any, cache_len: int) -> Any:
            state = torch.zeros(ids.shape[0], dtype=torch.long)
            for i in range(ids.shape[1]):
                state = torch.where(i < lengths, t_ns[state, ids[:, i]], state)
            last = ids[torch.arange(ids.shape[0]), lengths - 1]
            return logits(state, lengths - 1, last), state

        def step(token: Any, state: Any, positions: Any) -> Any:
            state = t_ns[state, token]
            return logits(state, positions, token), state

        return sample_torch(TorchModel(prefill, step, torch.device("cpu")), tables, request)
    import jax.numpy as jnp

    from gramophone.decoding.jax_loop import sample_jax

    args = (jnp.asarray(table), jnp.asarray(spike, jnp.float32), jnp.asarray(ns))
    return sample_jax(standin_jax(), args, tables, request)


# ----------------------------------------------------------------------------- oracles


def assert_valid(result: DecodeResult, tables: DecodingTables, prompt: tuple[int, ...], budget: int) -> None:
    """Every row: framed, within budget, continues the prompt, accepted by lark + the
    plain-Python constraints, zero miditok errors, at least one note in the MIDI."""
    tok = tokenizer_for("shipped")
    grammar = grammar_for("shipped")
    vocab = automaton_for("shipped").vocab
    assert result.tokens.shape[1] == budget
    for row, n in zip(result.tokens, result.lengths, strict=True):
        ids = row[:n].tolist()
        names = [vocab[i] for i in ids]
        assert n <= budget
        assert (row[n:] == tables.pad).all()
        assert tuple(ids[: len(prompt)]) == prompt
        assert names[0] == "BOS_None" and names[-1] == "EOS_None", names
        assert names.count("BOS_None") == 1 and names.count("EOS_None") == 1 and "PAD_None" not in names
        assert reference_accepts(grammar, names), names
        assert any(t.startswith(("Pitch_", "PitchDrum_")) for t in names), names
        if tables.bars is not None:
            assert names.count("Bar_None") == tables.bars, names
        assert miditok_errors(tok, ids) == 0, names
        score = decode_ids(tok, ids)
        assert sum(len(t.notes) for t in score.tracks) >= 1, names


# ----------------------------------------------------------------------------- strategies


@st.composite
def samplings(draw: st.DrawFn) -> Sampling:
    if draw(st.booleans()) and draw(st.booleans()):
        return Sampling(greedy=True)
    return Sampling(
        temperature=draw(st.sampled_from([1.0, 0.05, 0.7, 1.3, 50.0])),
        top_k=draw(st.one_of(st.none(), st.integers(1, 300))),
        top_p=draw(st.one_of(st.none(), st.floats(0.01, 1.0))),
    )


@st.composite
def cases(draw: st.DrawFn, max_prompt: int = 12) -> tuple[DecodingTables, DecodeRequest]:
    """Tables (with or without a bar count), a prompt from a random walk, a budget from the
    smallest that fits upwards, sampling rules, batch size and seed."""
    auto = automaton_for("shipped")
    k = draw(st.integers(0, max_prompt))
    walk = random_walk(auto, np.random.default_rng(draw(st.integers(0, 1000))), length=k + 4, eos=False)
    prompt_ids = walk[:k]
    in_prompt = sum(1 for i in prompt_ids if auto.vocab[i] == "Bar_None")
    # bar counts up to 3: one padded side table shape (4 rows) for the JAX loop
    bars = draw(st.sampled_from([None, max(1, in_prompt), max(1, in_prompt) + 1]))
    if bars is not None and bars > 3:
        bars = None
    tables = shipped_tables(bars)
    prompt = prepare_prompt(tables, auto, prompt_ids)
    assume(prompt.min_total <= CAP)
    budget = prompt.min_total + draw(st.integers(0, CAP - prompt.min_total))
    request = DecodeRequest(
        prompt.ids,
        prompt.state,
        num=draw(st.sampled_from([1, 3])),
        budget=budget,
        sampling=draw(samplings()),
        seed=draw(st.integers(0, 2**31 - 1)),
        capacity=CAP,
    )
    return tables, request


SPECIAL_IDS = [0, 1, 2]  # PAD, BOS, EOS of the shipped vocabulary
EXTREMES = [0.0, 1e-30, -1e30, 1e30, 3.0e38, -3.0e38, math.inf, -math.inf, math.nan]


@st.composite
def adversarial_tables(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """Logit rows: all equal, random at tiny/huge scales, spiky (mass on a few tokens,
    specials included), or a mix of extreme values; plus the value put on forbidden tokens."""
    rows = []
    for _ in range(4):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        kind = draw(st.sampled_from(["equal", "random", "spiky", "extreme"]))
        if kind == "equal":
            row = np.full(V_SHIPPED, draw(st.sampled_from(EXTREMES)))
        elif kind == "random":
            row = rng.normal(0.0, draw(st.sampled_from([1e-30, 1.0, 30.0, 1e30])), V_SHIPPED)
        elif kind == "spiky":
            row = rng.normal(0.0, 1.0, V_SHIPPED)
            hot = rng.choice(V_SHIPPED, size=draw(st.integers(1, 20)), replace=False)
            row[np.concatenate([hot, SPECIAL_IDS])] = draw(st.sampled_from([50.0, 1e30, 3.0e38, math.inf]))
        else:
            row = rng.choice(np.array(EXTREMES), size=V_SHIPPED)
        rows.append(row)
    spike = draw(st.sampled_from([1e30, math.inf, 3.0e38, 100.0, math.nan, 0.0]))
    with np.errstate(over="ignore"):
        return np.array(rows, dtype=np.float32), float(np.float32(spike))


# ----------------------------------------------------------------------------- rules (numpy)


@st.composite
def logit_rows(draw: st.DrawFn, V: int = 17) -> tuple[np.ndarray, np.ndarray]:
    B = draw(st.integers(1, 4))
    values = st.one_of(
        st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, 1.0, -math.inf, math.inf, math.nan, 3e38])
    )
    logits = np.array(draw(st.lists(values, min_size=B * V, max_size=B * V)), np.float32).reshape(B, V)
    allowed = np.array(draw(st.lists(st.booleans(), min_size=B * V, max_size=B * V))).reshape(B, V)
    allowed[np.arange(B), draw(st.integers(0, V - 1))] = True  # one allowed token at least
    return logits, allowed


def _kept_reference(x: list[float], sampling: Sampling) -> set[int]:
    """Independent top-k/top-p on one sanitized, tempered row (float64, plain Python)."""
    live = {v: xv for v, xv in enumerate(x) if xv > -math.inf}
    if sampling.uses_top_k:
        assert sampling.top_k is not None
        ranked = sorted(x, reverse=True)
        thr = ranked[min(sampling.top_k, len(x)) - 1]
        live = {v: xv for v, xv in live.items() if xv >= thr}
    if sampling.uses_top_p:
        assert sampling.top_p is not None
        m = max(live.values())
        z = sum(math.exp(xv - m) for xv in live.values())
        probs = {v: math.exp(xv - m) / z for v, xv in live.items()}
        cum, nucleus = 0.0, []
        for v in sorted(probs, key=lambda v: -probs[v]):
            if cum >= sampling.top_p:
                break
            nucleus.append(v)
            cum += probs[v]
        q_min = min(probs[v] for v in nucleus)
        live = {v: xv for v, xv in live.items() if probs[v] >= q_min}
    return set(live)


@given(logit_rows(), samplings(), st.integers(0, 2**32 - 1))
def test_rules_never_choose_a_forbidden_token_and_filter_as_specified(
    rows: tuple[np.ndarray, np.ndarray], sampling: Sampling, seed: int
) -> None:
    logits, allowed = rows
    B = len(logits)
    with np.errstate(over="ignore", invalid="ignore"):
        x = numpy_kernels.sanitize(logits, allowed)
        gumbel = np.random.default_rng(seed).gumbel(size=logits.shape).astype(np.float32)
        tok = numpy_kernels.choose(logits, allowed, sampling, gumbel)
    assert (x[~allowed] == -np.inf).all()
    assert (np.where(allowed, x, -np.inf).max(axis=1) == 0.0).all()
    assert allowed[np.arange(B), tok].all()
    if sampling.greedy:  # the first allowed token of largest logit
        assert (tok == np.argmax(x, axis=1)).all()
        return
    with np.errstate(over="ignore", invalid="ignore"):
        tempered = (x / np.float32(sampling.temperature)).astype(np.float32)
        kept_rows = tempered
        if sampling.uses_top_k:
            assert sampling.top_k is not None
            kept_rows = numpy_kernels.apply_top_k(kept_rows, sampling.top_k)
        if sampling.uses_top_p:
            assert sampling.top_p is not None
            kept_rows = numpy_kernels.apply_top_p(kept_rows, sampling.top_p)
    for b in range(B):
        kept = set(np.nonzero(kept_rows[b] > -np.inf)[0].tolist())
        assert int(tok[b]) in kept
        row = tempered[b].astype(np.float64).tolist()
        if sampling.uses_top_p and _near_top_p_boundary(row, sampling):
            continue  # float32 vs float64 may disagree exactly at the nucleus boundary
        assert kept == _kept_reference(row, sampling)


def _near_top_p_boundary(x: list[float], sampling: Sampling) -> bool:
    """Whether float rounding can decide the nucleus: a cumulative mass within 1e-4 of p,
    or a probability within 1e-5 (relative) of another without being equal."""
    assert sampling.top_p is not None
    xs = x
    if sampling.uses_top_k:
        keep = _kept_reference(x, Sampling(top_k=sampling.top_k))
        xs = [xv if v in keep else -math.inf for v, xv in enumerate(x)]
    live = [xv for xv in xs if xv > -math.inf]
    m = max(live)
    z = sum(math.exp(xv - m) for xv in live)
    probs = sorted((math.exp(xv - m) / z for xv in live), reverse=True)
    cums = np.cumsum([0.0, *probs])
    near_tie = any(0 < a - b < 1e-5 * a for a, b in itertools.pairwise(probs))
    return bool(np.any(np.abs(cums - sampling.top_p) < 1e-4)) or near_tie


def test_rules_sanitize_handles_degenerate_rows() -> None:
    allowed = np.array([[True, True, False, True]])
    for value in (-math.inf, math.nan, math.inf, 1e30):
        x = numpy_kernels.sanitize(np.full((1, 4), value, np.float32), allowed)
        assert x[0].tolist() == [0.0, 0.0, -math.inf, 0.0]  # uniform over the allowed tokens
    x = numpy_kernels.sanitize(np.array([[math.inf, 1.0, math.inf, math.nan]], np.float32), allowed)
    assert x[0, 0] == 0 and x[0, 1] < 0 and x[0, 2] == -math.inf and x[0, 3] < 0


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"top_k": 0}, {"top_p": 2.0}, {"top_p": 0.0}])
def test_sampling_rejects_invalid_options(bad: dict[str, float]) -> None:
    with pytest.raises(DecodingError):
        Sampling(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@given(logit_rows(V=23), samplings(), st.integers(0, 2**32 - 1))
def test_device_rules_match_the_numpy_reference(
    backend: str, rows: tuple[np.ndarray, np.ndarray], sampling: Sampling, seed: int
) -> None:
    """Same logits, mask and Gumbel noise -> the same token in torch, JAX and numpy."""
    logits, allowed = rows
    gumbel = np.random.default_rng(seed).gumbel(size=logits.shape).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = numpy_kernels.choose(logits, allowed, sampling, gumbel)
        x = numpy_kernels.sanitize(logits, allowed)
    got = _device_choose(backend, logits, allowed, sampling, gumbel)
    for b in range(len(want)):
        if got[b] != want[b]:
            with np.errstate(over="ignore"):
                tempered = (x[b] / np.float32(sampling.temperature)).astype(np.float64).tolist()
            # only a float rounding at the nucleus boundary may tell them apart
            assert sampling.uses_top_p and _near_top_p_boundary(tempered, sampling), (got, want)


@functools.cache
def _jitted_choose() -> Any:
    import jax

    from gramophone.kernels.jax import choose

    return jax.jit(choose)


def _device_choose(
    backend: str, logits: np.ndarray, allowed: np.ndarray, sampling: Sampling, gumbel: np.ndarray
) -> np.ndarray:
    if backend == "torch":
        import torch

        from gramophone.kernels.torch import choose

        out = choose(
            torch.from_numpy(logits), torch.from_numpy(~allowed), sampling, gumbel=torch.from_numpy(gumbel)
        )
        return out.numpy()
    import jax
    import jax.numpy as jnp

    from gramophone.kernels.jax import SamplingArrays

    return np.asarray(
        _jitted_choose()(
            jnp.asarray(logits),
            jnp.asarray(allowed),
            jax.random.key(0),
            SamplingArrays.of(sampling),
            jnp.asarray(gumbel),
        )
    )


# ----------------------------------------------------------------------------- tables


TINY_VOCAB = [
    "PAD_None",
    "BOS_None",
    "EOS_None",
    "Bar_None",
    "Position_0",
    "Position_1",
    "Pitch_60",
    "Pitch_62",
]
TINY_GRAMMAR = r"""
start: BOS? piece (EOS PAD*)?
piece: bar+
bar: BAR (POSITION PITCH+)*
BOS: "BOS_None"
EOS: "EOS_None"
PAD: "PAD_None"
BAR: "Bar_None"
POSITION: /Position_\d+/
PITCH: /Pitch_\d+/
%ignore " "
"""
# The same language in one character per token, plus the decoder's own rules (BOS first,
# EOS last, a note at least): the independent oracle of the distribution test.
TINY_CHARS = "pbeB01xy"
TINY_REGEX = re.compile(r"b(B([01][xy]+)*)+e")


@functools.cache
def tiny_automaton() -> Automaton:
    table = compile_grammar(TINY_GRAMMAR, TINY_VOCAB)
    return Automaton(
        tuple(TINY_VOCAB), (Component("syntax", table.transitions, table.accepting, table.start),)
    )


def tiny_language(max_len: int) -> set[str]:
    """Every decoder output of length <= max_len, by enumeration (regex, checked by lark)."""
    parser = lark_parser(TINY_GRAMMAR)
    out = set()
    for n in range(2, max_len + 1):
        for middle in itertools.product(TINY_CHARS, repeat=n - 2):
            s = "b" + "".join(middle) + "e"
            if TINY_REGEX.fullmatch(s) and ("x" in s or "y" in s):
                parser.parse(" ".join(TINY_VOCAB[TINY_CHARS.index(c)] for c in s))  # lark agrees
                out.add(s)
    return out


def _group_state(tables: DecodingTables, comp_states: np.ndarray) -> np.ndarray:
    """The tables' per-group state of a tuple of the decoding automaton's component states."""
    names = [c.name for c in tables.automaton.components]
    sizes = [c.num_states for c in tables.automaton.components]
    out = []
    for group in tables.groups:
        local, inner = 0, 1
        for name in group:
            k = names.index(name)
            local += int(comp_states[k]) * inner
            inner *= sizes[k]
        out.append(local)
    return np.array(out, np.int32)


def _assert_distances_exact(tables: DecodingTables) -> None:
    """Every reachable state of the full decoding product (bar counter included), by a BFS
    on its explicit dense product: the distance the tables give is the true one."""
    T, acc, _, states = tables.automaton.product_tables()
    d = fsa.distance_to_accept(T, acc)
    assert len(d) > 1, "empty product"
    for s in range(len(d)):
        want = int(d[s]) if d[s] >= 0 else INF
        assert tables.distance(_group_state(tables, states[s])) == want, s


@pytest.mark.parametrize("bars", [None, 1, 3])
def test_distance_table_equals_the_distance_in_the_full_product(bars: int | None) -> None:
    """The factored tables (groups, cartesian distance, bar layers) against a BFS on the
    explicit product of every component."""
    _assert_distances_exact(decoding_tables(tiny_automaton(), bars, use_cache=False))


def test_distance_table_on_the_shipped_grammar_with_one_bar() -> None:
    _assert_distances_exact(shipped_tables(1))


def test_layered_distance_refuses_a_cyclic_side_automaton() -> None:
    T = np.array([[1, 0], [0, 1]], np.int32)  # token 0 flips between two states
    with pytest.raises(DecodingError, match="counter"):
        layered_distance(T, np.array([True, True]), T, np.array([True, False]))


def test_shortest_pieces_and_budget_errors() -> None:
    auto = automaton_for("shipped")
    assert shipped_tables().shortest() == 8  # BOS Bar TimeSig Position Pitch Velocity Duration EOS
    assert shipped_tables(3).shortest() == 2 * 3 + 6
    prompt = prepare_prompt(shipped_tables(), auto)
    with pytest.raises(DecodingError, match="needs 8 tokens"):
        check_budget(prompt, 7, CAP)
    with pytest.raises(DecodingError, match="context of 64"):
        check_budget(prompt, 65, CAP)
    check_budget(prompt, 8, CAP)
    assert split_batches(100, 64) == [50, 50] and split_batches(3, 64) == [3]


def test_tables_hold_no_table_of_states_by_vocabulary() -> None:
    """The shipped config: three groups of rows (55 + 196 + 75 of them), a uint8 cartesian
    distance table, dead rows last; far smaller than the 47 MiB dense product."""
    tables = shipped_tables()
    assert [n.shape[0] for n in tables.next] == [55, 196, 75]
    for nxt, valid in zip(tables.next, tables.valid, strict=True):
        dead = nxt.shape[0] - 1
        assert nxt.shape[1] == V_SHIPPED and (nxt[dead] == dead).all() and not valid[dead].any()
        assert ((nxt != dead) == valid).all()
    assert tables.dist.dtype == np.uint8 and tables.nbytes < 2 * 2**20
    assert tables.exact and tables.max_distance == 8
    assert tables.distance(tables.dead) == INF


# ----------------------------------------------------------------------------- prompts


def _ids(names: str) -> list[int]:
    ix = automaton_for("shipped").token_index
    return [ix[t] for t in names.split()]


def test_invalid_prompt_says_where_it_breaks() -> None:
    auto = automaton_for("shipped")
    bad = _ids("Bar_None TimeSig_4/4 Position_12 Pitch_60 Velocity_63 Duration_1.0.4 Position_4 Pitch_62")
    with pytest.raises(DecodingError, match=r"token 6 \(Position_4\).*goes back within the bar"):
        prepare_prompt(shipped_tables(), auto, bad, name="p.txt")
    with pytest.raises(DecodingError, match=r"token 1 \(Pitch_60\)"):
        prepare_prompt(shipped_tables(), auto, _ids("Bar_None Pitch_60"))
    three_bars = _ids("Bar_None TimeSig_4/4 Bar_None TimeSig_4/4 Bar_None TimeSig_4/4")
    with pytest.raises(DecodingError, match="more than 2 Bar tokens"):
        prepare_prompt(shipped_tables(2), auto, three_bars)


def test_prompt_is_framed_and_a_finished_piece_can_be_continued() -> None:
    auto = automaton_for("shipped")
    body = _ids("Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_63 Duration_1.0.4")
    p = prepare_prompt(shipped_tables(), auto, body)
    assert p.ids == (1, *body) and p.min_total == len(body) + 2  # + BOS + EOS
    q = prepare_prompt(shipped_tables(), auto, [1, *body, 2, 0, 0])  # BOS ... EOS PAD PAD
    assert q.ids == p.ids and (q.state == p.state).all()


# ----------------------------------------------------------------------------- loops


@pytest.mark.parametrize("backend", BACKENDS)
@FEWER
@given(case=cases(), model_seed=st.integers(0, 3))
def test_random_models_emit_only_valid_pieces(
    backend: str, case: tuple[DecodingTables, DecodeRequest], model_seed: int
) -> None:
    tables, request = case
    result = run_gpt(backend, gpt_params(backend, model_seed), tables, request)
    assert_valid(result, tables, request.prompt, request.budget)


@pytest.mark.parametrize("backend", BACKENDS)
@FEWER
@given(case=cases(), model=adversarial_tables())
def test_adversarial_models_emit_only_valid_pieces(
    backend: str, case: tuple[DecodingTables, DecodeRequest], model: tuple[np.ndarray, float]
) -> None:
    tables, request = case
    table, spike = model
    result = run_standin(backend, table, spike, tables, request)
    assert_valid(result, tables, request.prompt, request.budget)


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
def test_the_smallest_budget_gives_the_shortest_piece(backend: str) -> None:
    """A budget equal to the minimum forces a shortest piece; mass on forbidden tokens and
    on EOS changes nothing."""
    auto = automaton_for("shipped")
    for bars in (None, 2):
        tables = shipped_tables(bars)
        p = prepare_prompt(tables, auto)
        table = np.zeros((4, V_SHIPPED), np.float32)
        table[:, 2] = 1e30  # EOS
        request = DecodeRequest(p.ids, p.state, 2, p.min_total, capacity=CAP)
        result = run_standin(backend, table, math.inf, tables, request)
        assert (result.lengths == p.min_total).all()
        assert_valid(result, tables, p.ids, p.min_total)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_output_and_seeds_differ(backend: str) -> None:
    auto = automaton_for("shipped")
    tables = shipped_tables()
    p = prepare_prompt(tables, auto)
    params = gpt_params(backend, 0)

    def go(seed: int) -> np.ndarray:
        request = DecodeRequest(p.ids, p.state, 3, CAP, Sampling(temperature=1.0), seed, CAP)
        return run_gpt(backend, params, tables, request).tokens

    a, b, c = go(1), go(1), go(2)
    assert (a == b).all()
    assert not (a == c).all()


def test_greedy_is_the_same_on_torch_and_jax() -> None:
    """Greedy on one checkpoint: identical tokens, except after a near-tie of the two
    frameworks' fp32 logits (checked: the chosen tokens' logits agree to 1e-4)."""
    auto = automaton_for("shipped")
    tables = shipped_tables()
    torch_backend = get_backend("torch")
    compared = 0
    for seed in range(3):
        prompt_ids = random_walk(auto, np.random.default_rng(seed), length=6, eos=False)[:6]
        p = prepare_prompt(tables, auto, prompt_ids)
        request = DecodeRequest(p.ids, p.state, 1, CAP, Sampling(greedy=True), capacity=CAP)
        a = run_gpt("torch", gpt_params("torch", seed, 30.0), tables, request).streams()[0]
        b = run_gpt("jax", gpt_params("jax", seed, 30.0), tables, request).streams()[0]
        if a == b:
            compared += len(a)
            continue
        t = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        logits = torch_backend.logits(gpt_params("torch", seed, 30.0), np.array([a[:t]], np.int32))[0, -1]
        assert abs(float(logits[a[t]]) - float(logits[b[t]])) <= 1e-4 * max(1.0, abs(float(logits[a[t]]))), (
            f"torch and jax disagree at token {t} without a tie"
        )
        compared += t
    assert compared > 40


def test_torch_loop_does_not_synchronize_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the every-k check off, nothing reads a device value inside the loop: the only
    read is the final copy of the tokens."""
    import torch

    from gramophone.decoding.torch_loop import gpt_model, sample_torch

    auto = automaton_for("shipped")
    tables = shipped_tables(2)
    p = prepare_prompt(tables, auto)
    model = gpt_model(gpt_params("torch", 0))
    request = DecodeRequest(p.ids, p.state, 2, 40, Sampling(top_k=20, top_p=0.9), 0, CAP)
    reads: list[str] = []
    real_cpu = torch.Tensor.cpu

    def forbid(name: str) -> Any:
        def reader(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"host sync inside the loop: Tensor.{name}")

        return reader

    def cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        reads.append("cpu")
        monkeypatch.undo()  # the loop is over: reading the result is allowed
        return real_cpu(self, *args, **kwargs)

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    result = sample_torch(model, tables, request, check_every=0)
    assert reads == ["cpu"] and result.steps == 40 - len(p.ids)
    assert_valid(result, tables, p.ids, 40)


def test_jax_loop_compiles_once_for_all_dynamic_settings() -> None:
    """Budget, seed, prompt, sampling rules and model arguments are traced: one compile."""
    from gramophone.decoding import jax_loop

    auto = automaton_for("shipped")
    tables = shipped_tables()
    table = np.random.default_rng(0).normal(size=(4, V_SHIPPED)).astype(np.float32)
    before = len(jax_loop._COMPILED)
    for i, sampling in enumerate([Sampling(), Sampling(greedy=True), Sampling(top_k=3, top_p=0.5)]):
        walk = random_walk(auto, np.random.default_rng(i), length=8, eos=False)
        p = prepare_prompt(tables, auto, walk[: 2 + i])
        request = DecodeRequest(p.ids, p.state, 2, 20 + 5 * i, sampling, i, capacity=CAP)
        result = run_standin("jax", table * (i + 1), 1e30, tables, request)
        assert_valid(result, tables, p.ids, request.budget)
    assert len(jax_loop._COMPILED) - before <= 1


# ----------------------------------------------------------------------------- distribution


def _expected_distribution(W: np.ndarray, language: set[str], sampling: Sampling) -> dict[str, float]:
    """Exact probability of every output under the bigram model ``W`` renormalized over the
    tokens the enumerated language allows after each prefix (top-k/top-p applied)."""
    prefixes = {s[:i] for s in language for i in range(1, len(s) + 1)}
    out = {}
    for s in language:
        prob = 1.0
        for i in range(1, len(s)):
            allowed = [v for v, c in enumerate(TINY_CHARS) if s[:i] + c in prefixes]
            row = W[TINY_CHARS.index(s[i - 1])].astype(np.float64)
            x = [row[v] / sampling.temperature if v in allowed else -math.inf for v in range(len(row))]
            kept = _kept_reference(x, sampling)
            m = max(x[v] for v in kept)
            z = sum(math.exp(x[v] - m) for v in kept)
            v = TINY_CHARS.index(s[i])
            prob *= math.exp(x[v] - m) / z if v in kept else 0.0
        out[s] = prob
    return out


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
@pytest.mark.parametrize(
    "sampling", [Sampling(), Sampling(temperature=0.6, top_k=3), Sampling(temperature=1.5, top_p=0.75)]
)
def test_masked_sampling_matches_the_renormalized_distribution(backend: str, sampling: Sampling) -> None:
    from scipy.stats import chi2

    budget, M = 7, 4000
    language = tiny_language(budget)
    W = np.random.default_rng(7).normal(0.0, 1.5, (8, 8)).astype(np.float32)
    expected = _expected_distribution(W, language, sampling)
    assert abs(sum(expected.values()) - 1.0) < 1e-9

    tables = decoding_tables(tiny_automaton(), use_cache=False)
    p = prepare_prompt(tables, tiny_automaton())
    request = DecodeRequest(p.ids, p.state, M, budget, sampling, seed=11)
    result = _run_bigram(backend, W, tables, request)
    counts = Counter("".join(TINY_CHARS[i] for i in s) for s in result.streams())
    assert set(counts) <= {s for s, q in expected.items() if q > 0}, set(counts) - set(expected)
    # chi-square over streams, merging those expected fewer than 5 times
    big = sorted(s for s, q in expected.items() if q * M >= 5)
    obs = [counts[s] for s in big] + [M - sum(counts[s] for s in big)]
    exp = [expected[s] * M for s in big] + [M - sum(expected[s] * M for s in big)]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    p_value = chi2.sf(stat, len(obs) - 1)
    assert len(obs) >= 4 and p_value > 1e-3, (stat, len(obs), p_value)


def _run_bigram(backend: str, W: np.ndarray, tables: DecodingTables, request: DecodeRequest) -> DecodeResult:
    """A stand-in model whose next-token logits depend on the last token only."""
    if backend == "numpy":

        class Model:
            def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
                return W[ids[np.arange(len(ids)), lengths - 1]], None

            def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
                return W[token], None

        return sample_numpy(Model(), tables, request)
    if backend == "torch":
        import torch

        from gramophone.decoding.torch_loop import TorchModel, sample_torch

        w = torch.from_numpy(W)
        model = TorchModel(
            lambda ids, lengths, cache_len: (w[ids[torch.arange(ids.shape[0]), lengths - 1]], None),
            lambda token, cache, positions: (w[token], None),
            torch.device("cpu"),
        )
        return sample_torch(model, tables, request)
    import jax.numpy as jnp

    from gramophone.decoding.jax_loop import sample_jax

    return sample_jax(_bigram_jax(), jnp.asarray(W), tables, request)


@functools.cache
def _bigram_jax() -> Any:
    import jax.numpy as jnp

    from gramophone.decoding.jax_loop import JaxModel

    return JaxModel(
        lambda w, ids, lengths, cache_len: (w[ids[jnp.arange(ids.shape[0]), lengths - 1]], jnp.zeros(())),
        lambda w, token, cache, positions: (w[token], cache),
    )


def test_numpy_loop_over_a_backends_numpy_api_is_valid() -> None:
    """The fallback for a backend without a loop of its own."""
    backend = get_backend("torch")
    auto = automaton_for("shipped")
    tables = shipped_tables(1)
    p = prepare_prompt(tables, auto)
    request = DecodeRequest(p.ids, p.state, 2, 30, Sampling(top_p=0.9), 3, capacity=CAP)
    result = sample_numpy(backend_model(backend, gpt_params("torch", 1)), tables, request)
    assert_valid(result, tables, p.ids, 30)


def test_importing_decoding_loads_no_framework() -> None:
    code = (
        "import sys, gramophone.decoding, gramophone.decoding.driver, gramophone.audio\n"
        "heavy = [m for m in ('torch', 'jax', 'flax', 'matplotlib', 'pretty_midi') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint for the shipped tokenizer (with its fingerprint)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    backend = get_backend("torch")
    meta = checkpoint_meta(tokenizer_for("shipped"), automaton_for("shipped"))
    backend.save(path, backend.init(TINY_MODEL, 0), meta=meta)
    return path


BASE = ("--backend", "torch", "--checkpoint")


def decode_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["decode", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _fluidsynth_works() -> bool:
    try:
        import fluidsynth  # noqa: F401
        import pretty_midi  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@pytest.mark.parametrize("audio", [False, True])
def test_cli_decode_writes_valid_pieces(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], audio: bool
) -> None:
    if audio and not _fluidsynth_works():
        pytest.skip("FluidSynth is not installed")
    out = tmp_path / "out"
    args = ["--backend", "torch", "--checkpoint", str(checkpoint), "--num", "2", "--max-tokens", "40"]
    args += ["--seed", "3", "--top-k", "50", "--out", str(out)] + ([] if audio else ["--no-audio"])
    code, stdout, err = decode_cli(args, capsys)
    assert code == 0, err
    assert "all 2 valid" in stdout and "tokens/s" in stdout
    assert (out / "tokenizer.json").is_file() and (out / "summary.json").is_file()
    for i in range(2):
        stem = out / f"piece-{i:03d}"
        for suffix in (".json", ".txt", ".mid", ".png"):
            assert stem.with_suffix(suffix).stat().st_size > 0
        assert stem.with_suffix(".wav").exists() == audio
        ids = json.loads(stem.with_suffix(".json").read_text())["ids"]
        assert len(ids) <= 40
        assert reference_accepts(grammar_for("shipped"), [automaton_for("shipped").vocab[t] for t in ids])
    if audio:
        import wave

        with wave.open(str(out / "piece-000.wav")) as w:
            assert w.getnframes() > 0
    assert main(["check", str(out / "piece-000.json"), str(out / "piece-001.txt")]) == 0


@pytest.mark.parametrize(
    ("given", "changed"),
    [([], {}), (["--temperature", "0.5"], {"temperature": 0.5}), (["--top-p", "1"], {"top_p": 1.0})],
)
def test_cli_decode_sampling_defaults(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    given: list[str],
    changed: dict[str, float],
) -> None:
    """A setting not given keeps the measured default (DEFAULT_SAMPLING); one given
    replaces only itself."""
    import dataclasses

    from gramophone.decoding.rules import DEFAULT_SAMPLING

    out = tmp_path / "out"
    args = [*BASE, str(checkpoint), "--num", "1", "--max-tokens", "24", "--formats", "tokens", *given]
    code, _, err = decode_cli([*args, "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampling"] == {**dataclasses.asdict(DEFAULT_SAMPLING), **changed}


def test_cli_decode_without_fluidsynth_still_writes_the_rest(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gramophone.audio

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise gramophone.audio.AudioUnavailableError("FluidSynth is not available (test)")

    monkeypatch.setattr(gramophone.audio, "render_wav", missing)
    out = tmp_path / "out"
    code, stdout, _ = decode_cli(
        [*BASE, str(checkpoint), "--num", "1", "--max-tokens", "24", "--out", str(out)],
        capsys,
    )
    assert code == 0 and "no WAV files: FluidSynth is not available" in stdout
    assert (out / "piece-000.mid").is_file() and not (out / "piece-000.wav").exists()


def test_cli_decode_jax_with_bars_and_a_midi_prompt(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = tokenizer_for("shipped")
    body = _ids("Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_63 Duration_1.0.4")
    midi = tmp_path / "prompt.mid"
    decode_ids(tok, body).dump_midi(str(midi))
    out = tmp_path / "out"
    code, stdout, err = decode_cli(
        [
            *("--backend", "jax", "--checkpoint", str(checkpoint), "--num", "3", "--max-tokens", "48"),
            *("--bars", "3", "--prompt", str(midi), "--top-p", "0.9", "--no-audio", "--out", str(out)),
        ],
        capsys,
    )
    assert code == 0, err
    assert "all 3 valid" in stdout
    vocab = automaton_for("shipped").vocab
    for i in range(3):
        ids = json.loads((out / f"piece-{i:03d}.json").read_text())["ids"]
        names = [vocab[t] for t in ids]
        assert names.count("Bar_None") == 3 and ids[: len(body) + 1] == [1, *body]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-p", "2"], "top-p must be in (0, 1]"),
        (["--temperature", "0"], "temperature must be a number > 0"),
        (["--top-k", "0"], "top-k must be an integer >= 1"),
        (["--greedy", "--top-k", "3"], "--greedy takes no"),
        (["--max-tokens", "5"], "--max-tokens 5 is too small: the shortest valid piece"),
        (["--max-tokens", "9", "--bars", "4"], "with exactly 4 bars"),
        (["--max-tokens", "1000"], "exceeds the model's context of 64 tokens"),
        (["--bars", "0"], "--bars must be at least 1"),
        (["--num", "0"], "--num must be at least 1"),
        (["--prompt", "BAD"], "is not a valid beginning of a piece: token 2 (Pitch_60)"),
        (["--prompt", "MISSING"], "no such file"),
    ],
)
def test_cli_decode_errors_are_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("Bar_None TimeSig_4/4 Pitch_60 Velocity_63 Duration_1.0.4\n")
    extra = [str(bad) if x == "BAD" else str(tmp_path / "nope.json") if x == "MISSING" else x for x in extra]
    code, _, err = decode_cli(
        ["--backend", "torch", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), *extra], capsys
    )
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("gramophone: "), err
    assert "Traceback" not in err


def test_cli_decode_refuses_a_checkpoint_for_another_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = get_backend("torch")
    other_vocab = tmp_path / "other-vocab"
    backend.save(other_vocab, backend.init(TINY_MODEL.replace(vocab_size=100), 0))
    other_grammar = tmp_path / "other-grammar"
    meta = {**checkpoint_meta(tokenizer_for("shipped"), automaton_for("shipped")), "automaton_hash": "0" * 16}
    other_hash = tmp_path / "other-hash"
    backend.save(other_hash, backend.init(TINY_MODEL, 0), meta={"vocab_hash": "f" * 16})
    backend.save(other_grammar, backend.init(TINY_MODEL, 0), meta=meta)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cases = [
        (other_vocab, "the model has a vocabulary of 100 tokens, the tokenizer 229"),
        (other_grammar, "grammar mismatch: the model was trained against automaton 0000000000000000"),
        (other_hash, "trained for a vocabulary with hash ffffffffffffffff"),
        (broken, "not valid JSON"),
        (tmp_path / "nowhere", "checkpoint directory does not exist"),
    ]
    for path, message in cases:
        code, _, err = decode_cli(
            ["--backend", "torch", "--checkpoint", str(path), "--out", str(tmp_path / "o")], capsys
        )
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = decode_cli(["--backend", "mxnet", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown backend 'mxnet'" in err


def test_greedy_on_the_bundled_model_is_the_same_on_torch_and_jax(tmp_path: Path) -> None:
    """The issue's promise, on the shipped weights (not only on random small models)."""
    from gramophone.cli import main

    texts = []
    for backend in ("torch", "jax"):
        out = tmp_path / backend
        args = ["decode", "--backend", backend, "--greedy", "--num", "1", "--max-tokens", "96"]
        assert main([*args, "--no-audio", "--out", str(out)]) == 0
        texts.append((out / "piece-000.txt").read_text().split())
    assert len(texts[0]) > 8
    assert texts[0] == texts[1]


# ----------------------------------------------------------------------------- every config

#: Configs whose decoding tables build in seconds; ``rests`` and ``combo-rests-programs``
#: build in 40-100 s once (then cached) and run in the long profile.
FAST_CONFIGS = [n for n in ("shipped", *CONFIGS) if n not in ("rests", "combo-rests-programs")]
ALL_DECODE_CONFIGS = ["shipped", *CONFIGS]


def _config_cases(name: str) -> list[Any]:
    import os

    long = os.environ.get("HYPOTHESIS_PROFILE") == "long"
    return [name] if long or name in FAST_CONFIGS else []


@pytest.mark.parametrize("name", [n for n in ALL_DECODE_CONFIGS if _config_cases(n)])
@FEWER
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 30), spike=st.sampled_from([0.0, 40.0, math.inf]))
def test_every_supported_config_decodes_valid_pieces(name: str, seed: int, extra: int, spike: float) -> None:
    """Configs whose dense product cannot be built (programs with note order) included: the
    numpy loop with a stand-in that puts ``spike`` on a random half of the vocabulary, at
    budgets from the smallest that fits; every stream passes lark + the references + miditok."""
    auto = automaton_for(name)
    tables = decoding_tables(auto)
    assert tables.exact
    rng = np.random.default_rng(seed)
    V = len(auto.vocab)
    logits = (rng.normal(size=(8, V)) * 3).astype(np.float32)
    hot = rng.random(V) < 0.5

    class Model:
        def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
            return np.where(hot, np.float32(spike), logits[lengths % 8]), None

        def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
            return np.where(hot, np.float32(spike), logits[(positions + token) % 8]), None

    p = prepare_prompt(tables, auto)
    budget = p.min_total + extra
    request = DecodeRequest(p.ids, p.state, 2, budget, Sampling(), seed=seed)
    result = sample_numpy(Model(), tables, request)
    tok, grammar = tokenizer_for(name), grammar_for(name)
    for ids in result.streams():
        names = [auto.vocab[i] for i in ids]
        assert names[0] == "BOS_None" and names[-1] == "EOS_None" and len(ids) <= budget, names
        assert reference_accepts(grammar, names), names
        assert miditok_errors(tok, ids) == 0, names


def test_jax_compilation_is_cached_across_processes(tmp_path: Path) -> None:
    """A second `decode --backend jax` in a new process loads XLA's executables from the
    persistent cache: no new entry is written. Under gramophone's cache folder, or in the one
    JAX_COMPILATION_CACHE_DIR names, which is filled the same way (every entry, not only
    compiles over JAX's default second). The time it saves is measured in the benchmarks,
    never asserted here."""
    import os

    cmd = [sys.executable, "-m", "gramophone", "decode", "--backend", "jax", "--num", "1"]
    cmd += ["--max-tokens", "24", "--no-audio"]
    found = {}
    for folder in ("gramophone", "user"):
        env = {**os.environ, "GRAMOPHONE_CACHE": str(tmp_path / folder / "cache")}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        xla = tmp_path / folder / "cache" / "jax"
        if folder == "user":
            xla = tmp_path / folder / "mine"
            env["JAX_COMPILATION_CACHE_DIR"] = str(xla)
        out = tmp_path / folder
        subprocess.run([*cmd, "--out", str(out / "a")], check=True, env=env, capture_output=True)
        entries = sorted(p.name for p in xla.iterdir() if not p.name.startswith("."))
        assert entries
        subprocess.run([*cmd, "--out", str(out / "b")], check=True, env=env, capture_output=True)
        assert sorted(p.name for p in xla.iterdir() if not p.name.startswith(".")) == entries
        first = json.loads((out / "a" / "summary.json").read_text())["compile_seconds"]
        second = json.loads((out / "b" / "summary.json").read_text())["compile_seconds"]
        assert first > 0 and second > 0
        found[folder] = len(entries)
    assert found["user"] == found["gramophone"], found
