"""The sampling rules, written once: a framework-neutral specification and its numpy reference.

Every decoding loop (:mod:`gramophone.decoding.torch_loop`, :mod:`gramophone.decoding.jax_loop`,
and :func:`gramophone.decoding.loop.sample_numpy`) applies exactly these rules, in this order,
to a batch of ``B`` streams over a vocabulary of ``V`` tokens. Each stream carries its own
automaton state ``int32[G]`` (one local state per group of components, see
:class:`~gramophone.decoding.tables.DecodingTables`). Rules 1 and 9 are the kernels of
:mod:`gramophone.kernels` (one module per framework), and so are rules 2-7 (``choose``).

At step ``t`` (the token written at position ``t``; ``budget - t`` tokens may still be
written, this one included):

1. **Allowed row (hard mask + length awareness)**, ``kernels.*.allowed``: token ``v`` is
   allowed iff every group accepts it and the state it leads to can still reach acceptance
   (EOS written) within the rest of the budget, ``dist(next) < budget - t``. Invariant:
   ``dist(state_t) <= budget - t``; it holds after a valid prompt whose completion fits
   (checked before decoding) and every allowed token keeps it, so some token is always
   allowed and every stream ends with EOS by ``budget``.
2. **Sanitize** (``kernels.*.sanitize``): NaN and -inf logits become the most negative float32,
   +inf the largest, so that no model output can make the rules fail; forbidden tokens get
   -inf; the row is shifted so that its largest allowed logit is exactly 0. A row whose
   allowed logits are all equal (e.g. all -inf from the model) is uniform over them.
3. **Greedy**: the first allowed token of largest logit (``argmax``; ties go to the lowest
   id in every framework). Otherwise:
4. **Temperature**: divide by ``temperature`` (> 0).
5. **Top-k**: keep the allowed tokens whose logit is ``>=`` the k-th largest allowed logit
   (ties at the threshold are kept, so the rule does not depend on a sort's tie order).
6. **Top-p** (nucleus): with ``q`` the softmax of what is left, sorted in decreasing order,
   keep the tokens whose probability is ``>=`` that of the last sorted token whose
   *exclusive* cumulative mass is ``< top_p`` (the smallest prefix of mass ``>= top_p``,
   ties at the threshold kept). The most probable token is always kept.
7. **Sample** by the Gumbel-max trick: ``argmax(x + g)`` with ``g`` standard Gumbel noise
   ``float32[B, V]`` drawn from the framework's generator (so a fixed seed reproduces a run
   on one backend; the streams of two frameworks differ, the rules do not).
8. **After EOS** a stream writes PAD (EOS again if the vocabulary has no PAD) and its state
   stays put; the loop stops when every stream has ended or ``t == budget``.
9. **Advance**, ``kernels.*.advance``: each group's state moves by its row.

Rules 2-7 are written once per framework, beside the mask kernels: ``choose`` in
:mod:`gramophone.kernels.numpy` (the reference, float32 like the device loops),
:mod:`gramophone.kernels.torch` and :mod:`gramophone.kernels.jax`; the tests hold the torch
and JAX versions to the numpy one token for token on the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gramophone.errors import DecodingError

__all__ = ["DEFAULT_SAMPLING", "FMAX", "INF", "Sampling"]

INF = 1 << 30
"""Distance of a state that cannot reach acceptance (and of the dead state)."""

FMAX = float(np.finfo(np.float32).max)
"""Largest float32: +inf logits become this, NaN and -inf its negative."""


@dataclass(frozen=True)
class Sampling:
    """How to pick a token from the allowed ones.

    ``greedy`` ignores the other fields. ``temperature`` > 0; ``top_k`` >= 1 or ``None``
    (off); ``top_p`` in (0, 1] or ``None`` (off; 1.0 is also off).

    >>> Sampling(temperature=0.9, top_k=20)
    Sampling(greedy=False, temperature=0.9, top_k=20, top_p=None)
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise DecodingError(f"temperature must be a number > 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise DecodingError(f"top-k must be an integer >= 1, got {k!r}")
        p = self.top_p
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1
        ):
            raise DecodingError(f"top-p must be in (0, 1], got {p!r}")

    @property
    def uses_top_k(self) -> bool:
        return not self.greedy and self.top_k is not None

    @property
    def uses_top_p(self) -> bool:
        return not self.greedy and self.top_p is not None and self.top_p < 1.0


#: The decode default (``gramophone decode`` with no --temperature/--top-k/--top-p, and
#: :class:`~gramophone.decoding.DecodeOptions`), chosen by measurement with the bundled
#: model: of the settings ``gramophone bench --only music`` compares, the one whose
#: sampled pieces land nearest the held-out chorales (README, "Default sampling").
DEFAULT_SAMPLING = Sampling(top_p=0.95)
