"""Any folder of MIDI files as training data: found, tokenized in parallel, cached as
memory-mapped shards, bad files skipped and named, split by file.

What :func:`build_corpus` does with :attr:`DataConfig.paths <gramophone.data.DataConfig>`
(folders searched recursively for ``.mid``/``.midi``/``.smf`` in any case, following symbolic
links without looping; files taken as given; ``chorales`` for the chorales' MIDI files):

* **Files, by content.** Every file is read once and named by the SHA-256 of its bytes. Two
  files with the same bytes are one piece (counted as duplicates); a renamed or moved file is
  the same piece, already tokenized.
* **Splits, by file.** A piece goes to train / validation / test by a hash of its content
  (:func:`~gramophone.data.split_names` over the content hashes, 80/10/10), so adding files
  never moves one already there, and copies of one piece never straddle two splits. A corpus
  of fewer than :data:`MIN_SPLIT_FILES` distinct files is training data only.
* **Tokens.** Worker processes (``workers``, default ``min(cpu count, 8)``; chunks of files
  per task; a few files are tokenized in this process) read each new file, make one token
  stream of it (one stream with ``Program`` tokens when the tokenizer has ``use_programs``
  and ``one_token_stream_for_programs``; otherwise the pitched tracks merged into one as the
  chorales are, drums left out, a single pitched track kept as it is), frame it
  ``BOS ... EOS``, run the automaton along it and write the tokens and states to a
  **shard** (``.npy`` files, loaded memory-mapped). Training pieces are also tokenized
  transposed by each offset of ``DataConfig.transpose`` that keeps every pitch in range
  (off by default for such corpora: each offset is one more copy of the training set).
* **Bad files are skipped, never fatal.** A file that is not MIDI, cannot be parsed, has no
  notes (or none left after tokenizing), makes miditok fail, or whose stream the grammar
  rejects (a grammar bug: its line says ``GRAMMAR BUG?``) is reported in one line naming it
  and the reason (:class:`Skip`), and counted in the summary (:class:`CorpusReport`). The
  build fails only when no file is usable (:class:`~gramophone.data.dataset.DataError`).
* **The cache** (``cache_dir()/corpora/<scheme>-<key>/``): ``key`` hashes the tokenizer's
  fingerprint, the automaton's digest and the code that tokenizes (:func:`corpus_code_hash`).
  It holds the tokenizer and automaton the workers load, ``shards/`` (each ``ID.json`` lists
  its records per content hash and offset: a token range, or why the file was skipped; its
  arrays ``ID.ids.npy`` ``ID.states.npy`` ``ID.bars.npy`` ``ID.unique.npy`` are written first)
  and ``views/``: the training arrays of one set of pieces (per split ``ids``, ``states``,
  ``bar_starts`` ... as ``.npy``, one ``allowed`` table), assembled from the shards by a
  streaming copy and loaded with ``np.load(mmap_mode="r")``, so a corpus larger than memory
  trains. A second build with the same files reads the view; adding files tokenizes only
  those and assembles a new view (the two most recent others are kept).

Shards and views are written whole or not at all (temporary names, then renames), so two
processes building the same corpus at once (the ranks of a distributed run) only repeat
work; a shard whose files are missing or truncated is tokenized again.

**States in shards.** Each shard numbers the product states its streams visit (``unique``:
``int32[s, K]`` component states; ``states``: an index per token). A view numbers the
union of its shards' tables once more and maps each shard's states through it while
copying, so no pass over the corpus ever holds more than one shard in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from gramophone._files import atomic_write, cache_dir, code_hash, remove_stale_temp_files, touch
from gramophone.data.chorales import split_names
from gramophone.data.dataset import (
    CHORALES,
    PITCH_KINDS,
    REJECT,
    SPLITS,
    DataConfig,
    DataError,
    Dataset,
    TokenSplit,
    WindowStarts,
    _check_window_starts,
    _compact,
    _run_states,
    load_dataset,
    tokenizer_fingerprint,
    tokenizer_pitch_range,
)

if TYPE_CHECKING:
    from miditok import MusicTokenizer
    from symusic.core import ScoreTick

    from gramophone.grammar import Automaton

__all__ = [
    "CORPUS_VERSION",
    "MIN_SPLIT_FILES",
    "CorpusReport",
    "MidiFile",
    "Skip",
    "build_corpus",
    "corpus_cache_dir",
    "corpus_code_hash",
    "find_midi_files",
    "load_data",
    "midi_files_below",
    "resolve_data_paths",
]

CORPUS_VERSION = 1
"""Version of the shard and view layout (part of every cache key)."""

MIN_SPLIT_FILES = 10
"""A corpus of fewer distinct files than this is all training data (no validation/test)."""

MIDI_FILE_SUFFIXES = (".mid", ".midi", ".smf")
MAX_CHUNK_FILES = 64  # files per worker task, at most
SMALL_JOB_FILES = 128  # fewer files to tokenize: in this process unless workers are asked for
MAX_SKIP_LINES = 100  # skip lines printed; the rest are in skipped.tsv
KEEP_VIEWS = 3  # the view just used and the two most recent others

#: Kinds of :class:`Skip`, as the summary names them.
SKIP_KINDS = {
    "unreadable": "unreadable",
    "not-midi": "not a MIDI file",
    "corrupt": "corrupt MIDI",
    "no-notes": "no notes",
    "tokenizer": "miditok failed",
    "grammar": "rejected by the grammar (a bug)",
    "bound": "beyond a documented bound of the grammar",
    "crash": "crashed a worker",
}
# Base token types that sound a note (any scheme): a stream without one has no music.
_NOTE_TYPES = frozenset({"Pitch", "PitchDrum", "NoteOn", "DrumOn", "PitchIntervalTime", "PitchIntervalChord"})


# ---------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class MidiFile:
    """One file of the corpus: ``name`` as messages show it, ``path`` to read."""

    name: str
    path: Path


@dataclass(frozen=True)
class Skip:
    """A file left out of the corpus: its name, the kind of problem (a key of
    :data:`SKIP_KINDS`) and the reason in words."""

    name: str
    kind: str
    reason: str

    def line(self) -> str:
        return f"{self.name}: skipped: {self.reason}"


def resolve_data_paths(
    paths: str | Sequence[str], base: str | os.PathLike[str] | None = None
) -> tuple[str, ...]:
    """``paths`` as :attr:`DataConfig.paths` keeps them: ``chorales`` as is, every other path
    absolute (relative ones from ``base``, default the current folder; ``~`` expanded), so
    that a resumed run finds its data from anywhere. A folder named ``chorales`` is
    ``./chorales``."""
    items = [paths] if isinstance(paths, str) else list(paths)
    out = []
    for p in items:
        if not isinstance(p, str) or not p:
            raise TypeError(f"data paths must be non-empty strings, got {p!r}")
        if p == CHORALES:
            out.append(p)
            continue
        q = Path(p).expanduser()
        if not q.is_absolute():
            q = Path(base or os.getcwd()) / q
        out.append(os.path.normpath(q))
    return tuple(out)


def _display(path: Path) -> str:
    """``path`` relative to the current folder when it is below it, else absolute."""
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    return str(path)


def midi_files_below(root: Path) -> list[Path]:
    """MIDI files below ``root`` (sorted; symbolic links followed, each folder once)."""
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree, or a second way in
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        out += [Path(folder) / f for f in files if Path(f).suffix.lower() in MIDI_FILE_SUFFIXES]
    return sorted(out)


def find_midi_files(paths: Sequence[str]) -> list[MidiFile]:
    """The files of the corpus ``paths`` (see the module notes), in order, each path once.

    A path that does not exist is a :class:`DataError`.
    """
    out: list[MidiFile] = []
    for given in paths:
        if given == CHORALES:
            from gramophone.data.chorales import chorale_dir, chorale_midis

            root = chorale_dir()
            out += [
                MidiFile(f"chorales/{p.relative_to(root).as_posix()}", p)
                for p in chorale_midis(progress=False)
            ]
            continue
        p = Path(given)
        if p.is_dir():
            out += [MidiFile(_display(f), f) for f in midi_files_below(p)]
        elif p.exists() or p.is_symlink():
            out.append(MidiFile(_display(p), p))
        else:
            raise DataError(f"{given}: no such file or folder")
    unique: dict[str, MidiFile] = {}
    for f in out:
        unique.setdefault(os.path.abspath(f.path), f)
    return list(unique.values())


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _hash_file(path: Path) -> str | Skip:
    try:
        return _content_hash(path.read_bytes())
    except OSError as exc:
        return Skip(_display(path), "unreadable", f"cannot read ({exc.strerror or exc})")


def _hash_files(files: Sequence[MidiFile], threads: int) -> list[str | Skip]:
    """The content hash of each file (or why it cannot be read), a few files at a time."""
    if threads <= 1 or len(files) < 64:
        out = [_hash_file(f.path) for f in files]
    else:
        with ThreadPoolExecutor(threads) as pool:
            out = list(pool.map(_hash_file, (f.path for f in files), chunksize=64))
    return [
        Skip(f.name, h.kind, h.reason) if isinstance(h, Skip) else h for f, h in zip(files, out, strict=True)
    ]


# ---------------------------------------------------------------------------------------
# The cache folder


def corpus_code_hash() -> str:
    """:func:`~gramophone._files.code_hash` of the code that turns a file into shard records:
    this module, the dataset machinery it reuses, the track merging of the chorales and the
    tokenizer wrapper."""
    import gramophone.tokenizers
    from gramophone.data import chorales, dataset

    tokenizers = Path(gramophone.tokenizers.__file__).parent
    return code_hash([__file__, dataset.__file__, chorales.__file__, *tokenizers.glob("*.py")])


def corpus_cache_dir(tokenizer: MusicTokenizer, automaton: Automaton) -> Path:
    """The cache folder of corpora tokenized with ``tokenizer`` against ``automaton``."""
    payload = json.dumps(
        {
            "corpus": CORPUS_VERSION,
            "code": corpus_code_hash(),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "automaton": automaton.digest,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:24]
    return cache_dir() / "corpora" / f"{type(tokenizer).__name__.lower()}-{key}"


def _prepare_folder(folder: Path, tokenizer: MusicTokenizer, automaton: Automaton) -> None:
    """The tokenizer and automaton the workers load, written once."""
    from gramophone.tokenizers import save_tokenizer

    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "views").mkdir(exist_ok=True)
    remove_stale_temp_files(folder)
    if not (folder / "tokenizer.json").is_file():
        save_tokenizer(tokenizer, folder / "tokenizer.json")
    if not (folder / "automaton.npz").is_file():
        automaton.save(folder / "automaton.npz")


def _save_npy(path: Path, array: np.ndarray) -> int:
    """Write ``array`` as ``.npy`` atomically (no pickle); returns the file's size."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)
    return path.stat().st_size


