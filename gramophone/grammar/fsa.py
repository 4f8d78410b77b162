"""Finite-state automata as plain numpy tables: build, determinize, minimize, trim, multiply.

A deterministic automaton here is a triple ``(T, accepting, start)``:

- ``T``: ``int32[S, A]``, the next state for each state and input symbol, or
  :data:`REJECT` where the symbol is forbidden;
- ``accepting``: ``bool[S]``;
- ``start``: an ``int``.

The alphabet ``A`` is either the tokenizer's vocabulary or a partition of it into token
classes (tokens that no terminal tells apart); :func:`expand` turns a class table into a
vocabulary table. Nondeterministic automata only exist while a grammar is compiled
(:class:`NFA`, Thompson's construction with symbol-set labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

REJECT = -1
"""Transition value of a forbidden symbol."""


@dataclass
class NFA:
    """A mutable nondeterministic automaton whose edges carry sets of symbols."""

    eps: list[list[int]] = field(default_factory=list)
    edges: list[list[tuple[frozenset[int], int]]] = field(default_factory=list)

    def new_state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def add_eps(self, src: int, dst: int) -> None:
        self.eps[src].append(dst)

    def add_edge(self, src: int, symbols: frozenset[int], dst: int) -> None:
        if symbols:  # an empty symbol set is the empty language: no edge at all
            self.edges[src].append((symbols, dst))


def determinize(nfa: NFA, start: int, final: int, n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """Subset construction. Returns ``(T int32[S, n_symbols], accepting bool[S])``, start 0."""
    closure_memo: dict[int, frozenset[int]] = {}

    def closure_of(state: int) -> frozenset[int]:
        got = closure_memo.get(state)
        if got is None:
            seen = {state}
            stack = [state]
            while stack:
                for nxt in nfa.eps[stack.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            got = closure_memo[state] = frozenset(seen)
        return got

    def closure(states: Iterable[int]) -> frozenset[int]:
        out: set[int] = set()
        for s in states:
            out |= closure_of(s)
        return frozenset(out)

    first = closure([start])
    index = {first: 0}
    order = [first]
    rows: list[np.ndarray] = []
    i = 0
    while i < len(order):
        current = order[i]
        targets: list[set[int]] = [set() for _ in range(n_symbols)]
        for s in current:
            for symbols, dst in nfa.edges[s]:
                for a in symbols:
                    targets[a].add(dst)
        row = np.full(n_symbols, REJECT, dtype=np.int32)
        for a, tset in enumerate(targets):
            if tset:
                nxt = closure(tset)
                j = index.get(nxt)
                if j is None:
                    j = index[nxt] = len(order)
                    order.append(nxt)
                row[a] = j
        rows.append(row)
        i += 1
    T = np.stack(rows).astype(np.int32)
    accepting = np.array([final in s for s in order], dtype=bool)
    return T, accepting


def run_from_every_state(T: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """``int32[S]``: the state each state of ``T`` reaches over ``tokens`` (REJECT once any
    step rejects)."""
    state = np.arange(T.shape[0], dtype=np.int32)
    for t in tokens:
        state = np.where(state == REJECT, REJECT, T[np.maximum(state, 0), int(t)]).astype(np.int32)
    return state


def reachable(T: np.ndarray, start: int) -> np.ndarray:
    """``bool[S]``: states reachable from ``start`` (a mask per level, no sort: the time
    tables with rests are large)."""
    seen = np.zeros(T.shape[0], dtype=bool)
    seen[start] = True
    frontier = np.array([start])
    while frontier.size:
        hit = np.zeros_like(seen)
        nxt = T[frontier].ravel()
        hit[nxt[nxt != REJECT]] = True
        hit &= ~seen
        seen |= hit
        frontier = np.nonzero(hit)[0]
    return seen


def coreachable(T: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """``bool[S]``: states from which an accepting state can be reached."""
    S = T.shape[0]
    src, _sym = np.nonzero(T != REJECT)
    dst = T[T != REJECT]
    # Reverse adjacency as CSR.
    order = np.argsort(dst, kind="stable")
    rsrc = src[order]
    starts = np.searchsorted(dst[order], np.arange(S + 1))
    good = accepting.copy()
    frontier = np.nonzero(good)[0]
    while frontier.size:
        preds = (
            np.concatenate([rsrc[starts[s] : starts[s + 1]] for s in frontier]) if frontier.size else frontier
        )
        preds = np.unique(preds)
        preds = preds[~good[preds]]
        good[preds] = True
        frontier = preds
    return good


def distance_to_accept(T: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """``int32[S]``: fewest symbols from each state to an accepting state (-1: never)."""
    S = T.shape[0]
    dist = np.full(S, -1, dtype=np.int32)
    dist[accepting] = 0
    src, _ = np.nonzero(T != REJECT)
    dst = T[T != REJECT]
    order = np.argsort(dst, kind="stable")
    rsrc = src[order]
    starts = np.searchsorted(dst[order], np.arange(S + 1))
    frontier = np.nonzero(accepting)[0]
    d = 0
    while frontier.size:
        d += 1
        preds = np.unique(np.concatenate([rsrc[starts[s] : starts[s + 1]] for s in frontier]))
        preds = preds[dist[preds] < 0]
        dist[preds] = d
        frontier = preds
    return dist


def trim(T: np.ndarray, accepting: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop states unreachable from ``start`` or that cannot reach acceptance.

    Raises ``ValueError`` when the language is empty (the start state itself is useless).
    """
    keep = reachable(T, start) & coreachable(T, accepting)
    if not keep[start]:
        raise ValueError("the automaton accepts no stream at all (empty language)")
    new_id = np.full(T.shape[0] + 1, REJECT, dtype=np.int32)  # last slot maps REJECT
    new_id[np.nonzero(keep)[0]] = np.arange(int(keep.sum()), dtype=np.int32)
    T2 = new_id[T[keep]]
    return T2.astype(np.int32), accepting[keep].copy(), int(new_id[start])


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """``int64[N]``: the same id for equal rows of a 2-D array (ids in sorted-row order)."""
    rows = np.ascontiguousarray(rows)
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, ids = np.unique(as_bytes, return_inverse=True)  # one sort of whole rows: fast
    return ids.reshape(-1).astype(np.int64)


