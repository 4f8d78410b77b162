"""Trained vocabularies for tests: miditok's recipe on a few chorales, once per process.

``trained_tokenizer_path(scheme, model, split)`` trains a small vocabulary (BPE, Unigram or
WordPiece; 1,000 tokens, which every model reaches on these chorales) for a miditok scheme
class (REMI, TSD, ...) with the shipped config's options, on the first
:data:`TRAIN_CHORALES` chorales, as a user would::

    tokenizer.train(vocab_size=1000, model=model, files_paths=chorales)
    tokenizer.save(path)

and returns the path of the saved file (a temporary folder removed at exit). Training takes
0.2-1.5 s on two cores. ``trained_tokenizer`` loads it back through
:func:`gramophone.tokenizers.load_tokenizer`, as the command line does.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = [
    "MODELS",
    "SPLITS",
    "TRAIN_CHORALES",
    "VOCAB_SIZE",
    "chorales",
    "trained_tokenizer",
    "trained_tokenizer_path",
]

MODELS = ("BPE", "Unigram", "WordPiece")
SPLITS = ("bar", "no")
TRAIN_CHORALES = 40
VOCAB_SIZE = 1000


@cache
def chorales() -> tuple[Path, ...]:
    """Every chorale as MIDI (converted into the shared cache the first time)."""
    from gramophone.data import chorale_midis

    return tuple(chorale_midis(progress=False))


@cache
def _folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="gramophone-learned-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@cache
def trained_tokenizer_path(scheme: str = "REMI", model: str = "BPE", split: str = "bar") -> Path:
    """A tokenizer file of ``scheme`` (a miditok class name) with the shipped config's
    options and ``encode_ids_split=split``, trained with ``model`` on the first
    :data:`TRAIN_CHORALES` chorales."""
    import miditok

    from gramophone.tokenizers import load_tokenizer

    config = load_tokenizer().config
    config.encode_ids_split = split
    tokenizer = getattr(miditok, scheme)(config)
    with warnings.catch_warnings():
        # miditok warns that WordPiece without splitting loses long sequences: tests cover it.
        warnings.simplefilter("ignore", UserWarning)
        tokenizer.train(vocab_size=VOCAB_SIZE, model=model, files_paths=list(chorales()[:TRAIN_CHORALES]))
    path = _folder() / f"{scheme}-{model}-{split}.json"
    tokenizer.save(path)
    return path


@cache
def trained_tokenizer(scheme: str = "REMI", model: str = "BPE", split: str = "bar") -> MusicTokenizer:
    """:func:`trained_tokenizer_path`, loaded with gramophone's ``load_tokenizer``."""
    from gramophone.tokenizers import load_tokenizer

    return load_tokenizer(trained_tokenizer_path(scheme, model, split))
