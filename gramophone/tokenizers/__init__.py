"""miditok wrapper: the shipped config, token files in and out, MIDI in and out.

Token files gramophone reads (:func:`read_token_file`):

- miditok JSON token files: ``{"ids": [...]}`` (one stream) or ``{"ids": [[...], ...]}``,
  or a bare JSON list of ids / list of id lists;
- plain text: token names separated by white space (one stream; blank-line separated
  blocks are separate streams);
- MIDI files (``.mid``/``.midi``), tokenized with the config;
- ``-``: standard input (JSON or text).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from gramophone.errors import TokenFileError

if TYPE_CHECKING:
    from miditok import REMI
    from symusic.core import ScoreTick as Score

__all__ = [
    "decode_ids",
    "default_tokenizer_path",
    "encode_midi",
    "encode_score",
    "load_tokenizer",
    "read_token_file",
    "vocab_list",
    "write_token_file",
]

MIDI_SUFFIXES = (".mid", ".midi", ".smf")


def default_tokenizer_path() -> Path:
    """The shipped tokenizer config (miditok's ``tokenizer.save`` format)."""
    return Path(str(resources.files("gramophone.tokenizers") / "configs" / "remi-chorales.json"))


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> REMI:
    """Load a tokenizer file written by miditok's ``tokenizer.save`` (default: shipped)."""
    from miditok import REMI

    p = Path(path) if path is not None else default_tokenizer_path()
    if not p.is_file():
        raise TokenFileError(f"{p}: tokenizer file not found")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenFileError(f"{p}: not a miditok tokenizer file ({exc})") from exc
    if not isinstance(data, dict) or "config" not in data:
        raise TokenFileError(f"{p}: not a miditok tokenizer file (no 'config')")
    if data.get("tokenization", "REMI") != "REMI":
        raise TokenFileError(f"{p}: tokenization {data.get('tokenization')!r} is not REMI")
    try:
        return REMI(params=p)
    except Exception as exc:  # miditok raises many kinds on a bad config
        raise TokenFileError(f"{p}: miditok cannot load this tokenizer ({exc})") from exc


def vocab_list(tokenizer: REMI) -> list[str]:
    """Token names by id."""
    return [tok for tok, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])]


def encode_score(tokenizer: REMI, score: Score) -> list[list[int]]:
    """Tokenize a score into id streams (one per track, or one with programs).

    With programs in one stream, tracks are first sorted by program (drums first), so that
    notes at one onset come in the grammar's canonical order.
    """
    if tokenizer.config.use_programs:
        score = score.copy()
        score.tracks = sorted(score.tracks, key=lambda t: -1 if t.is_drum else t.program)  # type: ignore[assignment]
    seqs = tokenizer.encode(score)
    if not isinstance(seqs, list):
        seqs = [seqs]
    return [list(seq.ids) for seq in seqs]


def encode_midi(tokenizer: REMI, path: str | os.PathLike[str]) -> list[list[int]]:
    """Read a MIDI file and tokenize it (see :func:`encode_score`)."""
    from symusic import Score

    try:
        score = Score(str(path))
    except Exception as exc:  # symusic raises RuntimeError/ValueError on bad files
        raise TokenFileError(f"{path}: not a readable MIDI file ({exc})") from exc
    return encode_score(tokenizer, score)  # type: ignore[arg-type]


def decode_ids(tokenizer: REMI, ids: Sequence[int]) -> Score:
    """ids -> ``symusic.Score`` (copies first: miditok's ``decode`` mutates its input)."""
    from miditok import TokSequence

    seq = TokSequence(ids=list(copy.copy(list(ids))))
    tokenizer.complete_sequence(seq)
    return tokenizer.decode([seq] if not tokenizer.config.one_token_stream_for_programs else seq)


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


def parse_token_bytes(data: bytes, name: str, tokenizer: REMI) -> list[list[int]]:
    """Token streams from the bytes of a JSON or text token file."""
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
        return _ids_from_json(obj, name, len(tokenizer))
    return _ids_from_text(text, name, tokenizer.vocab)


def read_token_file(path: str | os.PathLike[str], tokenizer: REMI) -> list[list[int]]:
    """Read one token file (JSON, text, MIDI or ``-``) into id streams.

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
        head = p.open("rb").read(4)
    except OSError as exc:
        raise TokenFileError(f"{name}: cannot read ({exc.strerror})") from exc
    if p.suffix.lower() in MIDI_SUFFIXES or head == b"MThd":
        return encode_midi(tokenizer, p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"{name}: cannot read ({exc.strerror})") from exc
    return parse_token_bytes(data, name, tokenizer)


def write_token_file(path: str | os.PathLike[str], ids: Sequence[int], tokenizer: REMI) -> None:
    """Write one stream as a miditok JSON token file and a ``.txt`` of token names beside it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ids = [int(i) for i in ids]
    p.write_text(json.dumps({"ids": ids}) + "\n")
    names = vocab_list(tokenizer)
    p.with_suffix(".txt").write_text(" ".join(names[i] for i in ids) + "\n")
