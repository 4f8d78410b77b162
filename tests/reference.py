"""Oracles independent of the automaton: lark on the derived grammar, plain-Python
references of every constraint, and miditok's own ``tokens_errors``.

The plain-Python reference re-implements miditok's decoder's notion of time (bars, time
signatures, positions, rests starting at the end of the latest note) directly on token
names, without any table.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from lark import Lark
from lark.exceptions import LarkError

from gramophone.grammar.remi import RemiGrammar


@lru_cache(maxsize=32)
def lark_parser(text: str) -> Lark:
    return Lark(text, parser="earley", lexer="basic")


def lark_accepts(grammar: RemiGrammar, tokens: Sequence[str]) -> bool:
    """The syntax oracle: lark's own parser on the derived grammar."""
    try:
        lark_parser(grammar.text).parse(" ".join(tokens))
    except LarkError:
        return False
    return True


def _positions(value: str, ppb: int) -> Fraction:
    a, b, c = (int(x) for x in value.split("."))
    return Fraction(a * ppb) + Fraction(b * ppb, c)


def time_ok(grammar: RemiGrammar, tokens: Sequence[str]) -> bool:
    """Positions strictly increase in a bar and stay below its length; a Position after
    rests is not before the rests' end; rests start at the latest note end; a time
    signature only at a bar start; with time signatures a stream does not open on a rest."""
    model = grammar.time
    ppb = model.positions_per_beat
    ts = model.default_time_signature
    bar_len = ts[0] * ppb
    started = False
    at_bar_start = False  # no Position yet in this bar
    now = Fraction(0)  # current time within the bar
    min_next = Fraction(0)  # the next Position must be >= this
    note_end = Fraction(0)  # latest note end, in the current bar's coordinates
    last_onset = Fraction(0)
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind in ("BOS", "EOS", "PAD"):
            continue
        if kind == "Bar":
            if started:
                note_end -= bar_len
                now = Fraction(0)
            started = True
            at_bar_start = True
            min_next = Fraction(0)
        elif kind == "TimeSig":
            if not at_bar_start:
                return False
            n, _d = (int(x) for x in value.split("/"))
            bar_len = n * ppb
        elif kind == "Rest":
            if not started and model.use_time_signatures:
                return False
            started = True
            t = max(now, note_end) + _positions(value, ppb)
            crossed = False
            while t >= bar_len:
                t -= bar_len
                note_end -= bar_len
                crossed = True
            now = t
            min_next = t
            at_bar_start = t == 0 and (crossed or at_bar_start)
        elif kind == "Position":
            q = int(value)
            if not started or q < min_next or q >= bar_len:
                return False
            now = Fraction(q)
            last_onset = now
            min_next = now + 1
            at_bar_start = False
        elif kind == "Duration" and model.use_rests:
            note_end = max(note_end, last_onset + _positions(value, ppb))
    return True


def order_ok(grammar: RemiGrammar, tokens: Sequence[str]) -> bool:
    """With remove_duplicated_notes: at one onset programs ascend and pitches strictly
    ascend within a program; a chord only before the first note of its program."""
    if not grammar.remove_duplicated_notes:
        return True
    program: int | None = None
    last: int | None = None
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind in ("Position", "Bar", "Rest"):
            program, last = None, None
        elif kind in ("Pitch", "PitchDrum"):
            p = int(value)
            if last is not None and p <= last:
                return False
            last = p
        elif kind == "Chord":
            if last is not None:
                return False
        elif grammar.use_programs and kind in ("Program", "Pedal", "PedalOff"):
            q = int(value)
            if program is not None and q < program:
                return False
            if program is None or q > program:
                program, last = q, None
    return True


def reference_accepts(grammar: RemiGrammar, tokens: Sequence[str]) -> bool:
    """Lark accepts the syntax and every plain-Python constraint passes."""
    return lark_accepts(grammar, tokens) and time_ok(grammar, tokens) and order_ok(grammar, tokens)


def miditok_errors(tokenizer: object, ids: Sequence[int]) -> float:
    """miditok's ``tokens_errors`` on the stream without special tokens (its type graph
    lets nothing follow EOS, so PAD after EOS would count)."""
    from miditok import TokSequence

    specials = {tokenizer.vocab[t] for t in tokenizer.special_tokens}  # type: ignore[attr-defined]
    body = [int(i) for i in ids if int(i) not in specials]
    if not body:
        return 0.0
    seq = TokSequence(ids=copy.copy(body))
    return float(tokenizer.tokens_errors(seq))  # type: ignore[attr-defined]


def pruned_lark(text: str, absent: Sequence[str]) -> Lark:
    """The same language as ``text`` with every rule that needs an absent terminal removed,
    rebuilt from lark's own BNF expansion, for ``hypothesis.extra.lark.from_lark``: it can
    then draw streams without wasting draws on token types the config turns off."""
    from lark.grammar import NonTerminal, Terminal

    parser = Lark(text, parser="earley", lexer="basic")
    rules = list(parser.rules)
    dead_terms = set(absent)
    dead: set[str] = set()
    while True:
        alive_rules = [
            r
            for r in rules
            if not any(
                (isinstance(s, Terminal) and s.name in dead_terms)
                or (isinstance(s, NonTerminal) and s.name in dead)
                for s in r.expansion
            )
        ]
        origins = {r.origin.name for r in alive_rules}
        newly_dead = {r.origin.name for r in rules} - origins - dead
        rules = alive_rules
        if not newly_dead:
            break
        dead |= newly_dead
    names = {name: f"r{i}" for i, name in enumerate(sorted({str(r.origin.name) for r in rules}))}
    bodies: dict[str, list[str]] = {}
    for r in rules:
        body = " ".join(names[s.name] if isinstance(s, NonTerminal) else s.name for s in r.expansion)
        bodies.setdefault(names[r.origin.name], []).append(body)
    lines = [f"{origin}: {' | '.join(alts)}" for origin, alts in bodies.items()]
    used = {s.name for r in rules for s in r.expansion if isinstance(s, Terminal)}
    for term in parser.terminals:
        if term.name in used:
            flags = "".join(sorted(term.pattern.flags))
            rx = re.sub(r"(?<!\\)/", r"\/", term.pattern.to_regexp())
            lines.append(f"{term.name}: /{rx}/{flags}")
    lines.append('%ignore " "')
    return Lark("\n".join(lines), parser="earley", lexer="basic", start=names["start"])
