"""One seam for every tokenization: a scheme derives a grammar from a tokenizer's config.

A *scheme* (REMI, TSD, MIDILike, Structured) is a module with a function
``derive(tokenizer) -> SchemeGrammar``: the shipped grammar file narrowed to the config
(lark text) plus the constraint automata the config implies, built in code. Nothing
downstream knows which scheme it is: :func:`compile_tokenizer` compiles any of them into
one :class:`~gramophone.grammar.Automaton` over the tokenizer's **base** vocabulary, and a
trained vocabulary (BPE, Unigram, WordPiece) is the same language over longer tokens
(see :mod:`gramophone.tokenizers.learned`).

An option a scheme does not cover is an :class:`~gramophone.UnsupportedConfigError` that
names it, never a silently wrong grammar.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gramophone._paths import cache_dir
from gramophone._version import __version__
from gramophone.errors import GramophoneError, UnsupportedConfigError
from gramophone.grammar.automaton import Automaton, Component
from gramophone.grammar.compiler import compile_grammar

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = [
    "SCHEMES",
    "SchemeGrammar",
    "base_vocab",
    "compile_tokenizer",
    "derive",
    "grammar_file_text",
    "scheme_of",
]

log = logging.getLogger(__name__)

#: miditok tokenizer class name -> the module that derives its grammar.
SCHEMES: dict[str, str] = {
    "REMI": "gramophone.grammar.remi",
    "TSD": "gramophone.grammar.tsd",
    "MIDILike": "gramophone.grammar.midilike",
    "Structured": "gramophone.grammar.structured",
}


class SchemeGrammar(Protocol):
    """What a scheme derives from one config. Implementations are frozen dataclasses whose
    fields (the constraints' parameters) are JSON-serializable through ``dataclasses.asdict``:
    they key the compile cache."""

    @property
    def scheme(self) -> str: ...  # "remi", "tsd", ... (the grammar file's stem)

    @property
    def text(self) -> str: ...  # the derived lark grammar (shipped file + config overrides)

    @property
    def absent_terminals(self) -> tuple[str, ...]: ...  # terminals the config turns off

    def components(self, vocab: Sequence[str]) -> list[Component]:
        """The constraint automata (over ``vocab``, the base vocabulary), in lockstep order."""
        ...


def grammar_file_text(name: str = "remi") -> str:
    """The text of a grammar shipped as package data (``grammars/NAME.lark``)."""
    return (resources.files("gramophone.grammar") / "grammars" / f"{name}.lark").read_text()


def scheme_of(tokenizer: MusicTokenizer) -> str:
    """The miditok class name of ``tokenizer`` if gramophone has a scheme for it."""
    for cls in type(tokenizer).__mro__:
        if cls.__name__ in SCHEMES:
            return cls.__name__
    supported = ", ".join(SCHEMES)
    raise UnsupportedConfigError(
        f"tokenizer {type(tokenizer).__name__} is not supported (supported: {supported})"
    )


def derive(tokenizer: MusicTokenizer) -> SchemeGrammar:
    """The grammar of ``tokenizer``'s scheme narrowed to its config (or a clear refusal)."""
    module = importlib.import_module(SCHEMES[scheme_of(tokenizer)])
    grammar: SchemeGrammar = module.derive(tokenizer)
    return grammar


def base_vocab(tokenizer: MusicTokenizer) -> list[str]:
    """The base token names by id (a trained tokenizer's learned ids are mapped elsewhere)."""
    vocab = tokenizer.vocab
    if isinstance(vocab, list):
        raise UnsupportedConfigError("tokenizers with several vocabularies are not supported")
    return [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


@functools.cache
def _code_hash() -> str:
    """Hash of the modules and grammar files that build automata: a cache entry never
    outlives a code change (between releases too, where the version alone would not notice)."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for path in sorted([*here.glob("*.py"), *(here / "grammars").glob("*.lark")]):
        if path.name in ("checker.py", "__init__.py"):
            continue
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _config_dict(tokenizer: MusicTokenizer) -> dict[str, Any]:
    return dict(tokenizer.config.to_dict(serialize=True))


def _cache_key(vocab: list[str], grammar: SchemeGrammar) -> str:
    payload = json.dumps(
        {
            "version": __version__,
            "code": _code_hash(),
            "vocab": vocab,
            "grammar": dataclasses.asdict(grammar),  # type: ignore[call-overload]
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def compile_scheme(grammar: SchemeGrammar, vocab: list[str], meta: dict[str, str]) -> Automaton:
    """Syntax DFA of ``grammar.text`` over ``vocab`` + the scheme's constraint components."""
    syntax = compile_grammar(
        grammar.text, vocab, absent_terminals=grammar.absent_terminals, source=f"{grammar.scheme}.lark"
    )
    components = [
        Component(
            name="syntax", transitions=syntax.transitions, accepting=syntax.accepting, start=syntax.start
        ),
        *grammar.components(vocab),
    ]
    return Automaton(tuple(vocab), tuple(components), grammar.text, meta)


def compile_tokenizer(tokenizer: MusicTokenizer, *, use_cache: bool = True) -> Automaton:
    """Compile the grammar of any supported miditok tokenizer over its base vocabulary.

    Cached under ``cache_dir()/automata`` keyed on the vocabulary, the derived grammar, the
    code that builds automata and the gramophone version; a corrupted entry is rebuilt.
    A trained tokenizer compiles to the automaton of its base vocabulary.
    """
    grammar = derive(tokenizer)
    vocab = base_vocab(tokenizer)
    path = cache_dir() / "automata" / f"{grammar.scheme}-{_cache_key(vocab, grammar)}.npz"
    if use_cache and path.exists():
        try:
            return Automaton.load(path)
        except GramophoneError as exc:
            log.warning("rebuilding the automaton cache entry: %s", exc)
    meta = {
        "gramophone_version": __version__,
        "scheme": grammar.scheme,
        "tokenizer_config": json.dumps(_config_dict(tokenizer), sort_keys=True, default=str),
    }
    automaton = compile_scheme(grammar, vocab, meta)
    if use_cache:
        try:
            automaton.save(path)
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("could not write the automaton cache %s: %s", path, exc)
    return automaton
