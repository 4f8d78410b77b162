"""Every scheme decodes: TSD, MIDILike and Structured (untrained, and TSD with a trained BPE
vocabulary), on the numpy, torch and JAX loops, with adversarial stand-in models and budgets
from the smallest that fits. Oracles that do not use the decoding tables: lark on the
scheme's derived grammar, miditok's own ``tokens_errors`` (on the learned ids for a trained
vocabulary), and miditok's decoder (at least one note in the MIDI)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone.decoding import DecodeRequest, Sampling, prepare_prompt, sample_numpy, tables_for
from gramophone.grammar import compile_tokenizer, derive
from gramophone.tokenizers import decode_ids, model_vocab
from tests.learned_fixtures import trained_tokenizer
from tests.reference import lark_parser

FEWER = settings(max_examples=max(4, settings.default.max_examples // 4))
CASES = [
    ("TSD", "default", None),
    ("TSD", "default", "BPE"),
    ("MIDILike", "default", None),
    ("MIDILike", "default", "BPE"),
    ("Structured", "default", None),
]


@functools.cache
def tokenizer(scheme: str, model: str | None) -> Any:
    if model is not None:
        return trained_tokenizer(scheme, model, "bar")
    import miditok

    from gramophone.tokenizers import load_tokenizer

    shipped = load_tokenizer()  # the shipped config's options, in another scheme
    return getattr(miditok, scheme)(shipped.config.__class__(**_portable(shipped.config)))


def _portable(config: Any) -> dict[str, Any]:
    keys = ("pitch_range", "beat_res", "num_velocities", "special_tokens", "use_time_signatures",
            "remove_duplicated_notes", "time_signature_range")  # fmt: skip
    out = {k: getattr(config, k) for k in keys}
    out["beat_res"] = {tuple(k) if isinstance(k, list) else k: v for k, v in out["beat_res"].items()}
    return out


def _standin(V: int, seed: int, spike: float) -> Any:
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(16, V)) * 3).astype(np.float32)
    hot = rng.random(V) < 0.5

    class Model:
        def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
            return np.where(hot, np.float32(spike), logits[lengths % 16]), None

        def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
            return np.where(hot, np.float32(spike), logits[(positions + token) % 16]), None

    return Model()


def _assert_valid(tok: Any, streams: list[list[int]], budget: int) -> None:
    from miditok import TokSequence

    learned = model_vocab(tok)
    parser = lark_parser(derive(tok).text)
    specials = {learned.single[learned.base.index(t)] for t in ("BOS_None", "EOS_None", "PAD_None")}
    for ids in streams:
        assert len(ids) <= budget
        base, _ = learned.expand(ids)
        names = [learned.base[b] for b in base]
        assert names[0] == "BOS_None" and names[-1] == "EOS_None", names
        parser.parse(" ".join(names))  # raises on a syntax error
        body = [i for i in ids if i not in specials]
        seq = TokSequence(ids=list(body), are_ids_encoded=tok.is_trained)
        assert tok.tokens_errors(seq) == 0, names
        score = decode_ids(tok, body)
        assert sum(len(t.notes) for t in score.tracks) >= 1, names


@pytest.mark.parametrize(("scheme", "config", "model"), CASES)
@FEWER
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 40), spike=st.sampled_from([0.0, 40.0, math.inf]))
def test_numpy_loop_on_every_scheme(  # noqa: PLR0917 - hypothesis draws the last three
    scheme: str, config: str, model: str | None, seed: int, extra: int, spike: float
) -> None:
    tok = tokenizer(scheme, model)
    tables = tables_for(tok)
    assert tables.exact
    p = prepare_prompt(tables, compile_tokenizer(tok))
    budget = p.min_total + extra
    request = DecodeRequest(p.ids, p.state, 2, budget, Sampling(greedy=seed % 3 == 0), seed=seed)
    result = sample_numpy(_standin(tables.vocab_size, seed, spike), tables, request)
    _assert_valid(tok, result.streams(), budget)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize(("scheme", "model"), [("TSD", "BPE"), ("MIDILike", None)])
def test_device_loops_on_other_schemes(backend: str, scheme: str, model: str | None) -> None:
    """The device loops with a random small Transformer of the tokenizer's vocabulary."""
    from gramophone.backends import ModelConfig, get_backend
    from gramophone.backends.base import init_weights
    from gramophone.decoding.driver import sampler_for

    tok = tokenizer(scheme, model)
    tables = tables_for(tok)
    config = ModelConfig(vocab_size=tables.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64)
    be = get_backend(backend)
    params = be.from_numpy(init_weights(config, 0), config)
    p = prepare_prompt(tables, compile_tokenizer(tok))
    for budget in (p.min_total, 64):
        sampling = Sampling(temperature=1.5)
        request = DecodeRequest(p.ids, p.state, 3, budget, sampling, seed=budget, capacity=64)
        result = sampler_for(be, params)(tables, request)
        _assert_valid(tok, result.streams(), budget)


@pytest.mark.parametrize("scheme", ["TSD", "MIDILike", "Structured"])
def test_bars_without_bar_tokens_is_one_clear_error(scheme: str) -> None:
    """``--bars`` counts Bar tokens: a scheme without them is refused, not decoded unbounded."""
    from gramophone.decoding.framing import decoding_automaton
    from gramophone.errors import DecodingError

    with pytest.raises(
        DecodingError, match=r"^--bars needs Bar tokens \(REMI\); this tokenizer's streams have none$"
    ):
        decoding_automaton(compile_tokenizer(tokenizer(scheme, None)), 2)
