"""miditok wrapper: tokenizer files, token files in and out, MIDI in and out.

Any tokenizer file of a supported scheme (REMI, TSD, MIDILike, Structured), trained
(BPE, Unigram, WordPiece) or not, is loaded by :func:`load_tokenizer`.

**Model ids and base ids.** A tokenizer has a *base* vocabulary (``tokenizer.vocab``: one id
per token name; the grammar is compiled over it) and a *model* vocabulary: the ids a model
reads and writes. For an untrained tokenizer they are one and the same; for a trained one
each model (learned) id stands for a fixed sequence of base tokens
(:class:`~gramophone.tokenizers.learned.LearnedVocab`). Files say which they hold by their
format:

- miditok JSON token files (``{"ids": [...]}``, ``{"ids": [[...], ...]}``, a bare list of ids
  or of id lists) hold **model ids**, as miditok's ``encode`` and ``save_tokens`` write them;
  they are checked against the model vocabulary's size;
- plain text holds **base token names** separated by white space (one stream; blank-line
  separated blocks are separate streams): a learned token has no name of its own, so a
  trained tokenizer's text file is read as base tokens;
- MIDI files (``.mid``/``.midi``/``.smf``) are tokenized into **model ids** (what that
  loses, a 7/8 meter the vocabulary lacks, notes outside the pitch range ...:
  :mod:`gramophone.tokenizers.losses`);
- ``-`` is standard input (JSON or text).

:func:`read_tokens` returns a :class:`TokenFile`: the streams as the file holds them and
``learned``, whether they are learned ids of a trained vocabulary (expand them with
:meth:`LearnedVocab.expand <gramophone.tokenizers.learned.LearnedVocab.expand>`, which also
says which learned token each base token comes from) or base ids. For an untrained tokenizer
``learned`` is always False and nothing is expanded: the path the checker takes over large
files is the same as without trained vocabularies. :func:`read_token_file` returns model ids
(what a model is fed), and refuses a text file of a trained tokenizer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from gramophone._files import give_mode
from gramophone.errors import TokenFileError

if TYPE_CHECKING:
    from miditok import MusicTokenizer
    from symusic.core import ScoreTick as Score

    from gramophone.grammar import Automaton
    from gramophone.tokenizers.learned import LearnedVocab

__all__ = [
    "TokenFile",
    "decode_ids",
    "default_tokenizer_path",
    "encode_midi",
    "encode_score",
    "load_tokenizer",
    "model_automaton",
    "model_vocab",
    "model_vocab_names",
    "read_token_file",
    "read_tokens",
    "save_tokenizer",
    "vocab_list",
    "write_token_file",
    "write_token_streams",
]

MIDI_SUFFIXES = (".mid", ".midi", ".smf")


def default_tokenizer_path() -> Path:
    """The shipped tokenizer config (miditok's ``tokenizer.save`` format)."""
    return Path(str(resources.files("gramophone.tokenizers") / "configs" / "remi-chorales.json"))


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> MusicTokenizer:
    """Load a tokenizer file written by miditok's ``tokenizer.save`` (default: shipped).

    The file's ``"tokenization"`` names the miditok class (REMI, TSD, MIDILike or
    Structured); a trained vocabulary saved with it is loaded too. Any other tokenization,
    or a file miditok cannot load, is a one-line :class:`TokenFileError` naming the file.
    """
    import miditok

    from gramophone.grammar.schemes import SCHEMES

    p = Path(path) if path is not None else default_tokenizer_path()
    if not p.is_file():
        raise TokenFileError(f"{p}: tokenizer file not found")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenFileError(f"{p}: not a miditok tokenizer file ({exc})") from exc
    if not isinstance(data, dict) or "config" not in data:
        raise TokenFileError(f"{p}: not a miditok tokenizer file (no 'config')")
    name = data.get("tokenization", "REMI")
    if name not in SCHEMES:
        raise TokenFileError(f"{p}: tokenization {name!r} is not supported (supported: {', '.join(SCHEMES)})")
    try:
        tokenizer: MusicTokenizer = getattr(miditok, name)(params=p)
    except Exception as exc:  # miditok raises many kinds on a bad config
        raise TokenFileError(f"{p}: miditok cannot load this tokenizer ({exc})") from exc
    return tokenizer


def save_tokenizer(tokenizer: MusicTokenizer, path: str | os.PathLike[str]) -> None:
    """miditok's ``tokenizer.save(path)``, atomically (no partial file on error).

    Raises :class:`TokenFileError` naming ``path`` when it cannot be written.
    """
    _atomic_write({Path(path): tokenizer.save})


# -- the model vocabulary -----------------------------------------------------------------
_MODEL_VOCABS: dict[int, tuple[object, LearnedVocab]] = {}


def model_vocab(tokenizer: MusicTokenizer) -> LearnedVocab:
    """The model vocabulary of ``tokenizer`` as base ids (identity when untrained), cached
    per tokenizer object (a trained vocabulary of 30k tokens takes a moment to map)."""
    from gramophone.tokenizers.learned import learned_vocab

    key = id(tokenizer)
    model = getattr(tokenizer, "_model", None)  # a new object when the tokenizer is (re)trained
    hit = _MODEL_VOCABS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    if hit is None:
        weakref.finalize(tokenizer, _MODEL_VOCABS.pop, key, None)
    vocab = learned_vocab(tokenizer)
    _MODEL_VOCABS[key] = (model, vocab)
    return vocab


def model_vocab_names(tokenizer: MusicTokenizer) -> list[str]:
    """Names of the model's token ids: base names, ``+``-joined for a learned token (the
    same as :func:`vocab_list` for an untrained tokenizer). What a checkpoint records."""
    return list(model_vocab(tokenizer).names)


def model_automaton(tokenizer: MusicTokenizer) -> Automaton:
    """The grammar over the model's ids: :func:`~gramophone.grammar.compile_tokenizer`, lifted
    to the learned ids of a trained tokenizer (what training runs along its streams and a
    checkpoint's automaton hash names)."""
    from gramophone.grammar import compile_tokenizer
    from gramophone.tokenizers.learned import lift_automaton

    return lift_automaton(compile_tokenizer(tokenizer), model_vocab(tokenizer))


def vocab_list(tokenizer: MusicTokenizer) -> list[str]:
    """Base token names by base id (a trained tokenizer's learned ids: :func:`model_vocab`)."""
    return [tok for tok, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])]


