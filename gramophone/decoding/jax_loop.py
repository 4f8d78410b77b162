"""The decoding loop in JAX: prefill and the whole generation in one jitted ``lax.while_loop``.

The loop state (the carry, :class:`_Carry`) is one small named tuple, as in Flax's lm1b
``temperature_sampler``: the position ``t``, the token buffer ``int32[B, C]``, the KV cache,
the logits of the next position, the automaton state ``int32[B, G]``, the ``ended``
mask and the PRNG key. The model is a :class:`JaxModel`: two pure functions that receive the model's
arguments (a pytree, e.g. the parameters) explicitly, so that the parameters are traced
arguments rather than constants baked into the executable, and a stand-in model can replace
the Transformer. Nothing runs in Python per step.

Compiled once per shape (batch, prompt bucket, cache length, tables' shapes); the budget,
prompt length, prompt, automaton state, sampling rules (greedy, temperature, top-k, top-p,
switched by ``lax.cond``) and seed are traced values, so changing them never recompiles.
Compiled executables are
kept (:data:`_COMPILED`) so the compile time can be reported apart.

**First token fast.** XLA's persistent compilation cache is switched on, under
``cache_dir()/jax`` (:func:`enable_compilation_cache`): a second ``gramophone decode --backend
jax`` in a new process loads the compiled loop instead of compiling it again
(``compile_seconds`` in ``summary.json``). ``GRAMOPHONE_JAX_CACHE=0`` turns it off; a cache
folder set by the user (``JAX_COMPILATION_CACHE_DIR``) is kept, and filled the same way.

Imported only when the JAX backend is chosen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gramophone.decoding.loop import DecodeRequest, DecodeResult, lengths_of
from gramophone.decoding.tables import DecodingTables
from gramophone.kernels import jax as kernels

__all__ = [
    "JaxModel",
    "backend_sampler",
    "gpt_model",
    "prompt_bucket",
    "sample_jax",
]

Array = jax.Array


def enable_compilation_cache() -> None:
    """XLA's persistent compilation cache under gramophone's cache folder, or in the folder
    the user chose (``JAX_COMPILATION_CACHE_DIR``), for every entry, not only slow compiles
    (JAX's default keeps only compiles over a second, and the decode loop's smaller pieces
    would be compiled again in every process); unreadable entries are dropped first
    (:func:`drop_unreadable_entries`); unwritable folders only cost the cache, never the run.
    ``GRAMOPHONE_JAX_CACHE=0`` leaves JAX's settings alone."""
    from gramophone._files import cache_dir

    if os.environ.get("GRAMOPHONE_JAX_CACHE", "1") == "0":
        return
    user_dir = getattr(jax.config, "jax_compilation_cache_dir", None)
    try:
        path = Path(user_dir) if user_dir else cache_dir() / "jax"
        path.mkdir(parents=True, exist_ok=True)
        drop_unreadable_entries(path)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_CHECKED = ".gramophone-checked"


def drop_unreadable_entries(path: Path) -> int:
    """Delete the entries of the compilation cache in ``path`` that do not decompress; returns
    how many. JAX writes an entry in place and never replaces one, so an entry cut short (a
    run killed while writing it) would otherwise be read, warned about and recompiled in
    every run. Only entries written since the last check are read (a stamp file's time)."""
    try:
        from jax._src.compilation_cache import decompress_executable  # JAX's own entry codec
    except ImportError:  # another JAX layout: JAX warns and recompiles, as before
        return 0
    stamp = path / _CHECKED
    since = stamp.stat().st_mtime if stamp.exists() else 0.0
    started = time.time()
    dropped = 0
    for entry in path.glob("*-cache"):
        try:
            if entry.stat().st_mtime >= since - 1.0:
                decompress_executable(entry.read_bytes())
        except OSError:  # removed meanwhile (evicted, another process)
            continue
        except Exception:  # truncated or foreign: gone, so JAX compiles and writes it again
            entry.unlink(missing_ok=True)
            dropped += 1
    stamp.touch()
    os.utime(stamp, (started, started))
    return dropped


enable_compilation_cache()


@dataclass(frozen=True)
class JaxModel:
    """``prefill(args, ids int32[B, P], lengths int32[B], cache_len) -> (logits[B, V], cache)``
    and ``step(args, token int32[B], cache, positions int32[B]) -> (logits[B, V], cache)``,
    pure and traceable; hashable (it is a static argument of the jitted loop)."""

    prefill: Callable[[Any, Array, Array, int], tuple[Array, Any]]
    step: Callable[[Any, Array, Any, Array], tuple[Array, Any]]


def _gpt_prefill(params: Any, ids: Array, lengths: Array, cache_len: int) -> tuple[Array, Any]:
    from gramophone.backends.jax_backend.backend import prefill

    return prefill(params, ids, lengths, cache_len)


def _gpt_step(params: Any, token: Array, cache: Any, positions: Array) -> tuple[Array, Any]:
    from gramophone.backends.jax_backend.backend import decode_step

    return decode_step(params, token, cache, positions)


_GPT = JaxModel(_gpt_prefill, _gpt_step)


def gpt_model() -> JaxModel:
    """The JAX backend's Transformer; its ``args`` are a ``JaxParams``."""
    return _GPT


class _Static(NamedTuple):
    model: JaxModel
    cache_len: int
    constrained: bool
    stop_early: bool
    eos: int
    pad: int


