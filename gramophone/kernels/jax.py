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

from gramophone.decoding.rules import FMAX, Sampling
from gramophone.decoding.tables import DecodingTables

__all__ = [
    "JaxTables",
    "SamplingArrays",
    "advance",
    "allowed",
    "apply",
    "choose",
    "device_tables",
    "sanitize",
    "start",
]

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


# ----------------------------------------------------------------------------- sampling (rules 2-7)


class SamplingArrays(NamedTuple):
    """:class:`~gramophone.decoding.rules.Sampling` as traced scalars: changing the rules
    never recompiles (the filters that are off are skipped by ``lax.cond``)."""

    greedy: Array  # bool
    temperature: Array  # float32
    use_top_k: Array  # bool
    top_k: Array  # int32
    use_top_p: Array  # bool
    top_p: Array  # float32

    @classmethod
    def of(cls, s: Sampling) -> SamplingArrays:
        return cls(
            jnp.asarray(s.greedy),
            jnp.asarray(s.temperature, jnp.float32),
            jnp.asarray(s.uses_top_k),
            jnp.asarray(s.top_k or 1, jnp.int32),
            jnp.asarray(s.uses_top_p),
            jnp.asarray(s.top_p or 1.0, jnp.float32),
        )


def sanitize(logits: Array, allowed: Array | None) -> Array:
    """Rule 2 (see :func:`gramophone.kernels.numpy.sanitize`); ``allowed=None``: all."""
    x = jnp.nan_to_num(logits.astype(jnp.float32), nan=-FMAX, posinf=FMAX, neginf=-FMAX)
    if allowed is not None:
        x = jnp.where(allowed, x, -jnp.inf)
    m = x.max(axis=-1, keepdims=True)
    return x - jnp.where(jnp.isfinite(m), m, 0.0)


def _top_k(x: Array, k: Array) -> Array:
    """Rule 5: keep logits >= the k-th largest (ties kept)."""
    B, V = x.shape
    ascending = jnp.sort(x, axis=-1)
    kth = jnp.take_along_axis(ascending, jnp.full((B, 1), V - jnp.minimum(k, V), jnp.int32), axis=-1)
    return jnp.where(x >= kth, x, -jnp.inf)


def _top_p(x: Array, p: Array) -> Array:
    """Rule 6: the smallest prefix of mass >= p, by decreasing probability (ties kept)."""
    q = jax.nn.softmax(x, axis=-1)  # (B, V)
    qs = -jnp.sort(-q, axis=-1)  # decreasing
    cum = jnp.cumsum(qs, axis=-1)
    excl = jnp.concatenate([jnp.zeros_like(cum[:, :1]), cum[:, :-1]], axis=-1)
    n_keep = (excl < p).sum(axis=-1, keepdims=True)  # >= 1
    return jnp.where(q >= jnp.take_along_axis(qs, n_keep - 1, axis=-1), x, -jnp.inf)


def choose(
    logits: Array, allowed: Array | None, key: Array, sampling: SamplingArrays, gumbel: Array | None = None
) -> Array:
    """Rules 2-7 (:mod:`gramophone.decoding.rules`) in jnp: int32[B]. ``gumbel`` float32[B, V]:
    the noise (default: drawn from ``key``)."""
    x = sanitize(logits, allowed)

    def sample(x: Array) -> Array:
        x = x / sampling.temperature
        x = lax.cond(sampling.use_top_k, _top_k, lambda x, _: x, x, sampling.top_k)
        x = lax.cond(sampling.use_top_p, _top_p, lambda x, _: x, x, sampling.top_p)
        g = jax.random.gumbel(key, x.shape, jnp.float32) if gumbel is None else gumbel
        return jnp.argmax(x + g, axis=-1).astype(jnp.int32)

    def greedy(x: Array) -> Array:
        return jnp.argmax(x, axis=-1).astype(jnp.int32)

    return lax.cond(sampling.greedy, greedy, sample, x)