# -- MIDI in and out ----------------------------------------------------------------------
def encode_score(tokenizer: MusicTokenizer, score: Score) -> list[list[int]]:
    """Tokenize a score into streams of **model ids** (one per track, or one with programs).

    A trained tokenizer encodes with its model (as miditok's ``encode`` does); the learned
    ids are checked to expand to the base tokens miditok produced, so a model that loses data
    (WordPiece replaces a word longer than its ``max_input_chars_per_word`` by its unknown
    token) is a :class:`TokenFileError` rather than a wrong stream.

    The streams are miditok's ``encode`` exactly (with programs in one stream, the notes of
    one onset come in the order of the score's tracks, which the grammar accepts).
    """
    seqs = tokenizer.encode(score)
    if not isinstance(seqs, list):
        seqs = [seqs]
    streams = [[int(i) for i in seq.ids] for seq in seqs]
    if tokenizer.is_trained:
        vocab = model_vocab(tokenizer)
        index = tokenizer.vocab
        for s, (seq, ids) in enumerate(zip(seqs, streams, strict=True)):
            if vocab.expand(ids)[0] != [index[t] for t in seq.tokens]:
                model = tokenizer._model_name
                why = f"encode_ids_split={tokenizer.config.encode_ids_split!r}"
                limit = getattr(tokenizer._model.model, "max_input_chars_per_word", None)
                if model == "WordPiece" and limit is not None:
                    why += (
                        f"; WordPiece turns a word of more than max_input_chars_per_word={limit} "
                        "tokens into its unknown token"
                    )
                raise TokenFileError(
                    f"stream {s}: the trained {model} model does not encode these "
                    f"{len(seq.tokens)} tokens losslessly ({why})"
                )
    return streams


