"""The step kernels in JAX (see :mod:`gramophone.kernels`): pure functions of device arrays,
traceable inside ``jit`` and ``lax.while_loop`` (``remaining`` may be a traced scalar: the
two masks are switched by ``lax.cond``)."""

from __future__ import annotations

import weakref
from typing import NamedTuple

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("gramophone.kernels.jax needs JAX: pip install 'gramophone[jax]'") from exc

from gramophone.decoding.tables import DecodingTables

__all__ = ["JaxTables", "advance", "allowed", "apply", "device_tables", "start"]

Array = jax.Array


class JaxTables(NamedTuple):
    """The tables as device arrays (a pytree: it is a traced argument of a jitted loop)."""

    next: tuple[Array, ...]  # int32 (S_g+1, V)
    valid: tuple[Array, ...]  # bool (S_g+1, V)
    strides: Array  # int32 (G,), 0 for a group the distance leaves out
    dist: Array  # int32 flat cartesian distances
    dist_inf: Array  # int32 scalar
    max_distance: Array  # int32 scalar
    start: Array  # int32 (G,)


_CACHE: weakref.WeakKeyDictionary[DecodingTables, JaxTables] = weakref.WeakKeyDictionary()


def device_tables(tables: DecodingTables) -> JaxTables:
    """``tables`` as JAX arrays on the default device, copied once per tables object."""
    got = _CACHE.get(tables)
    if got is None:
        got = _CACHE[tables] = JaxTables(
            next=tuple(jnp.asarray(n) for n in tables.next),
            valid=tuple(jnp.asarray(v) for v in tables.valid),
            strides=jnp.asarray(tables.strides.astype("int32")),
            dist=jnp.asarray(tables.dist.astype("int32")),
            dist_inf=jnp.asarray(tables.dist_inf, jnp.int32),
            max_distance=jnp.asarray(min(tables.max_distance, 2**31 - 1), jnp.int32),
            start=jnp.asarray(tables.start),
        )
    return got


def start(tab: JaxTables, batch: int) -> Array:
    """``int32[B, G]``: the start state for ``batch`` streams."""
    return jnp.tile(tab.start[None, :], (batch, 1))


def _valid_and(tab: JaxTables, state: Array, only_left_out: bool) -> Array | None:
    mask = None
    for g, rows in enumerate(tab.valid):
        row = rows[state[:, g]]
        if only_left_out:
            row = row | (tab.strides[g] != 0)  # groups in the distance do not mask here
        mask = row if mask is None else mask & row
    return mask


def allowed(tab: JaxTables, state: Array, remaining: Array | int) -> Array:
    """``bool[B, V]`` (see :func:`gramophone.kernels.numpy.allowed`); ``state`` int32[B, G]."""

    def cheap(state: Array) -> Array:
        out = _valid_and(tab, state, only_left_out=False)
        assert out is not None
        return out

    def exact(state: Array) -> Array:
        flat = sum(tab.next[g][state[:, g]] * tab.strides[g] for g in range(len(tab.next)))
        ok = tab.dist[flat] < jnp.minimum(remaining, tab.dist_inf)
        left_out = _valid_and(tab, state, only_left_out=True)
        return ok if left_out is None else ok & left_out

    return lax.cond(remaining > tab.max_distance, cheap, exact, state)


def apply(logits: Array, mask: Array) -> Array:
    """``logits`` with forbidden tokens at ``-inf``."""
    return jnp.where(mask, logits, -jnp.inf)


def advance(tab: JaxTables, state: Array, token: Array) -> Array:
    """``int32[B, G]``: the state after ``token`` int32[B]."""
    return jnp.stack([tab.next[g][state[:, g], token] for g in range(len(tab.next))], axis=1)
