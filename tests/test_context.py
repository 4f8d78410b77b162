"""Issue 11, the model: does it use its context? A tiny Transformer must learn a target that
only a token far back reveals (both backends), and the context benchmark's NLL by context
length is what it says (:mod:`gramophone.bench.context`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gramophone.backends import ModelConfig, TrainConfig, get_backend
from gramophone.bench.context import context_windows, pitch_context_nll, pitch_ids
from gramophone.data.dataset import TokenSplit

# ------------------------------------------------------------------ long-range recall

_V, _T, _K, _FROM = 40, 48, 8, 24  # vocabulary, window, classes, first scored position


def _recall_batch(rng: np.random.Generator, batch: int = 16) -> dict[str, np.ndarray]:
    """``BOS c r r r ...``: every target from position ``_FROM`` on is the class ``c`` (one of
    ``_K`` tokens) at position 1, at least ``_FROM - 1 = 23`` tokens back; the fillers ``r``
    are uniform over the other tokens and say nothing about ``c``."""
    c = rng.integers(2, 2 + _K, batch)
    fill = rng.integers(2 + _K, _V, (batch, _T - 2))
    inputs = np.concatenate([np.ones((batch, 1), np.int64), c[:, None], fill], axis=1).astype(np.int32)
    weights = np.zeros((batch, _T), np.float32)
    weights[:, _FROM:] = 1.0
    return {"inputs": inputs, "targets": np.repeat(c[:, None], _T, 1).astype(np.int32), "weights": weights}


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_model_learns_a_target_only_a_far_token_reveals(name: str) -> None:
    """Guards the attention mask and the positions of training: a model that could not see
    more than 16 tokens back (a band mask, keys cut or shifted, inputs misaligned with
    targets) stays at chance, ln 8 = 2.08 nats; the real one learns it within 120 steps."""
    be = get_backend(name)
    cfg = ModelConfig(vocab_size=_V, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=_T, dropout=0.0)
    train = TrainConfig(lr=3e-2, warmup_steps=5, total_steps=120, loss="ce", label_smoothing=0.0, seq_len=_T)
    state = be.init_state(be.init(cfg, seed=0), train)
    rng = np.random.default_rng(0)
    for _ in range(train.total_steps):
        state, _metrics = be.train_step(state, _recall_batch(rng))
    held_out = _recall_batch(np.random.default_rng(12345), batch=64)
    got = be.evaluate(be.state_params(state), held_out, train)["nll"]
    assert got < 0.5, f"{name}: NLL {got:.3f} of a target 23+ tokens back (chance {math.log(_K):.2f})"


# ------------------------------------------------------------------ the context benchmark

_LAG = 21  # the stand-in model predicts the token _LAG - 1 inputs back


class _LagModel:
    """A stand-in backend: at input position ``t`` it puts logit 10 on ``ids[t - _LAG + 1]``
    (the next token of a stream with period ``_LAG``), uniform before that."""

    def logits(self, params: object, ids: np.ndarray) -> np.ndarray:
        B, T = ids.shape
        out = np.zeros((B, T, len(_VOCAB)), np.float32)
        t = np.arange(_LAG - 1, T)
        out[np.arange(B)[:, None], t[None, :], ids[:, t - _LAG + 1]] = 10.0
        return out


_VOCAB = (
    "PAD_None",
    "BOS_None",
    "EOS_None",
    "Bar_None",
    *(f"Pitch_{p}" for p in range(60, 72)),
    "Position_1",
)


def _periodic_split(length: int = 2000) -> TokenSplit:
    """One stream of period ``_LAG`` (so the target ``t+1`` equals input ``t + 1 - _LAG``),
    a bar every ``_LAG`` tokens."""
    rng = np.random.default_rng(3)
    period = rng.integers(3, len(_VOCAB), _LAG)
    ids = np.concatenate([[1], np.tile(period, length // _LAG)]).astype(np.int32)
    return TokenSplit(
        name="test",
        ids=ids,
        states=np.zeros(len(ids), np.int32),
        stream_starts=np.array([0, len(ids)], np.int64),
        stream_piece=np.zeros(1, np.int32),
        stream_offset=np.zeros(1, np.int32),
        bar_starts=np.arange(_LAG, len(ids), _LAG, dtype=np.int64),
        pieces=("p",),
        allowed=np.ones((2, len(_VOCAB)), bool),
        pad_id=0,
    )


def test_context_benchmark_sees_what_the_context_is_worth() -> None:
    split = _periodic_split()
    seq_len, first = 128, 40
    windows = context_windows(split, seq_len, first)
    scored = [np.arange(s + 1 + first, s + seq_len + 1) for s in windows]
    flat = np.concatenate(scored)
    assert len(windows) > 3 and len(np.unique(flat)) == len(flat)  # every target scored once
    assert (windows + seq_len + 1 <= len(split.ids)).all()  # full windows only
    got = pitch_context_nll(_LagModel(), None, split, _VOCAB, seq_len=seq_len, first=first, contexts=(16, 32))
    pitch = set(pitch_ids(_VOCAB).tolist())
    expected_tokens = sum(int(np.isin(split.ids[s], list(pitch)).sum()) for s in scored)
    assert got.tokens == expected_tokens and got.windows == len(windows)
    # the whole window and 32 tokens both reach 20 back: near-certain; 16 tokens do not: uniform
    confident = -math.log(math.exp(10) / (math.exp(10) + len(_VOCAB) - 1))
    assert got.full == pytest.approx(confident, rel=1e-4)
    assert got.last[32] == pytest.approx(confident, rel=1e-4)
    assert got.last[16] == pytest.approx(math.log(len(_VOCAB)), rel=1e-6)
    assert got.gain(16) == pytest.approx(math.log(len(_VOCAB)) - confident, rel=1e-4)
    with pytest.raises(ValueError, match="context"):
        pitch_context_nll(_LagModel(), None, split, _VOCAB, seq_len=seq_len, first=first, contexts=(64,))
