"""Random walks over an automaton (test helper): streams drawn from the language itself."""

from __future__ import annotations

from typing import Any

import numpy as np

from gramophone.grammar import REJECT, Automaton


def random_walk(automaton: Automaton, rng: np.random.Generator, length: int, eos: bool = True) -> list[int]:
    """A stream of the language: about ``length`` tokens, then the shortest way out.

    Token types are drawn uniformly, then a value of that type, so that rare types (Bar,
    Rest, TimeSig) appear as often as Pitch. After ``length`` tokens only tokens that bring
    the syntax closer to acceptance are drawn. BOS/EOS/PAD are left out unless ``eos``.
    """
    vocab = automaton.vocab
    kinds = np.array([tok.partition("_")[0] for tok in vocab])
    specials = np.isin(kinds, ["BOS", "EOS", "PAD", "MASK"])
    syntax = automaton.components[0]
    dist = syntax.distance
    states = automaton.start_states.copy()
    out: list[int] = []
    while True:
        mask = automaton.allowed(states) & ~specials
        if len(out) >= length:
            if automaton.is_accepting(states):
                break
            cand = np.nonzero(mask)[0]
            d = dist[syntax.transitions[states[0], cand]]
            cand = cand[d == d.min()]
        else:
            cand = np.nonzero(mask)[0]
            if cand.size == 0 and automaton.is_accepting(states):
                break
        assert cand.size, f"dead end after {[vocab[i] for i in out[-8:]]}"
        types = np.unique(kinds[cand])
        kind = types[rng.integers(len(types))]
        pool = cand[kinds[cand] == kind]
        tok = int(pool[rng.integers(len(pool))])
        nxt = automaton.step(states, tok)
        assert nxt is not None and (nxt != REJECT).all()
        states = nxt
        out.append(tok)
    if eos and "EOS_None" in automaton.token_index:
        out.append(automaton.token_index["EOS_None"])
    return out


def table_walk(tables: Any, rng: np.random.Generator, n: int) -> list[int]:
    """A random valid beginning of at most ``n`` model ids after BOS (BOS first), drawn
    with the numpy kernels over decoding tables (trained vocabularies included)."""
    from gramophone.kernels import numpy as kernels

    state = kernels.advance(tables, kernels.start(tables, 1), np.array([tables.bos]))
    ids = [tables.bos]
    for _ in range(n):
        mask = kernels.allowed(tables, state, 1 << 20)[0]
        mask[tables.eos] = False
        cand = np.nonzero(mask)[0]
        if cand.size == 0:
            break
        v = int(cand[rng.integers(cand.size)])
        ids.append(v)
        state = kernels.advance(tables, state, np.array([v]))
    return ids
