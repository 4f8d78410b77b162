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
import hashlib
import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gramophone._files import cache_dir, code_hash, keep_cache_under, touch
from gramophone._version import __version__
from gramophone.errors import UnsupportedConfigError
from gramophone.grammar.automaton import Automaton, Component
from gramophone.grammar.compiler import compile_grammar

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = [
    "COMMON_UNSUPPORTED",
    "SCHEMES",
    "SchemeGrammar",
    "absent_terminals",
    "automaton_code_hash",
    "base_vocab",
    "compile_tokenizer",
    "derive",
    "event_options",
    "grammar_file_text",
    "refuse_common_options",
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


#: Options no scheme covers yet, with the value that is supported (checked by every derive).
COMMON_UNSUPPORTED: dict[str, bool] = {
    "use_key_signatures": False,
    "use_control_changes": False,
    "use_pitch_intervals": False,
    "program_changes": False,
    "sustain_pedal_duration": False,
}


def refuse_common_options(
    config: Any, *, flags: Mapping[str, bool] = COMMON_UNSUPPORTED, note_ends: str = "Duration tokens"
) -> None:
    """What every scheme refuses alike (a miditok ``TokenizerConfig``): ``flags`` not at their
    supported value, programs in several streams, attribute controls, and notes without
    their ``note_ends`` (``use_note_duration_programs`` must cover every program a stream
    may hold: the config's programs, or all of them without ``use_programs``, since miditok
    then encodes every track, drums included)."""
    for option, supported in flags.items():
        if bool(getattr(config, option)) != supported:
            value = getattr(config, option)
            raise UnsupportedConfigError(f"tokenizer option {option}={value!r} is not supported")
    if config.use_programs and not config.one_token_stream_for_programs:
        raise UnsupportedConfigError(
            "use_programs with one_token_stream_for_programs=False is not supported "
            "(programs in one stream only)"
        )
    active = sorted(k for k, v in vars(config).items() if k.startswith("ac_") and v is True)
    if active:
        raise UnsupportedConfigError(f"attribute controls are not supported ({', '.join(active)})")
    programs = set(config.programs) if config.use_programs else set(range(-1, 128))
    missing = programs - set(config.use_note_duration_programs)
    if missing:
        raise UnsupportedConfigError(
            f"use_note_duration_programs must cover every program ({note_ends} for all notes); "
            f"missing {sorted(missing)[:5]}"
        )


def event_options(config: Any) -> list[tuple[str, bool]]:
    """``(terminal, present)`` for the event types a config turns on or off (the terminal
    names every shipped grammar uses for them)."""
    return [
        ("TIME_SIG", config.use_time_signatures),
        ("REST", config.use_rests),
        ("TEMPO", config.use_tempos),
        ("CHORD", config.use_chords),
        ("PROGRAM", config.use_programs),
        ("VELOCITY", config.use_velocities),
        ("PEDAL", config.use_sustain_pedals),
        ("PEDAL_OFF", config.use_sustain_pedals),
        ("PITCH_BEND", config.use_pitch_bends),
    ]


def absent_terminals(config: Any, options: Sequence[tuple[str, bool]]) -> set[str]:
    """The terminals a config turns off: special tokens it lacks and ``options`` not present."""
    specials = {tok.split("_")[0] for tok in config.special_tokens}
    pairs = [("BOS", "BOS" in specials), ("EOS", "EOS" in specials), ("PAD", "PAD" in specials), *options]
    return {terminal for terminal, present in pairs if not present}


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


def automaton_code_hash() -> str:
    """:func:`~gramophone._files.code_hash` of the modules and grammar files that build
    automata (this package but the checker, and the composer constraints, which are added
    after the cached automaton and reach caches through its tables' digest): part of every
    key of a cached automaton or of something built from one."""
    here = Path(__file__).parent
    files = [*here.glob("*.py"), *(here / "grammars").glob("*.lark")]
    return code_hash(f for f in files if f.name not in ("checker.py", "__init__.py", "composer.py"))


def _config_dict(tokenizer: MusicTokenizer) -> dict[str, Any]:
    return dict(tokenizer.config.to_dict(serialize=True))


def _cache_key(vocab: list[str], grammar: SchemeGrammar) -> str:
    payload = json.dumps(
        {
            "version": __version__,
            "code": automaton_code_hash(),
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
            loaded = Automaton.load(path)
            touch(path)
            return loaded
        except Exception as exc:  # any unreadable entry (truncated, foreign): rebuilt silently
            log.info("rebuilding the automaton cache entry: %s", exc)
    meta = {
        "gramophone_version": __version__,
        "scheme": grammar.scheme,
        "tokenizer_config": json.dumps(_config_dict(tokenizer), sort_keys=True, default=str),
    }
    automaton = compile_scheme(grammar, vocab, meta)
    if use_cache:
        try:
            automaton.save(path)
            keep_cache_under(path.parent)
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("could not write the automaton cache %s: %s", path, exc)
    return automaton
