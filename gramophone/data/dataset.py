"""Corpus -> token streams -> automaton states -> training windows.

What :func:`load_dataset` builds (once; cached under ``cache_dir()/datasets``):

* **Streams.** Every chorale is tokenized with the tokenizer (the shipped REMI config by
  default) and framed as ``BOS tokens... EOS``: BOS marks the real beginning of a piece,
  EOS its real end. The pieces are split into train / validation / test by name
  (:func:`~gramophone.data.split_names`, so a piece and its transpositions never cross
  splits).
* **Transposition (train only).** Each training piece is also tokenized transposed by
  every offset in ``DataConfig.transpose`` (default -5..+6 semitones: all twelve keys)
  that keeps *every* pitch of the piece inside the tokenizer's pitch range, with miditok's
  :func:`miditok.data_augmentation.augment_score`. Offsets that would push a note out of
  range are skipped for that piece (never clipped or dropped note by note).
* **States.** The automaton runs once along every stream. ``states[i]`` is the row of the
  ``allowed`` table (``bool[S, V]``) after tokens ``0..i`` of the stream: the tokens the
  grammar allows next. Rows are the distinct product states the data visits (the
  lockstep components' state tuples, numbered compactly; a few thousand, where the dense
  product has ~54k), plus one all-false row, :attr:`TokenSplit.pad_row`, for padding. A
  stream the automaton rejects is an error naming the piece and the token.
* **Windows.** A window is ``seq_len + 1`` consecutive tokens of one stream:
  ``inputs = w[:-1]``, ``targets = w[1:]``. Windows start at the stream's start (with
  its BOS) or at a ``Bar`` token, never mid-bar (in a scheme without Bar tokens: at an
  onset's first event, :class:`WindowStarts`). A window is padded past EOS with PAD
  (weight 0). Training windows start at every bar start from which a full window fits,
  plus the first one that reaches EOS, so a piece's end is seen too. Evaluation windows
  (:meth:`TokenSplit.eval_windows`) score every target token of a split exactly once,
  each with at least about half a window of context where bars allow.

Why the states of the whole stream serve a window that starts mid-piece: the allowed mask
at target ``t`` must be what the automaton allows after ``inputs[:t+1]`` of the window
alone. Started at a bar, the automaton reaches the same product state as along the whole
stream within a few tokens (``Bar TimeSig`` resets every component) and allows the same
tokens before that; :func:`load_dataset` checks this for every window start of the
corpus (``_check_window_starts``) and refuses data where it does not hold.

A batch (:meth:`TokenSplit.batch`) is the mapping the backends take::

    {"inputs": int32[B, T], "targets": int32[B, T], "weights": float32[B, T],
     "allowed": bool[B, T, V]}

Training batches are a deterministic function of ``(seed, step)`` (:func:`train_batch`),
so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from gramophone._files import atomic_write_bytes, cache_dir, code_hash
from gramophone.data.chorales import CHORALES_VERSION, chorale_midis, chorale_names, split_names
from gramophone.errors import GramophoneError

if TYPE_CHECKING:
    from miditok import REMI

    from gramophone.grammar import Automaton

__all__ = [
    "DATASET_VERSION",
    "DataConfig",
    "DataError",
    "Dataset",
    "TokenSplit",
    "WindowStarts",
    "build_dataset",
    "dataset_cache_path",
    "dataset_code_hash",
    "load_dataset",
    "pitch_offsets",
    "tokenizer_fingerprint",
    "tokenizer_pitch_range",
    "train_batch",
]

DATASET_VERSION = 1
"""Version of the cache file's layout (a change to the code that builds a dataset changes
its cache key already: :func:`dataset_code_hash`)."""

SPLITS = ("train", "validation", "test")
CHORALES = "chorales"
"""The name of the default corpus in :attr:`DataConfig.paths`."""
REJECT = -1
# Tokens after a window start within which the stream's and the window's runs must meet.
_MEET_WITHIN = 4


class DataError(GramophoneError, ValueError):
    """The corpus cannot be turned into training data (a stream the grammar rejects, ...)."""


#: Base token kinds that carry a melodic note's pitch (MIDILike: NoteOn; transposition keeps them in range).
PITCH_KINDS = ("Pitch", "NoteOn")
#: Base token kinds that move time (a window of a scheme without Bar tokens starts after one).
TIME_MOVES = ("TimeShift", "Rest")


@dataclass(frozen=True)
class WindowStarts:
    """Where a training window may start inside a framed stream (besides its BOS), for a
    model vocabulary: at a token whose base tokens begin with ``Bar`` (REMI: ``at``), or,
    in a scheme without Bar tokens (TSD, MIDILike, Structured), right after a token whose
    last base token moves time (``after``: a TimeShift or a Rest, so the window opens on an
    onset's first event).

    ``checked``: bars reset every component, so a window started at one sees what the
    whole stream sees (checked for every window of the corpus, see the module notes). A
    scheme without bars has no such token (its time component knows the position in the
    bar from the piece's beginning): its windows use the whole stream's states, as
    evaluation windows that start mid-bar do, and the model learns masks partly decided
    by context before its window."""

    at: np.ndarray  # bool[V]
    after: np.ndarray  # bool[V]
    checked: bool

    @classmethod
    def for_vocab(cls, base: Sequence[str], pieces: Sequence[Sequence[int]]) -> WindowStarts:
        """From a :class:`~gramophone.tokenizers.learned.LearnedVocab`'s ``base`` names and
        ``pieces`` (base ids of each model id)."""
        V = len(pieces)
        if "Bar_None" in base:
            bar = base.index("Bar_None")
            at = np.array([bool(p) and p[0] == bar for p in pieces], dtype=bool)
            return cls(at=at, after=np.zeros(V, dtype=bool), checked=True)
        moves = np.array([t.split("_")[0] in TIME_MOVES for t in base], dtype=bool)
        after = np.array([bool(p) and bool(moves[p[-1]]) for p in pieces], dtype=bool)
        return cls(at=np.zeros(V, dtype=bool), after=after, checked=False)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """int64[n]: the window starts of one framed stream ``BOS ... EOS`` (never its BOS,
        the token right after it, or its EOS)."""
        ids = np.asarray(ids)
        ok = self.at[ids]
        ok[1:] |= self.after[ids[:-1]]
        ok[:2] = False
        ok[-1:] = False
        return np.flatnonzero(ok).astype(np.int64)


@dataclass(frozen=True)
class DataConfig:
    """How the corpus becomes training data (stored in checkpoints; part of the cache key).

    ``paths``: the corpus: ``"chorales"`` (the default) and/or MIDI files and folders
    (searched recursively), :mod:`gramophone.data.corpus`. ``transpose``: inclusive range of
    semitone offsets tried on training pieces (each kept only if every pitch stays in the
    tokenizer's range); ``(0, 0)`` turns augmentation off; left out (``None``), -5..+6 for the
    chorales alone and ``(0, 0)`` for any other corpus (each offset is one more tokenized copy
    of the training set, on disk and in the build time). ``split_seed``: seed of
    :func:`~gramophone.data.split_names`.
    """

    # None: the corpus's default (see above), resolved in __post_init__; always a pair after.
    transpose: tuple[int, int] = None  # type: ignore[assignment]
    split_seed: int = 0
    paths: tuple[str, ...] = (CHORALES,)

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError(f"DataConfig.paths must be non-empty strings, got {self.paths!r}")
        object.__setattr__(self, "paths", paths)
        if self.transpose is None:
            object.__setattr__(self, "transpose", (-5, 6) if paths == (CHORALES,) else (0, 0))
        lo, hi = self.transpose
        if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int) or not isinstance(hi, int):
            raise ValueError(f"DataConfig.transpose must be two ints, got {self.transpose!r}")
        if not lo <= 0 <= hi:
            raise ValueError(f"DataConfig.transpose must contain 0 (lo <= 0 <= hi), got {self.transpose}")
        object.__setattr__(self, "transpose", (lo, hi))

    def to_dict(self) -> dict[str, Any]:
        return {"transpose": list(self.transpose), "split_seed": self.split_seed, "paths": list(self.paths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        unknown = sorted(set(data) - {"transpose", "split_seed", "paths"})
        if unknown:
            raise ValueError(f"DataConfig: unknown field(s) {', '.join(unknown)}")
        kwargs = dict(data)
        if kwargs.get("transpose") is not None:
            kwargs["transpose"] = tuple(kwargs["transpose"])
        if isinstance(kwargs.get("paths"), list):
            kwargs["paths"] = tuple(kwargs["paths"])
        return cls(**kwargs)


def tokenizer_fingerprint(tokenizer: REMI) -> str:
    """sha256 (16 hex) of the tokenizer's config and vocabulary: what a token id means."""
    from gramophone.tokenizers import model_vocab_names

    payload = json.dumps(
        {"config": tokenizer.config.to_dict(serialize=True), "vocab": model_vocab_names(tokenizer)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tokenizer_pitch_range(tokenizer: REMI) -> tuple[int, int]:
    """``(lowest, highest)`` pitch with a ``Pitch_n`` (``NoteOn_n`` in MIDILike) token in
    the vocabulary (inclusive)."""
    pitches = [
        int(v) for k, _, v in (t.partition("_") for t in tokenizer.vocab) if k in PITCH_KINDS and v.isdigit()
    ]
    if not pitches:
        raise DataError("the tokenizer has no Pitch (or NoteOn) tokens")
    return min(pitches), max(pitches)


def pitch_offsets(
    pitches: Sequence[int] | np.ndarray, pitch_range: tuple[int, int], span: tuple[int, int]
) -> list[int]:
    """Offsets ``k`` in ``span`` (inclusive) that keep every pitch in ``pitch_range``
    (inclusive, as miditok's ``pitch_range``), ascending; 0 is always included.

    >>> pitch_offsets([30, 60], (24, 96), (-12, 12))
    [-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    """
    p = np.asarray(pitches)
    if p.size == 0:
        return [0]
    lo = max(span[0], pitch_range[0] - int(p.min()))
    hi = min(span[1], pitch_range[1] - int(p.max()))
    return sorted({0, *range(lo, hi + 1)})


# ---------------------------------------------------------------------------------------
# One split


@dataclass(frozen=True, eq=False)
class TokenSplit:
    """The streams of one split, flat, with their automaton states.

    ``ids``: int32[N], every stream concatenated (each ``BOS ... EOS``);
    ``states``: int32[N], row of ``allowed`` after each token; ``stream_starts``:
    int64[M + 1] where each stream begins (and the end); ``stream_piece``: int32[M] index
    into ``pieces``; ``stream_offset``: int32[M] transposition in semitones;
    ``bar_starts``: int64[nb], positions (into ``ids``) of window starts other than a
    stream's start (``Bar`` tokens, except one right after BOS; :class:`WindowStarts`);
    ``allowed``: bool[S, V], shared by every split of a :class:`Dataset`; ``pad_id``: PAD's id.
    """

    name: str
    ids: np.ndarray
    states: np.ndarray
    stream_starts: np.ndarray
    stream_piece: np.ndarray
    stream_offset: np.ndarray
    bar_starts: np.ndarray
    pieces: tuple[str, ...]
    allowed: np.ndarray
    pad_id: int
    _windows: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def pad_row(self) -> int:
        """The all-false row of ``allowed`` used at padded positions."""
        return int(self.allowed.shape[0] - 1)

    @property
    def num_streams(self) -> int:
        return len(self.stream_piece)

    @property
    def num_targets(self) -> int:
        """Tokens that are some window's target: all but each stream's first (its BOS)."""
        return int(len(self.ids) - self.num_streams)

    def stream(self, i: int) -> np.ndarray:
        """int32[L]: the ids of stream ``i``."""
        return self.ids[self.stream_starts[i] : self.stream_starts[i + 1]]

    def stream_of(self, positions: np.ndarray) -> np.ndarray:
        """int64[...]: the stream each position (index into ``ids``) belongs to."""
        return np.searchsorted(self.stream_starts, positions, side="right") - 1

    # -- windows ------------------------------------------------------------------------
    def windows(self, seq_len: int) -> np.ndarray:
        """int64[W]: training window starts (positions into ``ids``) for ``seq_len``.

        Per stream: its start, and every bar start ``b`` with ``b + seq_len + 1 <= end``
        (a full window), plus the first bar start past that (reaching EOS with a little
        padding), when the windows before do not reach the end already.
        """
        cached = self._windows.get(seq_len)
        if cached is not None:
            return cached
        ends = self.stream_starts[1:]
        bar_stream = self.stream_of(self.bar_starts)
        bar_end = ends[bar_stream]
        full = self.bar_starts + seq_len + 1 <= bar_end
        # The first non-full bar of each stream whose earlier windows miss its end.
        first_short = np.zeros_like(full)
        idx = np.flatnonzero(~full)
        if idx.size:
            streams = bar_stream[idx]
            first = np.ones(idx.size, dtype=bool)
            first[1:] = streams[1:] != streams[:-1]
            first_short[idx[first]] = True
        starts = self.stream_starts[:-1]
        stream_full = starts + seq_len + 1 >= ends  # the BOS window reaches the end alone
        first_short &= ~stream_full[bar_stream]
        out = np.sort(np.concatenate([starts, self.bar_starts[full | first_short]])).astype(np.int64)
        self._windows[seq_len] = out
        return out

    def eval_windows(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows that score every target exactly once: ``(starts int64[W], first int64[W])``.

        Window ``w`` scores the targets at positions ``>= first[w]`` (into ``ids``); the
        next window starts at the last bar start that gives the first target it scores
        at least ``seq_len // 2`` tokens of context (or the first bar after the previous
        start, or mid-bar if a bar is longer than a window).
        """
        out_starts: list[int] = []
        out_first: list[int] = []
        context = max(1, seq_len // 2)
        for s in range(self.num_streams):
            a, end = int(self.stream_starts[s]), int(self.stream_starts[s + 1])
            lo, hi = np.searchsorted(self.bar_starts, [a, end])
            bars = self.bar_starts[lo:hi]
            covered = a + 1  # next target position to score
            while covered < end:
                out_starts.append(a)
                out_first.append(covered)
                covered = min(a + seq_len, end - 1) + 1
                if covered >= end:
                    break
                ok = bars[(bars > a) & (bars <= covered - context)]
                if ok.size:
                    a = int(ok[-1])
                else:
                    later = bars[(bars > a) & (bars < covered)]
                    a = int(later[0]) if later.size else covered - 1
        return np.array(out_starts, dtype=np.int64), np.array(out_first, dtype=np.int64)

    # -- batches ------------------------------------------------------------------------
    def batch(
        self, starts: np.ndarray, seq_len: int, first: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The batch of windows starting at ``starts`` int64[B] (positions into ``ids``).

        ``first`` int64[B] (optional) zeroes the weight of targets before that position
        (see :meth:`eval_windows`). Returns ``inputs``/``targets`` int32[B, T],
        ``weights`` float32[B, T] and ``allowed`` bool[B, T, V] with ``T = seq_len``.
        """
        starts = np.asarray(starts, dtype=np.int64)
        ends = self.stream_starts[self.stream_of(starts) + 1]  # (B,)
        pos = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
        valid = pos < ends[:, None]
        safe = np.where(valid, pos, 0)
        window = np.where(valid, self.ids[safe], self.pad_id).astype(np.int32)
        target_ok = valid[:, 1:]  # (B, T)
        weights = target_ok.astype(np.float32)
        if first is not None:
            weights *= pos[:, 1:] >= np.asarray(first, dtype=np.int64)[:, None]
        rows = np.where(target_ok, self.states[safe[:, :-1]], self.pad_row)  # state after inputs[:t+1]
        return {
            "inputs": window[:, :-1],
            "targets": window[:, 1:],
            "weights": weights,
            "allowed": self.allowed[rows],
        }


@dataclass(frozen=True, eq=False)
class Dataset:
    """The splits of a corpus for one tokenizer + automaton (see the module notes)."""

    splits: Mapping[str, TokenSplit]
    config: DataConfig
    tokenizer_hash: str
    automaton_hash: str
    vocab: tuple[str, ...]
    corpus: str

    def __getitem__(self, name: str) -> TokenSplit:
        try:
            return self.splits[name]
        except KeyError:
            raise KeyError(f"no split {name!r}; splits: {', '.join(self.splits)}") from None

    @property
    def allowed(self) -> np.ndarray:
        """bool[S, V]: the allowed table shared by the splits (last row: padding)."""
        return next(iter(self.splits.values())).allowed

    def summary(self) -> dict[str, Any]:
        """Counts per split: pieces, streams, tokens, training windows are per seq_len."""
        return {
            name: {
                "pieces": len(s.pieces),
                "streams": s.num_streams,
                "tokens": len(s.ids),
            }
            for name, s in self.splits.items()
        } | {"states": int(self.allowed.shape[0] - 1)}


def train_batch(
    split: TokenSplit, seq_len: int, batch_size: int, seed: int, step: int, *, rows: slice | None = None
) -> dict[str, np.ndarray]:
    """Training batch number ``step``: windows drawn uniformly (with replacement) from
    :meth:`TokenSplit.windows` by a generator seeded with ``(seed, step)`` alone. ``rows``:
    only those rows of it (a data-parallel process's share; the others are not built)."""
    windows = split.windows(seq_len)
    rng = np.random.Generator(np.random.PCG64([seed, step]))
    starts = windows[rng.integers(0, len(windows), size=batch_size)]
    return split.batch(starts if rows is None else starts[rows], seq_len)


# ---------------------------------------------------------------------------------------
# Building


def dataset_code_hash() -> str:
    """:func:`~gramophone._files.code_hash` of the code that builds a dataset: this module,
    the corpus conversion and splits (:mod:`~gramophone.data.chorales`) and the tokenizer
    wrapper that encodes the pieces (the grammar's code is in the automaton's hash)."""
    import gramophone.tokenizers
    from gramophone.data import chorales

    tokenizers = Path(gramophone.tokenizers.__file__).parent
    return code_hash([__file__, chorales.__file__, *tokenizers.glob("*.py")])


def _cache_key(tokenizer: REMI, automaton: Automaton, config: DataConfig, names: Sequence[str]) -> str:
    payload = json.dumps(
        {
            "dataset": DATASET_VERSION,
            "code": dataset_code_hash(),
            "corpus": f"chorales-{CHORALES_VERSION}",
            "names": list(names),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "automaton": automaton.digest,  # the tables (the rows of `allowed` follow them)
            "data": config.to_dict(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def dataset_cache_path(
    tokenizer: REMI, automaton: Automaton, config: DataConfig, names: Sequence[str]
) -> Path:
    """Where :func:`load_dataset` caches the dataset of these pieces (``names``)."""
    key = _cache_key(tokenizer, automaton, config, names)
    return cache_dir() / "datasets" / f"chorales-{CHORALES_VERSION}-{key}.npz"


def _encode_pieces(
    tokenizer: REMI, paths: Sequence[Path], offsets_span: tuple[int, int], progress: bool, desc: str
) -> list[tuple[int, int, list[int]]]:
    """``(piece index, offset, ids)`` for each piece and each offset kept for it."""
    from miditok.data_augmentation import augment_score
    from symusic.core import ScoreTick

    from gramophone.tokenizers import encode_score

    lo, hi = tokenizer_pitch_range(tokenizer)
    out: list[tuple[int, int, list[int]]] = []
    for p, path in enumerate(tqdm(paths, desc=desc, unit="piece", file=sys.stderr, disable=not progress)):
        score = ScoreTick.from_file(str(path))
        pitches = [n.pitch for t in score.tracks if not t.is_drum for n in t.notes]
        if pitches and (min(pitches) < lo or max(pitches) > hi):
            raise DataError(
                f"{path}: pitches {min(pitches)}..{max(pitches)} outside the tokenizer's {lo}..{hi}"
            )
        for k in pitch_offsets(pitches, (lo, hi), offsets_span):
            shifted = score if k == 0 else augment_score(score, pitch_offset=k)
            streams = encode_score(tokenizer, shifted)
            if len(streams) != 1:
                raise DataError(f"{path}: {len(streams)} token streams, expected one")
            out.append((p, k, streams[0]))
    return out


def _run_states(automaton: Automaton, streams: Sequence[np.ndarray], pad_id: int) -> list[np.ndarray]:
    """Per stream, int32[L, K]: the component states after each token (REJECT: rejected)."""
    order = np.argsort([len(s) for s in streams], kind="stable")
    out: list[np.ndarray] = [np.empty((0, 0), np.int32)] * len(streams)
    chunk = 128
    for c in range(0, len(order), chunk):
        idx = order[c : c + chunk]
        T = max(len(streams[i]) for i in idx)
        ids = np.full((len(idx), T), pad_id, dtype=np.int32)
        for r, i in enumerate(idx):
            ids[r, : len(streams[i])] = streams[i]
        states = automaton.run_batch(ids)  # (b, T+1, K), row 0: start
        for r, i in enumerate(idx):
            out[i] = states[r, 1 : len(streams[i]) + 1]
    return out


def _compact(tuples: np.ndarray, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Number distinct state tuples int32[N, K]: ``(ids int32[N], unique int32[S, K])``."""
    radix = np.cumprod([1, *sizes[:-1]], dtype=np.float64)
    if float(np.prod(np.asarray(sizes, dtype=np.float64))) < 2.0**62:
        key = (tuples.astype(np.int64) * radix.astype(np.int64)).sum(axis=1)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return inverse.astype(np.int32).ravel(), tuples[first]
    unique, inverse = np.unique(tuples, axis=0, return_inverse=True)
    return inverse.astype(np.int32).ravel(), unique


def build_dataset(
    tokenizer: REMI,
    automaton: Automaton,
    config: DataConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    paths: Sequence[Path] | None = None,
    progress: bool = True,
) -> Dataset:
    """Tokenize, augment, split and run the automaton over the corpus (no cache).

    ``names``/``paths``: the pieces (default: every chorale, converted on demand).
    Raises :class:`DataError` when the grammar rejects a stream of the data or a window
    start would see other allowed tokens than the whole stream (see the module notes).
    """
    from gramophone.tokenizers import model_vocab

    config = config or DataConfig()
    learned = model_vocab(tokenizer)
    vocab = tuple(learned.names)
    if vocab != tuple(automaton.vocab):
        raise DataError("the automaton was compiled for another vocabulary than the tokenizer's")
    if names is None:
        names = chorale_names()
    if paths is None:
        paths = chorale_midis(progress=progress, names=names)
        if len(paths) != len(names):  # some chorale failed to convert (warned)
            found = {p.stem for p in paths}
            names = [n for n in names if n.split("/")[-1] in found]
    if len(paths) != len(names):
        raise ValueError(f"{len(names)} names but {len(paths)} paths")
    base_index = {t: i for i, t in enumerate(learned.base)}
    try:
        bos, eos, pad = (int(learned.single[base_index[t]]) for t in ("BOS_None", "EOS_None", "PAD_None"))
    except KeyError as exc:
        raise DataError(f"the tokenizer has no {exc.args[0]} token (needed to frame streams)") from None
    if min(bos, eos, pad) < 0:
        raise DataError("the trained vocabulary has no single BOS, EOS or PAD token")
    window_starts = WindowStarts.for_vocab(learned.base, learned.pieces)

    by_name = dict(zip(names, paths, strict=True))
    parts = split_names(names, seed=config.split_seed)
    encoded: dict[str, list[tuple[int, int, list[int]]]] = {}
    for split in SPLITS:
        span = config.transpose if split == "train" else (0, 0)
        encoded[split] = _encode_pieces(
            tokenizer, [by_name[n] for n in parts[split]], span, progress, f"tokenize {split}"
        )

    # States along every stream, all splits at once (one compact numbering).
    streams: list[np.ndarray] = []
    for split in SPLITS:
        streams += [np.array([bos, *ids, eos], dtype=np.int32) for _, _, ids in encoded[split]]
    states = _run_states(automaton, streams, pad)
    flat_states = np.concatenate(states) if states else np.zeros((0, automaton.num_components), np.int32)
    k = 0
    for split in SPLITS:
        for p, off, _ in encoded[split]:
            bad = np.flatnonzero((states[k] == REJECT).any(axis=1))
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{parts[split][p]} (transposed {off:+d}): the grammar rejects token {i} "
                    f"({vocab[streams[k][i]]}) of the stream"
                )
            k += 1
    sizes = [c.num_states for c in automaton.components]
    compact, unique = _compact(flat_states, sizes)
    table = np.zeros((len(unique) + 1, len(vocab)), dtype=bool)
    table[:-1] = automaton.allowed_batch(unique)

    splits: dict[str, TokenSplit] = {}
    k0 = pos = 0
    for split in SPLITS:
        n = len(encoded[split])
        lens = np.array([len(s) for s in streams[k0 : k0 + n]], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        ids = np.concatenate(streams[k0 : k0 + n]) if n else np.zeros(0, np.int32)
        st = compact[pos : pos + int(starts[-1])]
        bars = np.concatenate(
            [window_starts.positions(s) + a for s, a in zip(streams[k0 : k0 + n], starts[:-1], strict=True)]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        splits[split] = TokenSplit(
            name=split,
            ids=ids,
            states=st,
            stream_starts=starts,
            stream_piece=np.array([p for p, _, _ in encoded[split]], dtype=np.int32),
            stream_offset=np.array([o for _, o, _ in encoded[split]], dtype=np.int32),
            bar_starts=bars,
            pieces=tuple(parts[split]),
            allowed=table,
            pad_id=pad,
        )
        if window_starts.checked:
            _check_window_starts(splits[split], automaton, unique)
        k0 += n
        pos += int(starts[-1])
    return Dataset(
        splits=splits,
        config=config,
        tokenizer_hash=tokenizer_fingerprint(tokenizer),
        automaton_hash=automaton.hash,
        vocab=vocab,
        corpus=f"bach-chorales-{CHORALES_VERSION}",
    )


def _same_allowed(automaton: Automaton, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``bool[...]``: whether state tuples ``a`` and ``b`` (``int32[..., K]``) allow the same
    tokens. Equal tuples do; the rows are compared once per distinct pair of unequal ones
    (a bool[windows, tokens, V] comparison would take gigabytes at V = 30,000)."""
    K = a.shape[-1]
    pairs = np.concatenate([a.reshape(-1, K), b.reshape(-1, K)], axis=1)
    same = (pairs[:, :K] == pairs[:, K:]).all(axis=1)
    todo = np.flatnonzero(~same)
    if todo.size:
        from gramophone.grammar.automaton import _ALLOWED_BLOCK

        distinct, inverse = np.unique(pairs[todo], axis=0, return_inverse=True)
        rows = max(1, _ALLOWED_BLOCK // max(len(automaton.vocab), 1))  # allowed_batch's blocks
        equal = np.concatenate(
            [
                (automaton.allowed_batch(d[:, :K]) == automaton.allowed_batch(d[:, K:])).all(axis=1)
                for d in (distinct[i : i + rows] for i in range(0, len(distinct), rows))
            ]
        )
        same[todo] = equal[inverse.ravel()]
    return same.reshape(a.shape[:-1])


def _check_window_starts(split: TokenSplit, automaton: Automaton, unique: np.ndarray) -> None:
    """A window starting at a bar must see what the whole stream sees (module notes):
    the automaton run from its start state over the window's first tokens allows the same
    tokens as the stream's states there and reaches the stream's state within
    ``_MEET_WITHIN`` tokens (or the end of the stream)."""
    if not split.bar_starts.size:
        return
    n = _MEET_WITHIN
    starts = split.bar_starts
    ends = split.stream_starts[split.stream_of(starts) + 1]
    pos = starts[:, None] + np.arange(n)  # (W, n)
    valid = pos < ends[:, None]
    safe = np.where(valid, pos, starts[:, None])
    run = automaton.run_batch(np.where(valid, split.ids[safe], split.pad_id))[:, 1:]  # (W, n, K)
    stream_rows = split.states[safe]  # (W, n)
    same_allowed = _same_allowed(automaton, run, unique[stream_rows]) | ~valid
    last = valid.sum(axis=1) - 1  # last valid index per window
    w = np.arange(len(starts))
    met = (run[w, last] == unique[stream_rows[w, last]]).all(axis=-1)
    bad = np.flatnonzero(~same_allowed.all(axis=1) | ~met)
    if bad.size:
        b = int(starts[bad[0]])
        s = int(split.stream_of(np.array([b]))[0])
        raise DataError(
            f"{split.pieces[split.stream_piece[s]]} ({split.name}): a window starting at bar token {b} "
            "would see other allowed tokens than the whole stream; windows cannot start at bars"
        )


# ---------------------------------------------------------------------------------------
# The cache


def _save(dataset: Dataset, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {"allowed": np.packbits(dataset.allowed, axis=1)}
    header: dict[str, Any] = {
        "version": DATASET_VERSION,
        "config": dataset.config.to_dict(),
        "tokenizer_hash": dataset.tokenizer_hash,
        "automaton_hash": dataset.automaton_hash,
        "vocab": list(dataset.vocab),
        "corpus": dataset.corpus,
        "allowed_shape": list(dataset.allowed.shape),
        "splits": {},
    }
    for name, s in dataset.splits.items():
        header["splits"][name] = {"pieces": list(s.pieces), "pad_id": s.pad_id}
        for f in ("ids", "states", "stream_starts", "stream_piece", "stream_offset", "bar_starts"):
            arrays[f"{name}/{f}"] = getattr(s, f)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["header"]).decode())
        if header.get("version") != DATASET_VERSION:
            raise ValueError("dataset version")
        shape = tuple(header["allowed_shape"])
        table = np.unpackbits(data["allowed"], axis=1, count=shape[1]).astype(bool)
        splits = {}
        for name, h in header["splits"].items():
            fields = {
                f: data[f"{name}/{f}"]
                for f in ("ids", "states", "stream_starts", "stream_piece", "stream_offset", "bar_starts")
            }
            splits[name] = TokenSplit(
                name=name, pieces=tuple(h["pieces"]), allowed=table, pad_id=int(h["pad_id"]), **fields
            )
    return Dataset(
        splits=splits,
        config=DataConfig.from_dict(header["config"]),
        tokenizer_hash=header["tokenizer_hash"],
        automaton_hash=header["automaton_hash"],
        vocab=tuple(header["vocab"]),
        corpus=header["corpus"],
    )


def load_dataset(
    tokenizer: REMI | None = None,
    automaton: Automaton | None = None,
    config: DataConfig | None = None,
    *,
    progress: bool = True,
    use_cache: bool = True,
) -> Dataset:
    """The chorale dataset for ``tokenizer`` (default: shipped) and its automaton.

    Built by :func:`build_dataset` the first time (about a minute on two cores) and cached
    in ``cache_dir()/datasets/chorales-*.npz``, keyed on the tokenizer's config and
    vocabulary, the automaton's hash, the data config, the corpus version, the piece
    names and the code that builds it (:func:`dataset_code_hash`); a cache file that
    cannot be read (truncated, foreign) is rebuilt silently.
    """
    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    automaton = automaton if automaton is not None else compile_remi(tokenizer)
    config = config or DataConfig()
    names = chorale_names()
    path = dataset_cache_path(tokenizer, automaton, config, names)
    if use_cache and path.is_file():
        try:
            return _load(path)
        except Exception:  # any unreadable entry (truncated, foreign, another version): rebuilt below
            pass
    dataset = build_dataset(tokenizer, automaton, config, names=names, progress=progress)
    if use_cache:
        _save(dataset, path)
    return dataset


def replace_config(config: DataConfig, **changes: Any) -> DataConfig:
    """``config`` with ``changes`` (a convenience for callers that build configs)."""
    return dataclasses.replace(config, **changes)
