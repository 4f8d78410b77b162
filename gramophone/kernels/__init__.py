"""The per-step kernels, once per framework: start, mask, apply, advance, and the sampling
rules.

Each of :mod:`~gramophone.kernels.numpy`, :mod:`~gramophone.kernels.torch`,
:mod:`~gramophone.kernels.jax` and :mod:`~gramophone.kernels.numba` offers the same four
functions over
:class:`~gramophone.decoding.DecodingTables` (any scheme, any trained vocabulary):

- ``start(tables, batch) -> state int32[B, G]``: the state before any token;
- ``allowed(tables, state, remaining) -> bool[B, V]``: the tokens each stream may write
  with ``remaining`` tokens left in its budget, this one included (hard mask and
  length-aware: every stream can still end valid within the budget);
- ``apply(logits, allowed) -> logits``: forbidden tokens to ``-inf``;
- ``advance(tables, state, token) -> state``: the state after each stream's token;
- ``sanitize`` and ``choose``: the sampling rules 2-7 of :mod:`gramophone.decoding.rules`
  (greedy, temperature, top-k, top-p, Gumbel-max), the same in every framework.

They are what the decoding loops, the HuggingFace processor and the benchmarks run, and
the public per-step API for a sampling loop of one's own (see the README)::

    from gramophone.kernels import numpy as K
    state = K.start(tables, batch)
    for t in range(len(prompt), budget):
        logits = my_model(...)                               # float[B, V]
        mask = K.allowed(tables, state, budget - t)
        token = K.apply(logits, mask).argmax(-1)             # or sample
        state = K.advance(tables, state, token)

:mod:`~gramophone.kernels.numba` (numpy arrays, compiled) adds ``step``: mask, apply,
choose and advance fused in one call that reads only the allowed logits (greedy or
temperature + Gumbel-max; the same tokens as the numpy kernels), the fastest step on a CPU.

The torch, JAX and numba modules are imported only when asked for; importing them without
the framework installed raises an ImportError that says what to install.
"""

__all__: list[str] = []
