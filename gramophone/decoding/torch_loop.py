"""The decoding loop in PyTorch: KV-cached, on the device, no host synchronization per step.

The rules are those of :mod:`gramophone.decoding.rules`, in torch. The automaton tables
live on the model's device (copied once per tables object and device); each step does a
row gather of the mask, the sampling ops, a gather of the next state and one cached
decode step. Nothing inside the loop reads a value back to the host (no ``.item()``,
``.cpu()``, ``bool(tensor)``) except the "has every stream ended?" test, made every
``check_every`` steps (one sync per ``check_every`` tokens; ``0``: never, run to the budget).

Imported only when the torch backend is chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gramophone.decoding.loop import DecodeRequest, DecodeResult, lengths_of
from gramophone.decoding.tables import DecodingTables
from gramophone.kernels import torch as kernels

__all__ = ["TorchModel", "backend_sampler", "gpt_model", "sample_torch"]


@dataclass(frozen=True)
class TorchModel:
    """``prefill(ids (B, P), lengths (B,), cache_len) -> (logits (B, V), cache)`` and
    ``step(token (B,), cache, positions (B,)) -> (logits (B, V), cache)``, on tensors."""

    prefill: Callable[[Tensor, Tensor, int], tuple[Tensor, Any]]
    step: Callable[[Tensor, Any, Tensor], tuple[Tensor, Any]]
    device: torch.device


def gpt_model(gpt: Any) -> TorchModel:
    """The torch backend's ``GPT`` module as a :class:`TorchModel` (eval mode)."""
    gpt.eval()
    device = next(gpt.parameters()).device
    return TorchModel(
        prefill=lambda ids, lengths, cache_len: gpt.prefill(ids, cache_len, lengths),
        step=gpt.decode_step,
        device=device,
    )


@torch.inference_mode()
def sample_torch(
    model: TorchModel, tables: DecodingTables, request: DecodeRequest, *, check_every: int = 16
) -> DecodeResult:
    """Decode one batch (see :class:`~gramophone.decoding.loop.DecodeRequest`).

    Noise: ``torch.rand`` from a ``torch.Generator`` on the model's device seeded with
    ``request.seed``, turned into Gumbel noise; the same seed on the same device gives the
    same streams.
    """
    device = model.device
    B, N, P = request.num, request.budget, len(request.prompt)
    sampling, eos, pad = request.sampling, tables.eos, tables.pad
    tab = kernels.device_tables(tables, device) if request.constrained else None
    generator = torch.Generator(device=device)
    generator.manual_seed(request.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()

    prompt = torch.tensor(request.prompt, dtype=torch.long, device=device).expand(B, P)  # (B, P)
    logits, cache = model.prefill(
        prompt, torch.full((B,), P, dtype=torch.long, device=device), request.cache_len
    )
    tokens = torch.full((B, N), pad, dtype=torch.long, device=device)
    tokens[:, :P] = prompt
    positions = torch.arange(N, device=device)
    state = torch.as_tensor(np.asarray(request.state), dtype=torch.long, device=device)
    state = state.expand(B, -1)  # (B, G)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    steps = 0
    for t in range(P, N):
        remaining = N - t
        blocked: Tensor | None = None  # ~allowed (rule 1)
        if tab is not None:
            blocked = ~kernels.allowed(tab, state, remaining)  # (B, V)
        tok = kernels.choose(logits, blocked, sampling, generator)
        tok = torch.where(ended, pad, tok)  # (B,)
        tokens[:, t] = tok
        if tab is not None:
            state = torch.where(ended[:, None], state, kernels.advance(tab, state, tok))
        ended |= tok == eos
        steps += 1
        if t + 1 < N:
            logits, cache = model.step(tok, cache, positions[t].expand(B))
        if request.stop_early and check_every and steps % check_every == 0 and bool(ended.all()):
            break  # the only host sync: once every check_every steps
    out = tokens.cpu().numpy().astype(np.int32)
    seconds = time.perf_counter() - t0
    return DecodeResult(out, lengths_of(out, eos), steps, seconds)


def backend_sampler(backend: Any, params: Any) -> Callable[[DecodingTables, DecodeRequest], DecodeResult]:
    """The loop for the torch backend's ``params`` (a ``GPT`` module), as the driver wants it."""
    model = gpt_model(params)
    return lambda tables, request: sample_torch(model, tables, request)