# ---------------------------------------------------------------------------------------
# Tokenizing one chunk of files (in a worker process, or in this one)


@dataclass
class _Context:
    """What tokenizing needs, built once per process."""

    tokenizer: MusicTokenizer
    automaton: Automaton
    vocab: tuple[str, ...]
    bos: int
    eos: int
    pad: int
    window_starts: WindowStarts  # where a training window may start
    has_note: np.ndarray  # bool[V]: the model id sounds a note
    programs: bool  # one stream with Program tokens (else tracks are merged)
    pitch_range: tuple[int, int] | None  # of the Pitch tokens (None: none; no transposition)
    ids_dtype: Any

    @classmethod
    def create(cls, tokenizer: MusicTokenizer, automaton: Automaton) -> _Context:
        from gramophone.tokenizers import model_vocab

        learned = model_vocab(tokenizer)
        vocab = tuple(learned.names)
        if vocab != tuple(automaton.vocab):
            raise DataError("the automaton was compiled for another vocabulary than the tokenizer's")
        base_index = {t: i for i, t in enumerate(learned.base)}
        try:
            bos, eos, pad = (base_index[t] for t in ("BOS_None", "EOS_None", "PAD_None"))
        except KeyError as exc:
            raise DataError(f"the tokenizer has no {exc.args[0]} token (needed to frame streams)") from None
        single = [int(learned.single[b]) for b in (bos, eos, pad)]
        if min(single) < 0:
            raise DataError("the trained vocabulary has no single BOS, EOS or PAD token")
        note_base = np.array([t.split("_")[0] in _NOTE_TYPES for t in learned.base])
        cfg = tokenizer.config
        return cls(
            tokenizer=tokenizer,
            automaton=automaton,
            vocab=vocab,
            bos=single[0],
            eos=single[1],
            pad=single[2],
            window_starts=WindowStarts.for_vocab(learned.base, learned.pieces),
            has_note=np.array([bool(p) and bool(note_base[list(p)].any()) for p in learned.pieces]),
            programs=bool(cfg.use_programs and cfg.one_token_stream_for_programs),
            pitch_range=tokenizer_pitch_range(tokenizer)
            if any(t.split("_")[0] in PITCH_KINDS for t in learned.base)
            else None,
            ids_dtype=np.uint16 if len(vocab) <= 65536 else np.int32,
        )


