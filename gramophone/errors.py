"""One exception hierarchy, rooted at :class:`GramophoneError`.

Errors that describe bad input are also ``ValueError`` (as lark's ``ConfigurationError``),
so callers that do not know gramophone can still catch them idiomatically.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConstraintError",
    "DecodingError",
    "GrammarError",
    "GramophoneError",
    "MissingDependencyError",
    "TokenFileError",
    "UnsupportedConfigError",
]


class GramophoneError(Exception):
    """Base class of every error gramophone raises on purpose."""


class GrammarError(GramophoneError, ValueError):
    """A grammar file is malformed or outside the supported regular subset."""


class UnsupportedConfigError(GrammarError):
    """A tokenizer configuration uses an option the grammar does not cover."""


class TokenFileError(GramophoneError, ValueError):
    """A token file cannot be read: missing, empty, binary, malformed, out of vocabulary."""


class CheckpointError(GramophoneError, ValueError):
    """A checkpoint is missing, truncated, corrupted or does not match the tokenizer."""


class ConstraintError(GramophoneError, ValueError):
    """A composer constraint (``--key``, ``--pitch-range`` ...) is malformed, or leaves no
    pitch of the vocabulary."""


class DecodingError(GramophoneError, ValueError):
    """Decoding cannot start: invalid sampling options, a prompt that is not a valid prefix,
    a budget too small for the shortest valid piece."""


class BackendUnavailableError(GramophoneError, ImportError):
    """A backend was asked for whose framework is not installed (or an unknown name)."""


class MissingDependencyError(GramophoneError, ImportError):
    """An optional package that a feature needs is not installed; the message says what to
    install (``pip install 'gramophone[EXTRA]'``)."""