def encode_midi(tokenizer: MusicTokenizer, path: str | os.PathLike[str]) -> list[list[int]]:
    """Read a MIDI file and tokenize it into model ids (see :func:`encode_score`).

    Any failure, reading or tokenizing, is a one-line :class:`TokenFileError` naming the file.
    """
    from symusic import Score

    p = Path(path)
    if p.is_dir():
        raise TokenFileError(f"{path}: is a directory")
    if not p.exists():
        raise TokenFileError(f"{path}: no such file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        score = Score(str(path))
    except Exception as exc:  # symusic raises RuntimeError/ValueError on bad files
        raise TokenFileError(f"{path}: not a readable MIDI file ({exc})") from exc
    try:
        return encode_score(tokenizer, score)  # type: ignore[arg-type]
    except TokenFileError as exc:
        raise TokenFileError(f"{path}: {exc}") from exc
    except Exception as exc:  # miditok fails in many ways on unusual files
        raise TokenFileError(f"{path}: miditok cannot tokenize it ({type(exc).__name__}: {exc})") from exc


def decode_ids(tokenizer: MusicTokenizer, ids: Sequence[int]) -> Score:
    """One stream of **model ids** -> ``symusic.Score`` (learned ids are decoded by miditok;
    the ids are copied first: miditok's ``decode`` mutates its input)."""
    from miditok import TokSequence

    seq = TokSequence(ids=[int(i) for i in copy.copy(list(ids))], are_ids_encoded=tokenizer.is_trained)
    if not tokenizer.is_trained:
        tokenizer.complete_sequence(seq)
    return tokenizer.decode([seq] if not tokenizer.config.one_token_stream_for_programs else seq)


# -- token files in -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TokenFile:
    """The streams of one token file, as the file holds them.

    ``learned``: True when the ids are **learned ids** of a trained vocabulary (JSON files
    and MIDI tokenized by a trained tokenizer; expand them with :func:`model_vocab`), False
    when they are **base ids** (text files, and every file of an untrained tokenizer, whose
    model ids are its base ids).
    """

    streams: list[list[int]]
    learned: bool


def _ids_from_json(obj: object, name: str, vocab_size: int) -> list[list[int]]:
    if isinstance(obj, dict):
        if "ids" not in obj:
            keys = ", ".join(sorted(map(str, obj))[:5]) or "none"
            raise TokenFileError(f"{name}: JSON token file has no 'ids' key (keys: {keys})")
        obj = obj["ids"]
    if not isinstance(obj, list):
        raise TokenFileError(f"{name}: 'ids' must be a list of token ids or a list of such lists")
    streams = obj if obj and all(isinstance(x, list) for x in obj) else [obj]
    out = []
    for s, stream in enumerate(streams):
        ids = []
        for i, x in enumerate(stream):
            if isinstance(x, bool) or not isinstance(x, int):
                raise TokenFileError(f"{name}: stream {s}, item {i}: {x!r} is not a token id")
            if not 0 <= x < vocab_size:
                raise TokenFileError(
                    f"{name}: stream {s}, item {i}: id {x} is outside the vocabulary (0..{vocab_size - 1})"
                )
            ids.append(x)
        out.append(ids)
    return out


def _ids_from_text(text: str, name: str, token_index: dict[str, int]) -> list[list[int]]:
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    out = []
    for b, block in enumerate(blocks):
        ids = []
        for i, tok in enumerate(block.split()):
            idx = token_index.get(tok)
            if idx is None:
                where = f"stream {b}, token {i}" if len(blocks) > 1 else f"token {i}"
                raise TokenFileError(f"{name}: {where}: unknown token name {tok!r}")
            ids.append(idx)
        out.append(ids)
    return out


def parse_token_bytes(data: bytes, name: str, tokenizer: MusicTokenizer) -> TokenFile:
    """Token streams from the bytes of a JSON (model ids) or text (base tokens) token file."""
    if not data.strip():
        raise TokenFileError(f"{name}: empty file")
    if b"\x00" in data[:4096]:
        raise TokenFileError(f"{name}: binary file (not JSON, text or MIDI)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenFileError(
                f"{name}: broken JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from exc
        return TokenFile(_ids_from_json(obj, name, len(tokenizer)), tokenizer.is_trained)
    return TokenFile(_ids_from_text(text, name, tokenizer.vocab), learned=False)


def read_tokens(path: str | os.PathLike[str], tokenizer: MusicTokenizer) -> TokenFile:
    """Read one token file (JSON, text, MIDI or ``-``) as it holds its streams.

    Raises :class:`TokenFileError` with one line naming the file and the problem.
    """
    name = str(path)
    if name == "-":
        return parse_token_bytes(sys.stdin.buffer.read(), "<stdin>", tokenizer)
    p = Path(path)
    if p.is_dir():
        raise TokenFileError(f"{name}: is a directory")
    if not p.exists():
        raise TokenFileError(f"{name}: no such file")
    try:
        with p.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise TokenFileError(f"{name}: cannot read ({exc.strerror})") from exc
    if p.suffix.lower() in MIDI_SUFFIXES or head == b"MThd":
        return TokenFile(encode_midi(tokenizer, p), tokenizer.is_trained)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"{name}: cannot read ({exc.strerror})") from exc
    return parse_token_bytes(data, name, tokenizer)


def read_token_file(path: str | os.PathLike[str], tokenizer: MusicTokenizer) -> list[list[int]]:
    """Read one token file (JSON, text, MIDI or ``-``) into streams of **model ids**.

    A text file names base tokens, which a trained tokenizer's model does not read: it is a
    :class:`TokenFileError` there (check it with :func:`read_tokens`). Errors are one line
    naming the file and the problem.
    """
    tokens = read_tokens(path, tokenizer)
    if tokenizer.is_trained and not tokens.learned:
        name = "<stdin>" if str(path) == "-" else str(path)
        raise TokenFileError(
            f"{name}: a text file holds base token names, not the ids of the trained "
            "vocabulary; give a JSON token file or a MIDI file"
        )
    return tokens.streams


# -- token files out ----------------------------------------------------------------------
def _atomic_write(writers: dict[Path, str | Callable[[Path], None]]) -> None:
    """Write files through temp files beside them, then rename them all into place.

    ``writers`` maps a path to its text, or to a function that writes a given path. An error
    is a :class:`TokenFileError` naming the file, and leaves no temp file and no partial
    set: if the last rename fails, the files already renamed are removed again.
    """
    temps: list[tuple[Path, Path]] = []
    done: list[Path] = []
    target = next(iter(writers))
    try:
        for target, content in writers.items():
            if target.is_dir():
                raise IsADirectoryError(21, "Is a directory", str(target))
            target.parent.mkdir(parents=True, exist_ok=True)
            prefix = f".{target.stem}."
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=target.suffix)
            temps.append((target, Path(tmp_name)))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                if isinstance(content, str):
                    fh.write(content)
            if not isinstance(content, str):
                content(Path(tmp_name))
        for target, tmp in temps:
            give_mode(tmp, target)
            os.replace(tmp, target)
            done.append(target)
    except BaseException as exc:  # a write error, or interrupted (Ctrl-C): no file, no partial set
        for path in [tmp for _, tmp in temps] + done:
            with contextlib.suppress(OSError):
                path.unlink()
        if isinstance(exc, OSError):
            raise TokenFileError(f"{target}: cannot write ({exc.strerror or exc})") from exc
        raise