@dataclass(frozen=True)
class _Task:
    """Files to tokenize: ``(path, content hash, offsets)`` each; ``shard`` names the result."""

    shard: str
    files: tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass
class _ChunkResult:
    """A task's records (saved in its shard) and its problems that are not the file's content
    (``(hash, kind, reason)``: unreadable now, changed while read, a worker that died)."""

    shard: str
    records: list[dict[str, Any]]
    transient: list[tuple[str, str, str]] = field(default_factory=list)


class _SkipFileError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _one_stream_score(ctx: _Context, score: ScoreTick) -> ScoreTick:
    """The score as one token stream will hold it (see the module notes)."""
    from gramophone.data.chorales import _merge_tracks, _TimeMap

    if ctx.programs:
        return score
    pitched = [i for i, t in enumerate(score.tracks) if not t.is_drum and len(t.notes)]
    if not pitched:
        raise _SkipFileError(
            "no-notes", "no notes but drums (the tokenizer has no programs: drum tracks are left out)"
        )
    if len(pitched) == 1:  # kept whole (pedals, pitch bends ...), drums and empty tracks removed
        out = score.copy()
        for i in reversed(range(len(out.tracks))):
            if i != pitched[0]:
                out.tracks.pop(i)
        return out
    return _merge_tracks(score, _TimeMap([0], [0]))


def _encode_file(
    ctx: _Context, data: bytes, offsets: Sequence[int]
) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
    """The framed streams of one file per offset that fits (``(offset, ids)``), and the
    offsets that do not (a pitch would leave the range). Raises :class:`_SkipFileError`."""
    from miditok.data_augmentation import augment_score
    from symusic.core import ScoreTick

    from gramophone.tokenizers import encode_score

    if data[:4] != b"MThd":
        what = "empty file" if not data else f"starts with {data[:4]!r}, not MThd"
        raise _SkipFileError("not-midi", f"not a MIDI file ({what})")
    try:
        score = ScoreTick.from_midi(data)
    except Exception as exc:  # symusic raises RuntimeError/ValueError on broken files
        raise _SkipFileError("corrupt", f"not a readable MIDI file ({exc})") from None
    if score.note_num() == 0:
        raise _SkipFileError("no-notes", "no notes")
    score = _one_stream_score(ctx, score)
    fits: tuple[int, int] = (0, 0)
    if any(offsets) and ctx.pitch_range is not None:
        pitches = [n.pitch for t in score.tracks if not t.is_drum for n in t.notes]
        lo, hi = ctx.pitch_range
        fits = (lo - min(pitches), hi - max(pitches)) if pitches else (0, 0)
    out: list[tuple[int, np.ndarray]] = []
    unfit: list[int] = []
    for k in offsets:
        if k and not fits[0] <= k <= fits[1]:
            unfit.append(k)
            continue
        shifted = score if k == 0 else augment_score(score, pitch_offset=k)
        where = f" transposed {k:+d}" if k else ""
        try:
            streams = encode_score(ctx.tokenizer, shifted)
        except Exception as exc:  # miditok fails in many ways on unusual files
            raise _SkipFileError(
                "tokenizer", f"miditok cannot tokenize it{where} ({type(exc).__name__}: {exc})"
            ) from None
        if len(streams) > 1:
            raise _SkipFileError("tokenizer", f"{len(streams)} token streams{where}, expected one")
        ids = np.array([ctx.bos, *(streams[0] if streams else []), ctx.eos], dtype=np.int32)
        if not ctx.has_note[ids].any():
            raise _SkipFileError(
                "no-notes",
                "no notes left after tokenizing (all outside the tokenizer's pitch range or programs)",
            )
        out.append((k, ids))
    return out, unfit


