"""What a decoding loop receives: a dense product table, a side-constraint table and a
layered distance-to-acceptance table (plain numpy, framework-neutral).

**The decoding language.** Decoding intersects the grammar's automaton with two more
components (:func:`framing_component`, :func:`min_notes_component`): a stream starts with
BOS, ends with EOS (PAD only after it), and holds at least one note (REMI allows a piece of
bar headers only: ``Bar_None TimeSig_4/4`` is a complete stream, and it decodes to an empty
MIDI file). Both are cheap: the dense product of the shipped grammar grows from 53,944 to
54,148 states.

**Dense + side, factored.** The grammar, framing and note components are multiplied into
one dense table ``next_state int32[S+1, V]`` (product state -> next state; ~47 MiB for the
shipped config, built in ~1.5 s and cached under ``cache_dir()/decoding``). User constraints
such as ``--bars N`` stay a separate *side* automaton (``side_next int32[K+1, V]``, K = N+1
states for a bar counter): the full product ``S x (N+1)`` would be ~N+1 times the table
(3 GiB for 64 bars). Exactness is kept by the distance table ``dist int32[K+1, S+1]``:
``dist[k, s]`` is the fewest tokens from the joint state ``(s, k)`` to acceptance,
computed by a backward breadth-first search layer by layer (:func:`layered_distance`; only
Bar tokens move a bar counter, so each layer is a BFS over the dense graph without Bar
edges, seeded from the layer above). Row/column ``K``/``S`` is the dead state (every
forbidden token leads there; distance :data:`INF`), so a loop never special-cases REJECT.
A side automaton must be a *counter*: acyclic apart from self-loops (bar counts, note
counts, "at most n of X" all are).

Without side constraints (K = 1) the table ``dist_next int32[S+1, V] = dist[0, next_state]``
is precomputed too, so the mask of a step is one row gather and one comparison.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from gramophone._paths import cache_dir
from gramophone._version import __version__
from gramophone.decoding.rules import INF
from gramophone.errors import DecodingError, GramophoneError
from gramophone.grammar import REJECT, Automaton, Component
from gramophone.grammar.checker import check_stream
from gramophone.grammar.constraints import bars_component

__all__ = [
    "DecodingTables",
    "PreparedPrompt",
    "decoding_automaton",
    "decoding_tables",
    "framing_component",
    "layered_distance",
    "min_notes_component",
    "prepare_prompt",
]

log = logging.getLogger(__name__)

BOS, EOS, PAD = "BOS_None", "EOS_None", "PAD_None"
NOTE_KINDS = ("Pitch", "PitchDrum")
_CACHE_FORMAT = 1


def _kind(token: str) -> str:
    return token.partition("_")[0]


def framing_component(vocab: Sequence[str]) -> Component:
    """BOS first, EOS last, PAD only after EOS: states 0 (before BOS), 1 (body), 2 (ended,
    the only accepting one). Raises :class:`DecodingError` without BOS or EOS tokens."""
    index = {tok: i for i, tok in enumerate(vocab)}
    missing = [t for t in (BOS, EOS) if t not in index]
    if missing:
        raise DecodingError(
            f"decoding needs the special tokens {BOS} and {EOS}; the vocabulary lacks {', '.join(missing)}"
        )
    specials = np.array([_kind(t) in ("BOS", "EOS", "PAD", "MASK") for t in vocab])
    T = np.full((3, len(vocab)), REJECT, dtype=np.int32)
    T[0, index[BOS]] = 1
    T[1, ~specials] = 1
    T[1, index[EOS]] = 2
    if PAD in index:
        T[2, index[PAD]] = 2
    return Component("framing", T, np.array([False, False, True]), 0)


def min_notes_component(vocab: Sequence[str], notes: int = 1) -> Component:
    """At least ``notes`` note tokens (Pitch/PitchDrum): a saturating counter 0..notes."""
    S = notes + 1
    T = np.tile(np.arange(S, dtype=np.int32)[:, None], (1, len(vocab)))
    is_note = np.array([_kind(t) in NOTE_KINDS for t in vocab])
    T[:, is_note] = np.minimum(np.arange(S) + 1, notes)[:, None]
    return Component(f"notes>={notes}", T, np.arange(S) == notes, 0)


def decoding_automaton(automaton: Automaton, bars: int | None = None) -> Automaton:
    """The grammar + framing (+ at least one note when the vocabulary has notes) + an exact
    bar count. Its checker states why a stream is not a valid decoder output."""
    out = automaton.with_component(framing_component(automaton.vocab))
    if any(_kind(t) in NOTE_KINDS for t in automaton.vocab):
        out = out.with_component(min_notes_component(automaton.vocab))
    if bars is not None:
        if bars < 1:
            raise DecodingError(f"--bars must be at least 1, got {bars}")
        if "Bar_None" not in automaton.token_index:
            raise DecodingError("--bars needs Bar_None in the vocabulary")
        out = out.with_component(bars_component(automaton.vocab, bars))
    return out


# ----------------------------------------------------------------------------- distances


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


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True, eq=False)
class DecodingTables:
    """Everything a decoding loop needs, as numpy arrays (see the module docstring).

    ``next_state`` int32[S+1, V] (row ``S`` dead), ``side_next`` int32[K+1, V] (row ``K``
    dead), ``dist`` int32[K+1, S+1]; ``start``/``side_start``: the states before any token;
    ``bos``/``eos``/``pad`` token ids (``pad`` is EOS when there is no PAD token);
    ``automaton``: the decoding automaton in lockstep form, for checking outputs.
    """

    next_state: np.ndarray
    side_next: np.ndarray
    dist: np.ndarray
    start: int
    side_start: int
    bos: int
    eos: int
    pad: int
    automaton: Automaton
    bars: int | None = None
    limit: int | None = None  # distances above it are INF (the layered search stopped there)
    meta: dict[str, float] = field(default_factory=dict)

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.automaton.vocab

    @property
    def num_states(self) -> int:
        """Dense product states (without the dead one)."""
        return int(self.next_state.shape[0] - 1)

    @property
    def num_side_states(self) -> int:
        return int(self.side_next.shape[0] - 1)

    @cached_property
    def dist_next(self) -> np.ndarray:
        """``int32[S+1, V]``: ``dist[0, next_state]``, the one-gather mask of K = 1 tables."""
        if self.num_side_states != 1:
            raise ValueError("dist_next exists only without side constraints")
        out = self.dist[0][self.next_state]
        out.flags.writeable = False
        return out

    def distance(self, state: int, side: int) -> int:
        return int(self.dist[side, state])

    def run(self, ids: Sequence[int]) -> tuple[int, int]:
        """The joint state after ``ids`` from the start (the dead state after a rejection)."""
        s, k = self.start, self.side_start
        for t in ids:
            s, k = int(self.next_state[s, int(t)]), int(self.side_next[k, int(t)])
        return s, k

    def shortest(self) -> int:
        """Length of the shortest valid output (BOS ... EOS)."""
        return self.distance(self.start, self.side_start)


def _dead_padded(T: np.ndarray) -> np.ndarray:
    """int32[S, V] with REJECT -> int32[S+1, V] where REJECT and the new last row lead to S."""
    S = T.shape[0]
    out = np.full((S + 1, T.shape[1]), S, dtype=np.int32)
    out[:S] = np.where(T == REJECT, S, T)
    return out


def _dense(
    automaton: Automaton, use_cache: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """``(next_state int32[S+1, V], accepting bool[S], dist int32[S], timings)`` of the
    dense product of ``automaton``, cached by its content hash."""
    import time

    key = hashlib.sha256(f"{automaton.hash}/{_CACHE_FORMAT}/{__version__}".encode()).hexdigest()[:24]
    path = cache_dir() / "decoding" / f"product-{key}.npz"
    if use_cache and path.exists():
        try:
            t0 = time.perf_counter()
            with np.load(path, allow_pickle=False) as data:
                T, acc, dist = data["next_state"], data["accepting"], data["dist"]
            return T, acc, dist, {"product_load_s": time.perf_counter() - t0}
        except (OSError, ValueError, KeyError, EOFError) as exc:
            log.warning("rebuilding the decoding cache entry %s: %s", path, exc)
    t0 = time.perf_counter()
    try:
        product = automaton.product(max_states=8_000_000)
    except ValueError as exc:
        raise GramophoneError(
            f"the dense product of the grammar is too large to decode with ({exc})"
        ) from exc
    t1 = time.perf_counter()
    if not product.accepting.any() or product.distance[product.start] < 0:
        raise DecodingError("the grammar has no stream that starts with BOS, ends with EOS and has a note")
    dist = np.where(product.distance < 0, INF, product.distance).astype(np.int32)
    T = _dead_padded(product.transitions)
    t2 = time.perf_counter()
    if use_cache:
        try:
            import io
            import os
            import tempfile

            buf = io.BytesIO()
            np.savez_compressed(buf, next_state=T, accepting=product.accepting, dist=dist)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("could not write the decoding cache %s: %s", path, exc)
    return T, product.accepting, dist, {"product_s": t1 - t0, "distance_s": t2 - t1}


def decoding_tables(
    automaton: Automaton, bars: int | None = None, *, limit: int | None = None, use_cache: bool = True
) -> DecodingTables:
    """The tables to decode ``automaton``'s language (framed, with a note), optionally with
    exactly ``bars`` Bar tokens. ``limit``: the largest budget that will be used (bounds the
    layered search with ``--bars``; distances beyond it are :data:`INF`)."""
    import time

    base = decoding_automaton(automaton)  # the dense part
    T, acc, dist0, timings = _dense(base, use_cache)
    S = T.shape[0] - 1
    V = len(automaton.vocab)
    full = decoding_automaton(automaton, bars)
    if bars is None:
        side_next = np.zeros((2, V), dtype=np.int32)
        side_next[1] = 1
        dist = np.full((2, S + 1), INF, dtype=np.int32)
        dist[0, :S] = dist0
    else:
        side = full.components[-1]
        t0 = time.perf_counter()
        dense = np.where(T[:S] == S, REJECT, T[:S])  # back to REJECT for the search
        bound = INF - 1 if limit is None else limit
        layers = layered_distance(dense, acc, side.transitions, side.accepting, bound)
        timings["layered_distance_s"] = time.perf_counter() - t0
        K = side.num_states
        side_next = _dead_padded(side.transitions)
        dist = np.full((K + 1, S + 1), INF, dtype=np.int32)
        dist[:K, :S] = layers
    index = automaton.token_index
    for a in (T, side_next, dist):
        a.flags.writeable = False
    return DecodingTables(
        next_state=T,
        side_next=side_next,
        dist=dist,
        start=0,
        side_start=0,
        bos=index[BOS],
        eos=index[EOS],
        pad=index.get(PAD, index[EOS]),
        automaton=full,
        bars=bars,
        limit=limit if bars is not None else None,
        meta=timings,
    )


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt ready to continue: ``ids`` (BOS first) and the joint state after it."""

    ids: tuple[int, ...]
    state: int
    side: int
    min_total: int  # the shortest valid output that starts with ``ids`` (INF: beyond the limit)


