"""Compile a grammar file in lark's syntax (regular subset) to a DFA over a vocabulary.

Terminals match whole token names: ``PITCH: /Pitch_\\d+/`` matches ``Pitch_60``; a string
literal (``"Bar_None"``) matches one token. Rules combine them with lark's EBNF:
sequence, ``|``, ``?``, ``*``, ``+``, ``[...]``, ``~ n`` and ``~ n..m``. A rule may refer to
other rules but never to itself, directly or through others (that would leave the
regular languages); such a rule is a :class:`~gramophone.GrammarError` naming the cycle.

The result is minimized (Moore) and trimmed: every state is reachable and can still reach
acceptance, so the masks it gives never lead a sampler into a dead end.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lark import Token, Tree
from lark.exceptions import LarkError
from lark.grammar import NonTerminal, Terminal
from lark.load_grammar import PrepareLiterals, TerminalTreeToPattern, load_grammar

from gramophone.errors import GrammarError
from gramophone.grammar import fsa

__all__ = ["SyntaxTable", "compile_grammar"]


@dataclass(frozen=True)
class SyntaxTable:
    """The compiled syntax automaton and what diagnostics need."""

    transitions: np.ndarray  # int32[S, V], fsa.REJECT where forbidden
    accepting: np.ndarray  # bool[S]
    start: int
    token_terminal: tuple[str, ...]  # per token: the terminal that matches it ("" if none)
    unminimized: tuple[np.ndarray, np.ndarray, int]  # the determinized, untrimmed DFA (tests)


def _pattern(regexp: str, flags: Collection[str]) -> re.Pattern[str]:
    inline = "".join(sorted(flags))
    return re.compile(f"(?{inline}){regexp}" if inline else regexp)


class _Builder:
    """Thompson's construction over a lark EBNF tree, rules inlined."""

    def __init__(
        self,
        rules: dict[str, Tree[Any]],
        terminals: dict[str, re.Pattern[str] | None],
        vocab: Sequence[str],
        absent: Collection[str],
    ) -> None:
        self.rules = rules
        self.vocab = vocab
        self.absent = set(absent)
        self.nfa = fsa.NFA()
        # Symbols: every terminal and every inline literal gets a column of matches.
        self.symbol_names: list[str] = []
        self.symbol_matches: list[np.ndarray] = []
        self.symbol_index: dict[str, int] = {}
        self.terminal_patterns = terminals
        self.used_terminals: set[str] = set()

    # -- symbols -------------------------------------------------------------------------
    def symbol(self, key: str, pattern: re.Pattern[str] | None, literal: str | None) -> int:
        if key in self.symbol_index:
            return self.symbol_index[key]
        if literal is not None:
            matches = np.array([tok == literal for tok in self.vocab], dtype=bool)
        elif pattern is not None:
            matches = np.array([pattern.fullmatch(tok) is not None for tok in self.vocab], dtype=bool)
        else:  # a %declare'd terminal: matches nothing
            matches = np.zeros(len(self.vocab), dtype=bool)
        self.symbol_index[key] = len(self.symbol_names)
        self.symbol_names.append(key)
        self.symbol_matches.append(matches)
        return self.symbol_index[key]

    # -- construction ----------------------------------------------------------------------
    def build(self, node: Any, stack: tuple[str, ...]) -> tuple[int, int]:
        """Return (entry, exit) states of a fragment accepting ``node``'s language."""
        nfa = self.nfa
        if isinstance(node, NonTerminal):
            name = node.name
            if name in stack:
                cycle = " -> ".join((*stack[stack.index(name) :], name))
                raise GrammarError(
                    f"rule '{name}' is recursive ({cycle}); only the regular subset is supported: "
                    "write repetition with *, + or ~ instead"
                )
            if name not in self.rules:
                raise GrammarError(f"rule '{name}' is used but not defined")
            return self.build(self.rules[name], (*stack, name))
        if isinstance(node, Terminal):
            name = node.name
            self.used_terminals.add(name)
            if name not in self.terminal_patterns:
                raise GrammarError(f"terminal '{name}' is used but not defined")
            sid = self.symbol(name, self.terminal_patterns[name], None)
            return self._leaf(sid)
        if not isinstance(node, Tree):
            raise GrammarError(f"unsupported grammar element {node!r}")
        kind = node.data
        if kind == "expansions":
            entry, exit_ = nfa.new_state(), nfa.new_state()
            for child in node.children:
                a, b = self.build(child, stack)
                nfa.add_eps(entry, a)
                nfa.add_eps(b, exit_)
            return entry, exit_
        if kind == "expansion":
            entry = cur = nfa.new_state()
            for child in node.children:
                a, b = self.build(child, stack)
                nfa.add_eps(cur, a)
                cur = b
            return entry, cur
        if kind == "alias":
            return self.build(node.children[0], stack)
        if kind == "value":
            return self.build(node.children[0], stack)
        if kind == "literal":
            tok = node.children[0]
            pat = _literal_pattern(node)
            if type(pat).__name__ == "PatternStr" and not pat.flags:
                sid = self.symbol(f"literal {tok}", None, pat.value)
            else:
                sid = self.symbol(f"literal {tok}", _pattern(pat.to_regexp(), pat.flags), None)
            if not self.symbol_matches[sid].any():
                raise GrammarError(f"the literal {tok} matches no token of the vocabulary")
            return self._leaf(sid)
        if kind == "maybe":
            a, b = self.build(node.children[0], stack)
            nfa.add_eps(a, b)
            return a, b
        if kind == "expr":
            inner = node.children[0]
            op = node.children[1]
            if isinstance(op, Token) and op.type == "OP":
                return self._repeat_op(inner, str(op), stack)
            if isinstance(op, Token) and op.type == "TILDE":
                lo = int(str(node.children[2]))
                hi = int(str(node.children[3])) if len(node.children) > 3 else lo
                if hi < lo:
                    raise GrammarError(f"repetition ~ {lo}..{hi} is empty")
                return self._repeat_range(inner, lo, hi, stack)
        if kind == "template_usage":
            raise GrammarError("rule templates are not supported by the compiler")
        if kind == "range":
            raise GrammarError('character ranges ("a".."z") are not supported: use a regexp terminal')
        raise GrammarError(f"unsupported grammar construct '{kind}'")

    def _leaf(self, sid: int) -> tuple[int, int]:
        a, b = self.nfa.new_state(), self.nfa.new_state()
        self.nfa.add_edge(a, frozenset([sid]), b)
        return a, b

    def _repeat_op(self, inner: Any, op: str, stack: tuple[str, ...]) -> tuple[int, int]:
        nfa = self.nfa
        a, b = self.build(inner, stack)
        entry, exit_ = nfa.new_state(), nfa.new_state()
        nfa.add_eps(entry, a)
        nfa.add_eps(b, exit_)
        if op in ("?", "*"):
            nfa.add_eps(entry, exit_)
        if op in ("*", "+"):
            nfa.add_eps(b, a)
        if op not in ("?", "*", "+"):
            raise GrammarError(f"unsupported operator {op!r}")
        return entry, exit_

    def _repeat_range(self, inner: Any, lo: int, hi: int, stack: tuple[str, ...]) -> tuple[int, int]:
        nfa = self.nfa
        entry = cur = nfa.new_state()
        exit_ = nfa.new_state()
        for i in range(hi):
            if i >= lo:
                nfa.add_eps(cur, exit_)
            a, b = self.build(inner, stack)
            nfa.add_eps(cur, a)
            cur = b
        nfa.add_eps(cur, exit_)
        return entry, exit_


