"""The step kernels in numpy (see :mod:`gramophone.kernels`): the reference the torch and
JAX kernels are tested against, and the kernels of the numpy decoding loop."""

from __future__ import annotations

import numpy as np

from gramophone.decoding.tables import DecodingTables

__all__ = ["advance", "allowed", "apply", "start"]


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
