"""Grammar language, compiler, constraint automata, the Automaton, and the checker."""

from gramophone.grammar.automaton import REJECT, Automaton, Component
from gramophone.grammar.checker import Violation, check_ids
from gramophone.grammar.compiler import compile_grammar
from gramophone.grammar.composer import ComposerConstraints, with_constraints
from gramophone.grammar.remi import compile_remi
from gramophone.grammar.schemes import SCHEMES, compile_tokenizer, derive, grammar_file_text

__all__ = [
    "REJECT",
    "SCHEMES",
    "Automaton",
    "Component",
    "ComposerConstraints",
    "Violation",
    "check_ids",
    "compile_grammar",
    "compile_remi",
    "compile_tokenizer",
    "derive",
    "grammar_file_text",
    "with_constraints",
]