# lark's grammar loader, not its parser, is what this compiler needs: the EBNF trees of the
# rules (``Grammar.rule_defs``) and the terminals' patterns (``Grammar.term_defs`` through
# ``PrepareLiterals`` and ``TerminalTreeToPattern``). These live in ``lark.load_grammar``
# and are not in lark's documented API, so the supported lark versions are bounded in
# pyproject.toml and tests/test_compiler.py pins the contract; nothing underscored is used.


def _literal_pattern(literal: Tree[Any]) -> Any:
    """The pattern of a ``literal`` node of a rule (a string or a /regexp/flags)."""
    return TerminalTreeToPattern().transform(PrepareLiterals().transform(literal))


def _load(text: str, source: str) -> tuple[dict[str, Tree[Any]], dict[str, re.Pattern[str] | None]]:
    try:
        grammar, _ = load_grammar(text, source, [], False)
    except LarkError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GrammarError(f"{source}: {first}") from exc
    rules: dict[str, Tree[Any]] = {}
    for name, params, tree, _options in grammar.rule_defs:
        if params:
            raise GrammarError(f"{source}: rule '{name}' is a template; templates are not supported")
        rules[str(name)] = tree
    terminals: dict[str, re.Pattern[str] | None] = {}
    for name, (tree, _priority) in grammar.term_defs:
        if tree is None:  # %declare
            terminals[name] = None
            continue
        pat = TerminalTreeToPattern().transform(PrepareLiterals().transform(tree))
        terminals[name] = _pattern(pat.to_regexp(), pat.flags)
    return rules, terminals


