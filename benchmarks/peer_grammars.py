"""The REMI language written for peer engines: EBNF (xgrammar), lark (llguidance), regex
(outlines-core), over a delimited copy of the tokenizer's vocabulary.

A peer engine reads text, not token ids, so each token name gets a delimiter: the peer's
token ``i`` is ``vocab[i] + " "``. No name contains a space, so the delimited tokens are
prefix-free (``"Pitch_6 "`` is not a prefix of ``"Pitch_60 "``) and a byte string spelled
by tokens splits into them in exactly one way: a peer's byte-level language restricted to
token sequences is a language over our ids, the one we compare with ours. The peers also
get one stop token (id ``len(vocab)``, :data:`STOP_TEXT`), which they allow where the
stream may end; ``EOS_None`` stays an ordinary token of the language, as it is for us.

One structure is rendered into the three dialects (:class:`Grammar`): rules with
sequences, alternatives, ``?``, ``*`` and ``+`` over token names. EBNF lists a group of
tokens (all velocities, say) as alternatives of literals; lark makes each group one
terminal, i.e. one lexeme for llguidance's lexer; a regex writes it as a class that
matches no other token of the vocabulary (``Velocity_[0-9]+ ``). A regex has no rules, so
references are inlined: what a grammar shares by name, a regex copies.

Levels (what each text expresses, see :data:`LEVELS`):

- ``syntax``: ``remi.lark`` narrowed to the config (gramophone's syntax component);
- ``syntax+time``: positions strictly increase inside a bar and stay below the bar's
  length for its time signature: per time signature, the bar body is the chain
  ``(Position_0 notes)? (Position_1 notes)? ... (Position_{L-1} notes)?``;
- ``syntax+note-order``: pitches strictly ascend at one onset (``remove_duplicated_notes``),
  written as the note-order automaton itself (a rule per last pitch) or by divide and
  conquer (``n log n`` pitch units once inlined, instead of ``n^2``: the only way in a regex);
- ``full``: both, i.e. exactly gramophone's automaton (syntax x time x note order).

Only the token types of configs without rests, tempos, chords, programs, pedals and pitch
bends are written here (the shipped config is one); other configs are refused with
:class:`~gramophone.errors.UnsupportedConfigError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gramophone.errors import UnsupportedConfigError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = [
    "DIALECTS",
    "LEVELS",
    "NOTE_ORDER_FORMS",
    "STOP_TEXT",
    "Grammar",
    "RemiTokens",
    "peer_tokens",
    "remi_grammar",
    "render",
]

#: The peers' extra stop token (id ``len(vocab)``): generation may stop here.
STOP_TEXT = "<|end|>"
#: Appended to every token name: makes the peer vocabulary prefix-free.
DELIMITER = " "
LEVELS = ("syntax", "syntax+time", "syntax+note-order", "full")
DIALECTS = ("ebnf", "lark", "regex")
NOTE_ORDER_FORMS = ("automaton", "divide")

#: Terminals of remi.lark the peer grammars do not write (they must be off in the config).
_NOT_WRITTEN = ("REST", "TEMPO", "CHORD", "PROGRAM", "PEDAL", "PEDAL_OFF", "PITCH_BEND")


def peer_tokens(vocab: Sequence[str]) -> list[str]:
    """The peers' vocabulary: each token name plus the delimiter, then the stop token."""
    return [name + DELIMITER for name in vocab] + [STOP_TEXT]


# -- a tiny grammar AST ------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    name: str  # a token name (the delimiter is added when rendered)


@dataclass(frozen=True)
class Lits:
    """One of several token names; a regex writes them compactly (``Velocity_[0-9]+ ``)."""

    names: tuple[str, ...]
    regex: str


@dataclass(frozen=True)
class Ref:
    rule: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Opt:
    item: Expr


@dataclass(frozen=True)
class Rep:
    item: Expr
    at_least_one: bool


Expr = Lit | Lits | Ref | Seq | Alt | Opt | Rep


def _seq(*items: Expr) -> Expr:
    return items[0] if len(items) == 1 else Seq(tuple(items))


def _alt(items: Sequence[Expr]) -> Expr:
    return items[0] if len(items) == 1 else Alt(tuple(items))


@dataclass
class Grammar:
    """Rules by name (insertion order kept); ``start`` names the start rule."""

    start: str
    rules: dict[str, Expr] = field(default_factory=dict)
    level: str = ""


