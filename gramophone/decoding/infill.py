"""Bar infilling: regenerate bars A..B of a piece and keep every other token as it was.

The piece is cut after its A-th Bar token and before its (B+1)-th (or its EOS): the
*prefix* (bars 1..A-1 and bar A's Bar token) is the prompt a loop continues, the *suffix*
is kept. The loop runs over tables in
which EOS stands for "the suffix, then EOS"
(:func:`~gramophone.decoding.framing.with_suffix`) and in which the whole piece has as many
Bar tokens as the original: so the middle starts in the prefix's state, holds exactly
``B - A + 1`` Bar tokens, and may end (write EOS) only in a state from which the kept
suffix is accepted. The output is ``prefix + middle + suffix + EOS``, valid by
construction, for any model on any backend, even one that never sees the suffix. The
budget counts the suffix: a loop budget of ``max_tokens - len(suffix)``.

Bars are Bar tokens: with ``use_rests`` a rest that crosses a bar line without a Bar token
belongs to the bar it starts in.

With a trained vocabulary a learned token may straddle a cut (a vocabulary trained without
miditok's per-bar split can learn ``Duration+Bar``): it is written as its base tokens'
single ids on the kept side, so the kept bars keep their base tokens exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gramophone.decoding.framing import BOS, EOS, PAD, decoding_automaton
from gramophone.errors import DecodingError
from gramophone.grammar import Automaton
from gramophone.grammar.checker import check_stream
from gramophone.tokenizers.learned import LearnedVocab

__all__ = ["InfillPlan", "parse_infill", "plan_infill"]

BAR = "Bar_None"


def parse_infill(text: str) -> tuple[int, int]:
    """``"A:B"`` (1-based, inclusive; ``"A"`` alone is ``A:A``) -> ``(A, B)``."""
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
    if m is None:
        raise DecodingError(f"--infill {text}: expected A:B, the first and last bar to regenerate (1-based)")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    if first < 1 or last < first:
        raise DecodingError(f"--infill {text}: bars are numbered from 1 and A <= B is needed")
    return first, last


@dataclass(frozen=True)
class InfillPlan:
    """A piece cut for infilling bars ``first``..``last`` (1-based, inclusive).

    ``prefix``: model ids, BOS first, up to bar ``first``'s Bar token included;
    ``suffix``: model ids from bar ``last + 1``'s Bar token to the end, EOS excluded;
    ``suffix_base``: the same as base ids; ``bars``: Bar tokens in the whole piece;
    ``middle``: the model ids the infill replaces (the original bars ``first..last``, their
    first Bar token excepted).
    """

    first: int
    last: int
    bars: int
    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    suffix_base: tuple[int, ...]
    eos: int

    def splice(self, stream: Sequence[int]) -> list[int]:
        """A loop's output ``prefix + middle + EOS`` -> the piece ``prefix + middle + suffix + EOS``."""
        out = [int(t) for t in stream]
        if out[: len(self.prefix)] != list(self.prefix) or not out or out[-1] != self.eos:
            raise DecodingError("an infill stream must start with the prefix and end with EOS")
        return out[:-1] + list(self.suffix) + [self.eos]


def _side(
    ids: Sequence[int],
    owner: Sequence[int],
    base: Sequence[int],
    span: tuple[int, int],
    learned: LearnedVocab,
) -> list[int]:
    """Model ids for base positions ``span = (lo, hi)``: whole learned tokens inside, base singles for
    a token cut by either end."""
    lo, hi = span
    starts: dict[int, int] = {}
    for j, k in enumerate(owner):
        starts.setdefault(k, j)
    out: list[int] = []
    j = lo
    while j < hi:
        k = owner[j]
        start = starts[k]
        end = start + len(learned.pieces[ids[k]])
        if start >= lo and end <= hi:
            out.append(int(ids[k]))
            j = end
        else:
            out.append(int(learned.single[base[j]]))
            j += 1
    return out


def plan_infill(
    ids: Sequence[int],
    grammar: Automaton,
    learned: LearnedVocab,
    bars: tuple[int, int],
    name: str = "the prompt",
) -> InfillPlan:
    """Cut the piece ``ids`` (model ids; BOS and EOS optional, trailing PAD ignored) for
    infilling bars ``bars = (first, last)``. The piece must be complete and valid (the grammar's
    checker says where it is not) and hold ``last`` bars at least."""
    first, last = bars
    index = grammar.token_index
    if BAR not in index:
        raise DecodingError("--infill needs Bar tokens in the vocabulary (this scheme has none)")
    base, owner = learned.expand(ids)
    specials = {index[t] for t in (BOS, EOS, PAD) if t in index}
    body = [j for j, b in enumerate(base) if b not in specials]
    if not body:
        raise DecodingError(f"{name} is empty: --infill needs a complete piece")
    bos, eos, bar = index[BOS], index[EOS], index[BAR]
    lo, hi = body[0], body[-1] + 1
    if any(b in specials for b in base[lo:hi]):
        raise DecodingError(f"{name}: BOS, EOS or PAD inside the piece; --infill needs one complete piece")
    report = check_stream(decoding_automaton(grammar), [bos, *base[lo:hi], eos])
    if report.violation is not None:
        raise DecodingError(f"{name} is not a complete valid piece, which --infill needs: {report.violation}")
    bars_at = [j for j in range(lo, hi) if base[j] == bar]
    if last > len(bars_at):
        raise DecodingError(f"--infill {first}:{last}: {name} has {len(bars_at)} bar(s) (Bar tokens)")
    cut_a = bars_at[first - 1] + 1  # bar A's Bar token is kept: nothing is added to bar A - 1
    cut_b = bars_at[last] if last < len(bars_at) else hi
    single = learned.single
    bos_id, eos_id = int(single[bos]), int(single[eos])
    for what, b in (("BOS", bos), ("EOS", eos)):
        if single[b] < 0:
            raise DecodingError(f"the vocabulary has no single token for {what}")
    return InfillPlan(
        first=first,
        last=last,
        bars=len(bars_at),
        prefix=(bos_id, *_side(ids, owner, base, (lo, cut_a), learned)),
        middle=tuple(_side(ids, owner, base, (cut_a, cut_b), learned)),
        suffix=tuple(_side(ids, owner, base, (cut_b, hi), learned)),
        suffix_base=tuple(int(b) for b in base[cut_b:hi]),
        eos=eos_id,
    )