def compile_grammar(
    text: str,
    vocab: Sequence[str],
    *,
    absent_terminals: Collection[str] = (),
    source: str = "<grammar>",
    start: str = "start",
) -> SyntaxTable:
    """Compile grammar ``text`` to a minimized, trimmed DFA over ``vocab``.

    ``absent_terminals`` names terminals that may legitimately match no token (token types
    the tokenizer config turns off); any other terminal that matches nothing is an error,
    because it is almost always a typo.
    """
    rules, terminals = _load(text, source)
    if start not in rules:
        raise GrammarError(f"{source}: the grammar has no '{start}' rule")
    builder = _Builder(rules, terminals, vocab, absent_terminals)
    entry, exit_ = builder.build(NonTerminal(start), ())
    for name in sorted(builder.used_terminals):
        sid = builder.symbol_index[name]
        if not builder.symbol_matches[sid].any() and name not in builder.absent:
            pattern = terminals[name]
            shown = f" (/{pattern.pattern}/)" if pattern is not None else ""
            raise GrammarError(f"{source}: terminal {name}{shown} matches no token of the vocabulary")

    # Token classes: tokens matched by exactly the same symbols behave identically.
    V = len(vocab)
    if builder.symbol_matches:
        matrix = np.stack(builder.symbol_matches, axis=1)  # (V, n_symbols)
    else:
        matrix = np.zeros((V, 0), dtype=bool)
    signatures, token_class = np.unique(matrix, axis=0, return_inverse=True)
    token_class = token_class.reshape(V).astype(np.int64)
    n_classes = signatures.shape[0]
    # Relabel NFA edges from symbols to classes.
    classes_of_symbol = [frozenset(np.nonzero(signatures[:, s])[0].tolist()) for s in range(matrix.shape[1])]
    nfa = builder.nfa
    for edges in nfa.edges:
        for i, (symbols, dst) in enumerate(edges):
            cls: set[int] = set()
            for s in symbols:
                cls |= classes_of_symbol[s]
            edges[i] = (frozenset(cls), dst)
    T, accepting = fsa.determinize(nfa, entry, exit_, n_classes)
    # Tokens matched by no symbol never appear in the language.
    no_symbol = ~signatures.any(axis=1)
    T[:, no_symbol] = fsa.REJECT
    unminimized = (fsa.expand(T, token_class), accepting.copy(), 0)
    try:
        T, accepting, s0 = fsa.trim(T, accepting, 0)
    except ValueError as exc:
        raise GrammarError(f"{source}: {exc}") from exc
    T, accepting, s0 = fsa.minimize(T, accepting, s0)
    T, accepting, s0 = fsa.trim(T, accepting, s0)
    T, accepting, s0 = fsa.canonical(T, accepting, s0)

    names = builder.symbol_names
    token_terminal = tuple(next((names[s] for s in np.nonzero(matrix[v])[0]), "") for v in range(V))
    return SyntaxTable(
        transitions=fsa.expand(T, token_class),
        accepting=accepting,
        start=s0,
        token_terminal=token_terminal,
        unminimized=unminimized,
    )