class _Inputs(NamedTuple):
    """The traced arguments of the loop besides the model's own."""

    prompt: Array  # int32[B, Pb], padded with PAD after prompt_len
    prompt_len: Array  # int32 scalar
    budget: Array  # int32 scalar
    state0: Array  # int32[B, G]
    tabs: kernels.JaxTables
    sampling: kernels.SamplingArrays
    key: Array  # PRNG key


class _Carry(NamedTuple):
    """The while loop's state."""

    t: Array  # int32: the position written next
    buf: Array  # int32[B, C]: the streams so far
    cache: Any  # the model's KV cache
    logits: Array  # float32[B, V]: the model's logits for position t
    state: Array  # int32[B, G]: the automaton state of each stream
    ended: Array  # bool[B]
    key: Array  # PRNG key


def _generate(static: _Static, args: Any, inputs: _Inputs) -> tuple[Array, Array]:
    """Prefill, then the while loop. Returns the buffer int32[B, C] and the final ``t``."""
    prompt, prompt_len, budget, state0, tabs, sampling, key = inputs
    B = prompt.shape[0]
    C = static.cache_len
    logits, cache = static.model.prefill(args, prompt, jnp.full((B,), prompt_len, jnp.int32), C)
    buf = lax.dynamic_update_slice(jnp.full((B, C), static.pad, jnp.int32), prompt, (0, 0))
    ended = jnp.zeros((B,), bool)
    init = _Carry(prompt_len, buf, cache, logits, state0, ended, key)

    def cond(carry: _Carry) -> Array:
        go = carry.t < budget
        return go & ~jnp.all(carry.ended) if static.stop_early else go

    def body(carry: _Carry) -> _Carry:
        t, buf, cache, logits, state, ended, key = carry
        key, sub = jax.random.split(key)
        allowed = kernels.allowed(tabs, state, budget - t) if static.constrained else None  # (B, V)
        tok = kernels.choose(logits, allowed, sub, sampling)
        tok = jnp.where(ended, static.pad, tok)  # (B,)
        buf = lax.dynamic_update_slice(buf, tok[:, None], (0, t))
        if static.constrained:
            state = jnp.where(ended[:, None], state, kernels.advance(tabs, state, tok))
        ended = ended | (tok == static.eos)
        logits, cache = static.model.step(args, tok, cache, jnp.full((B,), t, jnp.int32))
        return _Carry(t + 1, buf, cache, logits, state, ended, key)

    final = lax.while_loop(cond, body, init)
    return final.buf, final.t


_jitted = jax.jit(_generate, static_argnums=(0,))
_COMPILED: dict[Any, Any] = {}
_MAX_COMPILED = 32


def prompt_bucket(length: int, cache_len: int) -> int:
    """The padded prompt length, so that prompts of nearby lengths share one compiled loop:
    the whole cache when it is short (<= 128 positions), else the next power of two
    (at least 16), at most ``cache_len``."""
    if cache_len <= 128:
        return cache_len
    return min(cache_len, max(16, 1 << (max(length, 1) - 1).bit_length()))


def sample_jax(model: JaxModel, args: Any, tables: DecodingTables, request: DecodeRequest) -> DecodeResult:
    """Decode one batch with one compiled call (see :class:`~gramophone.decoding.loop.DecodeRequest`).

    Noise: ``jax.random.gumbel`` from ``jax.random.key(seed)``, split at every step; the
    same seed on the same backend gives the same streams.
    """
    B, N, P = request.num, request.budget, len(request.prompt)
    static = _Static(
        model=model,
        cache_len=request.cache_len,
        constrained=request.constrained,
        stop_early=request.stop_early,
        eos=tables.eos,
        pad=tables.pad,
    )
    Pb = prompt_bucket(P, request.cache_len)
    prompt = np.full((B, Pb), tables.pad, np.int32)
    prompt[:, :P] = request.prompt
    inputs = _Inputs(
        jnp.asarray(prompt),
        jnp.asarray(P, jnp.int32),
        jnp.asarray(N, jnp.int32),
        jnp.tile(jnp.asarray(np.asarray(request.state), jnp.int32)[None, :], (B, 1)),
        kernels.device_tables(tables),
        kernels.SamplingArrays.of(request.sampling),
        jax.random.key(request.seed),
    )
    dyn = (args, inputs)
    leaves, treedef = jax.tree.flatten(dyn)
    signature = (static, treedef, tuple((x.shape, str(x.dtype)) for x in leaves))
    compiled = _COMPILED.get(signature)
    compile_seconds = 0.0
    if compiled is None:
        t0 = time.perf_counter()
        compiled = _COMPILED[signature] = _jitted.lower(static, *dyn).compile()
        while len(_COMPILED) > _MAX_COMPILED:  # oldest first
            _COMPILED.pop(next(iter(_COMPILED)))
        compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    buf, t_end = compiled(*dyn)
    out = np.asarray(buf)[:, :N].astype(np.int32)
    seconds = time.perf_counter() - t0
    steps = int(t_end) - P
    return DecodeResult(out, lengths_of(out, tables.eos), steps, seconds, compile_seconds)


def backend_sampler(backend: Any, params: Any) -> Callable[[DecodingTables, DecodeRequest], DecodeResult]:
    """The loop for the JAX backend's ``params`` (a ``JaxParams``), as the driver wants it."""
    return lambda tables, request: sample_jax(_GPT, params, tables, request)