#: Components whose rejection of what miditok wrote is a documented bound, not a bug:
#: MIDILike's notes of one key (``pairing[...]``) and of one program (``open-notes``)
#: sounding at once (:mod:`gramophone.grammar.midilike`).
BOUND_COMPONENTS = ("pairing[", "open-notes")


def _grammar_rejection(ctx: _Context, ids: np.ndarray, states: np.ndarray, k: int) -> tuple[str, str] | None:
    """``(kind, why)`` the automaton rejects the stream (``states`` int32[L, K] along it),
    or None: ``bound`` where the checker's rejecting component is one of
    :data:`BOUND_COMPONENTS` (its words say which bound), else ``grammar``."""
    bad = np.flatnonzero((states == REJECT).any(axis=1))
    if not bad.size:
        return None
    from gramophone.grammar.checker import check_stream

    i = int(bad[0])
    where = f" (transposed {k:+d})" if k else ""
    violation = check_stream(ctx.automaton, [int(t) for t in ids]).violation  # which component
    if violation is not None and violation.rejected_by.startswith(BOUND_COMPONENTS):
        return "bound", f"token {i}{where}: {violation.reason}"
    return "grammar", (
        f"GRAMMAR BUG? the grammar rejects token {i} ({ctx.vocab[int(ids[i])]}) of its stream{where}; "
        "please report it (gramophone check --tokenizer T.json FILE shows where)"
    )