def minimize(T: np.ndarray, accepting: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Moore's partition refinement, then a canonical breadth-first numbering.

    Two automata with the same language come out with identical tables, which makes the
    content hash of a compiled grammar independent of how it was written. Tokens with equal
    columns are refined once (a class each); rows are compared as bytes.
    """
    S = T.shape[0]
    if S == 0:
        return T.astype(np.int32), accepting.copy(), start
    token_class = _row_ids(T.T)
    first = np.zeros(int(token_class.max()) + 1, dtype=np.int64)
    first[token_class[::-1]] = np.arange(T.shape[1])[::-1]
    Tc = T[:, first]  # (S, classes): one column per class of equal columns
    rejected = Tc == REJECT
    Tc_safe = np.where(rejected, 0, Tc)
    block = accepting.astype(np.int32)
    n_blocks = len(np.unique(block))
    while True:
        succ = np.where(rejected, -1, block[Tc_safe]).astype(np.int32)
        new_block = _row_ids(np.concatenate([block[:, None], succ], axis=1)).astype(np.int32)
        n_new = int(new_block.max()) + 1
        block = new_block
        if n_new == n_blocks:
            break
        n_blocks = n_new
    # Quotient automaton: one representative row per block.
    reps = np.zeros(n_blocks, dtype=np.int64)
    reps[block] = np.arange(S)
    Tq = np.where(T[reps] == REJECT, REJECT, block[np.where(T[reps] == REJECT, 0, T[reps])])
    return canonical(Tq.astype(np.int32), accepting[reps].copy(), int(block[start]))


def canonical(T: np.ndarray, accepting: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Renumber states in breadth-first order from ``start`` (symbols in increasing order);
    unreachable states are dropped. One level of the search at a time, in numpy."""
    S = T.shape[0]
    new_id = np.full(S, -1, dtype=np.int64)
    new_id[start] = 0
    order = [np.array([start], dtype=np.int64)]
    count = 1
    frontier = order[0]
    while frontier.size:
        succ = T[frontier].reshape(-1)  # in (parent, symbol) order: a FIFO queue's order
        succ = succ[succ != REJECT]
        succ = succ[new_id[succ] < 0]
        _, first = np.unique(succ, return_index=True)
        frontier = succ[np.sort(first)].astype(np.int64)
        new_id[frontier] = np.arange(count, count + frontier.size)
        count += frontier.size
        order.append(frontier)
    perm = np.concatenate(order)
    lookup = np.append(new_id, REJECT)  # index -1 -> REJECT
    T2 = lookup[T[perm]].astype(np.int32)
    return T2, accepting[perm].copy(), 0


def expand(T_classes: np.ndarray, token_class: np.ndarray) -> np.ndarray:
    """Class table ``int32[S, C]`` -> vocabulary table ``int32[S, V]``.

    ``token_class``: ``int[V]``, the class of each token, or -1 for tokens no terminal
    matches (always rejected).
    """
    padded = np.concatenate([T_classes, np.full((T_classes.shape[0], 1), REJECT, np.int32)], axis=1)
    return padded[:, token_class].astype(np.int32)


def product(
    tables: Sequence[np.ndarray],
    accepting: Sequence[np.ndarray],
    starts: Sequence[int],
    max_states: int = 2_000_000,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Reachable part of the synchronous product of automata over one alphabet.

    Returns ``(T int32[S, A], accepting bool[S], start 0, states int32[S, K])`` where row
    ``i`` of ``states`` is the tuple of component states of product state ``i``.
    Breadth-first, a chunk of the frontier at a time (vectorized over states and symbols).
    Raises ``ValueError`` past ``max_states`` (estimate before asking for a dense product).
    """
    K = len(tables)
    sizes = np.array([t.shape[0] for t in tables], dtype=np.int64)
    strides = np.concatenate([[1], np.cumprod(sizes[:-1])]).astype(np.int64)
    start_vec = np.array(starts, dtype=np.int64)
    index: dict[int, int] = {int((start_vec * strides).sum()): 0}
    tuples: list[np.ndarray] = [start_vec[None, :]]
    rows: list[np.ndarray] = []
    n_states = 1
    done = 0
    pending = start_vec[None, :]
    while done < n_states:
        cur = pending[:chunk]
        pending = pending[chunk:]
        nxt = np.stack([tables[k][cur[:, k]] for k in range(K)], axis=-1).astype(np.int64)  # (n, A, K)
        ok = (nxt != REJECT).all(axis=-1)
        keys = np.where(ok, (np.where(nxt < 0, 0, nxt) * strides).sum(axis=-1), -1)  # (n, A)
        uniq, first = np.unique(keys[ok], return_index=True)
        flat_states = nxt[ok]
        ids = np.empty(uniq.shape[0], dtype=np.int64)
        new_rows = []
        for j, key in enumerate(uniq.tolist()):
            got = index.get(key)
            if got is None:
                got = index[key] = n_states
                n_states += 1
                new_rows.append(first[j])
            ids[j] = got
        if n_states > max_states:
            raise ValueError(f"product exceeds {max_states} states")
        if new_rows:
            fresh = flat_states[np.array(new_rows)]
            tuples.append(fresh)
            pending = np.concatenate([pending, fresh]) if pending.size else fresh
        row = np.full(keys.shape, REJECT, dtype=np.int32)
        row[ok] = ids[np.searchsorted(uniq, keys[ok])]
        rows.append(row)
        done += cur.shape[0]
    states = np.concatenate(tuples).astype(np.int32)
    acc = np.ones(n_states, dtype=bool)
    for k in range(K):
        acc &= accepting[k][states[:, k]]
    return np.concatenate(rows).astype(np.int32), acc, 0, states
