"""Decoding with trained vocabularies (BPE, Unigram, WordPiece; split per bar and not), on
the numpy, torch and JAX kernels, against oracles that do not use the decoding tables.

- **The mask, token by token.** Along random valid prefixes, a learned token is allowed iff
  its base tokens are a valid continuation under the base automaton (run token by token,
  the checker's own stepping) and a valid ending is still reachable within the budget,
  measured by a breadth-first search on the explicit product of the decoding automaton
  built here (``fsa.product``): exactly what the issue asks of the lifted mask.
- **Streams.** Every stream the loops emit from adversarial stand-in models ends valid:
  lark + the plain-Python references on its base tokens, zero miditok ``tokens_errors`` on
  the learned ids (miditok expands them itself), at least one note.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone.decoding import DecodeRequest, Sampling, decoding_tables, prepare_prompt, sample_numpy
from gramophone.decoding.framing import decoding_automaton
from gramophone.grammar import REJECT, compile_tokenizer, derive, fsa
from gramophone.kernels import numpy as kernels
from gramophone.tokenizers.learned import LearnedVocab, learned_vocab
from tests.reference import reference_accepts
from tests.walks import table_walk

MODELS = [("BPE", "bar"), ("Unigram", "bar"), ("WordPiece", "bar"), ("BPE", "no")]
FEWER = settings(max_examples=max(4, settings.default.max_examples // 4))


@functools.cache
def trained(model: str, split: str) -> Any:
    """A REMI tokenizer (the shipped config) trained on 40 chorales: 1,000 tokens for BPE
    and WordPiece, what Unigram reaches for 1,000."""
    from gramophone.data import chorale_midis
    from gramophone.tokenizers import load_tokenizer

    tok = load_tokenizer()
    tok.config.encode_ids_split = split
    tok.train(vocab_size=1000, model=model, files_paths=chorale_midis(progress=False)[:40])
    return tok


@functools.cache
def setup(model: str, split: str) -> tuple[Any, LearnedVocab, Any, np.ndarray, np.ndarray]:
    """Tokenizer, learned vocabulary, tables, and the oracle: the explicit decoding product's
    transitions (base tokens, row S dead) and distances (INF: never)."""
    tok = trained(model, split)
    auto = compile_tokenizer(tok)
    learned = learned_vocab(tok)
    tables = decoding_tables(auto, learned=learned)
    T, acc, _, _ = decoding_automaton(auto).product_tables()
    d = fsa.distance_to_accept(T, acc)
    S = T.shape[0]
    dead = np.vstack([np.where(T == REJECT, S, T), np.full((1, T.shape[1]), S, np.int32)])
    dist = np.append(np.where(d < 0, 1 << 30, d), 1 << 30)
    return tok, learned, tables, dead, dist


def _oracle_allowed(
    learned: LearnedVocab, dead: np.ndarray, dist: np.ndarray, s: int, remaining: int
) -> np.ndarray:
    """bool[V]: run each learned token's base tokens on the explicit product from ``s``."""
    S = dead.shape[0] - 1
    out = np.zeros(len(learned), dtype=bool)
    specials = {learned.base.index(t) for t in ("BOS_None", "EOS_None", "PAD_None")}
    canonical = {int(learned.single[b]) for b in specials}
    for v, piece in enumerate(learned.pieces):
        if specials & set(piece) and (len(piece) > 1 or v not in canonical):
            continue  # a special token only stands alone, by one id (the tables' documented rule)
        q = s
        for b in piece:
            q = dead[q, b]
        out[v] = q != S and dist[q] < remaining
    return out


@pytest.mark.parametrize(("model", "split"), MODELS)
def test_learned_mask_is_exact_against_the_explicit_product(model: str, split: str) -> None:
    _, learned, tables, dead, dist = setup(model, split)
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(6):
        ids = table_walk(tables, rng, int(rng.integers(0, 30)))
        base, _ = learned.expand(ids)
        s = 0
        for b in base:
            s = int(dead[s, b])
        state = tables.run(ids)
        for remaining in (1, 2, 3, 5, 8, 13, 1 << 20):
            want = _oracle_allowed(learned, dead, dist, s, remaining)
            got = kernels.allowed(tables, state[None, :], remaining)[0]
            assert (got == want).all(), (trial, remaining, np.nonzero(got != want)[0][:5])
            checked += 1
    assert checked == 42


def _assert_valid_streams(tok: Any, learned: LearnedVocab, streams: list[list[int]], budget: int) -> None:
    from miditok import TokSequence

    grammar = derive(tok)
    for ids in streams:
        assert len(ids) <= budget
        base, _ = learned.expand(ids)
        names = [learned.base[b] for b in base]
        assert names[0] == "BOS_None" and names[-1] == "EOS_None", names
        assert ids[-1] == learned.single[learned.base.index("EOS_None")], "a stream ends with the one EOS id"
        assert reference_accepts(grammar, names), names
        assert any(n.startswith("Pitch_") for n in names)
        framing = {(learned.base.index(t),) for t in ("BOS_None", "EOS_None")}
        body = [i for i in ids if learned.pieces[i] not in framing]
        seq = TokSequence(ids=list(body), are_ids_encoded=True)
        assert tok.tokens_errors(seq) == 0, names


