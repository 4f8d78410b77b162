"""gramophone: grammar-constrained generation of symbolic music.

A formal grammar of a miditok token language (REMI, TSD, MIDILike, Structured; trained
vocabularies too) compiles to a finite-state automaton over the tokenizer's vocabulary; the
same automaton checks token files, masks sampling and shapes the training loss. The
per-step kernels (:mod:`gramophone.kernels`) and :func:`gramophone.decoding.tables_for` are
the API for a sampling loop of one's own. Importing the package imports neither PyTorch
nor JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gramophone._version import __version__
from gramophone.errors import (
    BackendUnavailableError,
    CheckpointError,
    GrammarError,
    GramophoneError,
    TokenFileError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from gramophone.grammar import (
        Automaton,
        Component,
        check_ids,
        compile_grammar,
        compile_remi,
        compile_tokenizer,
    )
    from gramophone.tokenizers import load_tokenizer, read_token_file

__all__ = [
    "Automaton",
    "BackendUnavailableError",
    "CheckpointError",
    "Component",
    "GrammarError",
    "GramophoneError",
    "TokenFileError",
    "UnsupportedConfigError",
    "__version__",
    "check_ids",
    "compile_grammar",
    "compile_remi",
    "compile_tokenizer",
    "load_tokenizer",
    "read_token_file",
]

_LAZY = {
    "Automaton": "gramophone.grammar",
    "Component": "gramophone.grammar",
    "check_ids": "gramophone.grammar",
    "compile_grammar": "gramophone.grammar",
    "compile_remi": "gramophone.grammar",
    "compile_tokenizer": "gramophone.grammar",
    "load_tokenizer": "gramophone.tokenizers",
    "read_token_file": "gramophone.tokenizers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gramophone' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
