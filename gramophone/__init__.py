"""gramophone: grammar-constrained generation of symbolic music.

A formal grammar of the REMI token language compiles to a finite-state automaton over the
tokenizer's vocabulary; the same automaton checks token files, masks sampling and shapes
the training loss. Importing the package imports neither PyTorch nor JAX.
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
    from gramophone.grammar import Automaton, Component, check_ids, compile_grammar, compile_remi
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
    "load_tokenizer",
    "read_token_file",
]

_LAZY = {
    "Automaton": "gramophone.grammar",
    "Component": "gramophone.grammar",
    "check_ids": "gramophone.grammar",
    "compile_grammar": "gramophone.grammar",
    "compile_remi": "gramophone.grammar",
    "load_tokenizer": "gramophone.tokenizers",
    "read_token_file": "gramophone.tokenizers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gramophone' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