# -- the REMI token groups -----------------------------------------------------------------
@dataclass(frozen=True)
class RemiTokens:
    """What the peer grammars need to know of a vocabulary and config."""

    bos: tuple[str, ...]
    eos: tuple[str, ...]
    pad: tuple[str, ...]
    bar: tuple[str, ...]
    time_signatures: tuple[tuple[str, int], ...]  # (token name, bar length in positions)
    default_bar_length: int  # when the config has no time signatures
    positions: tuple[tuple[str, int], ...]  # (token name, position)
    pitches: tuple[tuple[int, tuple[str, ...]], ...]  # pitch value -> Pitch_/PitchDrum_ names
    velocities: tuple[str, ...]
    durations: tuple[str, ...]
    note_order: bool  # remove_duplicated_notes: the config has a note-order constraint
    vocab: tuple[str, ...]  # every token name (to write regex classes that match no other)

    @classmethod
    def from_tokenizer(cls, tokenizer: MusicTokenizer) -> RemiTokens:
        """Read the groups from a miditok REMI tokenizer (via :func:`gramophone.grammar.derive`)."""
        from gramophone.grammar.remi import derive
        from gramophone.tokenizers import vocab_list

        grammar = derive(tokenizer)
        written = [t for t in _NOT_WRITTEN if t not in grammar.absent_terminals]
        if written or grammar.time.use_rests or grammar.use_programs:
            raise UnsupportedConfigError(
                "peer grammars are written for configs without rests, tempos, chords, programs, "
                f"pedals and pitch bends (this config has {', '.join(written) or 'rests/programs'})"
            )
        vocab = vocab_list(tokenizer)
        groups: dict[str, list[str]] = {}
        for name in vocab:
            groups.setdefault(name.partition("_")[0], []).append(name)
        model = grammar.time
        sigs = []
        if model.use_time_signatures:
            for n, d in model.time_signatures:
                sigs.append((f"TimeSig_{n}/{d}", model.bar_length((n, d))))
        pitches: dict[int, list[str]] = {}
        for name in groups.get("Pitch", []) + groups.get("PitchDrum", []):
            pitches.setdefault(int(name.partition("_")[2]), []).append(name)

        def present(kind: str, terminal: str) -> tuple[str, ...]:
            return () if terminal in grammar.absent_terminals else tuple(groups.get(kind, []))

        return cls(
            bos=present("BOS", "BOS"),
            eos=present("EOS", "EOS"),
            pad=present("PAD", "PAD"),
            bar=tuple(groups.get("Bar", [])),
            time_signatures=tuple(sigs),
            default_bar_length=model.bar_length(model.default_time_signature),
            positions=tuple((p, int(p.partition("_")[2])) for p in groups.get("Position", [])),
            pitches=tuple((v, tuple(pitches[v])) for v in sorted(pitches)),
            velocities=present("Velocity", "VELOCITY"),
            durations=tuple(groups.get("Duration", [])),
            note_order=grammar.remove_duplicated_notes,
            vocab=tuple(vocab),
        )


