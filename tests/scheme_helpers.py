"""Helpers shared by the per-scheme grammar tests (``tests/test_{remi,tsd,midilike,structured,
corpus}.py``): streams drawn by hypothesis (from lark's rules, random walks and their
mutations, corruptions of real streams), the checks every scheme's automaton passes, and the
chorales encoded with a tokenizer. Each test file keeps its own configs and caches."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from gramophone.grammar import REJECT, Automaton, fsa
from tests.reference import miditok_errors, pruned_lark

#: A random walk of a scheme's language: ``walk(rng, length, eos)``.
Walk = Callable[[np.random.Generator, int, bool], list[int]]
#: Edits of a stream drawn with hypothesis: ``mutate(draw, ids)``.
Mutate = Callable[[st.DrawFn, list[int]], list[int]]
#: A scheme's own edit of a real stream for :func:`corrupt`: ``other(ids, op, i, tok)``, in place.
OtherEdit = Callable[[list[int], str, int, int], None]

SPECIAL_KINDS = ("PAD", "BOS", "EOS", "MASK")


# -- streams -----------------------------------------------------------------------------------
def lark_streams(grammar: Any, vocab: Sequence[str]) -> st.SearchStrategy[str]:
    """Streams of a derived grammar drawn by ``hypothesis.extra.lark.from_lark`` from lark's
    own rules (the rules that need a token type the config turns off are pruned first);
    every terminal draws real vocabulary tokens, each followed by a space."""
    from hypothesis.extra.lark import from_lark

    parser = pruned_lark(grammar.text, grammar.absent_terminals)
    explicit: dict[str, st.SearchStrategy[str]] = {}
    for term in parser.terminals:
        if term.name in parser.ignore_tokens:
            continue
        rx = re.compile(term.pattern.to_regexp())
        toks = [t for t in vocab if rx.fullmatch(t)]
        assert toks, term.name
        explicit[term.name] = st.sampled_from(toks).map(lambda t: t + " ")
    return from_lark(parser, explicit=explicit)


EDITS = ("replace", "insert", "delete", "swap")


def edit(ids: list[int], op: str, i: int, tok: int) -> None:
    """One of :data:`EDITS`, in place, at ``i``: ``tok`` replaces the token there or is
    inserted before it, or the token is deleted, or swapped with the next (nothing where the
    stream is too short)."""
    if op == "replace" and ids:
        ids[i] = tok
    elif op == "insert":
        ids.insert(i, tok)
    elif op == "delete" and ids:
        del ids[i]
    elif op == "swap" and len(ids) > 1:
        j = min(i + 1, len(ids) - 1)
        ids[i], ids[j] = ids[j], ids[i]


def mutate(draw: st.DrawFn, ids: list[int], vocab_size: int) -> list[int]:
    """1-3 random :data:`EDITS` of a copy of ``ids``."""
    ids = list(ids)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(list(EDITS)))
        i = draw(st.integers(0, max(0, len(ids) - 1)))
        tok = draw(st.integers(0, vocab_size - 1))
        edit(ids, op, i, tok)
    return ids


@st.composite
def walk_or_mutation(draw: st.DrawFn, walk: Walk, max_length: int, edit: Mutate) -> list[int]:
    """A random walk of about 0 to ``max_length`` tokens (EOS or not), edited by ``edit``
    half the time."""
    seed = draw(st.integers(0, 2**32 - 1))
    length = draw(st.integers(0, max_length))
    ids = walk(np.random.default_rng(seed), length, draw(st.booleans()))
    if draw(st.booleans()):
        ids = edit(draw, ids)
    return ids


def corrupt(
    data: st.DataObject, ids: list[int], vocab: Sequence[str], ops: Sequence[str], other: OtherEdit
) -> list[int]:
    """1-3 edits of a real stream, in place, as a model might make them, each an op of
    ``ops`` at a random place with a random token (never a special one): ``replace``,
    ``insert``, ``delete`` (of a stream longer than one token); any other, or a delete
    that would empty the stream, is the scheme's own ``other``."""
    specials = {i for i, t in enumerate(vocab) if t.split("_")[0] in SPECIAL_KINDS}
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(ids) - 1))
        op = data.draw(st.sampled_from(list(ops)))
        tok = data.draw(st.integers(0, len(vocab) - 1).filter(lambda t: t not in specials))
        if op == "replace":
            ids[i] = tok
        elif op == "insert":
            ids.insert(i, tok)
        elif op == "delete" and len(ids) > 1:
            del ids[i]
        else:
            other(ids, op, i, tok)
    return ids


