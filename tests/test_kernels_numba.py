"""The numba kernels (:mod:`gramophone.kernels.numba`) against the numpy reference: the same
masks and next states on the shipped config and a trained vocabulary, and the fused
:func:`~gramophone.kernels.numba.step` choosing bit for bit the token the numpy kernels
choose (greedy, temperature, top-k, top-p; adversarial logits with NaN, infinities and
ties), at every distance from the budget's end."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone.decoding import Sampling, tables_for
from gramophone.kernels import numba as K  # noqa: N812 - the README's spelling
from gramophone.kernels import numpy as reference
from gramophone.tokenizers import load_tokenizer
from tests.learned_fixtures import trained_tokenizer_path
from tests.walks import table_walk


@functools.cache
def _tables(which: str) -> Any:
    """``shipped`` and ``bpe`` (REMI): groups under 256 states (``next`` rows as uint8);
    ``midilike`` (MIDILike, rests): groups of 626 states (uint16)."""
    if which == "midilike":
        import miditok

        return tables_for(miditok.MIDILike(miditok.TokenizerConfig(use_rests=True)))
    tok = load_tokenizer(trained_tokenizer_path("REMI", "BPE", "bar") if which == "bpe" else None)
    return tables_for(tok)


def _states(tables: Any, rng: np.random.Generator, batch: int) -> np.ndarray:
    """``batch`` states reached by random valid walks of random lengths, and one dead state."""
    rows = [tables.run(table_walk(tables, rng, int(rng.integers(0, 60)))) for _ in range(batch - 1)]
    return np.stack([*rows, tables.dead]).astype(np.int32)


def _logits(rng: np.random.Generator, shape: tuple[int, int], spice: int) -> np.ndarray:
    """Logits a model may emit: normal, then (by ``spice``) coarse values with many ties,
    NaNs, infinities and the float32 extremes."""
    x = (rng.normal(size=shape) * 4).astype(np.float32)
    if spice & 1:
        x = np.round(x).astype(np.float32)  # ties
    extremes = (np.nan, np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max)
    if spice & 2:
        for value in extremes:
            x[rng.random(shape) < 0.02] = value
    if spice & 4:  # each row drawn from a few of the extremes and zero: ties after sanitizing
        values = np.array([*extremes, 0.0], dtype=np.float32)
        for row in x:
            row[:] = rng.choice(values[rng.permutation(values.size)[: rng.integers(1, 4)]], size=row.size)
    return x


@pytest.mark.parametrize(
    ("which", "dtype"), [("shipped", np.uint8), ("bpe", np.uint8), ("midilike", np.uint16)]
)
def test_masks_and_next_states_equal_the_numpy_kernels(which: str, dtype: type) -> None:
    tables = _tables(which)
    tab = K.device_tables(tables)
    assert tab.next.dtype == dtype  # the least dtype that holds every group's states
    rng = np.random.default_rng(0)
    states = _states(tables, rng, 24)
    tokens = rng.integers(0, tables.vocab_size, len(states))
    assert (K.start(tab, 3) == reference.start(tables, 3)).all()
    for remaining in (1, 2, 3, 5, 9, 17, tables.max_distance, 1 << 20):
        assert (K.allowed(tab, states, remaining) == reference.allowed(tables, states, remaining)).all()
    assert (K.advance(tab, states, tokens) == reference.advance(tables, states, tokens)).all()


SAMPLINGS = [
    Sampling(greedy=True),
    Sampling(temperature=1.0),
    Sampling(temperature=0.37),
    Sampling(temperature=2.5),
    Sampling(temperature=0.9, top_k=3),
    Sampling(temperature=1.1, top_p=0.8),
]


@settings(deadline=None)
@given(
    which=st.sampled_from(["shipped", "bpe", "midilike"]),
    seed=st.integers(0, 2**32 - 1),
    sampling=st.sampled_from(SAMPLINGS),
    remaining=st.sampled_from([1, 2, 3, 4, 6, 10, 25, 1 << 20]),
    spice=st.integers(0, 7),
    first=st.sampled_from(["compiled", "numpy", "none"]),
)
def test_the_fused_step_chooses_what_the_numpy_kernels_choose(  # noqa: PLR0917 - hypothesis draws
    which: str, seed: int, sampling: Sampling, remaining: int, spice: int, first: str
) -> None:
    """``first``: greedy rows take their argmax first, the compiled one or numpy's, or
    always scan their mask."""
    with _argmax_first(first):
        _fused_step_agrees(which, seed, sampling, remaining, spice)


@contextlib.contextmanager
def _argmax_first(first: str) -> Iterator[None]:
    """The greedy step's argmax: ``compiled`` (the kernel's own), ``numpy``, or ``none``
    (every row scans its mask), whatever the vocabulary's size."""
    defaults = K.TOP_FIRST, K.NUMPY_ARGMAX_FROM
    K.TOP_FIRST = first != "none"
    K.NUMPY_ARGMAX_FROM = 1 if first == "numpy" else 1 << 30
    try:
        yield
    finally:
        K.TOP_FIRST, K.NUMPY_ARGMAX_FROM = defaults


