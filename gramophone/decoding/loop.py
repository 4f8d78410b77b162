"""The decoding loop's contract, and its numpy reference implementation.

A loop receives a :class:`DecodeRequest` (the prompt and the joint automaton state after
it, the batch size, the budget, the sampling rules, a seed) and a model given as two
functions, and returns a :class:`DecodeResult`. The model is never looked inside: a
stand-in that returns any logits (tests draw adversarial ones) can replace it, exactly as
Flax's lm1b sampler takes a ``tokens_to_logits`` closure. In every framework a model is::

    prefill(ids int[B, P], lengths int[B], cache_len) -> (logits float[B, V], cache)
    step(token int[B], cache, positions int[B])       -> (logits float[B, V], cache)

(the JAX loop passes the model's arguments, e.g. its parameters, explicitly as a first
argument so that they stay traced, see :mod:`gramophone.decoding.jax_loop`).

:func:`sample_numpy` runs the rules of :mod:`gramophone.decoding.rules` with a numpy
generator: it is the reference the device loops are tested against, and the loop used for
a backend that brings no loop of its own (through its numpy ``prefill``/``decode_step``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gramophone.decoding.rules import Sampling
from gramophone.decoding.tables import DecodingTables
from gramophone.errors import DecodingError
from gramophone.kernels import numpy as kernels

__all__ = ["DecodeRequest", "DecodeResult", "NumpyModel", "backend_model", "sample_numpy"]


@dataclass(frozen=True)
class DecodeRequest:
    """One batch to decode.

    ``prompt``: ids, BOS first (all rows share it); ``state``: the automaton state after it,
    ``int32[G]`` (:func:`~gramophone.decoding.prompt.prepare_prompt`); ``budget``: the
    length of every output stream, prompt, BOS and EOS included (``<= capacity``);
    ``capacity``: the KV cache length (default ``budget``); ``constrained=False`` samples
    without the automaton (benchmarks); ``stop_early``: stop once every row has ended.
    """

    prompt: tuple[int, ...]
    state: np.ndarray
    num: int
    budget: int
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    capacity: int | None = None
    constrained: bool = True
    stop_early: bool = True

    def __post_init__(self) -> None:
        if self.num < 1:
            raise DecodingError(f"the number of pieces must be at least 1, got {self.num}")
        if not 1 <= len(self.prompt) < self.budget:
            raise DecodingError(
                f"the budget ({self.budget} tokens) must exceed the prompt ({len(self.prompt)} tokens)"
            )
        if self.cache_len < self.budget:
            raise DecodingError(f"capacity {self.capacity} is below the budget {self.budget}")

    @property
    def cache_len(self) -> int:
        return self.capacity if self.capacity is not None else self.budget


@dataclass(frozen=True)
class DecodeResult:
    """``tokens`` int32[B, budget] (PAD after EOS), ``lengths`` int[B] (up to and including
    EOS; ``budget`` for a row without EOS, which only an unconstrained run can produce),
    ``steps`` loop iterations run, ``seconds`` wall time of the loop (prefill included),
    ``compile_seconds`` time spent compiling (JAX; 0 otherwise)."""

    tokens: np.ndarray
    lengths: np.ndarray
    steps: int
    seconds: float
    compile_seconds: float = 0.0

    def streams(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]


def lengths_of(tokens: np.ndarray, eos: int) -> np.ndarray:
    """int[B]: index of the first EOS + 1 in each row (the row length if none)."""
    is_eos = tokens == eos
    return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, tokens.shape[1])


class NumpyModel(Protocol):
    """A model with numpy arrays at the boundary (see the module docstring)."""

    def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> tuple[np.ndarray, Any]: ...

    def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> tuple[np.ndarray, Any]: ...


@dataclass(frozen=True)
class _FnModel:
    prefill_fn: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, Any]]
    step_fn: Callable[[np.ndarray, Any, np.ndarray], tuple[np.ndarray, Any]]

    def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> tuple[np.ndarray, Any]:
        return self.prefill_fn(ids, lengths, cache_len)

    def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> tuple[np.ndarray, Any]:
        return self.step_fn(token, cache, positions)


def backend_model(backend: Any, params: Any) -> NumpyModel:
    """A :class:`~gramophone.backends.Backend`'s numpy ``prefill``/``decode_step`` as a model."""
    return _FnModel(
        lambda ids, lengths, cache_len: backend.prefill(params, ids, cache_len, lengths),
        lambda token, cache, positions: backend.decode_step(params, token, cache, positions),
    )


def sample_numpy(model: NumpyModel, tables: DecodingTables, request: DecodeRequest) -> DecodeResult:
    """The reference loop: :mod:`~gramophone.decoding.rules` step by step, in numpy.

    Noise: ``numpy.random.default_rng(seed).gumbel`` float32[B, V] at every step.
    """
    B, N, P = request.num, request.budget, len(request.prompt)
    V = tables.vocab_size
    rng = np.random.default_rng(request.seed)
    t0 = time.perf_counter()
    prompt = np.tile(np.asarray(request.prompt, np.int32), (B, 1))  # (B, P)
    logits, cache = model.prefill(prompt, np.full(B, P, np.int32), request.cache_len)
    tokens = np.full((B, N), tables.pad, np.int32)
    tokens[:, :P] = prompt
    state = np.tile(np.asarray(request.state, np.int32), (B, 1))  # (B, G)
    ended = np.zeros(B, bool)
    steps = 0
    for t in range(P, N):
        allowed = kernels.allowed(tables, state, N - t) if request.constrained else np.ones((B, V), bool)
        gumbel = rng.gumbel(size=(B, V)).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            tok = kernels.choose(np.asarray(logits), allowed, request.sampling, gumbel)
        tok = np.where(ended, tables.pad, tok).astype(np.int32)
        tokens[:, t] = tok
        if request.constrained:
            state = np.where(ended[:, None], state, kernels.advance(tables, state, tok))
        ended |= tok == tables.eos
        steps += 1
        if request.stop_early and ended.all():
            break
        if t + 1 < N:
            logits, cache = model.step(tok, cache, np.full(B, t, np.int32))
    return DecodeResult(tokens, lengths_of(tokens, tables.eos), steps, time.perf_counter() - t0)
