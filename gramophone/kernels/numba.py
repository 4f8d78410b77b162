"""The step kernels compiled with numba (see :mod:`gramophone.kernels`): the numpy kernels'
API on numpy arrays, plus :func:`step`, one fused pass per decoding step.

:func:`device_tables` packs a :class:`~gramophone.decoding.DecodingTables` once (per tables
object): each group's ``valid`` rows as bits (``uint64[S, ceil(V / 64)]``, one table for all
groups), and its ``next`` rows side by side. The cheap mask of a stream is then the AND of
``G`` bit rows, 64 tokens a word; the exact mask (the last steps of a budget) reads the
distance table token by token, as the numpy kernel does.

:func:`step` chooses each stream's token and advances its state in one compiled call,
without writing the ``bool[B, V]`` mask or a masked copy of the logits: greedy, or
temperature + Gumbel-max (rules 2, 4 and 7 of :mod:`gramophone.decoding.rules`, bit for bit
the numpy kernels' choice). Greedy, it takes each row's argmax first (compiled, or numpy's
on long rows) and reads only that token's mask bit (and near the budget's end its
distance); a stream whose best token is
refused, or not finite, gets its mask built in words and its allowed logits scanned run by
run (a run: consecutive allowed tokens), each logit's order-preserving integer key packed with
its index so that the scan is a maximum without a branch on the logits (fresh logits every
step would mispredict one); the Gumbel-max sampler scans the same way. Top-k
and top-p need the whole sorted row; with them :func:`step` runs :func:`allowed`, the numpy
:func:`~gramophone.kernels.numpy.choose` and :func:`advance`. Everything runs on the calling
thread. ::

    from gramophone.kernels import numba as K
    tab = K.device_tables(tables)
    state = K.start(tab, batch)
    for t in range(len(prompt), budget):
        logits = my_model(...)                                  # float32[B, V]
        token, state = K.step(tab, state, logits, budget - t)   # greedy
        # or, into arrays the loop keeps: K.step(..., out=(token, state))
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

try:
    import numba
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("gramophone.kernels.numba needs numba: pip install 'gramophone[numba]'") from exc
import numpy as np

from gramophone.decoding.rules import FMAX, Sampling
from gramophone.decoding.tables import DecodingTables
from gramophone.kernels import numpy as _reference

__all__ = [
    "NumbaTables",
    "advance",
    "allowed",
    "apply",
    "choose",
    "device_tables",
    "pack_rows",
    "sanitize",
    "start",
    "step",
]

#: The numpy kernels' sampling rules and ``apply`` (they work on the mask :func:`allowed` returns).
apply = _reference.apply
sanitize = _reference.sanitize
choose = _reference.choose


@dataclass(frozen=True)
class NumbaTables:
    """The tables packed for the compiled kernels."""

    bits: np.ndarray  # uint64 (sum of S_g+1, W): each group's valid rows as bits, little-endian
    next: np.ndarray  # (sum of S_g+1, V): each group's next rows, in the least unsigned dtype that holds them
    layout: np.ndarray  # int64 (2, G): per group, its first row in bits and next; its stride in dist
    dist: np.ndarray  # flat cartesian distances (uint8 / uint16)
    dist_inf: int
    max_distance: int
    start: np.ndarray  # int32 (G,)
    vocab_size: int


_CACHE: weakref.WeakKeyDictionary[DecodingTables, NumbaTables] = weakref.WeakKeyDictionary()


def pack_rows(valid: np.ndarray) -> np.ndarray:
    """``uint64[S, ceil(V / 64)]``: ``bool[S, V]`` rows as little-endian bit words."""
    S, V = valid.shape
    padded = np.zeros((S, -(-V // 64) * 64), dtype=bool)
    padded[:, :V] = valid
    return np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little").view("<u8"), dtype=np.uint64)


def _state_dtype(largest: int) -> np.dtype:
    """The least dtype holding states up to ``largest``: the ``next`` rows are what a step
    reads from memory besides the logits (uint8 for the shipped config's groups of 55, 196
    and 75 states: a quarter of int32's bytes; the kernels widen on reading)."""
    for dtype in (np.uint8, np.uint16):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def device_tables(tables: DecodingTables) -> NumbaTables:
    """``tables`` packed for these kernels, once per tables object."""
    got = _CACHE.get(tables)
    if got is None:
        V = tables.vocab_size
        rows = [pack_rows(valid) for valid in tables.valid]
        sizes = [v.shape[0] for v in tables.valid]
        got = _CACHE[tables] = NumbaTables(
            bits=np.ascontiguousarray(np.concatenate(rows)),
            next=np.ascontiguousarray(np.concatenate(tables.next).astype(_state_dtype(max(sizes) - 1))),
            layout=np.stack([np.cumsum([0, *sizes[:-1]]), np.asarray(tables.strides)]).astype(np.int64),
            dist=np.ascontiguousarray(tables.dist),
            dist_inf=int(tables.dist_inf),
            max_distance=int(tables.max_distance),
            start=np.asarray(tables.start, dtype=np.int32),
            vocab_size=V,
        )
    return got


def start(tab: NumbaTables, batch: int) -> np.ndarray:
    """``int32[B, G]``: the start state, for ``batch`` streams."""
    return np.tile(tab.start, (batch, 1))


# ----------------------------------------------------------------------------- compiled parts
# ``layout`` int64[2, G]: each group's first row in ``bits`` and ``next`` (row 0) and its
# stride in ``dist`` (row 1, 0: left out). ``limit`` < 0: the cheap mask (far from the
# budget's end); else the exact mask keeps tokens whose distance to an ending is below it.

_FMAX32 = np.float32(FMAX)  # a compile-time constant of the kernels


@numba.njit(nogil=True, cache=True, inline="always")
def _row_and(bits, layout, state, b, out):
    """``out`` uint64[W]: the AND of stream ``b``'s group rows."""
    G = state.shape[1]
    r0 = layout[0, 0] + state[b, 0]
    for w in range(out.shape[0]):
        out[w] = bits[r0, w]
    for g in range(1, G):
        r = layout[0, g] + state[b, g]
        for w in range(out.shape[0]):
            out[w] &= bits[r, w]


@numba.njit(nogil=True, cache=True, inline="always")
def _flat(nxt, layout, state, b, v):
    """Stream ``b``'s cell in the flat distance table after token ``v``."""
    flat = 0
    for g in range(state.shape[1]):
        if layout[1, g] != 0:
            flat += np.int64(nxt[layout[0, g] + state[b, g], v]) * layout[1, g]
    return flat


@numba.njit(nogil=True, cache=True)
def _mask_words(bits, nxt, layout, dist, limit, state, b, V, out):  # noqa: PLR0917 - compiled
    """``out`` uint64[W]: stream ``b``'s mask. The exact mask looks up only the cheap
    mask's tokens: a token some group's row forbids leads to a dead state, never below
    ``limit``."""
    _row_and(bits, layout, state, b, out)
    if limit < 0:
        return
    one = np.uint64(1)
    for w in range(out.shape[0]):
        m = out[w]
        keep = np.uint64(0)
        for j in range(min(64, V - w * 64)):
            if (m >> np.uint64(j)) & one and dist[_flat(nxt, layout, state, b, w * 64 + j)] < limit:
                keep |= one << np.uint64(j)
        out[w] = keep


@numba.njit(nogil=True, cache=True, inline="always")
def _allows(bits, nxt, layout, dist, limit, state, b, j):  # noqa: PLR0917 - compiled
    """Whether stream ``b``'s mask has token ``j``: its bit in each group's row, and with
    the exact mask its distance."""
    w = j >> 6
    m = bits[layout[0, 0] + state[b, 0], w]
    for g in range(1, state.shape[1]):
        m &= bits[layout[0, g] + state[b, g], w]
    if not (m >> np.uint64(j & 63)) & np.uint64(1):
        return False
    return limit < 0 or dist[_flat(nxt, layout, state, b, j)] < limit


@numba.njit(nogil=True, cache=True)
def _masks(bits, nxt, layout, dist, limit, state, V, out):  # noqa: PLR0917 - compiled
    """``out`` uint64[B, W]: every stream's mask."""
    for b in range(state.shape[0]):
        _mask_words(bits, nxt, layout, dist, limit, state, b, V, out[b])


@numba.njit(nogil=True, cache=True)
def _unpack(maskbits, V, out):
    B = maskbits.shape[0]
    one = np.uint64(1)
    for b in range(B):
        for v in range(V):
            out[b, v] = (maskbits[b, v >> 6] >> np.uint64(v & 63)) & one


@numba.njit(nogil=True, cache=True, inline="always")
def _sane(x):
    """Rule 2 on one float32 logit: NaN to -FMAX, infinities to +-FMAX."""
    if math.isnan(x):
        return -_FMAX32
    if x > _FMAX32:
        return _FMAX32
    if x < -_FMAX32:
        return -_FMAX32
    return x


def _float_key(x: float) -> int:
    """The order-preserving integer key of a float32 (see :func:`_key`)."""
    i = int(np.float32(x).view(np.int32))
    return i ^ ((i >> 31) & 0x7FFFFFFF)


# the keys of -FMAX and FMAX: rule 2 clamps keys to them (compile-time constants)
_KEY_LO, _KEY_HI = np.int64(_float_key(-FMAX)), np.int64(_float_key(FMAX))
_NONE = np.int64(-(2**63))  # below every packed key: nothing allowed


@numba.njit(nogil=True, cache=True, inline="always")
def _key(i):
    """The sanitized float32 with bits ``i`` (int32) as an integer with the same order: the
    bits with the magnitude flipped on negative floats, -0.0 as +0.0; NaN as -FMAX and the
    infinities as +-FMAX (rule 2). No branch: a select per case."""
    k = np.int64(i) ^ ((np.int64(i) >> 31) & 0x7FFFFFFF)
    k = _KEY_LO if k < _KEY_LO else k
    k = _KEY_HI if k > _KEY_HI else k
    k = _KEY_LO if (i & 0x7FFFFFFF) > 0x7F800000 else k  # NaN
    return k + (k == -1)  # -0.0 ties with +0.0


@numba.njit(nogil=True, cache=True, inline="always")
def _first_run(m):
    """``(lo, hi, rest)``: the lowest run of set bits of ``m`` (nonzero) is bits
    ``lo..hi-1``; ``rest``: ``m`` without it. Masks are mostly a few runs (pitches,
    velocities, durations, positions), so loops go run by run, not bit by bit."""
    one = np.uint64(1)
    lo = _bit_index(m & (~m + one))
    above = ~(m | (m - one))  # clear on the run and below it
    if above == 0:
        return lo, 64, np.uint64(0)
    hi = _bit_index(above & (~above + one))
    return lo, hi, m & ~((one << np.uint64(hi)) - one)


@numba.njit(nogil=True, cache=True, inline="always")
def _best(words, keys, b):
    """The index of the best sanitized logit of row ``b`` (``keys``: the logits' bits as
    int32) among the tokens of ``words``, the first on ties; -1 when the mask is empty.
    Each allowed logit is packed as ``key << 32 | (2**32 - 1 - index)`` and the largest
    kept: over each run of allowed tokens a loop without a branch on the data (fresh
    logits every step would mispredict it), which LLVM vectorizes."""
    low32 = np.int64(0xFFFFFFFF)
    best = _NONE
    for w in range(words.shape[0]):
        m = words[w]
        base = w * 64
        while m != 0:
            lo, hi, m = _first_run(m)
            for j in range(base + lo, base + hi):
                p = (_key(keys[b, j]) << 32) | (low32 - j)
                best = p if p > best else best
    return -1 if best == _NONE else low32 - (best & low32)


@numba.njit(nogil=True, cache=True, inline="always")
def _fits(nxt, layout, logits, state, tok, out):  # noqa: PLR0917 - compiled
    """Whether a step's arrays (their shapes: arrays passed to an inlined helper cost
    reference counting calls) have the shapes the kernels index without bounds checks."""
    B, G = state
    return (
        logits[0] == B and logits[1] == nxt[1] and layout[1] == G
        and tok[0] == B and out[0] == B and out[1] == G
    )  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _greedy(bits, nxt, layout, dist, limit, logits, top, state, tok, out):  # noqa: PLR0917 - compiled
    """Each stream's greedy token among the tokens of its mask (the numpy kernels' choice),
    in ``tok``, and the state after it, in ``out``.

    Each row's unmasked argmax first: ``top[b]`` (int64[B]; -1: none), or its own (two
    vectorized passes) when ``top`` is empty. When that token is allowed and its logit
    finite and above ``-FMAX``, it is the masked argmax (the first index of the row's
    maximum is the first allowed index of it; rule 2 changes no logit at or above it), and
    only its own mask bit (and distance) is read. Otherwise the stream's mask is built in
    words and its allowed logits scanned.

    ``out`` may be ``state`` itself (``step(..., out=)``): a row's state is read before its
    row of ``out`` is written, and never after. False (nothing written) when the arrays'
    shapes do not fit."""
    if not _fits(nxt.shape, layout.shape, logits.shape, state.shape, tok.shape, out.shape):
        return False
    B, G = state.shape
    V = logits.shape[1]
    keys = logits.view(np.int32)
    words = np.empty(0, dtype=np.uint64)  # allocated for the first stream that needs it
    n = np.int32(V)
    for b in range(B):
        if top.shape[0] != 0:
            j = top[b]
        else:
            # the first index of the row's largest logit, -1 when that is a zero (+0.0 and
            # -0.0 tie, their bits differ): two passes LLVM vectorizes, the largest integer
            # key (a negative NaN is the smallest key: it never wins, and rule 2 sends it to
            # -FMAX anyway; a positive NaN or +inf wins, and the check below refuses it),
            # then the first index holding its bits. Written out here: a helper taking the
            # array costs a reference count call each side of every row.
            m = np.int32(-(2**31))
            for v in range(V):
                i = keys[b, v]
                k = np.int32(i ^ ((i >> 31) & 0x7FFFFFFF))
                if k > m:  # noqa: PLR1730 - LLVM vectorizes this form, not numba's max()
                    m = k
            j = -1
            if m != 0 and m != -1:  # noqa: PLR1714 - compiled
                t = np.int32(m ^ ((m >> 31) & 0x7FFFFFFF))  # the key's bits
                first = n
                for v in range(V):
                    c = np.int32(v) if keys[b, v] == t else n
                    if c < first:  # noqa: PLR1730 - as above
                        first = c
                j = first
        if (
            j < 0
            or not (-_FMAX32 < logits[b, j] <= _FMAX32)
            or not _allows(bits, nxt, layout, dist, limit, state, b, j)
        ):
            if words.shape[0] == 0:
                words = np.empty(bits.shape[1], dtype=np.uint64)
            _mask_words(bits, nxt, layout, dist, limit, state, b, V, words)
            j = _best(words, keys, b)
            j = max(j, 0)  # nothing allowed: the reference's argmax of an all -inf row
        tok[b] = j
        for g in range(G):
            out[b, g] = nxt[layout[0, g] + state[b, g], j]
    return True


@numba.njit(nogil=True, cache=True)
def _gumbel(bits, nxt, layout, dist, limit, logits, gumbel, temp, state, tok, out):  # noqa: PLR0917 - compiled
    """Each stream's token by Gumbel-max at temperature ``temp`` among the tokens of its
    mask: argmax of (x - best) / T + gumbel, rounded as the numpy kernels round it.
    ``out`` may be ``state`` (as in :func:`_greedy`)."""
    if not _fits(
        nxt.shape, layout.shape, logits.shape, state.shape, tok.shape, out.shape
    ):  # gumbel: checked by the caller
        return False
    B, G = state.shape
    V = logits.shape[1]
    keys = logits.view(np.int32)
    words = np.empty(bits.shape[1], dtype=np.uint64)
    for b in range(B):
        _mask_words(bits, nxt, layout, dist, limit, state, b, V, words)
        arg = _best(words, keys, b)
        if arg < 0:  # nothing allowed: the reference's argmax of an all -inf row
            arg = 0
        else:
            best = _sane(logits[b, arg])
            high = np.float32(-np.inf)
            arg = -1
            # the runs walked as in _best, written out again: a shared helper that listed the
            # runs in an array first made this loop 1.3x and the greedy step 1.1x slower
            for w in range(words.shape[0]):
                m = words[w]
                base = w * 64
                while m != 0:
                    lo, hi, m = _first_run(m)
                    for j in range(base + lo, base + hi):
                        y = np.float32(np.float32(_sane(logits[b, j]) - best) / temp)
                        y = np.float32(y + gumbel[b, j])
                        if arg < 0 or y > high:
                            high = y
                            arg = j
        tok[b] = arg
        for g in range(G):
            out[b, g] = nxt[layout[0, g] + state[b, g], arg]
    return True


@numba.njit(nogil=True, cache=True, inline="always")
def _bit_index(low):
    """The index of the one set bit of ``low`` (a de Bruijn multiply)."""
    return _DEBRUIJN[(low * np.uint64(0x03F79D71B4CB0A89)) >> np.uint64(58)]


@numba.njit(nogil=True, cache=True)
def _advance(nxt, layout, state, token, out):
    B, G = state.shape
    for b in range(B):
        for g in range(G):
            out[b, g] = nxt[layout[0, g] + state[b, g], token[b]]


def _debruijn_table() -> np.ndarray:
    table = np.zeros(64, dtype=np.int64)
    for i in range(64):
        table[((1 << i) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = i
    return table


_DEBRUIJN = _debruijn_table()


# ----------------------------------------------------------------------------- the public kernels

_I32, _F32 = np.dtype(np.int32), np.dtype(np.float32)


def _limit(tab: NumbaTables, remaining: int) -> int:
    """The compiled kernels' ``limit``: -1 far from the budget's end (the cheap mask)."""
    return -1 if remaining > tab.max_distance else min(remaining, tab.dist_inf)


def _mask_bits(tab: NumbaTables, state: np.ndarray, remaining: int) -> np.ndarray:
    state = np.ascontiguousarray(state, dtype=np.int32)
    out = np.empty((state.shape[0], tab.bits.shape[1]), dtype=np.uint64)
    _masks(tab.bits, tab.next, tab.layout, tab.dist, _limit(tab, remaining), state, tab.vocab_size, out)
    return out


def allowed(tab: NumbaTables, state: np.ndarray, remaining: int) -> np.ndarray:
    """``bool[B, V]`` (see :func:`gramophone.kernels.numpy.allowed`); ``state`` int32[B, G]."""
    bits = _mask_bits(tab, state, remaining)
    out = np.empty((bits.shape[0], tab.vocab_size), dtype=np.bool_)
    _unpack(bits, tab.vocab_size, out)
    return out


def advance(tab: NumbaTables, state: np.ndarray, token: np.ndarray) -> np.ndarray:
    """``int32[B, G]``: the state after ``token`` int[B]."""
    state = np.ascontiguousarray(state, dtype=np.int32)
    out = np.empty_like(state)
    _advance(tab.next, tab.layout, state, np.ascontiguousarray(token, dtype=np.int64), out)
    return out


_GREEDY = Sampling(greedy=True)
#: Greedy steps take each row's argmax first (see :data:`NUMPY_ARGMAX_FROM`), and build and
#: scan a stream's mask only when its best token is forbidden (or not finite). Measured
#: along real chorale streams at batch 64 (2-core Xeon, benchmarks.peers' harness): 7.1
#: against 9.4 us at 229 tokens, 0.35 against 3.1 ms at 30,000 (BPE: the allowed tokens lie
#: in thousands of runs); when every best token is forbidden it adds the argmax (about 5 us
#: at 229 tokens on fresh logits). False: always scan.
TOP_FIRST = True
#: From this many tokens on, the greedy step's argmax is numpy's (one pass over each row,
#: 16 floats a vector); below it, the compiled :func:`_top` (two passes of 8 keys a vector,
#: cheaper on short rows: numpy's argmax pays a set-up and mispredicted branches per row).
#: The argmax alone over fresh float32[64, V] logits (2-core Xeon), numpy against _top, us:
#: V = 229: 6.4 / 4.8; 512: 8.1 / 7.3; 1,024: 12.8 / 15.5; 4,096: 31.7 / 48.7.
NUMPY_ARGMAX_FROM = 768
_IN_KERNEL = np.zeros(0, dtype=np.int64)  # top: the kernel's own argmax


def step(
    tab: NumbaTables,
    state: np.ndarray,
    logits: np.ndarray,
    remaining: int,
    *,
    sampling: Sampling = _GREEDY,
    gumbel: np.ndarray | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One decoding step: ``(token int32[B], state int32[B, G])``, the token each stream
    writes (among those :func:`allowed` gives for ``remaining`` tokens left, this one
    included) and the state after it. ``logits`` float32[B, V]; ``sampling``: greedy by
    default; ``gumbel`` float32[B, V]: standard Gumbel noise when sampling (the same noise
    gives the same tokens as :func:`gramophone.kernels.numpy.choose`).

    ``out``: ``(token, state)`` arrays to write into, int32[B] and int32[B, G] (the returned
    pair is then these arrays); the state may be the ``state`` given, advanced in place.
    A loop that keeps its arrays so saves two allocations a step (7% of a greedy step at
    batch 64 on the shipped config, A/B on chorale streams)."""
    # the checks and conversions are 6-9% of a greedy step at batch 64 on the base
    # vocabulary (A/B against none): arrays that are already right pass untouched (a state
    # of any layout: numba compiles one version per layout)
    if type(state) is not np.ndarray or state.dtype is not _I32:
        state = np.ascontiguousarray(state, dtype=np.int32)
    if type(logits) is not np.ndarray or logits.dtype is not _F32 or not logits.flags.c_contiguous:
        logits = np.ascontiguousarray(logits, dtype=np.float32)
    if state.ndim != 2 or logits.ndim != 2:
        raise ValueError(_shapes_error(tab, state, logits, out))
    limit = -1 if remaining > tab.max_distance else min(remaining, tab.dist_inf)
    if out is None:
        token, after = np.empty(state.shape[0], dtype=np.int32), np.empty(state.shape, dtype=np.int32)
    else:
        token, after = out
        if (
            type(token) is not np.ndarray
            or token.dtype is not _I32
            or type(after) is not np.ndarray
            or after.dtype is not _I32
        ):
            raise ValueError(_shapes_error(tab, state, logits, out))
    # the compiled kernels check the shapes (they index without bounds checks): False if wrong
    if sampling.greedy:
        # each row's argmax first: a row whose best token is allowed is done
        if not TOP_FIRST:
            top = np.full(state.shape[0], -1, dtype=np.int64)
        elif tab.vocab_size >= NUMPY_ARGMAX_FROM:
            top = logits.argmax(axis=1)
        else:
            top = _IN_KERNEL
        if not _greedy(tab.bits, tab.next, tab.layout, tab.dist, limit, logits, top, state, token, after):
            raise ValueError(_shapes_error(tab, state, logits, out))
        return token, after
    if gumbel is None:
        raise ValueError("sampling needs Gumbel noise (gumbel=float32[B, V])")
    noise = np.ascontiguousarray(gumbel, dtype=np.float32)
    if noise.shape != logits.shape:
        raise ValueError(f"gumbel has shape {noise.shape}, expected {logits.shape} (the logits')")
    if sampling.uses_top_k or sampling.uses_top_p:
        if (
            logits.shape != (state.shape[0], tab.vocab_size)
            or token.shape != (state.shape[0],)
            or after.shape != state.shape
        ):
            raise ValueError(_shapes_error(tab, state, logits, out))
        token[:] = _reference.choose(logits, allowed(tab, state, remaining), sampling, noise)
        after[:] = advance(tab, state, token)
        return token, after
    temp = np.float32(sampling.temperature)
    if not _gumbel(tab.bits, tab.next, tab.layout, tab.dist, limit, logits, noise, temp, state, token, after):
        raise ValueError(_shapes_error(tab, state, logits, out))
    return token, after


def _shapes_error(
    tab: NumbaTables, state: np.ndarray, logits: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None
) -> str:
    """What is wrong with a step's arrays (the compiled kernels found their shapes wrong)."""
    B, G = state.shape[0], tab.start.shape[0]
    if state.ndim != 2 or state.shape[1] != G:
        return f"state has shape {state.shape}, expected {(B, G)}"
    if logits.shape != (B, tab.vocab_size):
        return f"logits have shape {logits.shape}, expected {(B, tab.vocab_size)}"
    token, after = out if out is not None else (None, None)
    return (
        f"out must be int32 arrays of shapes {(B,)} and {state.shape} (token, state); got "
        f"{getattr(token, 'dtype', type(token))}{getattr(token, 'shape', '')} and "
        f"{getattr(after, 'dtype', type(after))}{getattr(after, 'shape', '')}"
    )
