"""Grammar language, compiler, constraint automata, the Automaton, and the checker."""

from gramophone.grammar.automaton import REJECT, Automaton, Component
from gramophone.grammar.checker import Violation, check_ids
from gramophone.grammar.compiler import compile_grammar
from gramophone.grammar.remi import compile_remi, derive, grammar_file_text

__all__ = [
    "REJECT",
    "Automaton",
    "Component",
    "Violation",
    "check_ids",
    "compile_grammar",
    "compile_remi",
    "derive",
    "grammar_file_text",
]
