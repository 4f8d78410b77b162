"""The step kernels in numpy (see :mod:`gramophone.kernels`): the reference the torch and
JAX kernels are tested against, and the kernels of the numpy decoding loop. The mask
(rules 1 and 9 of :mod:`gramophone.decoding.rules`) and the sampling rules 2-7
(:func:`choose`)."""

from __future__ import annotations

import numpy as np

from gramophone.decoding.rules import FMAX, Sampling
from gramophone.decoding.tables import DecodingTables

__all__ = ["advance", "allowed", "apply", "apply_top_k", "apply_top_p", "choose", "sanitize", "start"]


def start(tables: DecodingTables, batch: int) -> np.ndarray:
    """``int32[B, G]``: the start state, for ``batch`` streams."""
    return np.tile(tables.start, (batch, 1))


def allowed(tables: DecodingTables, state: np.ndarray, remaining: int) -> np.ndarray:
    """``bool[B, V]``: tokens that keep a valid ending reachable within ``remaining`` tokens
    (this one included). ``state`` int32[B, G]."""
    state = np.asarray(state)
    if remaining > tables.max_distance:  # far from the end: the AND of the groups' rows
        mask = tables.valid[0][state[:, 0]]
        for g in range(1, tables.num_groups):
            mask = mask & tables.valid[g][state[:, g]]
        return mask
    flat = np.zeros((state.shape[0], tables.vocab_size), dtype=np.int64)
    mask = None
    for g in range(tables.num_groups):
        if tables.strides[g]:
            flat += tables.next[g][state[:, g]] * tables.strides[g]
        else:  # a group the distance leaves out still masks
            row = tables.valid[g][state[:, g]]
            mask = row if mask is None else mask & row
    ok = tables.dist[flat] < min(remaining, tables.dist_inf)
    return ok if mask is None else ok & mask


def apply(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``float32[B, V]``: ``logits`` with forbidden tokens at ``-inf``."""
    return np.where(mask, logits, np.float32(-np.inf))


def advance(tables: DecodingTables, state: np.ndarray, token: np.ndarray) -> np.ndarray:
    """``int32[B, G]``: the state after ``token`` int[B]."""
    token = np.asarray(token)
    return np.stack([tables.next[g][state[:, g], token] for g in range(tables.num_groups)], axis=1)


# ----------------------------------------------------------------------------- sampling (rules 2-7)


def sanitize(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Rule 2. float32[B, V]: finite logits shifted so the best allowed one is 0; -inf on
    forbidden tokens. Rows with nothing allowed come out all -inf (never sampled from)."""
    x = np.nan_to_num(np.asarray(logits, np.float32), nan=-FMAX, posinf=FMAX, neginf=-FMAX)
    x = np.where(allowed, x, np.float32(-np.inf))
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))
    with np.errstate(over="ignore", invalid="ignore"):
        return (x - m).astype(np.float32)


def apply_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Rule 5 on sanitized logits ``x`` float32[B, V]."""
    V = x.shape[-1]
    kth = -np.sort(-x, axis=-1)[:, min(k, V) - 1 : min(k, V)]  # (B, 1)
    return np.where(x >= kth, x, np.float32(-np.inf))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # x's max is 0 after sanitize; safe anyway
    return e / e.sum(axis=-1, keepdims=True)


def apply_top_p(x: np.ndarray, p: float) -> np.ndarray:
    """Rule 6 on sanitized (tempered, top-k'd) logits ``x`` float32[B, V]."""
    q = _softmax(x).astype(np.float32)  # (B, V)
    qs = -np.sort(-q, axis=-1)  # (B, V), decreasing
    cum = np.cumsum(qs, axis=-1, dtype=np.float32)
    excl = np.concatenate([np.zeros_like(cum[:, :1]), cum[:, :-1]], axis=-1)  # mass before each
    n_keep = (excl < np.float32(p)).sum(axis=-1, keepdims=True)  # >= 1
    q_min = np.take_along_axis(qs, n_keep - 1, axis=-1)  # (B, 1)
    return np.where(q >= q_min, x, np.float32(-np.inf))


def choose(logits: np.ndarray, allowed: np.ndarray, sampling: Sampling, gumbel: np.ndarray) -> np.ndarray:
    """Rules 2-7: the token of each row, int32[B]. ``logits`` float32[B, V] from the model,
    ``allowed`` bool[B, V], ``gumbel`` float32[B, V] standard Gumbel noise (unused if greedy)."""
    x = sanitize(logits, allowed)
    if sampling.greedy:
        return x.argmax(axis=-1).astype(np.int32)
    x = (x / np.float32(sampling.temperature)).astype(np.float32)
    if sampling.uses_top_k:
        assert sampling.top_k is not None
        x = apply_top_k(x, sampling.top_k)
    if sampling.uses_top_p:
        assert sampling.top_p is not None
        x = apply_top_p(x, sampling.top_p)
    return (x + gumbel.astype(np.float32)).argmax(axis=-1).astype(np.int32)
