"""What a decoding loop receives: per-group rows over the model's vocabulary and one
distance table over the groups' states (plain numpy, framework-neutral).

**The decoding language** is the grammar's automaton with BOS/EOS framing, at least one
note, and ``--bars N``'s counter (:mod:`~gramophone.decoding.framing`); prompts are checked
and stepped in :mod:`~gramophone.decoding.prompt`; the distance search lives in
:mod:`~gramophone.decoding.distance`. This module builds the tables and caches the product.

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
and other tokens, nor a second id of a special token: a piece ends with the one EOS id).
Distances count base tokens; every base token the grammar uses is also a learned token
(checked), so a completion always fits: the mask is safe, and conservative only in the
last ``max_distance`` steps (where a completion in fewer, longer learned tokens would also
fit).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gramophone._files import atomic_write, cache_dir, code_hash, keep_cache_under, touch
from gramophone._version import __version__
from gramophone.decoding.distance import layered_distance
from gramophone.decoding.framing import BOS, EOS, PAD, decoding_automaton, with_suffix
from gramophone.decoding.rules import INF
from gramophone.errors import DecodingError, GramophoneError
from gramophone.grammar import REJECT, Automaton, Component
from gramophone.tokenizers.learned import LearnedVocab, lift

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = ["DecodingTables", "decoding_tables", "tables_for"]

log = logging.getLogger(__name__)

NOTE_KINDS = ("Pitch", "PitchDrum", "NoteOn", "DrumOn")
_CACHE_FORMAT = 2
MAX_CELLS = 1 << 28  # largest cartesian distance table (bytes at uint8)
NEUTRAL_CELLS = 1 << 22  # above this, neutral groups are left out of the distance
MAX_GROUP_ROWS = 4096  # largest merged group


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
    suffix: tuple[int, ...] | None = None  # base ids EOS stands for (bar infilling), if any

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
        atomic_write(path, buf.getvalue())
        keep_cache_under(Path(path).parent)
    except OSError as exc:
        log.warning("could not write the decoding cache %s: %s", path, exc)


def _load_npz(path: os.PathLike[str] | str, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None (missing, truncated or foreign: rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            got = {k: data[k] for k in keys}
        touch(Path(path))
        return got
    except Exception as exc:  # any unreadable cache entry is rebuilt, silently
        log.info("rebuilding the decoding cache entry %s: %s", path, exc)
        return None


def _key(*parts: object) -> str:
    from gramophone.grammar.schemes import automaton_code_hash

    code = (automaton_code_hash(), code_hash([__file__]))  # the grammar's code and this module
    text = "/".join(map(str, (*parts, _CACHE_FORMAT, __version__, *code)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _product(auto: Automaton, use_cache: bool) -> dict[str, np.ndarray]:
    """The reachable product of ``auto``'s components (base tokens): ``T int32[S, V]``,
    ``accepting``, ``tuples int32[S, K]``, ``dist int32[S]`` (INF: never), cached."""
    # keyed on the tables as they are (digest), not on the language (hash): the product's
    # states are tuples of these components' state numbers
    path = cache_dir() / "decoding" / f"product-{_key(auto.digest)}.npz"
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
    suffix: Sequence[int] | None = None,
) -> DecodingTables:
    """The tables to decode ``automaton``'s language (framed, with a note), optionally with
    exactly ``bars`` Bar tokens, over ``learned`` (default: the base vocabulary). With
    ``suffix`` (base ids), EOS stands for that suffix then EOS
    (:func:`~gramophone.decoding.framing.with_suffix`: bar infilling).

    ``limit`` is accepted for compatibility and ignored (distances are exact at any budget).
    """
    del limit
    t_start = time.perf_counter()
    plain = decoding_automaton(automaton, bars)
    full = plain if suffix is None else with_suffix(plain, suffix)
    comps = list(full.components)
    if learned is None:
        learned = LearnedVocab(automaton.vocab, tuple((i,) for i in range(len(automaton.vocab))), False)
    if learned.base != automaton.vocab:
        raise DecodingError("the learned vocabulary is not over this automaton's base vocabulary")
    groups = _plan_groups([c.num_states for c in comps])
    bar_comp = len(comps) - 1 if bars is not None else None
    in_dist, exact = _distance_groups(comps, groups, max_cells)
    timings: dict[str, float] = {}
    T, layers, tuples, side_T = _distance_layers(
        full, groups, in_dist, bar_comp, use_cache=use_cache, timings=timings, plain=plain, suffix=suffix
    )
    dist_comps = [i for g in in_dist for i in groups[g] if i != bar_comp]
    dist, strides, dist_inf, max_d = _cartesian(
        comps, groups, in_dist, dist_comps, bar_comp=bar_comp, layers=layers, tuples=tuples
    )
    dead_end = _has_dead_end(T, layers, side_T)
    t0 = time.perf_counter()
    nexts, valids = _model_rows(automaton, comps, groups, learned)
    timings["rows_s"] = time.perf_counter() - t0
    starts = [_local_state(comps, g, [comps[i].start for i in g]) for g in groups]
    for a in (*nexts, *valids, dist, strides):
        a.flags.writeable = False
    timings["total_s"] = time.perf_counter() - t_start

    def model_id(name: str) -> int:
        b = automaton.token_index[name]
        return int(learned.single[b]) if learned.trained else b

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
        pad=model_id(PAD) if PAD in automaton.token_index else model_id(EOS),
        automaton=full,
        learned=learned,
        groups=tuple(tuple(comps[i].name for i in g) for g in groups),
        exact=exact,
        bars=bars,
        meta=timings,
        suffix=None if suffix is None else tuple(int(t) for t in suffix),
    )


def _local_state(comps: Sequence[Component], group: Sequence[int], states: Sequence[Any]) -> Any:
    """A group's local state from its components' states (the first component varies fastest)."""
    inner, local = 1, 0
    for i, s in zip(group, states, strict=True):
        local += s * inner
        inner *= comps[i].num_states
    return local


def _distance_groups(
    comps: Sequence[Component], groups: Sequence[list[int]], max_cells: int
) -> tuple[list[int], bool]:
    """The groups the distance table covers, and whether it stays exact: all groups when
    their cartesian fits, else every neutral group left out (exact still), then, only if
    still too large, other safety groups (every state accepting), largest first (inexact)."""

    def size(g: int) -> int:
        return int(np.prod([comps[i].num_states for i in groups[g]]))

    def cells(gs: Sequence[int]) -> int:
        return int(np.prod([size(g) + 1 for g in gs], dtype=np.float64))

    def neutral(g: int) -> bool:
        return all(comps[i].neutral and comps[i].accepting.all() for i in groups[g])

    in_dist = list(range(len(groups)))
    if cells(in_dist) > min(max_cells, NEUTRAL_CELLS):
        in_dist = [g for g in in_dist if not neutral(g)]
        safety = [g for g in in_dist if all(comps[i].accepting.all() for i in groups[g])]
        for g in sorted(safety, key=lambda g: -size(g)):
            if cells(in_dist) <= max_cells:
                break
            in_dist.remove(g)
    if cells(in_dist) > max_cells:
        raise GramophoneError("the distance table of this grammar is too large to decode with")
    return in_dist, all(neutral(g) for g in range(len(groups)) if g not in in_dist)


def _distance_layers(
    full: Automaton,
    groups: Sequence[list[int]],
    in_dist: Sequence[int],
    bar_comp: int | None,
    *,
    use_cache: bool,
    timings: dict[str, float],
    plain: Automaton | None = None,
    suffix: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The reachable product of the distance components but the bar counter (``T``,
    ``tuples``), and the distances ``layers int32[K, S]`` per bar-counter state ``k`` (one
    layer without a counter), with the counter's transitions (``side_T``, or None).

    With ``suffix`` (``full`` is ``plain`` with EOS standing for it), the product is
    ``plain``'s (cached) with its EOS column replaced by the run over ``suffix + EOS``: that
    run stays inside ``plain``'s reachable product, so the states are the same, and a
    second product per suffix is never built."""
    comps = full.components
    source = plain.components if (plain is not None and suffix is not None) else comps
    dist_comps = [i for g in in_dist for i in groups[g] if i != bar_comp]
    t0 = time.perf_counter()
    prod = _product(Automaton(full.vocab, tuple(source[i] for i in dist_comps), "", {}), use_cache)
    timings["product_s"] = time.perf_counter() - t0
    T, acc, tuples, dist = prod["T"], prod["accepting"], prod["tuples"], prod["dist"]
    if source is not comps:
        assert suffix is not None
        T = _eos_as_suffix(T, full.token_index[EOS], suffix)
        from gramophone.grammar import fsa

        d = fsa.distance_to_accept(T, acc)
        dist = np.where(d < 0, INF, d).astype(np.int32)
    timings["product_states"] = float(T.shape[0])
    if bar_comp is None or not any(bar_comp in groups[g] for g in in_dist):
        return T, dist[None, :], tuples, None
    t0 = time.perf_counter()
    side = comps[bar_comp]
    layers = layered_distance(T, acc, side.transitions, side.accepting)  # (K, S)
    timings["layered_distance_s"] = time.perf_counter() - t0
    return T, layers, tuples, side.transitions