def remi_grammar(tokens: RemiTokens, level: str, *, note_order: str = "automaton") -> Grammar:
    """The REMI language at ``level`` (see :data:`LEVELS`) as a :class:`Grammar`.

    ``note_order`` chooses how ascending pitches are written (same language):
    ``"automaton"``, the note-order automaton as one rule per last pitch (what may follow
    it); ``"divide"``, ``NE(lo..hi) = NE(lo..mid) OPT(mid+1..hi) | NE(mid+1..hi)``, which
    stays ``n log n`` pitch units when a regex inlines it (the rules would blow up there).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (one of {', '.join(LEVELS)})")
    if note_order not in NOTE_ORDER_FORMS:
        raise ValueError(f"unknown note_order {note_order!r} (one of {', '.join(NOTE_ORDER_FORMS)})")
    time = level in ("syntax+time", "full")
    order = level in ("syntax+note-order", "full") and tokens.note_order
    g = Grammar(start="start", level=level)
    r = g.rules

    def lits(names: Sequence[str]) -> Expr:
        if len(names) == 1:
            return Lit(names[0])
        return Lits(tuple(names), _compact_regex(names, tokens.vocab))

    head: list[Expr] = [Opt(lits(tokens.bos))] if tokens.bos else []
    tail: list[Expr] = []
    if tokens.eos:
        end: list[Expr] = [lits(tokens.eos)]
        if tokens.pad:
            end.append(Rep(lits(tokens.pad), at_least_one=False))
        tail = [Opt(_seq(*end))]

    # A note: pitch [velocity] duration; with the note order, one unit per pitch value.
    vel: list[Expr] = [Ref("velocity")] if tokens.velocities else []
    if tokens.velocities:
        r["velocity"] = lits(tokens.velocities)
    r["duration"] = lits(tokens.durations)
    if order:
        values = [v for v, _ in tokens.pitches]
        for v, names in tokens.pitches:
            r[f"n{v}"] = _seq(lits(names), *vel, Ref("duration"))
        if note_order == "divide":
            r["notes"] = _ascending_nonempty(values)
        else:
            # The note-order automaton as rules: after{v} = what may follow pitch v.
            for i, v in enumerate(values[:-1]):
                r[f"after{v}"] = _alt([_unit_then(w, values) for w in values[i + 1 :]])
            r["notes"] = _alt([_unit_then(v, values) for v in values])
    else:
        r["pitch"] = lits([n for _, names in tokens.pitches for n in names])
        r["note"] = _seq(Ref("pitch"), *vel, Ref("duration"))
        r["notes"] = Rep(Ref("note"), at_least_one=True)

    ts = tokens.time_signatures
    if not time:
        r["start"] = _seq(*head, Ref("piece"), *tail)
        r["piece"] = _seq(Ref("bar"), Rep(Ref("segment"), at_least_one=False))
        r["segment"] = Alt((Ref("bar"), Ref("position_block")))
        r["bar"] = _seq(lits(tokens.bar), *([lits([n for n, _ in ts])] if ts else []))
        r["position_block"] = _seq(lits([p for p, _ in tokens.positions]), Ref("notes"))
    else:
        r["start"] = _seq(*head, Rep(Ref("bar"), at_least_one=True), *tail)

        def body(length: int) -> list[Expr]:
            return [Opt(_seq(Lit(p), Ref("notes"))) for p, q in tokens.positions if q < length]

        if ts:
            for k, (name, length) in enumerate(ts):
                r[f"bar{k}"] = _seq(Lit(name), *body(length))
            r["bar"] = _seq(lits(tokens.bar), _alt([Ref(f"bar{k}") for k in range(len(ts))]))
        else:
            r["bar"] = _seq(lits(tokens.bar), *body(tokens.default_bar_length))
    # Start first, then the order the rules were written in.
    g.rules = {"start": r.pop("start"), **r}
    return g


def _unit_then(v: int, values: Sequence[int]) -> Expr:
    """Pitch unit ``v`` followed by what may follow it (nothing after the highest)."""
    return Ref(f"n{v}") if v == values[-1] else Seq((Ref(f"n{v}"), Opt(Ref(f"after{v}"))))


def _ascending_nonempty(values: Sequence[int]) -> Expr:
    """One or more pitch units in strictly ascending order: ``NE(lo..hi) = NE(lo..mid)
    OPT(mid+1..hi) | NE(mid+1..hi)``, with ``OPT`` a chain of optional units."""
    if len(values) == 1:
        return Ref(f"n{values[0]}")
    mid = len(values) // 2
    low, high = values[:mid], values[mid:]
    chain = _seq(*[Opt(Ref(f"n{v}")) for v in high])
    return Alt((Seq((_ascending_nonempty(low), chain)), _ascending_nonempty(high)))


def _common_prefix(texts: Sequence[str]) -> str:
    first = min(texts)
    last = max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _compact_regex(names: Sequence[str], vocab: Sequence[str]) -> str:
    """A regex (delimiter included) that matches exactly ``names`` among ``vocab``.

    Digit runs become ``[0-9]+`` where that matches no other token of the vocabulary
    (``Velocity_[0-9]+ ``); the rest are literals, a common prefix factored out
    (``Pitch(?:|Drum)_60 ``).
    """
    wanted = set(names)
    by_pattern: dict[str, list[str]] = {}
    for n in names:
        by_pattern.setdefault(re.sub(r"[0-9]+", "[0-9]+", _regex_literal(n)), []).append(n)
    parts: list[str] = []
    leftover: list[str] = []
    for pattern, group in by_pattern.items():
        matched = {v for v in vocab if re.fullmatch(pattern, v + DELIMITER)}
        if len(group) > 1 and matched <= wanted:
            parts.append(pattern)
        else:
            leftover += group
    if leftover:
        literals = [_regex_literal(n) for n in leftover]
        prefix = _common_prefix(literals)
        prefix = prefix[: len(prefix) - len(prefix.rstrip("\\"))] if prefix.endswith("\\") else prefix
        suffix = _common_prefix([lit[len(prefix) :][::-1] for lit in literals])[::-1]
        if suffix.startswith("\\") or len(literals) == 1:
            suffix = ""
        middles = [lit[len(prefix) : len(lit) - len(suffix)] for lit in literals]
        parts.append(f"{prefix}(?:{'|'.join(middles)}){suffix}" if len(literals) > 1 else literals[0])
    return parts[0] if len(parts) == 1 else f"(?:{'|'.join(parts)})"


# -- rendering -------------------------------------------------------------------------------
def _quote(name: str) -> str:
    return json.dumps(name + DELIMITER)  # a JSON string is a valid EBNF/lark literal here


def _regex_literal(name: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?()[]{}|\\" else ch for ch in name + DELIMITER)


def _rule_name(name: str, dialect: str) -> str:
    return "root" if dialect == "ebnf" and name == "start" else name


class _Renderer:
    """Renders expressions of one grammar in one dialect (a regex inlines every rule)."""

    def __init__(self, grammar: Grammar, dialect: str) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r} (one of {', '.join(DIALECTS)})")
        self.rules = grammar.rules
        self.dialect = dialect
        self.inlined: dict[str, str] = {}
        self.terminals: dict[tuple[str, ...], str] = {}  # lark: token groups as lexemes

    def terminal(self, names: tuple[str, ...]) -> str:
        """The lark terminal (one lexeme) for a group of tokens, named after its content."""
        if names not in self.terminals:
            kinds = dict.fromkeys(n.partition("_")[0].upper() for n in names)
            values = {n.partition("_")[2] for n in names}
            base = "_".join(kinds) + (f"_{values.pop()}" if len(values) == 1 else "")
            base = re.sub(r"[^A-Z0-9_]", "_", base)
            taken = set(self.terminals.values())
            name, k = base, 1
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            self.terminals[names] = name
        return self.terminals[names]

    def resolve(self, e: Expr) -> Expr:
        while self.dialect == "regex" and isinstance(e, Ref):
            e = self.rules[e.rule]
        return e

    def item(self, e: Expr, ctx: str) -> str:
        """``e`` as one item of a sequence (``ctx="seq"``) or under a suffix (``"suffix"``)."""
        r = self.resolve(e)
        if isinstance(r, Lit):
            group = self.dialect == "regex" and ctx == "suffix"
        elif isinstance(r, Lits):
            group = self.dialect != "lark"
        elif isinstance(r, Ref):
            group = False
        elif isinstance(r, Alt):
            group = True
        else:
            group = ctx == "suffix"
        text = self.expr(e)
        if not group:
            return text
        return f"(?:{text})" if self.dialect == "regex" else f"({text})"

    def expr(self, e: Expr) -> str:
        if isinstance(e, Lit):
            return _regex_literal(e.name) if self.dialect == "regex" else _quote(e.name)
        if isinstance(e, Lits):
            if self.dialect == "lark":
                return self.terminal(e.names)
            return e.regex if self.dialect == "regex" else " | ".join(_quote(n) for n in e.names)
        if isinstance(e, Ref):
            if self.dialect != "regex":
                return _rule_name(e.rule, self.dialect)
            if e.rule not in self.inlined:
                self.inlined[e.rule] = self.expr(self.rules[e.rule])
            return self.inlined[e.rule]
        if isinstance(e, Seq):
            sep = "" if self.dialect == "regex" else " "
            return sep.join(self.item(x, "seq") for x in e.items)
        if isinstance(e, Alt):
            sep = "|" if self.dialect == "regex" else " | "
            return sep.join(self.expr(x) for x in e.items)
        suffix = "?" if isinstance(e, Opt) else "+" if e.at_least_one else "*"
        return self.item(e.item, "suffix") + suffix


def render(grammar: Grammar, dialect: str) -> str:
    """The grammar as text: ``ebnf`` (xgrammar/GBNF), ``lark`` (llguidance) or ``regex``
    (a regex inlines every rule: write the note order with ``note_order="divide"``)."""
    renderer = _Renderer(grammar, dialect)
    if dialect == "regex":
        if any(name.startswith("after") for name in grammar.rules):
            raise ValueError('a regex needs the note order written with note_order="divide"')
        return renderer.expr(Ref(grammar.start))
    arrow = " ::= " if dialect == "ebnf" else ": "
    comment = "#" if dialect == "ebnf" else "//"
    lines = [f"{comment} REMI, level {grammar.level}, generated by benchmarks.peer_grammars"]
    if dialect == "lark":
        # Our vocabulary cannot spell a forced byte prefix such as "Velocity_" (it has no
        # byte tokens), so llguidance must not turn forced bytes into forced tokens.
        lines.append('%llguidance {"no_forcing": true}')
    for name, expr in grammar.rules.items():
        lines.append(_rule_name(name, dialect) + arrow + renderer.expr(expr))
    # lark: each group of tokens is one terminal, i.e. one lexeme for llguidance's lexer,
    # so that its Earley parser sees one item per group rather than one per token.
    for names, terminal in renderer.terminals.items():
        lines.append(f"{terminal}: " + " | ".join(_quote(n) for n in names))
    return "\n".join(lines) + "\n"
