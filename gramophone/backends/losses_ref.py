"""Plain numpy reference of the three training losses (the oracle the backends are tested
against). Everything is computed in float64 and returned per position, unreduced.

Shapes: ``B`` batch, ``T`` positions, ``V`` vocabulary.

- ``logits``  float[B, T, V]  model outputs at each position
- ``targets`` int[B, T]       the next token at each position
- ``allowed`` bool[B, T, V]   tokens the grammar allows at each target position
- ``weights`` float[B, T]     0 on padding; the batch loss is a weighted mean

With ``eps`` the label smoothing and ``p = softmax(logits)``:

- ``ce``: label-smoothed cross-entropy over the whole vocabulary,
  ``(1 - eps) * -log p[target] + eps * mean_v(-log p[v])`` (as ``torch``'s
  ``cross_entropy(label_smoothing=eps)`` and ``optax.smooth_labels``).
- ``ce+structural``: ``ce + lambda * S`` with ``S = -log(sum_{v allowed} p[v])``, the
  probability mass the model puts outside the grammar, on a log scale (0 when none).
- ``masked``: the same smoothed cross-entropy computed over ``q``, the softmax of the logits
  with forbidden tokens set to ``-inf`` (renormalised over the allowed tokens); the smoothing
  mass is spread over the allowed tokens only.

The target token always counts as allowed (``allowed | onehot(target)``): with data the
grammar accepts this changes nothing, and it keeps padding rows (often all-forbidden) and
the rare out-of-grammar target finite instead of ``inf``/``nan``.

>>> rng = np.random.default_rng(0)
>>> logits = rng.normal(size=(1, 2, 5))
>>> targets = np.array([[1, 3]])
>>> allowed = np.ones((1, 2, 5), bool)
>>> per = per_position_losses(logits, targets, allowed, loss="masked", label_smoothing=0.1)
>>> ce = per_position_losses(logits, targets, allowed, loss="ce", label_smoothing=0.1)
>>> bool(np.allclose(per["loss"], ce["loss"]))  # everything allowed: masked == ce
True
>>> float(per["structural"].max())
0.0
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gramophone.backends.config import LOSSES, TrainConfig

__all__ = ["batch_loss", "effective_allowed", "per_position_losses", "weighted_mean"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def effective_allowed(allowed: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``allowed | onehot(targets)``: bool[B, T, V]."""
    out = np.array(allowed, dtype=bool, copy=True)
    b, t = np.indices(targets.shape)
    out[b, t, targets] = True
    return out


def per_position_losses(
    logits: np.ndarray,
    targets: np.ndarray,
    allowed: np.ndarray | None = None,
    *,
    loss: str = "ce",
    label_smoothing: float = 0.0,
    structural_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """Unreduced losses, each float64[B, T].

    Returns ``loss`` (the objective of the chosen mode), ``nll`` (plain cross-entropy,
    no smoothing, whole vocabulary) and, when ``allowed`` is given, ``structural`` (``S``).
    ``allowed`` is required for ``ce+structural`` and ``masked``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    eps = float(label_smoothing)
    b, t = np.indices(targets.shape)

    logp = _log_softmax(logits)  # (B, T, V)
    nll = -logp[b, t, targets]  # (B, T)
    ce = (1.0 - eps) * nll + eps * -np.mean(logp, axis=-1)
    out = {"nll": nll}
    if allowed is None:
        if loss != "ce":
            raise ValueError(f"loss {loss!r} needs the 'allowed' array")
        out["loss"] = ce
        return out

    allow = effective_allowed(allowed, targets)  # (B, T, V)
    # S = -log sum_{allowed} p = -logsumexp(logp over allowed)
    structural = -_logsumexp_where(logp, allow)
    out["structural"] = structural
    if loss == "ce":
        out["loss"] = ce
    elif loss == "ce+structural":
        out["loss"] = ce + structural_weight * structural
    else:  # masked
        logq = _log_softmax(np.where(allow, logits, -np.inf))  # -inf on forbidden tokens
        n_allowed = np.sum(allow, axis=-1)
        smooth = -np.sum(np.where(allow, logq, 0.0), axis=-1) / n_allowed
        out["loss"] = (1.0 - eps) * -logq[b, t, targets] + eps * smooth
    return out


def _logsumexp_where(x: np.ndarray, where: np.ndarray) -> np.ndarray:
    masked = np.where(where, x, -np.inf)
    m = np.max(masked, axis=-1)
    return m + np.log(np.sum(np.exp(masked - m[..., None]), axis=-1))


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """``sum(w * v) / sum(w)`` (0 when every weight is 0)."""
    w = np.asarray(weights, dtype=np.float64)
    return float(np.sum(w * values) / max(float(np.sum(w)), 1e-8))


def batch_loss(logits: np.ndarray, batch: Mapping[str, np.ndarray], train: TrainConfig) -> dict[str, float]:
    """The metrics a backend's ``evaluate`` returns for ``batch`` (weighted means):
    ``loss``, ``nll`` and, when the batch has ``allowed``, ``structural``."""
    per = per_position_losses(
        logits,
        batch["targets"],
        batch.get("allowed"),
        loss=train.loss,
        label_smoothing=train.label_smoothing,
        structural_weight=train.structural_weight,
    )
    return {k: weighted_mean(v, batch["weights"]) for k, v in per.items()}
