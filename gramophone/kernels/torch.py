"""The step kernels in PyTorch (see :mod:`gramophone.kernels`), on the tables' device copy.

:func:`device_tables` copies a :class:`~gramophone.decoding.DecodingTables` to a device once
(per tables object and device); the kernels then never leave the device and never read a
value back to the host (``remaining`` is a host integer the loop knows).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("gramophone.kernels.torch needs PyTorch: pip install 'gramophone[torch]'") from exc
import numpy as np
from torch import Tensor

from gramophone.decoding.rules import FMAX, Sampling
from gramophone.decoding.tables import DecodingTables

__all__ = ["TorchTables", "advance", "allowed", "apply", "choose", "device_tables", "sanitize", "start"]


@dataclass(frozen=True)
class TorchTables:
    """The tables on one device: rows as tensors, distance as a flat ``uint8``/``int32``."""

    next: tuple[Tensor, ...]  # int64 (S_g+1, V)
    valid: tuple[Tensor, ...]  # bool (S_g+1, V)
    strides: tuple[int, ...]
    dist: Tensor  # flat cartesian distances
    dist_inf: int
    max_distance: int
    start: Tensor  # int64 (G,)


_CACHE: weakref.WeakKeyDictionary[DecodingTables, dict[str, TorchTables]] = weakref.WeakKeyDictionary()


def device_tables(tables: DecodingTables, device: torch.device | str = "cpu") -> TorchTables:
    """``tables`` on ``device``, copied once per tables object and device."""
    per_device = _CACHE.setdefault(tables, {})
    key = str(device)
    got = per_device.get(key)
    if got is None:
        got = per_device[key] = TorchTables(
            next=tuple(torch.from_numpy(n.astype("int64")).to(device) for n in tables.next),
            valid=tuple(torch.from_numpy(v.copy()).to(device) for v in tables.valid),
            strides=tuple(int(s) for s in tables.strides),
            dist=torch.from_numpy(tables.dist.astype("int32")).to(device),
            dist_inf=tables.dist_inf,
            max_distance=tables.max_distance,
            start=torch.from_numpy(tables.start.astype("int64")).to(device),
        )
    return got


def start(tab: TorchTables, batch: int) -> Tensor:
    """``int64[B, G]``: the start state for ``batch`` streams."""
    return tab.start.expand(batch, -1).clone()


def allowed(tab: TorchTables, state: Tensor, remaining: int) -> Tensor:
    """``bool[B, V]`` (see :func:`gramophone.kernels.numpy.allowed`); ``state`` int64[B, G]."""
    G = len(tab.next)
    if remaining > tab.max_distance:
        mask = tab.valid[0].index_select(0, state[:, 0])
        for g in range(1, G):
            mask = mask & tab.valid[g].index_select(0, state[:, g])
        return mask
    flat: Tensor | None = None
    mask_out: Tensor | None = None
    for g in range(G):
        if tab.strides[g]:
            part = tab.next[g].index_select(0, state[:, g]) * tab.strides[g]
            flat = part if flat is None else flat + part
        else:
            row = tab.valid[g].index_select(0, state[:, g])
            mask_out = row if mask_out is None else mask_out & row
    assert flat is not None
    ok = tab.dist[flat] < min(remaining, tab.dist_inf)
    return ok if mask_out is None else ok & mask_out


def apply(logits: Tensor, mask: Tensor) -> Tensor:
    """``logits`` with forbidden tokens at ``-inf`` (a new tensor)."""
    return logits.masked_fill(~mask, -torch.inf)


def advance(tab: TorchTables, state: Tensor, token: Tensor) -> Tensor:
    """``int64[B, G]``: the state after ``token`` (B,)."""
    return torch.stack([tab.next[g][state[:, g], token] for g in range(len(tab.next))], dim=1)


# ----------------------------------------------------------------------------- sampling (rules 2-7)

_TINY = float(np.finfo(np.float32).tiny)
_ONE_MINUS = 1.0 - 2.0**-24


def sanitize(logits: Tensor, blocked: Tensor | None) -> Tensor:
    """Rule 2 (see :func:`gramophone.kernels.numpy.sanitize`). ``blocked`` bool (B, V) is
    the complement of ``allowed`` (one op fewer per step); ``None``: nothing blocked."""
    x = torch.nan_to_num(logits.float(), nan=-FMAX, posinf=FMAX, neginf=-FMAX)
    if blocked is not None:
        x.masked_fill_(blocked, -torch.inf)
    m = x.amax(dim=-1, keepdim=True)
    return x - torch.where(torch.isfinite(m), m, 0.0)


def choose(
    logits: Tensor,
    blocked: Tensor | None,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    gumbel: Tensor | None = None,
) -> Tensor:
    """Rules 2-7 in torch: int64[B]. ``logits`` (B, V); ``blocked`` bool (B, V), the tokens
    *not* allowed, or ``None``; ``gumbel`` (B, V): the noise (default: drawn from
    ``generator``)."""
    x = sanitize(logits, blocked)
    if sampling.greedy:
        return x.argmax(dim=-1)
    x = x / sampling.temperature
    V = x.shape[-1]
    if sampling.uses_top_k:
        assert sampling.top_k is not None
        kth = torch.topk(x, min(sampling.top_k, V), dim=-1).values[:, -1:]  # (B, 1)
        x = x.masked_fill(x < kth, -torch.inf)
    if sampling.uses_top_p:
        assert sampling.top_p is not None
        q = torch.softmax(x, dim=-1)  # (B, V)
        qs = torch.sort(q, dim=-1, descending=True).values
        cum = torch.cumsum(qs, dim=-1)
        excl = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)
        n_keep = (excl < sampling.top_p).sum(dim=-1, keepdim=True)  # >= 1
        x = x.masked_fill(q < qs.gather(-1, n_keep - 1), -torch.inf)
    if gumbel is None:
        u = torch.rand(x.shape, generator=generator, device=x.device).clamp_(_TINY, _ONE_MINUS)
        gumbel = -torch.log(-torch.log(u))
    return (x + gumbel).argmax(dim=-1)
