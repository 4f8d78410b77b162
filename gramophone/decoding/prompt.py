"""Prompts: a stream of model ids checked against the grammar (one-line errors in base
tokens, naming the learned token a violation sits in) and the decoding state after it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gramophone.decoding.rules import INF
from gramophone.decoding.tables import DecodingTables
from gramophone.errors import DecodingError
from gramophone.grammar import Automaton
from gramophone.grammar.checker import check_stream

__all__ = ["PreparedPrompt", "prepare_prompt"]


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt ready to continue: ``ids`` (model ids, BOS first) and the state after it."""

    ids: tuple[int, ...]
    state: np.ndarray  # int32[G]
    min_total: int  # an upper bound of the shortest valid output that starts with ``ids``


def prepare_prompt(
    tables: DecodingTables,
    grammar: Automaton,
    ids: Sequence[int] | None = None,
    name: str = "the prompt",
) -> PreparedPrompt:
    """Validate a prompt (model ids) and compute where decoding starts.

    Trailing EOS/PAD are dropped (a decoder output can be continued) and BOS is put first
    when missing; a second id of a special token (Unigram has two) reads as the first. A
    prompt that is not a valid beginning of a piece is a :class:`DecodingError` that says
    where it breaks (the grammar's checker's message, in base tokens); so is one that cannot
    be completed (e.g. more bars than ``--bars``).
    """
    learned = tables.learned
    special = {learned.pieces[i] for i in (tables.bos, tables.eos, tables.pad)}
    # a second id of a special token (Unigram reads two ids as EOS) becomes the one the loops use
    canonical = {v: int(learned.single[p[0]]) for v, p in enumerate(learned.pieces) if p in special}
    seq = [canonical.get(int(i), int(i)) for i in (ids or [])]
    while seq and seq[-1] in (tables.eos, tables.pad):
        seq.pop()
    shift = 0  # token indices in messages are those of the prompt as given
    if not seq or seq[0] != tables.bos:
        seq.insert(0, tables.bos)
        shift = 1
    base, owner = tables.learned.expand(seq)
    bos_base = tables.learned.pieces[tables.bos][0]

    def where(index: int, token: str) -> str:
        if not tables.learned.trained:
            return f"token {index - shift} ({token})"
        k = owner[index] if index < len(owner) else len(seq)
        return f"token {k - shift} ({tables.learned.names[seq[k]] if k < len(seq) else token})"

    report = check_stream(grammar, base)
    v = report.violation
    if v is not None and v.rejected_by != "end":
        before = " ".join(t for t in v.before if not (shift and t == grammar.vocab[bos_base]))
        ctx = f" after '... {before}'" if before else ""
        raise DecodingError(
            f"{name} is not a valid beginning of a piece: {where(v.index, v.token)}{ctx} is "
            f"rejected by {v.rejected_by}: {v.reason}; expected {v.expected}"
        )
    report = check_stream(tables.automaton, base)
    v = report.violation
    if v is not None and v.rejected_by != "end":
        reason = v.reason
        if tables.bars is not None and v.rejected_by.startswith("bars="):
            reason = f"it has more than {tables.bars} Bar tokens (--bars {tables.bars})"
        raise DecodingError(f"{name} cannot be continued: {where(v.index, v.token)}: {reason}")
    state = tables.run(seq)
    d = tables.distance(state)
    if d >= INF:
        raise DecodingError(f"{name} ({len(seq)} tokens) cannot be completed to a valid piece")
    return PreparedPrompt(tuple(seq), state, len(seq) + d)