def _fused_step_agrees(which: str, seed: int, sampling: Sampling, remaining: int, spice: int) -> None:
    tables = _tables(which)
    tab = K.device_tables(tables)
    rng = np.random.default_rng(seed)
    state = _states(tables, rng, 9)
    for _ in range(3):
        logits = _logits(rng, (len(state), tables.vocab_size), spice)
        gumbel = rng.gumbel(size=logits.shape).astype(np.float32)
        mask = reference.allowed(tables, state, remaining)
        with np.errstate(all="ignore"):
            want = reference.choose(logits, mask, sampling, gumbel)
            token, after = K.step(tab, state, logits, remaining, sampling=sampling, gumbel=gumbel)
        assert token.tolist() == want.tolist()
        assert (after == reference.advance(tables, state, want)).all()
        live = mask.any(axis=1)
        assert mask[live, token[live]].all()  # never a forbidden token while one is allowed
        # out=: the same choice written into the arrays given, the state advanced in place
        buffers = np.full(len(state), -7, np.int32), state.copy()
        with np.errstate(all="ignore"):
            got = K.step(tab, buffers[1], logits, remaining, sampling=sampling, gumbel=gumbel, out=buffers)
        assert got[0] is buffers[0] and got[1] is buffers[1]
        assert buffers[0].tolist() == want.tolist()
        assert (buffers[1] == after).all()
        state = after


@pytest.mark.parametrize("in_place", [False, True])
def test_a_users_greedy_loop_on_the_fused_step_ends_every_piece_valid(in_place: bool) -> None:
    """The README's numba loops (random logits for the model): every piece ends valid,
    with fresh arrays each step or the state advanced in place (``out=``)."""
    from gramophone.grammar.checker import check_stream

    tables = _tables("bpe")
    tab = K.device_tables(tables)
    rng = np.random.default_rng(0)
    for budget in (8, 13, 40):
        state = K.start(tab, 16)
        tokens = np.full((16, budget), tables.pad)
        done = np.zeros(16, dtype=bool)
        token = np.empty(16, np.int32)
        for t in range(budget):
            logits = rng.normal(size=(16, tables.vocab_size)).astype(np.float32) * 4
            if in_place:
                K.step(tab, state, logits, budget - t, out=(token, state))
                token[done] = tables.pad
            else:
                token, after = K.step(tab, state, logits, budget - t)
                token = np.where(done, tables.pad, token)
                state = np.where(done[:, None], state, after)
            tokens[:, t] = token
            done |= token == tables.eos
        assert done.all()
        for row in tokens.tolist():
            end = row.index(tables.eos) + 1
            assert check_stream(tables.automaton, tables.learned.expand(row[:end])[0]).violation is None