def _window_bugs(
    ctx: _Context,
    streams: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    allowed: np.ndarray,
    unique: np.ndarray,
) -> dict[int, str]:
    """Per stream ``(ids, state rows, bar starts)`` whose windows cannot start at its bars
    (they would see other allowed tokens than the whole stream:
    :func:`~gramophone.data.dataset._check_window_starts`), why. All streams are checked at
    once; only when that fails, one by one to name them."""

    def check(group: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str | None:
        lengths = [len(ids) for ids, _, _ in group]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        split = TokenSplit(
            name="chunk",
            ids=np.concatenate([ids for ids, _, _ in group]),
            states=np.concatenate([rows for _, rows, _ in group]),
            stream_starts=starts,
            stream_piece=np.arange(len(group), dtype=np.int32),
            stream_offset=np.zeros(len(group), dtype=np.int32),
            bar_starts=np.concatenate(
                [b.astype(np.int64) + a for (_, _, b), a in zip(group, starts, strict=False)]
            ),
            pieces=tuple(str(i) for i in range(len(group))),
            allowed=allowed,
            pad_id=ctx.pad,
        )
        try:
            _check_window_starts(split, ctx.automaton, unique)
        except DataError as exc:
            why = str(exc).split(": ", 1)[-1]
            return f"GRAMMAR BUG? {why}; please report it"
        return None

    if not streams or check(streams) is None:
        return {}
    return {i: bug for i, item in enumerate(streams) if (bug := check([item])) is not None}


def _tokenize_chunk(ctx: _Context, task: _Task, shard_dir: Path) -> _ChunkResult:
    """Tokenize the task's files, run the automaton along each stream, check it, and write
    the shard ``task.shard`` (arrays first, then its manifest). Never raises for a file."""
    records: list[dict[str, Any]] = []
    transient: list[tuple[str, str, str]] = []
    streams: list[tuple[str, int, np.ndarray]] = []  # (hash, offset, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # miditok's and symusic's warnings about odd files
        for path, h, offsets in task.files:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                transient.append((h, "unreadable", f"cannot read ({exc.strerror or exc})"))
                continue
            if _content_hash(data) != h:
                transient.append((h, "unreadable", "the file changed while the corpus was built"))
                continue
            try:
                encoded, unfit = _encode_file(ctx, data, offsets)
            except _SkipFileError as skip:
                records += [
                    {"h": h, "k": k, "status": "skip", "kind": skip.kind, "reason": skip.reason}
                    for k in offsets
                ]
                continue
            except Exception as exc:  # anything else a strange file provokes
                reason = f"miditok cannot tokenize it ({type(exc).__name__}: {exc})"
                records += [
                    {"h": h, "k": k, "status": "skip", "kind": "tokenizer", "reason": reason} for k in offsets
                ]
                continue
            records += [{"h": h, "k": k, "status": "unfit"} for k in unfit]
            streams += [(h, k, ids) for k, ids in encoded]

        # The automaton along every stream; a rejected one is a grammar bug or beyond a bound.
        runs = _run_states(ctx.automaton, [ids for _, _, ids in streams], ctx.pad) if streams else []
        kept: list[int] = []
        for i, ((h, k, ids), states) in enumerate(zip(streams, runs, strict=True)):
            rejection = _grammar_rejection(ctx, ids, states, k)
            if rejection is None:
                kept.append(i)
            else:
                kind, why = rejection
                records.append({"h": h, "k": k, "status": "skip", "kind": kind, "reason": why})
        K = ctx.automaton.num_components
        flat = np.concatenate([runs[i] for i in kept]) if kept else np.zeros((0, K), np.int32)
        local, unique = _compact(flat, [c.num_states for c in ctx.automaton.components])
        allowed = np.zeros((len(unique) + 1, len(ctx.vocab)), dtype=bool)
        allowed[:-1] = ctx.automaton.allowed_batch(unique)
        state_dtype = np.uint16 if len(unique) <= 65535 else np.int32

        checked = []  # (hash, offset, ids, state rows, bar starts) of each stream kept
        offset = 0
        for i in kept:
            h, k, ids = streams[i]
            rows = local[offset : offset + len(ids)].astype(state_dtype)
            offset += len(ids)
            bars = ctx.window_starts.positions(ids)  # not a piece's first bar: the BOS window has it
            checked.append((h, k, ids.astype(ctx.ids_dtype), rows, bars.astype(np.uint32)))
        bugs = (
            _window_bugs(ctx, [(ids, rows, bars) for _, _, ids, rows, bars in checked], allowed, unique)
            if ctx.window_starts.checked
            else {}
        )
        pos = bar_pos = 0
        for i, (h, k, ids, _rows, bars) in enumerate(checked):
            if i in bugs:
                records.append({"h": h, "k": k, "status": "skip", "kind": "grammar", "reason": bugs[i]})
                continue
            records.append(
                {
                    "h": h,
                    "k": k,
                    "status": "ok",
                    "start": pos,
                    "len": len(ids),
                    "bar_start": bar_pos,
                    "bars": len(bars),
                }
            )
            pos += len(ids)
            bar_pos += len(bars)
        checked = [c for i, c in enumerate(checked) if i not in bugs]

    arrays = {
        "ids": np.concatenate([c[2] for c in checked] or [np.zeros(0, ctx.ids_dtype)]),
        "states": np.concatenate([c[3] for c in checked] or [np.zeros(0, state_dtype)]),
        "bars": np.concatenate([c[4] for c in checked] or [np.zeros(0, np.uint32)]),
        "unique": unique.astype(np.int32),
    }
    sizes = {name: _save_npy(shard_dir / f"{task.shard}.{name}.npy", a) for name, a in arrays.items()}
    records.sort(key=lambda r: (r["h"], r["k"]))
    manifest = {"version": CORPUS_VERSION, "shard": task.shard, "files": sizes, "records": records}
    atomic_write(shard_dir / f"{task.shard}.json", json.dumps(manifest, sort_keys=True) + "\n")
    return _ChunkResult(task.shard, records, transient)


# The worker processes: one context each, loaded from the cache folder.
_WORKER: dict[str, Any] = {}


def _init_worker(folder: str) -> None:
    """Worker initializer: the tokenizer and automaton of the cache folder. miditok's
    PyTorch helpers (which import torch, seconds per worker) are not needed here."""
    if "miditok" not in sys.modules:
        sys.modules["miditok.pytorch_data"] = None  # type: ignore[assignment]  # miditok skips it
    from gramophone.grammar import Automaton
    from gramophone.tokenizers import load_tokenizer

    root = Path(folder)
    tokenizer = load_tokenizer(root / "tokenizer.json")
    _WORKER["ctx"] = _Context.create(tokenizer, Automaton.load(root / "automaton.npz"))
    _WORKER["shards"] = root / "shards"


def _run_task(task: _Task) -> _ChunkResult:
    return _tokenize_chunk(_WORKER["ctx"], task, _WORKER["shards"])


def _make_pool(workers: int, folder: Path) -> Executor:
    """The worker pool (spawn, not fork: the caller may hold threads that fork would copy
    in a locked state)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(folder),),
    )


def _shard_name(files: Sequence[tuple[str, str, tuple[int, ...]]]) -> str:
    """A shard's name: a hash of what it holds (content hashes and offsets), not of paths."""
    payload = json.dumps([[h, list(ks)] for _, h, ks in files])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _chunks(todo: Sequence[tuple[str, str, tuple[int, ...]]]) -> list[_Task]:
    """Tasks of consecutive files: at most :data:`MAX_CHUNK_FILES`, and 16 tasks or more when
    there are files enough. The chunking depends on the files alone (never on the number of
    workers), so any number of workers writes the same shards."""
    size = max(1, min(MAX_CHUNK_FILES, math.ceil(len(todo) / 16)))
    return [
        _Task(_shard_name(todo[i : i + size]), tuple(todo[i : i + size])) for i in range(0, len(todo), size)
    ]


def _run_tasks(
    ctx: _Context, folder: Path, tasks: Sequence[_Task], workers: int, progress: bool
) -> list[_ChunkResult]:
    """Run the tasks (in this process with one worker or one task), with a progress bar.
    Tasks lost with a worker that died are run again one file each; a file that kills its
    worker again is a ``crash`` skip."""
    total = sum(len(t.files) for t in tasks)
    bar = tqdm(
        total=total,
        desc="tokenize corpus",
        unit="file",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    shard_dir = folder / "shards"
    results: list[_ChunkResult] = []
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                results.append(_tokenize_chunk(ctx, task, shard_dir))
                bar.update(len(task.files))
            return results
        failed = _pool_round(folder, tasks, workers, results, bar)
        if failed:
            singles = [_Task(_shard_name([f]), (f,)) for t in failed for f in t.files]
            lost = _pool_round(folder, singles, workers, results, bar)
            if len(lost) == len(singles) == total:
                raise DataError(
                    "every tokenizing worker process died (--workers 1 tokenizes in this process, "
                    "where the error shows)"
                )
            for task in lost:
                _, h, _ = task.files[0]
                reason = "it crashed the worker tokenizing it (out of memory, or a bug in symusic or miditok)"
                results.append(_ChunkResult(task.shard, [], [(h, "crash", reason)]))
                bar.update(1)
    return results


def _pool_round(
    folder: Path, tasks: Sequence[_Task], workers: int, results: list[_ChunkResult], bar: Any
) -> list[_Task]:
    """Run ``tasks`` on a fresh pool, appending to ``results``; returns the tasks lost."""
    failed: list[_Task] = []
    with _make_pool(min(workers, len(tasks)), folder) as pool:
        futures = {pool.submit(_run_task, task): task for task in tasks}
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    results.append(future.result())
                    bar.update(len(task.files))
                except BrokenProcessPool:
                    failed.append(task)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failed


# ---------------------------------------------------------------------------------------
# The index of the shards


def _read_index(shard_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every record of every complete shard, by ``(content hash, offset)`` (the first shard
    by name wins). A shard whose manifest or arrays do not read back whole is ignored (its
    files are tokenized again and it is written anew)."""
    index: dict[tuple[str, int], dict[str, Any]] = {}
    for manifest in sorted(shard_dir.glob("*.json")):
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
            if m.get("version") != CORPUS_VERSION:
                continue
            name = m["shard"]
            for array, size in m["files"].items():
                if (shard_dir / f"{name}.{array}.npy").stat().st_size != size:
                    raise ValueError("truncated")
            records = m["records"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        for rec in records:
            index.setdefault((rec["h"], rec["k"]), {**rec, "shard": name})
    return index


# ---------------------------------------------------------------------------------------
# The report


@dataclass
class CorpusReport:
    """What a build found and did: ``found`` files, ``duplicates`` (same bytes as another),
    ``skipped``, per split the files ``used``, the ``streams`` (with transpositions) and
    their ``tokens`` (BOS and EOS included); ``tokenized`` files this time (the others came
    from the cache: ``cached``); the ``view`` folder the arrays are read from."""

    found: int = 0
    duplicates: int = 0
    skipped: list[Skip] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    tokenized: int = 0
    cached: int = 0
    view: Path | None = None

    @property
    def num_used(self) -> int:
        return sum(self.used.values())

    def summary(self) -> str:
        """One line: files used / skipped by reason, tokens, what came from the cache."""
        used = ", ".join(f"{s} {self.used.get(s, 0)}" for s in SPLITS)
        line = (
            f"corpus: {self.found} MIDI file{'s' if self.found != 1 else ''}: {self.num_used} used ({used})"
        )
        if self.skipped:
            line += f", {len(self.skipped)} skipped ({_by_kind(self.skipped)})"
        if self.duplicates:
            plural = "s" if self.duplicates != 1 else ""
            line += f", {self.duplicates} duplicate{plural} (same bytes as another file)"
        tokens = sum(self.tokens.values())
        line += f"; {tokens:,} tokens"
        extra = self.streams.get("train", 0) - self.used.get("train", 0)
        if extra:
            line += f" ({extra} transposed copies of training pieces)"
        plural = "s" if self.tokenized != 1 else ""
        return line + f"; {self.tokenized} file{plural} tokenized now, {self.cached} from the cache"


def _by_kind(skipped: Sequence[Skip]) -> str:
    """``"2 corrupt MIDI, 1 no notes"``: the skips counted by kind, most first."""
    kinds = Counter(s.kind for s in skipped).most_common()
    return ", ".join(f"{n} {SKIP_KINDS.get(k, k)}" for k, n in kinds)


# ---------------------------------------------------------------------------------------
# Views: the arrays of one set of pieces


@lru_cache(maxsize=32)
def _shard_arrays(shard_dir: Path, name: str) -> dict[str, np.ndarray]:
    return {a: np.load(shard_dir / f"{name}.{a}.npy", mmap_mode="r") for a in ("ids", "states", "bars")}


def _view_key(plan: dict[str, list[tuple[str, int, dict[str, Any]]]]) -> str:
    payload = json.dumps({s: [[h, k] for h, k, _ in entries] for s, entries in plan.items()})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _assemble_view(
    ctx: _Context, folder: Path, plan: dict[str, list[tuple[str, int, dict[str, Any]]]], dest: Path
) -> None:
    """Write the view of ``plan`` (per split, the ``(hash, offset, record)`` of each stream
    in order) into ``dest``: one streaming copy of the shards, states renumbered over the
    union of the shards' tables."""
    shard_dir = folder / "shards"
    shards = sorted({rec["shard"] for entries in plan.values() for _, _, rec in entries})
    tables = [np.load(shard_dir / f"{s}.unique.npy") for s in shards]
    K = ctx.automaton.num_components
    concat = np.concatenate(tables) if tables else np.zeros((0, K), np.int32)
    inverse, unique = _compact(concat, [c.num_states for c in ctx.automaton.components])
    bounds = np.cumsum([0, *(len(t) for t in tables)])
    maps = {s: inverse[bounds[i] : bounds[i + 1]] for i, s in enumerate(shards)}
    allowed = np.zeros((len(unique) + 1, len(ctx.vocab)), dtype=bool)
    allowed[:-1] = ctx.automaton.allowed_batch(unique)
    state_dtype = np.uint16 if len(allowed) <= 65536 else np.int32

    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "allowed.npy", allowed, allow_pickle=False)
        pieces: dict[str, list[str]] = {}
        for split, entries in plan.items():
            n_tok = sum(rec["len"] for _, _, rec in entries)
            n_bar = sum(rec["bars"] for _, _, rec in entries)
            ids = np.lib.format.open_memmap(tmp / f"{split}.ids.npy", "w+", ctx.ids_dtype, (n_tok,))
            states = np.lib.format.open_memmap(tmp / f"{split}.states.npy", "w+", state_dtype, (n_tok,))
            bar_starts = np.lib.format.open_memmap(tmp / f"{split}.bar_starts.npy", "w+", np.int64, (n_bar,))
            starts = np.zeros(len(entries) + 1, dtype=np.int64)
            piece_of: dict[str, int] = {}
            stream_piece = np.zeros(len(entries), dtype=np.int32)
            stream_offset = np.zeros(len(entries), dtype=np.int32)
            pos = bpos = 0
            for e, (h, k, rec) in enumerate(entries):
                arrays = _shard_arrays(shard_dir, rec["shard"])
                a, n = rec["start"], rec["len"]
                ids[pos : pos + n] = arrays["ids"][a : a + n]
                states[pos : pos + n] = maps[rec["shard"]][arrays["states"][a : a + n]]
                b, nb = rec["bar_start"], rec["bars"]
                bar_starts[bpos : bpos + nb] = pos + arrays["bars"][b : b + nb].astype(np.int64)
                stream_piece[e] = piece_of.setdefault(h, len(piece_of))
                stream_offset[e] = k
                pos += n
                bpos += nb
                starts[e + 1] = pos
            for mm in (ids, states, bar_starts):
                mm.flush()
            del ids, states, bar_starts
            np.save(tmp / f"{split}.stream_starts.npy", starts, allow_pickle=False)
            np.save(tmp / f"{split}.stream_piece.npy", stream_piece, allow_pickle=False)
            np.save(tmp / f"{split}.stream_offset.npy", stream_offset, allow_pickle=False)
            pieces[split] = list(piece_of)
        header = {"version": CORPUS_VERSION, "pad_id": ctx.pad, "vocab": list(ctx.vocab), "pieces": pieces}
        (tmp / "view.json").write_text(json.dumps(header) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, dest)
        except OSError:  # built at the same time by another process: theirs is as good
            if not (dest / "view.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _shard_arrays.cache_clear()


def _load_view(view: Path, names: dict[str, str]) -> dict[str, TokenSplit]:
    """The splits of a view, memory-mapped, their pieces named by ``names`` (hash -> name)."""
    header = json.loads((view / "view.json").read_text(encoding="utf-8"))
    if header.get("version") != CORPUS_VERSION:
        raise ValueError("view version")
    allowed = np.load(view / "allowed.npy")
    splits = {}
    for split in SPLITS:
        fields = {
            f: np.load(view / f"{split}.{f}.npy", mmap_mode="r")
            for f in ("ids", "states", "bar_starts", "stream_starts", "stream_piece", "stream_offset")
        }
        splits[split] = TokenSplit(
            name=split,
            pieces=tuple(names[h] for h in header["pieces"][split]),
            allowed=allowed,
            pad_id=int(header["pad_id"]),
            **fields,
        )
        got = splits[split]
        if len(got.stream_starts) != got.num_streams + 1 or int(got.stream_starts[-1]) != len(got.ids):
            raise ValueError(f"{view}: inconsistent view")
    return splits


def _prune_views(views: Path, keep: Path) -> None:
    """Remove all but ``keep`` and the most recently used others (:data:`KEEP_VIEWS` in all)."""
    found = []
    for v in views.iterdir():
        if v.is_dir() and v != keep and not v.name.startswith("."):
            with contextlib.suppress(OSError):
                found.append(((v / "view.json").stat().st_mtime, v))
    for _, v in sorted(found, reverse=True)[KEEP_VIEWS - 1 :]:
        shutil.rmtree(v, ignore_errors=True)
    for v in views.glob(".*.tmp-*"):  # left by builds killed more than an hour ago
        with contextlib.suppress(OSError):
            if v.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(v, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Building


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _splits(hashes: Sequence[str], seed: int) -> dict[str, list[str]]:
    if len(hashes) < MIN_SPLIT_FILES:
        return {"train": list(hashes), "validation": [], "test": []}
    return split_names(hashes, seed=seed)


def build_corpus(
    tokenizer: MusicTokenizer,
    automaton: Automaton,
    config: DataConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
    on_note: Callable[[str], None] | None = None,
) -> tuple[Dataset, CorpusReport]:
    """The dataset of the MIDI files of ``config.paths`` for ``tokenizer`` and ``automaton``
    (the grammar over the model's ids), built or read from the cache (see the module notes).

    ``workers``: tokenizing processes (default ``min(cpu count, 8)``, or this process alone
    for fewer than :data:`SMALL_JOB_FILES` files to tokenize; 1 tokenizes in this process).
    ``on_note`` receives one line per skipped file and the summary. Raises :class:`DataError`
    for a path that does not exist, a tokenizer that cannot frame streams, or a corpus with no
    usable file.
    """
    note = on_note or (lambda message: None)
    if workers is not None and workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    ctx = _Context.create(tokenizer, automaton)
    files = find_midi_files(config.paths)
    where = ", ".join(config.paths)
    if not files:
        raise DataError(f"no MIDI file (.mid, .midi) in {where}")
    folder = corpus_cache_dir(tokenizer, automaton)
    _prepare_folder(folder, tokenizer, automaton)

    report = CorpusReport(found=len(files))
    by_hash: dict[str, MidiFile] = {}
    for f, h in zip(files, _hash_files(files, min(workers or _default_workers(), 4)), strict=True):
        if isinstance(h, Skip):
            report.skipped.append(h)
        elif h in by_hash:
            report.duplicates += 1
        else:
            by_hash[h] = f
    hashes = sorted(by_hash)
    parts = _splits(hashes, config.split_seed)
    lo, hi = config.transpose
    augment = tuple(k for k in range(lo, hi + 1) if k)
    if augment and ctx.pitch_range is None:
        raise DataError(f"transposition ({lo:+d}..{hi:+d}) needs a tokenizer with Pitch tokens")
    train = set(parts["train"])
    needed = {h: (0, *augment) if h in train else (0,) for h in hashes}

    index = _read_index(folder / "shards")
    todo: list[tuple[str, str, tuple[int, ...]]] = []
    for h in hashes:
        first = index.get((h, 0))
        if first is not None and first["status"] == "skip":
            continue  # a bad file stays bad: nothing more to try
        missing = tuple(k for k in needed[h] if (h, k) not in index)
        if missing:
            todo.append((str(by_hash[h].path), h, missing))
    report.tokenized, report.cached = len(todo), len(hashes) - len(todo)
    if workers is None:  # starting processes costs more than a few files take
        workers = 1 if len(todo) < SMALL_JOB_FILES else _default_workers()
    transient: dict[str, tuple[str, str]] = {}
    for result in _run_tasks(ctx, folder, _chunks(todo), workers, progress):
        for rec in result.records:
            index[(rec["h"], rec["k"])] = {**rec, "shard": result.shard}
        for h, kind, reason in result.transient:
            transient.setdefault(h, (kind, reason))

    plan: dict[str, list[tuple[str, int, dict[str, Any]]]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for h in parts[split]:
            name = by_hash[h].name
            if h in transient:
                report.skipped.append(Skip(name, *transient[h]))
                continue
            recs = [index.get((h, k)) for k in needed[h]]
            bad = next((r for r in recs if r is None or r["status"] == "skip"), None)
            if bad is not None or recs[0] is None:
                kind, reason = ("crash", "not tokenized") if bad is None else (bad["kind"], bad["reason"])
                report.skipped.append(Skip(name, kind, reason))
                continue
            entries = [
                (h, k, r)
                for k, r in zip(needed[h], recs, strict=True)
                if r is not None and r["status"] == "ok"
            ]
            plan[split] += entries
            report.used[split] = report.used.get(split, 0) + 1
            report.streams[split] = report.streams.get(split, 0) + len(entries)
            report.tokens[split] = report.tokens.get(split, 0) + sum(r["len"] for _, _, r in entries)
    for s in SPLITS:
        report.used.setdefault(s, 0)

    order = {f.name: i for i, f in enumerate(files)}
    report.skipped.sort(key=lambda s: order.get(s.name, len(order)))
    _note_skips(report, folder, note)
    if not report.num_used:
        dups = f", {report.duplicates} duplicates" if report.duplicates else ""
        raise DataError(
            f"no usable MIDI file in {where}: {report.found} found, {len(report.skipped)} skipped "
            f"({_by_kind(report.skipped)}){dups}"
        )
    note(report.summary())
    if not report.used["train"]:
        raise DataError(f"none of the {report.num_used} usable files of {where} fell in the training split")
    if not report.used["validation"]:
        note(
            f"the validation split is empty ({report.num_used} files; fewer than {MIN_SPLIT_FILES} are all "
            "training data, else 10% by a hash of their content): validation metrics count no token"
        )

    view = folder / "views" / _view_key(plan)
    names = {h: f.name for h, f in by_hash.items()}
    try:
        splits = _load_view(view, names)
    except (OSError, ValueError, KeyError):  # not built yet, or damaged: (re)built from the shards
        shutil.rmtree(view, ignore_errors=True)
        _assemble_view(ctx, folder, plan, view)
        splits = _load_view(view, names)
    touch(view / "view.json")
    _prune_views(folder / "views", view)
    report.view = view
    dataset = Dataset(
        splits=splits,
        config=config,
        tokenizer_hash=tokenizer_fingerprint(tokenizer),
        automaton_hash=automaton.hash,
        vocab=ctx.vocab,
        corpus=f"midi-{view.name[:16]} ({report.num_used} files)",
    )
    return dataset, report


def _note_skips(report: CorpusReport, folder: Path, note: Callable[[str], None]) -> None:
    """One line per skipped file (the first :data:`MAX_SKIP_LINES`; all of them in
    ``skipped.tsv`` of the cache folder when there are more)."""
    for skip in report.skipped[:MAX_SKIP_LINES]:
        note(skip.line())
    if len(report.skipped) > MAX_SKIP_LINES:
        listing = folder / "skipped.tsv"
        atomic_write(listing, "".join(f"{s.name}\t{s.kind}\t{s.reason}\n" for s in report.skipped))
        note(f"... and {len(report.skipped) - MAX_SKIP_LINES} more skipped files, all listed in {listing}")


def load_data(
    tokenizer: MusicTokenizer,
    automaton: Automaton,
    config: DataConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
    on_note: Callable[[str], None] | None = None,
) -> Dataset:
    """The training data of ``config``: the chorale dataset
    (:func:`~gramophone.data.dataset.load_dataset`) when ``config.paths`` is ``("chorales",)``,
    else :func:`build_corpus` (whose notes go to ``on_note``)."""
    if tuple(config.paths) == (CHORALES,):
        return load_dataset(tokenizer, automaton, config, progress=progress)
    return build_corpus(tokenizer, automaton, config, workers=workers, progress=progress, on_note=on_note)[0]
