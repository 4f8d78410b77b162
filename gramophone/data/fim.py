"""Fill-in-the-middle training windows (suffix-prefix-middle order), for bar infilling.

A causal model sees only what comes before; to infill bars so that they also lead into the
kept bars after them, it must see those too. Bavarian et al. (2022, "Efficient Training of
Language Models to Fill in the Middle") move the suffix in front: a fraction of training
windows is rewritten as ::

    suffix  BOS  prefix  middle  EOS

where the window (``BOS? prefix | Bar middle | Bar suffix [EOS]``) is cut at two bar starts
drawn at random, and the suffix's final EOS (if the window reaches the piece's end) is
dropped, as the infill prompt drops it. This *SPM* order needs no new token: BOS, which
otherwise only ever comes first, marks where the piece begins, and EOS where the middle
ends. The model stays one causal model, on both backends, with one checkpoint format; the
same model still continues pieces from BOS (the other windows are left as they are). At
decode time ``--infill A:B`` gives it ``kept bars after the hole + BOS + bars before it``
as its context (:mod:`gramophone.decoding.infill`), while the grammar's tables follow the
prefix alone, so the infill stays exact.

Targets keep the grammar rows of the plain stream (``allowed``) at the same tokens, so the
structural loss still applies: a suffix or middle token has the row it has in the piece; the
EOS that ends the middle is the target there, and a target always counts as allowed (see
:mod:`gramophone.backends.losses_ref`). The BOS separator and the first token after it,
when the window did not start with BOS, are not scored (weight 0): the model is given them.
Windows drawn for FIM are a deterministic function of ``(seed, step)``, like the batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["FimTokens", "fim_batch", "fim_tokens"]


class FimTokens:
    """The ids FIM needs: ``bos``, ``eos``, ``pad`` and ``starts_bar`` (bool[V]: the model
    ids whose first base token is a Bar, where a window may be cut)."""

    def __init__(self, bos: int, eos: int, pad: int, starts_bar: np.ndarray) -> None:
        self.bos, self.eos, self.pad = bos, eos, pad
        self.starts_bar = np.asarray(starts_bar, dtype=bool)


def fim_tokens(vocab: Sequence[str]) -> FimTokens:
    """:class:`FimTokens` from a model vocabulary's display names (learned tokens are
    ``+``-joined base names)."""
    names = list(vocab)
    return FimTokens(
        names.index("BOS_None"),
        names.index("EOS_None"),
        names.index("PAD_None") if "PAD_None" in names else names.index("EOS_None"),
        np.array([n.split("+")[0] == "Bar_None" for n in names]),
    )


def _rewrite(
    x: np.ndarray, rows: np.ndarray, n: int, cut: tuple[int, int], tok: FimTokens
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One window ``x`` (``n`` valid tokens of ``T + 1``) with allowed rows ``rows``
    (``rows[t]``: the row of target ``x[t + 1]``) rewritten around ``cut = (a, c)``:
    prefix ``x[:a]`` (a Bar starts at ``a``), middle ``x[a:c]``, suffix ``x[c:n]``; None
    when the rewritten window would not fit."""
    a, c = cut
    T1 = len(x)
    pad_row = np.zeros(rows.shape[1:], dtype=bool)
    has_bos = x[0] == tok.bos
    suffix = np.arange(c, n)
    if n and x[n - 1] == tok.eos:
        suffix = suffix[:-1]
    prefix = np.arange(1 if has_bos else 0, a)
    middle = np.arange(a, c)
    overflow = len(suffix) + 1 + len(prefix) + len(middle) + 1 - T1
    if overflow > len(suffix):
        return None  # a full window that ends the piece, without BOS: no room for the separator
    if overflow > 0:
        suffix = suffix[: len(suffix) - overflow]
    src = np.concatenate([suffix, [-1], prefix, middle, [-2]]).astype(np.int64)  # -1 BOS, -2 EOS
    y = np.where(src >= 0, x[np.maximum(src, 0)], np.where(src == -1, tok.bos, tok.eos))
    m = len(y)
    # target k + 1 (token y[k + 1]) has the row the plain stream has before src[k + 1]
    tgt_src = src[1:]
    row_of = np.where(tgt_src > 0, tgt_src - 1, 0)
    allowed = rows[np.minimum(row_of, len(rows) - 1)].copy()
    weight = np.ones(m - 1, dtype=np.float32)
    weight[tgt_src == -1] = 0.0  # the BOS separator is given, not predicted
    first_after_bos = len(suffix) + 1  # index into y of the first prefix token
    if not has_bos and first_after_bos < m:
        weight[first_after_bos - 1] = 0.0  # a window that starts mid-piece: its first Bar is given
    eos_at = m - 2  # target index of the final EOS
    allowed[eos_at] = rows[c - 1] if c >= 1 else pad_row
    allowed[tgt_src == -1] = pad_row
    out_x = np.full(T1, tok.pad, dtype=x.dtype)
    out_x[:m] = y
    out_allowed = np.broadcast_to(pad_row, (T1 - 1, *pad_row.shape)).copy()
    out_allowed[: m - 1] = allowed
    out_w = np.zeros(T1 - 1, dtype=np.float32)
    out_w[: m - 1] = weight
    return out_x, out_allowed, out_w


def fim_batch(
    batch: Mapping[str, np.ndarray], rate: float, seed: int, step: int, tok: FimTokens
) -> dict[str, np.ndarray]:
    """``batch`` (see :meth:`~gramophone.data.dataset.TokenSplit.batch`) with a ``rate``
    share of its windows, drawn by ``(seed, step)``, rewritten in SPM order (module notes).
    A window with fewer than two bar starts after its first token is left as it is."""
    out = {k: np.array(v, copy=True) for k, v in batch.items()}
    if rate <= 0:
        return out
    rng = np.random.Generator(np.random.PCG64([seed, step, 0x46494D]))  # "FIM"
    inputs, targets, weights = out["inputs"], out["targets"], out["weights"]
    allowed = out.get("allowed")
    B, T = inputs.shape
    chosen = rng.random(B) < rate
    for r in np.flatnonzero(chosen):
        x = np.concatenate([inputs[r], targets[r, -1:]])
        n = 1 + int((weights[r] > 0).sum())  # training windows: weight 1 up to the last real token
        bars = np.flatnonzero(tok.starts_bar[x[1:n]]) + 1
        if x[n - 1] == tok.eos:
            bars = np.append(bars, n - 1)  # the middle may run to the piece's end
        if len(bars) < 2:
            continue
        i, k = sorted(rng.choice(len(bars), size=2, replace=False))
        rows = np.zeros((T, 1), dtype=bool) if allowed is None else allowed[r]
        got = _rewrite(x, rows, n, (int(bars[i]), int(bars[k])), tok)
        if got is None:
            continue
        y, new_rows, w = got
        inputs[r], targets[r], weights[r] = y[:-1], y[1:], w
        if allowed is not None:
            allowed[r] = new_rows
    return out
