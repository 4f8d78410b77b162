"""Graph searches over the decoding product, in numpy: how many base tokens from a state
to acceptance, exactly, without building the product's table of states x vocabulary
(:func:`layered_distance`: a backward search over the reachable product of one large
component and the small ones beside it)."""

from __future__ import annotations

import numpy as np

from gramophone.decoding.rules import INF
from gramophone.errors import DecodingError
from gramophone.grammar import REJECT

__all__ = ["layered_distance"]


def _reverse_csr(T: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predecessors of each state along ``tokens`` (bool[V]): ``(sources, starts)`` with the
    predecessors of ``s`` in ``sources[starts[s]:starts[s+1]]``."""
    S = T.shape[0]
    sub = T[:, tokens]
    src, col = np.nonzero(sub != REJECT)
    dst = sub[src, col]
    order = np.argsort(dst, kind="stable")
    return src[order].astype(np.int64), np.searchsorted(dst[order], np.arange(S + 1)).astype(np.int64)


def _gather_ranges(values: np.ndarray, starts: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Concatenation of ``values[starts[n]:starts[n+1]]`` for every ``n`` in ``nodes``."""
    lo, hi = starts[nodes], starts[nodes + 1]
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    offsets = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
    return values[offsets + np.arange(total)]


def _dial(csr: tuple[np.ndarray, np.ndarray], init: np.ndarray, limit: int) -> np.ndarray:
    """Backward BFS with unit edges from sources at distances ``init`` (``INF``: none):
    ``int64[S]``, distances above ``limit`` reported as ``INF``."""
    rsrc, starts = csr
    dist = init.astype(np.int64).copy()
    finite = dist < INF
    if not finite.any():
        return dist
    d, hi = int(dist[finite].min()), int(dist[finite].max())
    while d <= min(hi, limit):
        frontier = np.nonzero(dist == d)[0]
        if frontier.size:
            preds = _gather_ranges(rsrc, starts, frontier)
            better = preds[dist[preds] > d + 1]
            if better.size:
                dist[better] = d + 1
                hi = max(hi, d + 1)
        d += 1
    dist[dist > limit] = INF
    return dist


def _side_order(side_T: np.ndarray) -> list[int]:
    """Side states in an order where every non-self-loop edge goes to an earlier state
    (reverse topological); ``DecodingError`` if the side automaton has a longer cycle."""
    K = side_T.shape[0]
    succ = [set(side_T[k][(side_T[k] != REJECT) & (side_T[k] != k)].tolist()) for k in range(K)]
    order: list[int] = []
    mark = [0] * K  # 0 new, 1 on stack, 2 done
    for root in range(K):
        if mark[root]:
            continue
        stack = [(root, iter(sorted(succ[root])))]
        mark[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                mark[node] = 2
                order.append(node)
            elif mark[nxt] == 1:
                raise DecodingError("a side constraint must be a counter (no cycles except self-loops)")
            elif mark[nxt] == 0:
                mark[nxt] = 1
                stack.append((nxt, iter(sorted(succ[nxt]))))
    return order


def layered_distance(
    T: np.ndarray, accepting: np.ndarray, side_T: np.ndarray, side_accepting: np.ndarray, limit: int = INF - 1
) -> np.ndarray:
    """``int32[K, S]``: fewest tokens from ``(s, k)`` to a state accepting in both automata.

    ``T`` int32[S, V] and ``accepting`` bool[S]: the dense automaton; ``side_T`` int32[K, V]
    and ``side_accepting`` bool[K]: a counter (acyclic but for self-loops). Side states are
    processed children first; layer ``k`` is a BFS over the dense graph restricted to the
    tokens that loop on ``k``, seeded with 0 at accepting states and with ``1 + dist`` of
    the layer each other token leads to. Distances above ``limit`` (and "never") are
    :data:`INF`.
    """
    S, K = T.shape[0], side_T.shape[0]
    D = np.full((K, S), INF, dtype=np.int64)
    csr_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for k in _side_order(side_T):
        row = side_T[k]
        loop = row == k
        init = np.where(accepting & side_accepting[k], 0, INF).astype(np.int64)
        for v in np.nonzero((row != REJECT) & ~loop)[0].tolist():
            nxt = T[:, v]
            ok = nxt != REJECT
            cand = 1 + D[row[v], nxt[ok]]
            init[ok] = np.minimum(init[ok], cand)
        key = np.packbits(loop).tobytes()
        csr = csr_cache.get(key)
        if csr is None:
            csr = csr_cache[key] = _reverse_csr(T, loop)
        D[k] = _dial(csr, np.minimum(init, INF), limit)
    return np.minimum(D, INF).astype(np.int32)