def _eos_as_suffix(T: np.ndarray, eos: int, suffix: Sequence[int]) -> np.ndarray:
    """``T`` (a product, ``int32[S, V]``) with EOS leading where ``suffix + EOS`` leads."""
    from gramophone.grammar import fsa

    out = T.copy()
    out[:, eos] = fsa.run_from_every_state(T, [*suffix, eos])
    return out


def _cartesian(
    comps: Sequence[Component],
    groups: Sequence[list[int]],
    in_dist: Sequence[int],
    dist_comps: Sequence[int],
    *,
    bar_comp: int | None,
    layers: np.ndarray,
    tuples: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(dist, strides, dist_inf, max_distance)``: the distances scattered into the flat
    cartesian array of the distance groups' states (dead state included, stride 0 for the
    groups left out), ``uint8`` or ``uint16`` with ``dist_inf`` (its maximum) for never."""
    K, S = layers.shape
    g_sizes = [int(np.prod([comps[i].num_states for i in g])) for g in groups]
    strides = np.zeros(len(groups), dtype=np.int64)
    n_cells = 1
    for g in in_dist:
        strides[g] = n_cells
        n_cells *= g_sizes[g] + 1
    finite = layers[layers < INF]
    max_d = int(finite.max()) if finite.size else 0
    if max_d >= 65535:
        raise GramophoneError("distances beyond 65,534 tokens are not supported")
    dtype = np.uint8 if max_d < 255 else np.uint16
    dist_inf = int(np.iinfo(dtype).max)
    dist = np.full(n_cells, dist_inf, dtype=dtype)
    col = {i: k for k, i in enumerate(dist_comps)}
    for k in range(K):
        flat = np.zeros(S, dtype=np.int64)
        for g in in_dist:
            states = [
                np.full(S, k, np.int64) if i == bar_comp else tuples[:, col[i]].astype(np.int64)
                for i in groups[g]
            ]
            flat += _local_state(comps, groups[g], states) * strides[g]
        dist[flat] = np.where(layers[k] < INF, layers[k], dist_inf).astype(dtype)
    return dist, strides, dist_inf, max_d


def _has_dead_end(T: np.ndarray, layers: np.ndarray, side_T: np.ndarray | None) -> bool:
    """Whether some valid base token leads a reachable state with a finite distance to one
    that can no longer end (then the cheap mask is never used: see the module notes)."""
    for k in range(layers.shape[0]):
        nxt = T[layers[k] < INF]  # (n, V)
        nk = np.full(nxt.shape, k) if side_T is None else np.broadcast_to(side_T[k], nxt.shape)
        valid = (nxt != REJECT) & (nk != REJECT)
        d_next = np.where(valid, layers[np.where(nk == REJECT, 0, nk), np.where(nxt == REJECT, 0, nxt)], 0)
        if (d_next[valid] >= INF).any():
            return True
    return False


def _model_rows(
    automaton: Automaton, comps: Sequence[Component], groups: Sequence[list[int]], learned: LearnedVocab
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Each group's ``next`` and ``valid`` rows over the model vocabulary. A trained
    vocabulary must have a single token for each base token the grammar uses (else a
    length-aware mask cannot guarantee an ending); its learned tokens that mix a special
    token with others (Unigram learns "PAD BOS PAD"), or repeat a lone special token by a
    second id (Unigram has two ids that read as EOS), are never allowed: a stream ends with
    the one EOS id the loops stop at."""
    rows = [_lifted_rows(comps, g, learned) for g in groups]
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
        index = automaton.token_index
        specials = {index[t] for t in (BOS, EOS, PAD) if t in index}
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
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


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
