"""What a decoding loop receives: per-group rows over the model's vocabulary and one
distance table over the groups' states (plain numpy, framework-neutral).

**The decoding language.** Decoding intersects the grammar's automaton with two more
components (:func:`framing_component`, :func:`min_notes_component`): a stream starts with
BOS, ends with EOS (PAD only after it), and holds at least one note (REMI allows a piece of
bar headers only). ``--bars N`` adds a bar counter.

**No table of product states x vocabulary.** A dense product table ``int32[S, V]`` is 47 MiB
for the shipped REMI config (54k states x 229 tokens) and would be 6.5 GB with a 30k BPE
vocabulary; for configs with rests and programs the product cannot even be built. So the
components stay apart at decode time, in a few **groups** (small components are merged
into one group while that does not grow the rows, :func:`_plan_groups`). Each group ``g``
keeps two tables over the model's vocabulary (a learned token lifted: its row is the
component run over the token's base sequence, :func:`lift`):

- ``next[g]`` ``int32[S_g+1, V]``: the group's next local state, ``S_g`` (dead) where the
  token is forbidden; row ``S_g`` is dead too;
- ``valid[g]`` ``bool[S_g+1, V]``: ``next[g] != S_g``.

A stream's state is ``int32[G]`` (one local state per group). The distance to acceptance is
exact over the **cartesian product of the groups' states** (``dist``, flat, ``uint8`` or
``uint16``, dead or unreachable cells at the dtype's maximum): it is computed once by a
backward search over the reachable product of the base automaton (cached) and scattered into
the cartesian array at the cell of each reachable product state. The mask of a step is then

- when ``remaining > max_distance`` (most steps): ``AND_g valid[g][state_g]`` — every token
  that all groups accept keeps a piece completable, because no reachable state is a dead
  end (checked when the tables are built; otherwise this path is never taken);
- in the last ``max_distance`` steps: ``dist[sum_g next[g][state_g] * stride_g] <
  min(remaining, dist_inf)``, exact.

**Sizes** (shipped REMI config): groups {syntax, framing, notes} (54 states), time (195),
note order (74); cartesian 808k cells, 0.8 MiB of ``uint8``; rows ``(55 + 196 + 75) x V x 5``
bytes: 0.4 MiB at V = 229, 47 MiB at V = 30,000 (against 6.5 GB for a dense lifted product).

**Neutral constraints.** A component may declare itself *neutral*: it never lengthens the
shortest valid ending (note order at one onset; MIDILike's per-key NoteOn/NoteOff pairing,
whose liveness one small open-notes counter carries). When the cartesian would exceed
:data:`NEUTRAL_CELLS` (4M cells), neutral groups are left out of the distance: they still
mask every step, and the distance stays exact (the decoding property tests hold the claims:
tight budgets always end valid). Only if the table is still over :data:`MAX_CELLS` are other
safety groups (every state accepting) left out, largest first; ``exact`` is then False: the
budget is still respected, but a piece may, rarely, be cut before its end in the last
``max_distance`` steps (the output check reports it). No supported config needs that.

**Trained vocabularies.** A learned token is allowed iff its base sequence is valid from
the state and leaves a piece completable within the budget (and it is not a mix of special
and other tokens, nor a second id of a special token: a piece ends with the one EOS id). Distances count base tokens;
every base token the grammar uses is also a learned token (checked), so a completion always
fits: the mask is safe, and conservative only in the last ``max_distance`` steps (where a
completion in fewer, longer learned tokens would also fit).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from gramophone._paths import cache_dir
from gramophone._version import __version__
from gramophone.decoding.rules import INF
from gramophone.errors import DecodingError, GramophoneError
from gramophone.grammar import REJECT, Automaton, Component
from gramophone.grammar.checker import check_stream
from gramophone.grammar.constraints import bars_component
from gramophone.tokenizers.learned import LearnedVocab, lift

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = [
    "DecodingTables",
    "PreparedPrompt",
    "decoding_automaton",
    "decoding_tables",
    "framing_component",
    "layered_distance",
    "min_notes_component",
    "prepare_prompt",
    "tables_for",
]

log = logging.getLogger(__name__)

BOS, EOS, PAD = "BOS_None", "EOS_None", "PAD_None"
NOTE_KINDS = ("Pitch", "PitchDrum", "NoteOn", "DrumOn")
_CACHE_FORMAT = 2
MAX_CELLS = 1 << 28  # largest cartesian distance table (bytes at uint8)
NEUTRAL_CELLS = 1 << 22  # above this, neutral groups are left out of the distance
MAX_GROUP_ROWS = 4096  # largest merged group


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


def _ends_only_when_accepting(component: Component, vocab: Sequence[str]) -> Component:
    """``component`` with EOS forbidden in its non-accepting states. Under the framing
    component nothing but PAD follows EOS, so the language is the same; but without this an
    EOS before the last note (or bar) would be a token every component accepts that leads
    to a dead end, and the cheap mask (see the module docstring) could not be used."""
    if EOS not in vocab:
        return component
    T = component.transitions.copy()
    T[~component.accepting, list(vocab).index(EOS)] = REJECT
    c = component
    return Component(c.name, T, c.accepting, c.start, dict(c.info), c.neutral)


def decoding_automaton(automaton: Automaton, bars: int | None = None) -> Automaton:
    """The grammar + framing (+ at least one note when the vocabulary has notes) + an exact
    bar count. Its checker states why a stream is not a valid decoder output."""
    vocab = automaton.vocab
    out = automaton.with_component(framing_component(vocab))
    if any(_kind(t) in NOTE_KINDS for t in vocab):
        out = out.with_component(_ends_only_when_accepting(min_notes_component(vocab), vocab))
    if bars is not None:
        if bars < 1:
            raise DecodingError(f"--bars must be at least 1, got {bars}")
        if "Bar_None" not in automaton.token_index:
            raise DecodingError("--bars needs Bar_None in the vocabulary")
        out = out.with_component(_ends_only_when_accepting(bars_component(vocab, bars), vocab))
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


def _plan_groups(sizes: Sequence[int]) -> list[list[int]]:
    """Components merged into groups: the two smallest groups merge while their product
    has no more rows than the two apart plus 64 (so rows never grow much) and stays below
    :data:`MAX_GROUP_ROWS`. Returns component indices per group, in component order."""
    groups = [[i] for i in range(len(sizes))]
    size = {i: int(n) for i, n in enumerate(sizes)}

    def rows(g: list[int]) -> int:
        return int(np.prod([size[i] for i in g]))

    while len(groups) > 1:
        groups.sort(key=rows)
        a, b = groups[0], groups[1]
        merged = rows(a) * rows(b)
        if merged > rows(a) + rows(b) + 64 or merged > MAX_GROUP_ROWS:
            break
        groups = [sorted(a + b), *groups[2:]]
    return sorted(groups, key=lambda g: g[0])


@dataclass(frozen=True, eq=False)
class DecodingTables:
    """Everything a decoding loop needs, as numpy arrays (see the module docstring).

    ``next`` / ``valid``: per group, ``int32[S_g+1, V]`` / ``bool[S_g+1, V]`` (row ``S_g``
    dead); ``strides`` ``int64[G]``: each group's stride in the flat ``dist`` (0 for a group
    left out of the distance); ``dist``: ``uint8`` or ``uint16`` over the cartesian cells,
    ``dist_inf`` (the dtype's maximum) for dead and unreachable cells; ``max_distance``: the
    largest finite distance of a reachable state (``INF`` when some reachable state is a dead
    end: the cheap mask is then never used); ``start`` ``int32[G]``; ``bos``/``eos``/``pad``:
    model ids (``pad`` is EOS without a PAD token); ``automaton``: the decoding automaton
    over the base vocabulary, for checking outputs; ``learned``: the model vocabulary.
    """

    next: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]
    strides: np.ndarray
    dist: np.ndarray
    dist_inf: int
    max_distance: int
    start: np.ndarray
    bos: int
    eos: int
    pad: int
    automaton: Automaton
    learned: LearnedVocab
    groups: tuple[tuple[str, ...], ...]
    exact: bool = True
    bars: int | None = None
    meta: dict[str, float] = field(default_factory=dict)

    @property
    def vocab(self) -> tuple[str, ...]:
        """Display names of the model vocabulary (base names, ``+``-joined when learned)."""
        return self.learned.names

    @property
    def vocab_size(self) -> int:
        return int(self.next[0].shape[1])

    @property
    def num_groups(self) -> int:
        return len(self.next)

    @property
    def dead(self) -> np.ndarray:
        """``int32[G]``: each group's dead local state."""
        return np.array([n.shape[0] - 1 for n in self.next], dtype=np.int32)

    @cached_property
    def nbytes(self) -> int:
        """Bytes of every table a loop reads."""
        return int(sum(a.nbytes for a in (*self.next, *self.valid, self.dist)))

    def distance(self, state: np.ndarray) -> int:
        """Base tokens from ``state`` (``int32[G]``) to acceptance (:data:`INF`: never)."""
        if (np.asarray(state) == self.dead).any():
            return INF
        d = int(self.dist[int((np.asarray(state, np.int64) * self.strides).sum())])
        return INF if d >= self.dist_inf else d

    def step(self, state: np.ndarray, token: int) -> np.ndarray:
        """The state after one model token (dead groups stay dead)."""
        return np.array([n[s, token] for n, s in zip(self.next, state, strict=True)], dtype=np.int32)

    def run(self, ids: Sequence[int]) -> np.ndarray:
        """The state after ``ids`` (model ids) from the start."""
        state = self.start.copy()
        for t in ids:
            state = self.step(state, int(t))
        return state

    def shortest(self) -> int:
        """Length in base tokens of the shortest valid output (BOS ... EOS)."""
        return self.distance(self.start)


def _save_npz(path: os.PathLike[str] | str, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically (a read-only cache is not fatal)."""
    try:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the decoding cache %s: %s", path, exc)


def _load_npz(path: os.PathLike[str] | str, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None (missing, truncated or foreign: rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in keys}
    except Exception as exc:  # any unreadable cache entry is rebuilt
        log.warning("rebuilding the decoding cache entry %s: %s", path, exc)
        return None


def _key(*parts: object) -> str:
    from gramophone.grammar.schemes import _code_hash

    text = "/".join(map(str, (*parts, _CACHE_FORMAT, __version__, _code_hash(), _module_hash())))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _module_hash() -> str:
    with open(__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def _product(auto: Automaton, use_cache: bool) -> dict[str, np.ndarray]:
    """The reachable product of ``auto``'s components (base tokens): ``T int32[S, V]``,
    ``accepting``, ``tuples int32[S, K]``, ``dist int32[S]`` (INF: never), cached."""
    path = cache_dir() / "decoding" / f"product-{_key(auto.hash)}.npz"
    keys = ("T", "accepting", "tuples", "dist")
    got = _load_npz(path, keys) if use_cache else None
    if got is not None:
        return got
    try:
        T, acc, _, tuples = auto.product_tables(max_states=8_000_000)
    except ValueError as exc:
        raise GramophoneError(f"the product of the distance components is too large ({exc})") from exc
    from gramophone.grammar import fsa

    d = fsa.distance_to_accept(T, acc)
    out = {"T": T, "accepting": acc, "tuples": tuples, "dist": np.where(d < 0, INF, d).astype(np.int32)}
    if use_cache:
        _save_npz(path, **out)
    return out


def _lifted_rows(
    comps: Sequence[Component], group: Sequence[int], learned: LearnedVocab
) -> tuple[np.ndarray, np.ndarray]:
    """``(next int32[S_g+1, V], valid bool[S_g+1, V])`` of one group over the model vocabulary."""
    sizes = [comps[i].num_states for i in group]
    S_g = int(np.prod(sizes))
    inner = np.concatenate([[1], np.cumprod(sizes[:-1])]).astype(np.int64)
    local = np.arange(S_g, dtype=np.int64)
    nxt: np.ndarray | None = None
    for k, i in enumerate(group):
        s_c = (local // inner[k]) % sizes[k]  # this component's state in each group state
        L = lift(comps[i].transitions, learned)[s_c]  # (S_g, V)
        part = np.where(L == REJECT, -1, L.astype(np.int64) * inner[k])
        nxt = part if nxt is None else np.where((nxt < 0) | (part < 0), -1, nxt + part)
    assert nxt is not None
    full = np.full((S_g + 1, nxt.shape[1]), S_g, dtype=np.int32)
    full[:S_g] = np.where(nxt < 0, S_g, nxt)
    return full, full != S_g


def decoding_tables(
    automaton: Automaton,
    bars: int | None = None,
    *,
    learned: LearnedVocab | None = None,
    limit: int | None = None,
    use_cache: bool = True,
    max_cells: int = MAX_CELLS,
) -> DecodingTables:
    """The tables to decode ``automaton``'s language (framed, with a note), optionally with
    exactly ``bars`` Bar tokens, over ``learned`` (default: the base vocabulary).

    ``limit`` is accepted for compatibility and ignored (distances are exact at any budget).
    """
    del limit
    t_start = time.perf_counter()
    full = decoding_automaton(automaton, bars)
    comps = list(full.components)
    if learned is None:
        learned = LearnedVocab(automaton.vocab, tuple((i,) for i in range(len(automaton.vocab))), False)
    if learned.base != automaton.vocab:
        raise DecodingError("the learned vocabulary is not over this automaton's base vocabulary")
    groups = _plan_groups([c.num_states for c in comps])
    bar_comp = len(comps) - 1 if bars is not None else None

    # Which groups the distance covers: all when the cartesian fits, else drop the largest
    # all-accepting (safety) groups first.
    def cells(gs: Sequence[list[int]]) -> int:
        return int(np.prod([np.prod([comps[i].num_states for i in g]) + 1 for g in gs], dtype=np.float64))

    in_dist = list(range(len(groups)))

    def neutral(g: int) -> bool:
        return all(comps[i].neutral and comps[i].accepting.all() for i in groups[g])

    def rows_of(g: int) -> int:
        return int(np.prod([comps[i].num_states for i in groups[g]]))

    if cells(groups) > min(max_cells, NEUTRAL_CELLS):
        # leave out every neutral group (exactness kept, and a smaller product to search);
        # then, only if still too large, other safety groups (every state accepting),
        # largest first, and the distance is no longer exact
        in_dist = [g for g in in_dist if not neutral(g)]
        others = sorted(
            (g for g in in_dist if all(comps[i].accepting.all() for i in groups[g])),
            key=lambda g: -rows_of(g),
        )
        for g in others:
            if cells([groups[h] for h in in_dist]) <= max_cells:
                break
            in_dist.remove(g)
    if cells([groups[g] for g in in_dist]) > max_cells:
        raise GramophoneError("the distance table of this grammar is too large to decode with")
    exact = all(neutral(g) for g in range(len(groups)) if g not in in_dist)

    # Reachable product of the distance components (without the bar counter), then the
    # bar counter's layers by the layered search.
    dist_comps = [i for g in in_dist for i in groups[g] if i != bar_comp]
    t0 = time.perf_counter()
    dense_auto = Automaton(full.vocab, tuple(comps[i] for i in dist_comps), "", {})
    prod = _product(dense_auto, use_cache)
    timings = {"product_s": time.perf_counter() - t0}
    T, acc, tuples = prod["T"], prod["accepting"], prod["tuples"]
    timings["product_states"] = float(T.shape[0])
    if bar_comp is not None and any(bar_comp in groups[g] for g in in_dist):
        t0 = time.perf_counter()
        side = comps[bar_comp]
        layers = layered_distance(T, acc, side.transitions, side.accepting)  # (K, S)
        timings["layered_distance_s"] = time.perf_counter() - t0
        side_T = side.transitions
    else:
        layers = prod["dist"][None, :]
        side_T = None
    K, S = layers.shape

    # Cartesian cells: stride of each distance group (its dead state included).
    g_sizes = [int(np.prod([comps[i].num_states for i in g])) for g in groups]
    strides = np.zeros(len(groups), dtype=np.int64)
    acc_stride = 1
    for g in in_dist:
        strides[g] = acc_stride
        acc_stride *= g_sizes[g] + 1
    n_cells = acc_stride
    finite = layers[layers < INF]
    max_d = int(finite.max()) if finite.size else 0
    dtype = np.uint8 if max_d < 255 else np.uint16
    if max_d >= 65535:
        raise GramophoneError("distances beyond 65,534 tokens are not supported")
    dist_inf = int(np.iinfo(dtype).max)
    dist = np.full(n_cells, dist_inf, dtype=dtype)
    col = {i: k for k, i in enumerate(dist_comps)}
    for k in range(K):
        flat = np.zeros(S, dtype=np.int64)
        for g in in_dist:
            inner = 1
            local = np.zeros(S, dtype=np.int64)
            for i in groups[g]:
                s_c = np.full(S, k, dtype=np.int64) if i == bar_comp else tuples[:, col[i]].astype(np.int64)
                local += s_c * inner
                inner *= comps[i].num_states
            flat += local * strides[g]
        d = layers[k]
        dist[flat] = np.where(d < INF, d, dist_inf).astype(dtype)

    # No dead end among reachable states: every valid base token from a state with a finite
    # distance leads to a finite distance (then the cheap mask is exact far from the end).
    dead_end = False
    for k in range(K):
        ok = layers[k] < INF
        nxt = T[ok]  # (n, V)
        nk = np.full(nxt.shape, k) if side_T is None else np.broadcast_to(side_T[k], nxt.shape)
        valid = (nxt != REJECT) & (nk != REJECT)
        d_next = np.where(valid, layers[np.where(nk == REJECT, 0, nk), np.where(nxt == REJECT, 0, nxt)], 0)
        if (d_next[valid] >= INF).any():
            dead_end = True
            break

    # Rows over the model vocabulary.
    t0 = time.perf_counter()
    rows = [_lifted_rows(comps, g, learned) for g in groups]
    timings["rows_s"] = time.perf_counter() - t0
    starts: list[int] = []
    for group in groups:
        inner, start_local = 1, 0
        for i in group:
            start_local += comps[i].start * inner
            inner *= comps[i].num_states
        starts.append(start_local)

    base_index = automaton.token_index
    if learned.trained:
        used = np.ones(len(learned.base), bool)  # tokens every component accepts somewhere
        for c in comps:
            used &= (c.transitions != REJECT).any(axis=0)
        missing = [learned.base[b] for b in np.nonzero(used & (learned.single < 0))[0]]
        if missing:
            raise DecodingError(
                f"the trained vocabulary has no single token for {', '.join(missing[:4])}: "
                "a length-aware mask cannot guarantee an ending"
            )

    def model_id(name: str) -> int:
        return int(learned.single[base_index[name]]) if learned.trained else base_index[name]

    if learned.trained:
        # a learned token that holds BOS, EOS or PAD among other tokens (Unigram learns
        # "PAD BOS PAD") is never allowed, nor a second id of a lone special token (Unigram
        # has two ids that read as EOS): a stream ends with the one EOS id the loops stop at
        specials = {base_index[t] for t in (BOS, EOS, PAD) if t in base_index}
        canonical = {int(learned.single[b]) for b in specials}
        mixed = [
            v
            for v, piece in enumerate(learned.pieces)
            if specials & set(piece) and (len(piece) > 1 or v not in canonical)
        ]
        if mixed:
            dead0 = rows[0][0].shape[0] - 1
            rows[0][0][:, mixed] = dead0
            rows[0][1][:, mixed] = False
    nexts = tuple(r[0] for r in rows)
    valids = tuple(r[1] for r in rows)
    for a in (*nexts, *valids, dist, strides):
        a.flags.writeable = False
    timings["total_s"] = time.perf_counter() - t_start
    return DecodingTables(
        next=nexts,
        valid=valids,
        strides=strides,
        dist=dist,
        dist_inf=dist_inf,
        max_distance=INF if dead_end else max_d,
        start=np.array(starts, dtype=np.int32),
        bos=model_id(BOS),
        eos=model_id(EOS),
        pad=model_id(PAD) if PAD in base_index else model_id(EOS),
        automaton=full,
        learned=learned,
        groups=tuple(tuple(comps[i].name for i in g) for g in groups),
        exact=exact,
        bars=bars,
        meta=timings,
    )


def tables_for(
    tokenizer: MusicTokenizer, bars: int | None = None, *, use_cache: bool = True
) -> DecodingTables:
    """The decoding tables of a miditok tokenizer (any supported scheme, trained or not):
    what the kernels of :mod:`gramophone.kernels` step through.

    >>> from gramophone.tokenizers import load_tokenizer
    >>> tables = tables_for(load_tokenizer())       # the shipped REMI config
    >>> tables.vocab_size, tables.shortest()
    (229, 8)
    """
    from gramophone.grammar import compile_tokenizer
    from gramophone.tokenizers import model_vocab

    return decoding_tables(
        compile_tokenizer(tokenizer),
        bars,
        learned=model_vocab(tokenizer),
        use_cache=use_cache,
    )


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt ready to continue: ``ids`` (model ids, BOS first) and the state after it."""

    ids: tuple[int, ...]
    state: np.ndarray  # int32[G]
    min_total: int  # an upper bound of the shortest valid output that starts with ``ids``


def prepare_prompt(
    tables: DecodingTables,
    grammar: Automaton,
    ids: Sequence[int] | None = None,
    name: str = "the prompt",
) -> PreparedPrompt:
    """Validate a prompt (model ids) and compute where decoding starts.

    Trailing EOS/PAD are dropped (a decoder output can be continued) and BOS is put first
    when missing; a second id of a special token (Unigram has two) reads as the first. A prompt that is not a valid beginning of a piece is a
    :class:`DecodingError` that says where it breaks (the grammar's checker's message, in
    base tokens); so is one that cannot be completed (e.g. more bars than ``--bars``).
    """
    learned = tables.learned
    special = {learned.pieces[i] for i in (tables.bos, tables.eos, tables.pad)}
    # a second id of a special token (Unigram reads two ids as EOS) becomes the one the loops use
    canonical = {v: int(learned.single[p[0]]) for v, p in enumerate(learned.pieces) if p in special}
    seq = [canonical.get(int(i), int(i)) for i in (ids or [])]
    while seq and seq[-1] in (tables.eos, tables.pad):
        seq.pop()
    shift = 0  # token indices in messages are those of the prompt as given
    if not seq or seq[0] != tables.bos:
        seq.insert(0, tables.bos)
        shift = 1
    base, owner = tables.learned.expand(seq)
    bos_base = tables.learned.pieces[tables.bos][0]

    def where(index: int, token: str) -> str:
        if not tables.learned.trained:
            return f"token {index - shift} ({token})"
        k = owner[index] if index < len(owner) else len(seq)
        return f"token {k - shift} ({tables.learned.names[seq[k]] if k < len(seq) else token})"

    report = check_stream(grammar, base)
    v = report.violation
    if v is not None and v.rejected_by != "end":
        before = " ".join(t for t in v.before if not (shift and t == grammar.vocab[bos_base]))
        ctx = f" after '... {before}'" if before else ""
        raise DecodingError(
            f"{name} is not a valid beginning of a piece: {where(v.index, v.token)}{ctx} is "
            f"rejected by {v.rejected_by}: {v.reason}; expected {v.expected}"
        )
    report = check_stream(tables.automaton, base)
    v = report.violation
    if v is not None and v.rejected_by != "end":
        reason = v.reason
        if tables.bars is not None and v.rejected_by.startswith("bars="):
            reason = f"it has more than {tables.bars} Bar tokens (--bars {tables.bars})"
        raise DecodingError(f"{name} cannot be continued: {where(v.index, v.token)}: {reason}")
    state = tables.run(seq)
    d = tables.distance(state)
    if d >= INF:
        raise DecodingError(f"{name} ({len(seq)} tokens) cannot be completed to a valid piece")
    return PreparedPrompt(tuple(seq), state, len(seq) + d)
