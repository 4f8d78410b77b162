"""Trained models: the bundled checkpoint, and what ties a checkpoint to a tokenizer.

A checkpoint written by :mod:`gramophone.training` records in its ``meta`` what its token
ids mean (:func:`checkpoint_meta`): the vocabulary, a fingerprint of the tokenizer config,
the hash of the automaton it was trained against, and the data config. Loading one for a
tokenizer whose vocabulary or grammar differs is a :class:`CheckpointError`
(:func:`check_compatible`), never a model that silently emits the wrong tokens.

Importing this module imports neither PyTorch nor JAX.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gramophone.errors import CheckpointError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.backends import Backend, Checkpoint
    from gramophone.grammar import Automaton

__all__ = [
    "BUNDLED_NAME",
    "bundled_checkpoint_path",
    "check_compatible",
    "checkpoint_meta",
    "checkpoint_tokenizer",
    "load_checkpoint",
    "resolve_checkpoint",
    "vocab_hash",
]

BUNDLED_NAME = "bundled"


def bundled_checkpoint_path() -> Path:
    """The folder of the bundled model (``gramophone/models/bundled``: ``model.safetensors``
    + ``config.json``, no optimizer state); :class:`CheckpointError` if it is not installed."""
    path = Path(str(resources.files("gramophone.models") / BUNDLED_NAME))
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: the bundled model is missing (train it with scripts/train_bundled.sh, "
            "or pass --checkpoint DIR)"
        )
    return path


def vocab_hash(vocab: Sequence[str]) -> str:
    """sha256 (16 hex) of the JSON list of token names in id order."""
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()[:16]


def checkpoint_meta(tokenizer: MusicTokenizer, automaton: Automaton, **extra: Any) -> dict[str, Any]:
    """The ``meta`` a training checkpoint carries: ``vocab`` (token names by id),
    ``vocab_size``, ``vocab_hash`` (sha256 of the JSON list of names, 16 hex, as decoding
    checks it), ``tokenizer_hash``, ``tokenizer_config``, ``automaton_hash``, plus ``extra``."""
    from gramophone.data.dataset import tokenizer_fingerprint
    from gramophone.tokenizers import model_vocab_names

    vocab = model_vocab_names(tokenizer)
    return {
        "vocab": vocab,
        "vocab_size": len(vocab),
        "vocab_hash": vocab_hash(vocab),
        "tokenizer_hash": tokenizer_fingerprint(tokenizer),
        "tokenizer_config": tokenizer.config.to_dict(serialize=True),
        "automaton_hash": automaton.hash,
        **extra,
    }


def check_compatible(
    meta: Mapping[str, Any],
    vocab_size: int,
    tokenizer: MusicTokenizer,
    automaton: Automaton | None = None,
    *,
    where: str | os.PathLike[str] = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` unless a checkpoint fits ``tokenizer`` (and ``automaton``).

    ``meta`` and ``vocab_size`` are the checkpoint's (``info.meta``, ``info.model.vocab_size``).
    Checked: the model's vocabulary size; the recorded vocabulary, token by token; the
    recorded automaton hash (the grammar the model was trained against). A checkpoint
    that records no vocabulary (written outside :mod:`gramophone.training`) is checked
    on its size only.
    """
    from gramophone.tokenizers import model_vocab_names

    vocab = model_vocab_names(tokenizer)
    if vocab_size != len(vocab):
        raise CheckpointError(
            f"{where}: the model has a vocabulary of {vocab_size} tokens, the tokenizer {len(vocab)}; "
            "it was trained with another tokenizer config"
        )
    recorded = meta.get("vocab")
    if recorded is not None:
        if not isinstance(recorded, list) or len(recorded) != len(vocab):
            raise CheckpointError(f"{where}: the recorded vocabulary is malformed")
        for i, (a, b) in enumerate(zip(recorded, vocab, strict=True)):
            if a != b:
                raise CheckpointError(
                    f"{where}: vocabulary mismatch at id {i}: the model was trained with {a!r}, "
                    f"the tokenizer has {b!r}; use the tokenizer the model was trained with"
                )
    theirs = meta.get("vocab_hash")
    if theirs is not None and theirs != vocab_hash(vocab):
        raise CheckpointError(
            f"{where}: the checkpoint was trained for a vocabulary with hash {theirs}, the tokenizer's "
            f"is {vocab_hash(vocab)}; use the tokenizer the model was trained with"
        )
    if automaton is not None and meta.get("automaton_hash") not in (None, automaton.hash):
        raise CheckpointError(
            f"{where}: grammar mismatch: the model was trained against automaton "
            f"{meta['automaton_hash']}, the tokenizer's grammar compiles to {automaton.hash}"
        )


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder ``path`` names: itself when it holds a ``config.json`` (a
    checkpoint, or a backend's own format), else a training run folder's final model
    (``RUN/model``), else its latest complete checkpoint (``RUN/checkpoints/step-*``).
    :class:`CheckpointError` in one line for a folder that is none of these."""
    from gramophone.backends.checkpoint import CONFIG_FILE
    from gramophone.training import MODEL_DIR, latest_checkpoint

    p = Path(path)
    if (p / CONFIG_FILE).is_file() or not p.is_dir():
        return p  # a missing folder: loading it says so
    if (p / MODEL_DIR / CONFIG_FILE).is_file():
        return p / MODEL_DIR
    last = latest_checkpoint(p)
    if last is None:
        raise CheckpointError(
            f"{p}: neither a checkpoint (no {CONFIG_FILE}) nor a training run folder with a model "
            f"({MODEL_DIR}/) or a complete checkpoint (checkpoints/step-*)"
        )
    return last


def checkpoint_tokenizer(path: str | os.PathLike[str]) -> MusicTokenizer:
    """The tokenizer a checkpoint was trained with: its ``tokenizer.json`` when it has one
    (what ``gramophone train`` writes), else the shipped config."""
    from gramophone.tokenizers import load_tokenizer

    tok_file = Path(path) / "tokenizer.json"
    return load_tokenizer(tok_file if tok_file.is_file() else None)


def load_checkpoint(
    backend: Backend,
    path: str | os.PathLike[str] | None = None,
    tokenizer: MusicTokenizer | None = None,
    automaton: Automaton | None = None,
) -> Checkpoint:
    """Load a checkpoint (default: the bundled one) with ``backend`` after checking that it
    fits ``tokenizer`` (default: the checkpoint's own, :func:`checkpoint_tokenizer`) and
    ``automaton`` (when given: the grammar over the model's ids). The one way gramophone
    loads a model; raises :class:`CheckpointError`. A backend with a checkpoint format of
    its own (``hf``: a ``save_pretrained`` folder) loads and checks it in
    :meth:`~gramophone.backends.Backend.load_native`."""
    from gramophone.backends import checkpoint as ckpt

    p = Path(path) if path is not None else bundled_checkpoint_path()
    tok = tokenizer if tokenizer is not None else checkpoint_tokenizer(p)
    native = backend.load_native(p, tok, automaton)  # a format of the backend's own (hf)
    if native is not None:
        return native
    info = ckpt.read_info(p)
    check_compatible(info.meta, info.model.vocab_size, tok, automaton, where=p)
    return backend.load(p)
