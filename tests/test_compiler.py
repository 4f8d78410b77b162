"""The grammar language: lark syntax, regular subset, compiled to a minimized trimmed DFA."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lark import Lark
from lark.exceptions import LarkError

from gramophone import GrammarError
from gramophone.grammar import Automaton, Component, compile_grammar, fsa

VOCAB = ["A_1", "A_2", "A_3", "B_x", "C_y", "D_1", "EOS_None"]

TOY = r"""
start: head body+ tail?
head: "B_x"
body: A_ | group
group: C D? A_~1..2
tail: "EOS_None"
A_: /A_\d/
C: "C_y"
D: /D_\d+/
%ignore " "
"""


def run(table, ids) -> bool:  # type: ignore[no-untyped-def]
    s = table.start
    for t in ids:
        s = table.transitions[s, t]
        if s == fsa.REJECT:
            return False
    return bool(table.accepting[s])


def all_strings(n_max: int, alphabet: int):  # type: ignore[no-untyped-def]
    for n in range(n_max + 1):
        yield from itertools.product(range(alphabet), repeat=n)


def test_toy_grammar_matches_lark_on_every_short_string() -> None:
    table = compile_grammar(TOY, VOCAB)
    parser = Lark(TOY, parser="earley", lexer="basic")
    checked = 0
    for ids in all_strings(5, len(VOCAB)):
        try:
            parser.parse(" ".join(VOCAB[i] for i in ids))
            expected = True
        except LarkError:
            expected = False
        assert run(table, ids) == expected, [VOCAB[i] for i in ids]
        checked += 1
    assert checked > 10_000


def test_recursive_rule_is_named() -> None:
    text = 'start: a\na: "A_1" b\nb: "A_2" a?\n'
    with pytest.raises(GrammarError, match=r"rule 'a' is recursive \(a -> b -> a\)"):
        compile_grammar(text, VOCAB)


def test_direct_recursion_and_undefined_rule() -> None:
    with pytest.raises(GrammarError, match="rule 'start' is recursive"):
        compile_grammar('start: "A_1" start?\n', VOCAB)
    with pytest.raises(GrammarError):
        compile_grammar("start: nothing_here\n", VOCAB)


def test_terminal_matching_nothing_is_an_error_unless_absent() -> None:
    text = 'start: "A_1" X?\nX: /Xylophone_\\d+/\n'
    with pytest.raises(GrammarError, match=r"terminal X .* matches no token"):
        compile_grammar(text, VOCAB)
    table = compile_grammar(text, VOCAB, absent_terminals={"X"})
    assert run(table, [0]) and not run(table, [])


def test_syntax_error_in_grammar_file_is_one_line() -> None:
    with pytest.raises(GrammarError) as info:
        compile_grammar("start: (\n", VOCAB, source="broken.lark")
    assert "broken.lark" in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_language_is_an_error() -> None:
    with pytest.raises(GrammarError, match="empty language"):
        compile_grammar('start: "A_1" X\nX: /Nope_\\d/\n', VOCAB, absent_terminals={"X"})


def test_trimmed_no_dead_states() -> None:
    table = compile_grammar(TOY, VOCAB)
    T = table.transitions
    assert fsa.reachable(T, table.start).all()
    assert fsa.coreachable(T, table.accepting).all()


@given(st.lists(st.integers(0, len(VOCAB) - 1), max_size=12))
def test_minimized_equals_unminimized(ids: list[int]) -> None:
    table = compile_grammar(TOY, VOCAB)
    T, acc, s0 = table.unminimized
    unmin = Component("u", T, acc, s0)
    s = unmin.start
    ok = True
    for t in ids:
        s = unmin.transitions[s, t]
        if s == fsa.REJECT:
            ok = False
            break
    ok = ok and bool(unmin.accepting[s])
    assert ok == run(table, ids)


def equivalent(a: Component, b: Component) -> bool:
    """Exact language equivalence by exploring the product of the two automata."""
    ta = np.concatenate([a.transitions, np.full((1, a.transitions.shape[1]), a.num_states, np.int32)])
    ta = np.where(ta == fsa.REJECT, a.num_states, ta)  # explicit sink
    tb = np.concatenate([b.transitions, np.full((1, b.transitions.shape[1]), b.num_states, np.int32)])
    tb = np.where(tb == fsa.REJECT, b.num_states, tb)
    acc_a = np.append(a.accepting, False)
    acc_b = np.append(b.accepting, False)
    _, _, _, states = fsa.product([ta, tb], [np.ones_like(acc_a), np.ones_like(acc_b)], [a.start, b.start])
    return bool((acc_a[states[:, 0]] == acc_b[states[:, 1]]).all())


def test_minimization_preserves_the_language_exactly() -> None:
    table = compile_grammar(TOY, VOCAB)
    T, acc, s0 = table.unminimized
    assert T.shape[0] > table.transitions.shape[0]  # minimization did something
    assert equivalent(
        Component("u", T, acc, s0), Component("m", table.transitions, table.accepting, table.start)
    )


def test_minimization_is_canonical() -> None:
    """Two spellings of one language compile to identical tables."""
    a = compile_grammar('start: ("A_1" | "A_2")+\n', VOCAB)
    b = compile_grammar('start: "A_1" x* | "A_2" x*\nx: "A_1" | "A_2"\n', VOCAB)
    assert np.array_equal(a.transitions, b.transitions)
    assert np.array_equal(a.accepting, b.accepting)


def test_repetition_ranges() -> None:
    table = compile_grammar('start: "A_1"~2..3 "B_x"~2\n', VOCAB)
    a, b = 0, 3
    assert run(table, [a, a, b, b]) and run(table, [a, a, a, b, b])
    assert not run(table, [a, b, b]) and not run(table, [a, a, a, a, b, b]) and not run(table, [a, a, b])


def test_intersection_preserves_language() -> None:
    """The dense product equals lockstep stepping of the components."""
    syntax = compile_grammar('start: ("A_1" | "A_2" | "B_x")*\n', VOCAB)
    even_b = np.tile(np.array([[0], [1]], dtype=np.int32), (1, len(VOCAB)))
    even_b[:, 3] = [1, 0]
    comp_b = Component("even-B", even_b, np.array([True, False]), 0)
    auto = Automaton(
        tuple(VOCAB),
        (Component("syntax", syntax.transitions, syntax.accepting, syntax.start), comp_b),
    )
    dense = auto.product()
    for ids in all_strings(5, 4):
        lock = auto.accepts(ids)
        s = dense.start
        ok = True
        for t in ids:
            s = dense.transitions[s, t]
            if s == fsa.REJECT:
                ok = False
                break
        assert lock == (ok and bool(dense.accepting[s]))
        assert lock == (
            all(VOCAB[t] in ("A_1", "A_2", "B_x") for t in ids) and sum(t == 3 for t in ids) % 2 == 0
        )


def test_automaton_save_load_roundtrip_and_hash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = compile_grammar(TOY, VOCAB)
    auto = Automaton(
        tuple(VOCAB), (Component("syntax", table.transitions, table.accepting, table.start),), TOY
    )
    path = auto.save(tmp_path / "a.npz")
    back = Automaton.load(path)
    assert back.hash == auto.hash and back.vocab == auto.vocab and back.grammar_text == TOY
    with pytest.raises(ValueError, match="read-only"):
        back.components[0].transitions[0, 0] = 5
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception, match="not a readable automaton"):
        Automaton.load(path)


def _respelled(c: Component, seed: int) -> Component:
    """``c`` with its states shuffled, one state duplicated and an unreachable state added:
    another spelling of the same language."""
    rng = np.random.default_rng(seed)
    twin = c.num_states
    T = np.vstack(
        [c.transitions, c.transitions[c.start : c.start + 1], np.zeros((1, c.transitions.shape[1]), np.int32)]
    )
    acc = np.append(c.accepting, [c.accepting[c.start], True])
    T[np.equal(T, c.start)] = twin  # edges into the start state now reach its twin
    perm = rng.permutation(twin + 2)  # old state -> new number
    inv = np.argsort(perm)
    lookup = np.append(perm, fsa.REJECT).astype(np.int32)
    T2 = lookup[T[inv]]
    return Component(f"{c.name}-respelled", T2, acc[inv], int(perm[c.start]))


@given(st.integers(0, 2**32 - 1))
def test_the_hash_names_the_language_not_its_spelling(seed: int) -> None:
    """Two spellings, one hash: states renumbered or duplicated, components renamed or
    reordered, a component that accepts everything added; another language, another hash."""
    table = compile_grammar(TOY, VOCAB)
    syntax = Component("syntax", table.transitions, table.accepting, table.start)
    V = len(VOCAB)
    parity = Component(
        "even-B",
        np.array([[1 if v == 3 else 0 for v in range(V)], [0 if v == 3 else 1 for v in range(V)]], np.int32),
        np.array([True, False]),
        0,
    )
    anything = Component("anything", np.zeros((1, V), np.int32), np.array([True]), 0)
    auto = Automaton(tuple(VOCAB), (syntax, parity))
    other = Automaton(tuple(VOCAB), (_respelled(parity, seed), anything, _respelled(syntax, seed + 1)))
    assert other.digest != auto.digest and other.hash == auto.hash
    assert Automaton(tuple(VOCAB), (syntax,)).hash != auto.hash
    odd = Component("odd-B", parity.transitions, ~parity.accepting, 0)
    assert Automaton(tuple(VOCAB), (syntax, odd)).hash != auto.hash
    # the spellings accept the same streams (the respelling itself is right)
    rng = np.random.default_rng(seed)
    for _ in range(30):
        ids = rng.integers(0, V, int(rng.integers(0, 8))).tolist()
        assert auto.accepts(ids) == other.accepts(ids)


def test_a_checkpoint_is_not_refused_over_a_respelled_grammar() -> None:
    """The checkpoint gate compares language hashes: the shipped grammar with its constraint
    components respelled still loads the bundled model."""
    from gramophone.backends import checkpoint as ckpt
    from gramophone.grammar import compile_tokenizer
    from gramophone.models import bundled_checkpoint_path, check_compatible
    from gramophone.tokenizers import load_tokenizer

    tok = load_tokenizer()
    auto = compile_tokenizer(tok)
    respelled = Automaton(
        auto.vocab, tuple(_respelled(c, i) for i, c in enumerate(reversed(auto.components)))
    )
    assert respelled.digest != auto.digest
    info = ckpt.read_info(bundled_checkpoint_path())
    check_compatible(info.meta, info.model.vocab_size, tok, respelled)
    broken = Automaton(auto.vocab, auto.components[:-1])
    with pytest.raises(Exception, match="grammar mismatch"):
        check_compatible(info.meta, info.model.vocab_size, tok, broken)


def test_the_lark_loader_contract_the_compiler_reads() -> None:
    """The compiler reads lark's grammar loader (``lark.load_grammar``, outside lark's
    documented API; pyproject.toml bounds the versions): rule definitions as (name, params,
    EBNF tree, options), terminal definitions as (name, (tree, priority)). A lark release that
    changes them fails here by name, not somewhere inside a compile."""
    import lark
    from lark.load_grammar import load_grammar

    grammar, _ = load_grammar('start: "A_1" x?\nx: B\nB: /B_\\w/\n', "<contract>", [], False)
    rules = {str(name): (params, tree) for name, params, tree, _options in grammar.rule_defs}
    assert set(rules) == {"start", "x"} and not rules["start"][0], lark.__version__
    assert rules["start"][1].data == "expansions"
    terms = dict(grammar.term_defs)
    assert set(terms) >= {"B"} and terms["B"][0] is not None, lark.__version__
    assert compile_grammar('start: "A_1" x?\nx: B\nB: /B_\\w/\n', ["A_1", "B_x", "C"]).start == 0