def prepare_prompt(
    tables: DecodingTables,
    grammar: Automaton,
    ids: Sequence[int] | None = None,
    name: str = "the prompt",
) -> PreparedPrompt:
    """Validate a prompt and compute where decoding starts.

    Trailing EOS/PAD are dropped (a decoder output can be continued) and BOS is put first
    when missing. A prompt that is not a valid beginning of a piece is a
    :class:`DecodingError` that says where it breaks (the grammar's checker's message);
    so is one that cannot be completed (e.g. more bars than ``--bars``).
    """
    seq = [int(i) for i in (ids or [])]
    while seq and seq[-1] in (tables.eos, tables.pad):
        seq.pop()
    shift = 0  # token indices in messages are those of the prompt as given
    if not seq or seq[0] != tables.bos:
        seq.insert(0, tables.bos)
        shift = 1
    report = check_stream(grammar, seq)
    v = report.violation
    if v is not None and v.rejected_by != "end":
        before = " ".join(t for t in v.before if not (shift and t == grammar.vocab[tables.bos]))
        ctx = f" after '... {before}'" if before else ""
        raise DecodingError(
            f"{name} is not a valid beginning of a piece: token {v.index - shift} ({v.token}){ctx} is "
            f"rejected by {v.rejected_by}: {v.reason}; expected {v.expected}"
        )
    report = check_stream(tables.automaton, seq)
    v = report.violation
    if v is not None and v.rejected_by != "end":
        reason = v.reason
        if tables.bars is not None and v.rejected_by.startswith("bars="):
            reason = f"it has more than {tables.bars} Bar tokens (--bars {tables.bars})"
        raise DecodingError(f"{name} cannot be continued: token {v.index - shift} ({v.token}): {reason}")
    state, side = tables.run(seq)
    d = tables.distance(state, side)
    if d >= INF and tables.limit is None:
        raise DecodingError(f"{name} ({len(seq)} tokens) cannot be completed to a valid piece")
    # with a limit, INF means "more than the limit": min_total >= INF, the caller rebuilds
    # the tables without a limit to learn the true minimum (see driver.prepare)
    return PreparedPrompt(tuple(seq), state, side, len(seq) + d if d < INF else INF)