def write_token_streams(
    path: str | os.PathLike[str], streams: Sequence[Sequence[int]], tokenizer: MusicTokenizer
) -> None:
    """Write streams of **model ids** as a miditok JSON token file at ``path`` (``{"ids":
    [...]}`` for one stream, a list of lists for several) and a ``.txt`` of **base** token
    names beside it (blank lines between streams; learned ids expanded).

    Both files are written atomically (temp file + rename): an error leaves no partial file,
    and is a :class:`TokenFileError` naming the file.
    """
    p = Path(path)
    lists = [[int(i) for i in s] for s in streams]
    vocab = model_vocab(tokenizer)
    texts = []
    for s, ids in enumerate(lists):
        bad = next((i for i in ids if not 0 <= i < len(vocab)), None)
        if bad is not None:
            raise TokenFileError(f"{p}: stream {s}: id {bad} is outside the vocabulary (0..{len(vocab) - 1})")
        texts.append(" ".join(vocab.base[b] for b in vocab.expand(ids)[0]))
    ids_obj: object = lists[0] if len(lists) == 1 else lists
    _atomic_write({p: json.dumps({"ids": ids_obj}) + "\n", p.with_suffix(".txt"): "\n\n".join(texts) + "\n"})


def write_token_file(path: str | os.PathLike[str], ids: Sequence[int], tokenizer: MusicTokenizer) -> None:
    """Write one stream of model ids (see :func:`write_token_streams`)."""
    write_token_streams(path, [ids], tokenizer)