def note_duplicator(vocab: Sequence[str], note_length: int) -> OtherEdit:
    """The ``duplicate`` edit of :func:`corrupt` (for REMI and TSD): the note that starts
    at the first Pitch from ``i`` on (``note_length`` tokens) written twice, a classic
    model error."""

    def duplicate(ids: list[int], op: str, i: int, tok: int) -> None:
        j = next((k for k in range(i, len(ids)) if vocab[ids[k]].startswith("Pitch_")), None)
        if j is not None and j + note_length <= len(ids):
            ids[j + note_length : j + note_length] = ids[j : j + note_length]

    return duplicate


def encode_chorales(tokenizer: Any) -> tuple[tuple[int, ...], ...]:
    """Every chorale (converted once into the cache) encoded with ``tokenizer``, in order."""
    from symusic import Score

    from gramophone.data import chorale_midis
    from gramophone.tokenizers import encode_score

    out: list[tuple[int, ...]] = []
    for path in chorale_midis(progress=False):
        score: Any = Score(str(path))
        out.extend(tuple(ids) for ids in encode_score(tokenizer, score))
    return tuple(out)


# -- checks ------------------------------------------------------------------------------------
def assert_syntax_accepts(auto: Automaton, text: str) -> list[str]:
    """The syntax component (the automaton's first) alone accepts ``text``, tokens separated
    by spaces; returns the tokens."""
    tokens = text.split()
    ids = [auto.token_index[t] for t in tokens]
    syntax = auto.components[0]
    s = syntax.start
    for t in ids:
        s = syntax.transitions[s, t]
        assert s != REJECT, text
    assert syntax.accepting[s], text
    return tokens


def assert_no_dead_ends(auto: Automaton) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In the reachable product of all the components every state accepts or has a move,
    and can reach acceptance; returns the product's table, accepting flags and states."""
    T, acc, _, states = fsa.product(
        [c.transitions for c in auto.components],
        [c.accepting for c in auto.components],
        [c.start for c in auto.components],
    )
    has_move = (T != REJECT).any(axis=1)
    assert (acc | has_move).all()
    assert fsa.coreachable(T, acc).all(), "some reachable state cannot reach acceptance"
    return T, acc, states


def assert_special_tokens(auto: Automaton, body: list[int]) -> tuple[int, int, int]:
    """BOS only first, EOS only where ``body`` (an accepted stream) is complete, PAD only
    after EOS; returns the ids of BOS, EOS and PAD."""
    ix = auto.token_index
    bos, eos, pad = ix["BOS_None"], ix["EOS_None"], ix["PAD_None"]
    assert auto.accepts([bos, *body, eos, pad, pad])
    assert auto.accepts(body) and auto.accepts([bos, *body])
    assert not auto.accepts([*body, bos])  # BOS only first
    assert not auto.accepts([bos, *body[:-1], eos])  # EOS only when accepting
    assert not auto.accepts([bos, *body, pad])  # PAD only after EOS
    return bos, eos, pad


def assert_decodes_without_errors(
    auto: Automaton,
    tokenizer: Any,
    ids: list[int],
    errors: Callable[[Any, list[int]], float] = miditok_errors,
    decode: Callable[[Any, list[int]], Any] | None = None,
) -> tuple[list[int], Any]:
    """miditok's ``tokens_errors`` finds nothing in ``ids`` (``errors``), and its decoder
    (``decode``, gramophone's ``decode_ids`` by default) turns them, special tokens left
    out, into a score that writes MIDI; returns those ids and the score."""
    if decode is None:
        from gramophone.tokenizers import decode_ids

        decode = decode_ids
    assert errors(tokenizer, ids) == 0.0, [auto.vocab[i] for i in ids]
    specials = {tokenizer.vocab[t] for t in tokenizer.special_tokens}
    body = [i for i in ids if i not in specials]
    score = decode(tokenizer, body)
    assert score.dumps_midi()[:4] == b"MThd"
    return body, score