def test_next_rows_take_the_least_dtype_that_holds_the_states() -> None:
    assert [K._state_dtype(n) for n in (0, 255, 256, 65535, 65536)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.int32,
    ]


def test_bad_input_is_a_clear_error() -> None:
    tables = _tables("shipped")
    tab = K.device_tables(tables)
    state = K.start(tab, 2)
    with pytest.raises(ValueError, match="logits have shape"):
        K.step(tab, state, np.zeros((2, 3), np.float32), 10)
    logits = np.zeros((2, tables.vocab_size), np.float32)
    with pytest.raises(ValueError, match="Gumbel"):
        K.step(tab, state, logits, 10, sampling=Sampling(temperature=1.0))
    with pytest.raises(ValueError, match="gumbel has shape"):
        K.step(tab, state, logits, 10, sampling=Sampling(temperature=1.0), gumbel=logits[:1])
    with pytest.raises(ValueError, match="state has shape"):
        K.step(tab, state[:, :1], logits, 10)
    with pytest.raises(ValueError, match="state has shape"):
        K.step(tab, state[0], logits, 10)
    # out=: written without bounds checks by the compiled code, so checked first
    token = np.zeros(2, np.int32)
    for bad in [
        (token[:1], state),
        (token, state[:1]),
        (token.astype(np.int64), state),
        (token, state.T.copy()),
    ]:
        for sampling in (
            Sampling(greedy=True),
            Sampling(temperature=1.0),
            Sampling(temperature=1.0, top_k=3),
        ):
            with pytest.raises(ValueError, match="out must be int32 arrays"):
                K.step(tab, state, logits, 10, sampling=sampling, gumbel=logits, out=bad)
    assert (state == K.start(tab, 2)).all()  # nothing written


@pytest.mark.parametrize("argmax", ["compiled", "numpy"])
@pytest.mark.parametrize(
    ("fill", "first", "second"),
    [
        (-np.inf, -np.inf, "-max"),
        (0.0, "max", np.inf),
        (-1.0, -0.0, 0.0),
        (-1.0, "-nan", 2.0),
        (1.0, 1.0, "nan"),
    ],
)
def test_greedy_ties_after_sanitizing_go_to_the_first_allowed_token(
    fill: float, first: Any, second: Any, argmax: str
) -> None:
    """Two allowed tokens, the row's other logits ``fill``: an allowed -inf before an
    allowed -FMAX (both -FMAX once sanitized), FMAX before +inf, -0.0 before +0.0 (equal
    floats, different bits: the compiled argmax finds a maximum by its bits); a NaN (to
    -FMAX) loses to any finite logit, whatever its sign bit. The numpy kernels, and the
    fused step by either argmax, choose the first allowed token of the sanitized maximum."""
    fmax = np.finfo(np.float32).max
    nan = np.float32(np.nan)
    value = {"max": fmax, "-max": -fmax, "nan": nan, "-nan": -nan}
    tables = _tables("bpe")
    tab = K.device_tables(tables)
    rng = np.random.default_rng(3)
    state = next(
        s for s in _states(tables, rng, 40) if reference.allowed(tables, s[None], 1 << 20).sum() >= 2
    )
    a, b = np.nonzero(reference.allowed(tables, state[None], 1 << 20)[0])[0][:2]
    logits = np.full((1, tables.vocab_size), fill, dtype=np.float32)
    logits[0, a], logits[0, b] = value.get(first, first), value.get(second, second)
    with _argmax_first(argmax), np.errstate(all="ignore"):
        token, _ = K.step(tab, state[None], logits, 1 << 20)
    want = reference.choose(
        logits, reference.allowed(tables, state[None], 1 << 20), Sampling(greedy=True), logits
    )
    winner = b if second == 2.0 else a
    assert token.tolist() == want.tolist() == [winner]