def _standin(V: int, seed: int, spike: float) -> Any:
    """A model with fixed random logits per position and ``spike`` on a random half of the
    vocabulary (mass on forbidden tokens)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(64, V)).astype(np.float32) * 3
    hot = rng.random(V) < 0.5

    class Model:
        def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
            return np.where(hot, np.float32(spike), table[lengths - 1]), None

        def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
            return np.where(hot, np.float32(spike), table[positions % 64]), None

    return Model()


@pytest.mark.parametrize(("model", "split"), MODELS)
@FEWER
@given(
    budget_extra=st.integers(0, 40),
    prompt_len=st.integers(0, 12),
    seed=st.integers(0, 1000),
    spike=st.sampled_from([0.0, 30.0, np.inf]),
    greedy=st.booleans(),
)
def test_numpy_loop_ends_every_stream_valid(  # noqa: PLR0917 - hypothesis draws each argument
    model: str, split: str, budget_extra: int, prompt_len: int, seed: int, spike: float, greedy: bool
) -> None:
    tok, learned, tables, _, _ = setup(model, split)
    prompt_ids = table_walk(tables, np.random.default_rng(seed), prompt_len)
    auto = compile_tokenizer(tok)
    p = prepare_prompt(tables, auto, prompt_ids)
    budget = p.min_total + budget_extra
    request = DecodeRequest(p.ids, p.state, 3, budget, Sampling(greedy=greedy), seed=seed)
    result = sample_numpy(_standin(len(learned), seed, spike), tables, request)
    _assert_valid_streams(tok, learned, result.streams(), budget)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_device_kernels_match_numpy_on_learned_tables(framework: str) -> None:
    _, _, tables, _, _ = setup("BPE", "bar")
    rng = np.random.default_rng(1)
    states = np.stack([tables.run(table_walk(tables, rng, int(rng.integers(0, 40)))) for _ in range(8)])
    tokens = rng.integers(0, tables.vocab_size, 8)
    for remaining in (2, 5, 9, 1 << 20):
        want = kernels.allowed(tables, states, remaining)
        if framework == "torch":
            import torch

            from gramophone.kernels import torch as torch_kernels

            tab = torch_kernels.device_tables(tables)
            t_states = torch.from_numpy(states.astype(np.int64))
            got = torch_kernels.allowed(tab, t_states, remaining).numpy()
            nxt = torch_kernels.advance(tab, t_states, torch.from_numpy(tokens)).numpy()
        else:
            import jax.numpy as jnp

            from gramophone.kernels import jax as jax_kernels

            tab = jax_kernels.device_tables(tables)
            got = np.asarray(jax_kernels.allowed(tab, jnp.asarray(states), jnp.asarray(remaining, jnp.int32)))
            nxt = np.asarray(jax_kernels.advance(tab, jnp.asarray(states), jnp.asarray(tokens, jnp.int32)))
        assert (got == want).all()
        assert (nxt == kernels.advance(tables, states, tokens)).all()


def test_decoding_tables_scale_with_the_vocabulary_not_the_product() -> None:
    """No table of product states x vocabulary: the rows grow with V, the distance does not."""
    _, learned, tables, dead, _ = setup("BPE", "bar")
    rows = sum(n.shape[0] for n in tables.next)
    assert rows < 400 and tables.vocab_size == len(learned) >= 900
    assert tables.nbytes < rows * tables.vocab_size * 5 + tables.dist.nbytes + 1
    assert tables.nbytes < dead.shape[0] * tables.vocab_size * 4 / 50  # a dense lifted product: 50x more


def test_a_missing_single_token_is_refused(tmp_path: Path) -> None:
    """A learned vocabulary without some base token the grammar uses cannot guarantee an
    ending: refused with a message naming it."""
    from gramophone.errors import DecodingError

    _, learned, _, _, _ = setup("BPE", "bar")
    tok = trained("BPE", "bar")
    auto = compile_tokenizer(tok)
    eos = learned.base.index("EOS_None")
    broken = LearnedVocab(
        learned.base, tuple(p if p != (eos,) else (eos, eos) for p in learned.pieces), trained=True
    )
    with pytest.raises(DecodingError, match="EOS_None"):
        decoding_tables(auto, learned=broken)


def test_a_second_id_of_a_special_token_is_never_emitted_and_reads_as_the_first() -> None:
    """Unigram reads two ids as EOS (and as BOS, PAD): the mask allows only the one the loops
    stop at, and a prompt written with the other is continued as if written with the first."""
    tok, learned, tables, _, _ = setup("Unigram", "bar")
    eos_ids = [v for v, p in enumerate(learned.pieces) if p == (learned.base.index("EOS_None"),)]
    bos_ids = [v for v, p in enumerate(learned.pieces) if p == (learned.base.index("BOS_None"),)]
    assert len(eos_ids) == 2 and len(bos_ids) == 2  # miditok's Unigram quirk, which this test is about
    ends = 0
    for seed in range(20):
        prompt = table_walk(tables, np.random.default_rng(seed), 12)
        state = tables.run(prompt)
        allowed = kernels.allowed(tables, state[None, :], 1 << 20)[0]
        assert not allowed[[v for v in eos_ids if v != tables.eos]].any()
        ends += bool(allowed[tables.eos])
    assert ends > 0  # some of these prefixes could end here
    other_bos = next(v for v in bos_ids if v != tables.bos)
    p = prepare_prompt(tables, compile_tokenizer(tok), [other_bos, *prompt[1:]])
    assert p.ids == tuple(prompt) and (p.state == state).all()
