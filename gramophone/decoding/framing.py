"""The decoding language: the grammar's automaton, plus a stream that starts with BOS and
ends with EOS (PAD only after it) and holds at least one note (REMI allows a piece of bar
headers only); ``--bars N`` adds a bar counter. EOS is only allowed where every component
accepts, so a loop that stops at EOS stops on a valid piece.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gramophone.errors import DecodingError
from gramophone.grammar import REJECT, Automaton, Component, fsa
from gramophone.grammar.constraints import bars_component

__all__ = [
    "BOS",
    "EOS",
    "NOTE_KINDS",
    "PAD",
    "decoding_automaton",
    "framing_component",
    "min_notes_component",
    "with_suffix",
]

BOS, EOS, PAD = "BOS_None", "EOS_None", "PAD_None"
NOTE_KINDS = ("Pitch", "PitchDrum", "NoteOn", "DrumOn")


def _kind(token: str) -> str:
    return token.partition("_")[0]


def framing_component(vocab: Sequence[str]) -> Component:
    """BOS first, EOS last, PAD only after EOS: states 0 (before BOS), 1 (body), 2 (ended,
    the only accepting one). Raises :class:`DecodingError` without BOS or EOS tokens."""
    index = {tok: i for i, tok in enumerate(vocab)}
    missing = [t for t in (BOS, EOS) if t not in index]
    if missing:
        raise DecodingError(
            f"decoding needs the special tokens {BOS} and {EOS}; the vocabulary lacks {', '.join(missing)}"
        )
    specials = np.array([_kind(t) in ("BOS", "EOS", "PAD", "MASK") for t in vocab])
    T = np.full((3, len(vocab)), REJECT, dtype=np.int32)
    T[0, index[BOS]] = 1
    T[1, ~specials] = 1
    T[1, index[EOS]] = 2
    if PAD in index:
        T[2, index[PAD]] = 2
    return Component("framing", T, np.array([False, False, True]), 0)


def min_notes_component(vocab: Sequence[str], notes: int = 1) -> Component:
    """At least ``notes`` note tokens (Pitch/PitchDrum): a saturating counter 0..notes."""
    S = notes + 1
    T = np.tile(np.arange(S, dtype=np.int32)[:, None], (1, len(vocab)))
    is_note = np.array([_kind(t) in NOTE_KINDS for t in vocab])
    T[:, is_note] = np.minimum(np.arange(S) + 1, notes)[:, None]
    return Component(f"notes>={notes}", T, np.arange(S) == notes, 0)


def _ends_only_when_accepting(component: Component, vocab: Sequence[str]) -> Component:
    """``component`` with EOS forbidden in its non-accepting states. Under the framing
    component nothing but PAD follows EOS, so the language is the same; but without this an
    EOS before the last note (or bar) would be a token every component accepts that leads
    to a dead end, and the cheap mask (see the module docstring) could not be used."""
    if EOS not in vocab:
        return component
    T = component.transitions.copy()
    T[~component.accepting, list(vocab).index(EOS)] = REJECT
    c = component
    return Component(c.name, T, c.accepting, c.start, dict(c.info), c.neutral)


def with_suffix(automaton: Automaton, suffix: Sequence[int]) -> Automaton:
    """``automaton`` where EOS stands for ``suffix`` (base ids) followed by EOS: a stream
    ``w EOS`` is accepted iff ``w suffix EOS`` is accepted by ``automaton``.

    Exact per component, because acceptance after a fixed suffix is a product of the
    components' own conditions: each component's EOS column becomes the run of that
    component over ``suffix + EOS`` from each state. This is bar infilling's language (the
    middle must end where the kept bars after it are accepted) for any loop that stops at
    EOS. A neutral component stays neutral only if the suffix never forbids an ending it
    allowed (else it joins the distance table).

    A token may now lead where no ending is left (one Bar too many for the kept bars): the
    decoding tables see such dead ends and mask every step with the exact distance (the
    cheap AND of rows is for languages without them), so infills stay exact."""
    eos = automaton.token_index[EOS]
    path = [int(t) for t in suffix] + [eos]
    comps = []
    for c in automaton.components:
        T = c.transitions
        state = fsa.run_from_every_state(T, path)
        T2 = T.copy()
        T2[:, eos] = state
        neutral = c.neutral and bool(((state != REJECT) | (T[:, eos] == REJECT)).all())
        comps.append(Component(c.name, T2, c.accepting, c.start, dict(c.info), neutral))
    meta = {k: v for k, v in automaton.meta.items() if k != "language_hash"}  # another language
    return Automaton(automaton.vocab, tuple(comps), automaton.grammar_text, meta)


def decoding_automaton(
    automaton: Automaton, bars: int | None = None, suffix: Sequence[int] | None = None
) -> Automaton:
    """The grammar + framing (+ at least one note when the vocabulary has notes) + an exact
    bar count. Its checker states why a stream is not a valid decoder output. With
    ``suffix`` (base ids), EOS stands for the suffix then EOS (:func:`with_suffix`)."""
    vocab = automaton.vocab
    out = automaton.with_component(framing_component(vocab))
    if any(_kind(t) in NOTE_KINDS for t in vocab):
        out = out.with_component(_ends_only_when_accepting(min_notes_component(vocab), vocab))
    if bars is not None:
        if bars < 1:
            raise DecodingError(f"--bars must be at least 1, got {bars}")
        if "Bar_None" not in automaton.token_index:
            raise DecodingError("--bars needs Bar tokens (REMI); this tokenizer's streams have none")
        out = out.with_component(_ends_only_when_accepting(bars_component(vocab, bars), vocab))
    return out if suffix is None else with_suffix(out, suffix)
