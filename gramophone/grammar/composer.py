"""Constraints a composer asks for: a key, a pitch range, a time signature, at most N notes
at one onset, between LO and HI notes per bar.

Each is one more :class:`~gramophone.grammar.Component` over the tokenizer's base vocabulary,
composed with the grammar's automaton (:func:`with_constraints`, or
:meth:`Automaton.with_component <gramophone.grammar.Automaton.with_component>` for one of
your own) before decoding tables are built, so that every loop (torch, JAX, numpy, a
HuggingFace ``generate``) masks with it, ``--bars``, prompts and the budget included, and
``gramophone check`` reports a stream that breaks one in the checker's words
(``rejected by key=D:minor: Pitch_61 is not in D minor ...``).

Exact: a constrained automaton accepts a stream iff the grammar accepts it and it satisfies
the constraints as defined below (``tests/test_composer.py`` holds each to a plain-Python
reference on token names). The decoding tables stay exact and free of dead ends: where a
component forbids a note the grammar would require, it also forbids the token that commits
to it (:func:`committing` finds those in the syntax: a Chord, a Position that needs a note;
``allowed-pitches`` handles the same Program token again after the highest allowed pitch,
Structured's zero TimeShift and MIDILike's chords), and ``--notes-per-bar`` refuses what
leaves a bar too little room for the notes it still needs. So the cheap mask is used far
from the end of the budget. The one exception, MIDILike with programs and
``--max-notes-per-onset`` (a Program token at the limit needs an open note of its program,
which only the open-notes counter knows), keeps dead ends the tables see: exact, with the
distance read at every step. Distances stay exact when the tables leave note order out of
their distance table (``--notes-per-bar`` keeps the highest few pitches at an onset in order
itself): the tests compare them with the full product's, state by state, on small configs.

**What each one means** (notes are ``Pitch``/``PitchDrum`` tokens, ``NoteOn``/``DrumOn`` in
MIDILike; drum notes, ``PitchDrum``/``DrumOn`` or any note under ``Program_-1``, are not
pitches):

- ``--key TONIC:MODE`` (``D:minor``, ``F#:major``, ``Bb:major``): every pitched note's
  pitch class is in the key's scale; a minor key holds the natural, harmonic and melodic
  minor scales together (the raised 6th and 7th too: 9 pitch classes). (In a stream without
  programs miditok decodes PitchDrum notes into the one track like any note; they are drum
  notes here all the same.)
- ``--pitch-range LO:HI``: every pitched note's MIDI number in ``LO..HI``.
- ``--time-signature N/D``: every ``TimeSig`` token is ``TimeSig_N/D`` (REMI writes one per
  bar, TSD one first; in MIDILike, unless N/D is 4/4, miditok's default, the stream opens
  with it). Refused when the vocabulary has no such token (Structured has none).
- ``--max-notes-per-onset N``: at most N notes start at one time. A new onset starts at
  Position, Bar and Rest (REMI), TimeShift and Rest (TSD, MIDILike), and any TimeShift but
  ``TimeShift_0.0.1`` (Structured, whose zero shift joins a note to the previous one's onset).
- ``--notes-per-bar LO:HI``: every bar holds LO..HI notes, the last one included (a stream
  that ends, or an EOS, with fewer than LO notes in its last bar is incomplete); a bar runs
  from one Bar token to the next. REMI only (the other schemes have no Bar tokens), and not
  with rests (rests cross bar lines without Bar tokens), nor with LO > 0 under programs with
  ``remove_duplicated_notes`` (how many more notes an onset can hold depends on which
  programs have had their run).

Also refused, with a one-line error naming the option: a key and a range that leave no
pitch of the vocabulary, and ``--key``/``--pitch-range`` for Structured with programs and
``remove_duplicated_notes`` and for MIDILike with chords and ``remove_duplicated_notes``
(which notes may still follow a chord at an onset is not tracked).

**Writing a new one.** A constraint is a DFA over the base vocabulary: ``transitions``
``int32[S, V]`` (:data:`~gramophone.grammar.REJECT` where a token is forbidden),
``accepting bool[S]`` and a start state. Give it a name (the checker says "rejected by
NAME"), and forbid ``EOS_None`` in its non-accepting states (the decoder stops at EOS; see
:func:`gramophone.decoding.framing.decoding_automaton`). The README has a worked example.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gramophone.errors import ConstraintError, UnsupportedConfigError
from gramophone.grammar import fsa
from gramophone.grammar.automaton import Automaton, Component
from gramophone.grammar.fsa import REJECT

__all__ = [
    "MODES",
    "ComposerConstraints",
    "Key",
    "build_component",
    "committing",
    "explain",
    "explain_end",
    "parse_key",
    "parse_max_notes_per_onset",
    "parse_notes_per_bar",
    "parse_pitch_range",
    "parse_time_signature",
    "with_constraints",
]

#: Pitch classes of each mode, from the tonic. Minor: natural, harmonic and melodic minor
#: together (the 6th and 7th degrees in both forms).
MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 9, 10, 11),
}
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTALS = {"": 0, "#": 1, "\u266f": 1, "b": -1, "\u266d": -1}
NOTE_KINDS = ("Pitch", "PitchDrum", "NoteOn", "DrumOn")
MELODIC_KINDS = ("Pitch", "NoteOn")
#: Token kinds that start a new onset, per scheme (Structured: every TimeShift but the zero one).
ONSET_KINDS: dict[str, tuple[str, ...]] = {
    "remi": ("Position", "Bar", "Rest"),
    "tsd": ("TimeShift", "Rest"),
    "midilike": ("TimeShift", "Rest"),
    "structured": ("TimeShift",),
}
_SCHEME_NAMES = {"remi": "REMI", "tsd": "TSD", "midilike": "MIDILike", "structured": "Structured"}
ZERO_SHIFT = "TimeShift_0.0.1"  # Structured's "no move" (gramophone.grammar.structured)
EOS, PAD, BOS = "EOS_None", "PAD_None", "BOS_None"


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Key:
    """A key: ``tonic`` as written (``F#``, ``Bb``), ``mode`` (a name of :data:`MODES`)."""

    tonic: str
    mode: str

    @property
    def tonic_class(self) -> int:
        return (_LETTERS[self.tonic[0]] + _ACCIDENTALS[self.tonic[1:]]) % 12

    @property
    def pitch_classes(self) -> frozenset[int]:
        return frozenset((self.tonic_class + step) % 12 for step in MODES[self.mode])

    def __str__(self) -> str:
        return f"{self.tonic}:{self.mode}"

    def scale_names(self) -> str:
        """The scale spelled from the tonic, one letter per degree (a minor key's 6th and
        7th degrees both ways): ``D E F G A Bb B C C#``."""
        letters = "CDEFGAB"
        first = letters.index(self.tonic[0])
        names = []
        for degree, step in enumerate(
            (0, 2, 4, 5, 7, 9, 11) if self.mode == "major" else (0, 2, 3, 5, 7, 8, 10)
        ):
            letter = letters[(first + degree) % 7]
            shift = ((self.tonic_class + step - _LETTERS[letter] + 6) % 12) - 6
            for raised in (0, 1) if self.mode == "minor" and degree >= 5 else (0,):
                k = shift + raised
                names.append(letter + ("#" * k if k > 0 else "b" * -k))
        return " ".join(names)


def parse_key(text: str) -> Key:
    """``"D:minor"`` -> :class:`Key` (tonic A..G with ``#`` or ``b``; modes of :data:`MODES`)."""
    option = f"--key {text}"
    tonic, sep, mode = (part.strip() for part in text.partition(":"))
    if not sep or not tonic or not mode:
        raise ConstraintError(f"{option}: expected TONIC:MODE, e.g. D:minor, F#:major or Bb:major")
    m = re.fullmatch(r"([A-Ga-g])([#b\u266f\u266d]?)", tonic)
    if m is None:
        raise ConstraintError(f"{option}: unknown tonic {tonic!r} (a letter A..G, then # or b: C, F#, Bb)")
    if mode.lower() not in MODES:
        raise ConstraintError(f"{option}: unknown mode {mode!r} (one of {', '.join(MODES)})")
    accidental = {"\u266f": "#", "\u266d": "b"}.get(m.group(2), m.group(2))
    return Key(m.group(1).upper() + accidental, mode.lower())


def _int_pair(option: str, text: str, sep: str, what: str) -> tuple[int, int]:
    a, s, b = (part.strip() for part in text.partition(sep))
    try:
        if not s:
            raise ValueError
        return int(a), int(b)
    except ValueError:
        raise ConstraintError(f"{option} {text}: expected {what}") from None


def parse_pitch_range(text: str) -> tuple[int, int]:
    """``"60:72"`` -> ``(60, 72)``: MIDI note numbers, inclusive."""
    lo, hi = _int_pair("--pitch-range", text, ":", "LO:HI, MIDI note numbers (e.g. 48:84)")
    if not 0 <= lo <= 127 or not 0 <= hi <= 127:
        raise ConstraintError(f"--pitch-range {text}: MIDI note numbers are 0..127")
    if lo > hi:
        raise ConstraintError(f"--pitch-range {text}: LO is above HI")
    return lo, hi


def parse_time_signature(text: str) -> tuple[int, int]:
    """``"3/4"`` -> ``(3, 4)``."""
    n, d = _int_pair("--time-signature", text, "/", "N/D, e.g. 3/4 or 6/8")
    if n < 1 or d < 1:
        raise ConstraintError(f"--time-signature {text}: N and D must be positive")
    return n, d


def parse_max_notes_per_onset(text: str | int) -> int:
    """``"3"`` -> 3 (at least 1)."""
    try:
        n = int(text)
    except ValueError:
        raise ConstraintError(f"--max-notes-per-onset {text}: expected a whole number") from None
    if n < 1:
        raise ConstraintError(f"--max-notes-per-onset {text}: must be at least 1")
    return n


def parse_notes_per_bar(text: str) -> tuple[int, int]:
    """``"2:8"`` -> ``(2, 8)``: notes per bar, inclusive."""
    lo, hi = _int_pair("--notes-per-bar", text, ":", "LO:HI, e.g. 2:8 (0:HI for at most HI)")
    if lo < 0:
        raise ConstraintError(f"--notes-per-bar {text}: LO must be at least 0")
    if lo > hi:
        raise ConstraintError(f"--notes-per-bar {text}: LO is above HI")
    return lo, hi


@dataclass(frozen=True)
class ComposerConstraints:
    """The five constraints (each ``None``: not asked for). Build it from option strings
    with :meth:`parse`; :meth:`components` builds the automata for one grammar and
    :func:`with_constraints` composes them.

    >>> c = ComposerConstraints.parse(key="D:minor", pitch_range="50:74")
    >>> c.describe()
    '--key D:minor --pitch-range 50:74'
    """

    key: Key | None = None
    pitch_range: tuple[int, int] | None = None
    time_signature: tuple[int, int] | None = None
    max_notes_per_onset: int | None = None
    notes_per_bar: tuple[int, int] | None = None

    def __post_init__(self) -> None:  # built directly (not parsed): the same checks
        if self.key is not None:
            parse_key(str(self.key))
        if self.pitch_range is not None:
            parse_pitch_range("{}:{}".format(*self.pitch_range))
        if self.time_signature is not None:
            parse_time_signature("{}/{}".format(*self.time_signature))
        if self.max_notes_per_onset is not None:
            parse_max_notes_per_onset(self.max_notes_per_onset)
        if self.notes_per_bar is not None:
            parse_notes_per_bar("{}:{}".format(*self.notes_per_bar))

    @classmethod
    def parse(
        cls,
        *,
        key: str | None = None,
        pitch_range: str | None = None,
        time_signature: str | None = None,
        max_notes_per_onset: str | int | None = None,
        notes_per_bar: str | None = None,
    ) -> ComposerConstraints:
        """From the command line's strings; a :class:`~gramophone.errors.ConstraintError`
        (one line naming the option) for a malformed one."""
        return cls(
            key=None if key is None else parse_key(key),
            pitch_range=None if pitch_range is None else parse_pitch_range(pitch_range),
            time_signature=None if time_signature is None else parse_time_signature(time_signature),
            max_notes_per_onset=(
                None if max_notes_per_onset is None else parse_max_notes_per_onset(max_notes_per_onset)
            ),
            notes_per_bar=None if notes_per_bar is None else parse_notes_per_bar(notes_per_bar),
        )

    @property
    def empty(self) -> bool:
        return self == ComposerConstraints()

    def options(self) -> list[str]:
        """The command-line options that ask for these constraints."""
        out = []
        if self.key is not None:
            out.append(f"--key {self.key}")
        if self.pitch_range is not None:
            out.append("--pitch-range {}:{}".format(*self.pitch_range))
        if self.time_signature is not None:
            out.append("--time-signature {}/{}".format(*self.time_signature))
        if self.max_notes_per_onset is not None:
            out.append(f"--max-notes-per-onset {self.max_notes_per_onset}")
        if self.notes_per_bar is not None:
            out.append("--notes-per-bar {}:{}".format(*self.notes_per_bar))
        return out

    def describe(self) -> str:
        return " ".join(self.options())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``summary.json``): option name -> its string."""
        return {opt.split()[0][2:]: opt.split()[1] for opt in self.options()}

    def allowed_pitches(self, values: Sequence[int]) -> list[int]:
        """Which of ``values`` (MIDI pitches) the key and the range allow."""
        out = list(values)
        if self.key is not None:
            pcs = self.key.pitch_classes
            out = [p for p in out if p % 12 in pcs]
        if self.pitch_range is not None:
            lo, hi = self.pitch_range
            out = [p for p in out if lo <= p <= hi]
        return out

    def components(self, automaton: Automaton) -> list[Component]:
        """The automata of these constraints over ``automaton``'s (base) vocabulary.

        Raises :class:`~gramophone.UnsupportedConfigError` for an option the scheme or the
        config cannot have (``--notes-per-bar`` without Bar tokens, a time signature the
        vocabulary lacks) and :class:`~gramophone.errors.ConstraintError` when the key and
        the range leave no pitch of the vocabulary."""
        return _Builder(automaton, self).components()


def with_constraints(automaton: Automaton, constraints: ComposerConstraints | None) -> Automaton:
    """``automaton`` intersected with ``constraints``' components (itself for none)."""
    if constraints is None or constraints.empty:
        return automaton
    out = automaton
    for c in constraints.components(automaton):
        out = out.with_component(c)
    return out


# ----------------------------------------------------------------------------- building


def _split(token: str) -> tuple[str, str]:
    kind, _, value = token.partition("_")
    return kind, value


State = Hashable


def build_component(
    name: str,
    vocab: Sequence[str],
    start: State,
    step: Callable[[Any, str], Any],
    accepting: Callable[[Any], bool] = lambda _s: True,
    *,
    classify: Callable[[str], Hashable] | None = None,
    facts: Callable[[Any], dict[str, int]] | None = None,
) -> Component:
    """A component from a step function over hashable abstract states: a breadth-first
    search from ``start``; ``step(state, token)`` is the next state or ``None`` (the token is
    forbidden). ``classify(token)`` names classes of tokens ``step`` treats alike (it is then
    called once per state and class); ``facts(state)`` gives ``info`` arrays (per state, for
    the checker's messages). ``EOS_None`` is forbidden in the non-accepting states."""
    key = classify or (lambda token: token)
    classes: dict[Hashable, int] = {}
    reps: list[str] = []
    token_class = np.empty(len(vocab), dtype=np.int64)
    for v, token in enumerate(vocab):
        k = key(token)
        if k not in classes:
            classes[k] = len(reps)
            reps.append(token)
        token_class[v] = classes[k]
    states: list[Any] = [start]
    index: dict[Any, int] = {start: 0}
    rows: list[list[int]] = []
    while len(rows) < len(states):
        s = states[len(rows)]
        row = []
        for token in reps:
            nxt = step(s, token)
            if nxt is None:
                row.append(REJECT)
                continue
            j = index.get(nxt)
            if j is None:
                j = index[nxt] = len(states)
                states.append(nxt)
            row.append(j)
        rows.append(row)
    T = np.array(rows, dtype=np.int32).reshape(len(states), len(reps))[:, token_class]
    acc = np.array([accepting(s) for s in states], dtype=bool)
    if EOS in vocab:
        T[~acc, list(vocab).index(EOS)] = REJECT
    info: dict[str, np.ndarray] = {}
    if facts is not None:
        per_state = [facts(s) for s in states]
        for k in per_state[0]:
            info[k] = np.array([f[k] for f in per_state], dtype=np.int32)
    return Component(name=name, transitions=T, accepting=acc, start=0, info=info)


def committing(automaton: Automaton, targets: np.ndarray, resets: np.ndarray) -> np.ndarray:
    """``bool[V]``: the tokens after which, wherever the syntax allows them, every way on to
    the end of the stream takes a ``targets`` token before any ``resets`` token (a Chord
    before its note; a Position before its onset's note when the config has no tempos,
    pedals or pitch bends). A counter that forbids ``targets`` forbids these with them, or
    the lockstep product would have a dead end."""
    syntax = automaton.components[0]
    T, acc = syntax.transitions, syntax.accepting
    live = fsa.reachable(T, syntax.start) & fsa.coreachable(T, acc)
    nxt = np.maximum(T, 0)
    ok = (T != REJECT) & live[nxt] & live[:, None]
    avoid = acc & live  # states with a way to the end or a reset without a target first
    while True:
        via = ok & ~targets[None, :] & (resets[None, :] | avoid[nxt])
        new = avoid | (live & via.any(axis=1))
        if (new == avoid).all():
            break
        avoid = new
    leads_free = ok & avoid[nxt]
    return ok.any(axis=0) & ~leads_free.any(axis=0) & ~targets & ~resets


_SPECIALS = ("BOS", "EOS", "PAD", "MASK")


class _Builder:
    """The components of one :class:`ComposerConstraints` over one automaton."""

    def __init__(self, automaton: Automaton, constraints: ComposerConstraints) -> None:
        self.automaton = automaton
        self.constraints = constraints
        self.vocab = automaton.vocab
        self.kinds = [_split(t) for t in self.vocab]
        scheme = automaton.meta.get("scheme")
        if scheme not in ONSET_KINDS:
            raise UnsupportedConfigError(
                "composer constraints need an automaton compiled from a REMI, TSD, MIDILike or "
                "Structured tokenizer (compile_tokenizer)"
            )
        self.scheme = str(scheme)
        self.programs = self.has("Program")
        #: notes at one onset in a canonical order (remove_duplicated_notes)
        self.dedup = bool(self.named("note-order") or self.named("onset-order"))
        self.notes = self.mask(lambda k, _v: k in NOTE_KINDS)

    # -- what the grammar has -----------------------------------------------------------------
    def has(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.kinds)

    def values(self, kind: str) -> list[int]:
        return sorted({int(v) for k, v in self.kinds if k == kind})

    def named(self, prefix: str) -> list[Component]:
        return [c for c in self.automaton.components if c.name.startswith(prefix)]

    def mask(self, pred: Callable[[str, str], bool]) -> np.ndarray:
        return np.array([pred(k, v) for k, v in self.kinds], dtype=bool)

    def onset_resets(self) -> np.ndarray:
        kinds = ONSET_KINDS[self.scheme]
        return np.array(
            [k in kinds and t != ZERO_SHIFT for t, (k, _) in zip(self.vocab, self.kinds, strict=True)]
        )

    def roles(self, resets: np.ndarray) -> dict[str, str]:
        """Each token's role for a counter of notes reset by ``resets``: ``note``, ``reset``,
        ``commit`` (see :func:`committing`) or ``""``."""
        commits = committing(self.automaton, self.notes, resets)
        return {
            t: "note" if self.notes[v] else "reset" if resets[v] else "commit" if commits[v] else ""
            for v, t in enumerate(self.vocab)
        }

    # -- the components -------------------------------------------------------------------------
    def components(self) -> list[Component]:
        c = self.constraints
        out: list[Component] = []
        if c.key is not None or c.pitch_range is not None:
            out += self.pitch_components()
        if c.time_signature is not None:
            out.append(self.time_signature_component(*c.time_signature))
        if c.max_notes_per_onset is not None:
            out.append(self.onset_component(c.max_notes_per_onset))
        if c.notes_per_bar is not None:
            out.append(self.bar_component(*c.notes_per_bar))
        return out

    # -- key and range ------------------------------------------------------------------------
    def pitch_options(self) -> str:
        return ComposerConstraints(
            key=self.constraints.key, pitch_range=self.constraints.pitch_range
        ).describe()

    def allowed(self) -> list[int]:
        """The pitches the key and the range leave, of the vocabulary's Pitch/NoteOn values."""
        values = sorted({int(v) for k, v in self.kinds if k in MELODIC_KINDS})
        allowed = self.constraints.allowed_pitches(values)
        if not allowed:
            have = f"{values[0]}..{values[-1]}" if values else "none"
            both = self.constraints.key is not None and self.constraints.pitch_range is not None
            what = "them" if both else "it"
            raise ConstraintError(
                f"{self.pitch_options()}: no pitch of the vocabulary ({have}) satisfies {what}"
            )
        return allowed

    def pitch_components(self) -> list[Component]:
        """One restriction per option (``key=...``, ``pitch-range=...``) and, where the
        grammar would otherwise reach a dead end, ``allowed-pitches`` over their intersection."""
        allowed = self.allowed()
        c = self.constraints
        out = []
        if c.key is not None:
            pcs = c.key.pitch_classes
            out.append(self.restriction(f"key={c.key}", lambda p: p % 12 in pcs))
        if c.pitch_range is not None:
            lo, hi = c.pitch_range
            out.append(self.restriction(f"pitch-range={lo}:{hi}", lambda p: lo <= p <= hi))
        helper = self.pitch_liveness(set(allowed))
        if helper is not None:
            out.append(helper)
        return out

    def restriction(self, name: str, ok: Callable[[int], bool]) -> Component:
        """Pitched notes (Pitch, NoteOn) outside ``ok`` are forbidden but under
        ``Program_-1`` (drums). States: whether the last Program token is -1 (with programs);
        every state accepts."""

        def step(drums: bool, token: str) -> bool | None:
            kind, value = _split(token)
            if kind == "Program":
                return int(value) == -1
            if kind in MELODIC_KINDS and not drums and not ok(int(value)):
                return None
            return drums

        def classify(token: str) -> Hashable:
            kind, value = _split(token)
            if kind in MELODIC_KINDS:
                return kind, ok(int(value))
            return (kind, int(value) == -1) if kind == "Program" else ""

        return build_component(name, self.vocab, False, step, classify=classify)

    def pitch_liveness(self, allowed: set[int]) -> Component | None:
        """Where the grammar requires a note that only a forbidden pitch could be, forbid
        the token that requires it (else the decoder meets a dead end), as
        ``allowed-pitches``:

        - REMI/TSD with programs and ``remove_duplicated_notes``: a program's Program token
          again at one onset needs a higher pitch of its run (REMI with pitch bends may follow
          it with a PitchBend instead): refused after the highest allowed pitch.
        - Structured (one track) with ``remove_duplicated_notes``: ``TimeShift_0.0.1`` needs a
          higher pitch at the same onset: refused after the highest allowed Pitch.
        - MIDILike (one track): a Chord needs a note-on of a free key; the notes held on keys
          a note-on may open (allowed pitches and drum pitches) are counted, and a Chord is
          refused when every such key is full.
        """
        if self.scheme in ("remi", "tsd") and self.programs and self.dedup:
            return self.program_top_component(allowed)
        if self.scheme == "structured" and self.dedup:
            if self.programs:
                raise UnsupportedConfigError(
                    f"{self.pitch_options()}: not supported for Structured with programs and "
                    "remove_duplicated_notes (which programs may still join an onset is not tracked)"
                )
            return self.zero_shift_component(max(allowed))
        if self.scheme == "midilike" and not self.programs:
            if self.named("onset-order") and self.has("Chord"):
                raise UnsupportedConfigError(
                    f"{self.pitch_options()}: not supported for MIDILike with chords and "
                    "remove_duplicated_notes (a chord needs a note-on above the onset's last pitch "
                    "on a key not yet full: not tracked)"
                )
            return self.open_keys_component(allowed)
        return None

    def program_top_component(self, allowed: set[int]) -> Component:
        """State ``(program of the current run at this onset or None, whether its last pitch
        is the highest allowed for it)``."""
        tops = {
            "pitched": max(allowed),
            "drums": max(self.values("PitchDrum") or self.values("Pitch")),
        }
        resets = ONSET_KINDS[self.scheme]
        refuse_same = self.scheme == "tsd" or not self.has("PitchBend")

        def step(s: tuple[int | None, bool], token: str) -> tuple[int | None, bool] | None:
            program, at_top = s
            kind, value = _split(token)
            if kind in resets:
                return None, False
            if kind == "Program":
                j = int(value)
                if j != program:
                    return j, False
                return None if at_top and refuse_same else s
            if kind in ("Pitch", "PitchDrum"):
                return program, int(value) >= tops["drums" if program == -1 else "pitched"]
            return s

        def classify(token: str) -> Hashable:
            kind = _split(token)[0]
            if kind in ("Program", "Pitch", "PitchDrum"):
                return token
            return kind if kind in resets else ""

        def facts(s: tuple[int | None, bool]) -> dict[str, int]:
            program, at_top = s
            top = tops["drums" if program == -1 else "pitched"]
            return {"program": -2 if program is None else program, "at_top": int(at_top), "top": top}

        return build_component(
            "allowed-pitches", self.vocab, (None, False), step, classify=classify, facts=facts
        )

    def zero_shift_component(self, top: int) -> Component:
        """State: whether the last note is ``Pitch_top`` (then no note may join its onset)."""

        def step(at_top: bool, token: str) -> bool | None:
            kind, value = _split(token)
            if token == ZERO_SHIFT:
                return None if at_top else False
            if kind in ("Pitch", "PitchDrum"):
                return kind == "Pitch" and int(value) == top
            return at_top

        def classify(token: str) -> Hashable:
            kind = _split(token)[0]
            return token if token == ZERO_SHIFT or kind == "Pitch" else kind

        return build_component(
            "allowed-pitches", self.vocab, False, step, classify=classify,
            facts=lambda s: {"at_top": int(s), "top": top},
        )  # fmt: skip

    def max_open_per_pitch(self) -> int:
        """MIDILike's bound on the notes of one key open at once (from its pairing components)."""
        pairing = self.named("pairing")
        if not pairing:
            return 1
        return int(pairing[0].info["max_open"][0])

    def open_keys_component(self, allowed: set[int]) -> Component:
        """MIDILike, one track: the notes held on keys a note-on may open, ``0..capacity``."""
        keys = allowed | set(self.values("DrumOn"))
        capacity = len(keys) * self.max_open_per_pitch()

        def step(n: int, token: str) -> int | None:
            kind, value = _split(token)
            if kind in ("NoteOn", "DrumOn") and int(value) in keys:
                return n + 1 if n < capacity else None
            if kind in ("NoteOff", "DrumOff") and int(value) in keys:
                return n - 1 if n > 0 else None
            if kind == "Chord":
                return n if n < capacity else None
            return n

        def classify(token: str) -> Hashable:
            kind, value = _split(token)
            if kind in ("NoteOn", "DrumOn", "NoteOff", "DrumOff"):
                return kind.endswith("On"), int(value) in keys
            return kind == "Chord"

        return build_component(
            "allowed-pitches", self.vocab, 0, step, classify=classify,
            facts=lambda n: {"open": n, "capacity": capacity},
        )  # fmt: skip

    # -- time signature -----------------------------------------------------------------------
    def time_signature_component(self, n: int, d: int) -> Component:
        """Every TimeSig token is ``TimeSig_n/d``; MIDILike (unless 4/4) opens with it."""
        wanted = f"{n}/{d}"
        option = f"--time-signature {wanted}"
        have = [v for k, v in self.kinds if k == "TimeSig"]
        if not have:
            why = "Structured has none" if self.scheme == "structured" else "use_time_signatures is off"
            raise UnsupportedConfigError(f"{option}: the tokenizer has no time signatures ({why})")
        if wanted not in have:
            raise UnsupportedConfigError(
                f"{option}: the tokenizer's vocabulary has no TimeSig_{wanted} (it has {', '.join(have)})"
            )
        opens = self.scheme == "midilike" and (n, d) != (4, 4)

        def step(started: bool, token: str) -> bool | None:
            kind, value = _split(token)
            if kind == "TimeSig":
                return True if value == wanted else None
            if kind in _SPECIALS:
                return started
            return True if started else None

        def classify(token: str) -> Hashable:
            kind, value = _split(token)
            if kind == "TimeSig":
                return value == wanted
            return "special" if kind in _SPECIALS else ""

        return build_component(
            f"time-signature={wanted}", self.vocab, not opens, step, classify=classify,
            facts=lambda s: {"opened": int(s)},
        )  # fmt: skip

    # -- notes at one onset --------------------------------------------------------------------
    def onset_component(self, limit: int) -> Component:
        """``k``, the notes at this onset (``0..limit``); a token that commits to one more
        note (a Chord, Structured's zero TimeShift ...) is refused at ``limit`` too.

        MIDILike with programs keeps dead ends the decoder's distance table sees (exact,
        with the distance read at every step): a Program token at ``limit`` notes may only
        go on to a NoteOff of its program, and whether that program has a note open is the
        open-notes counter's."""
        role = self.roles(self.onset_resets())

        def step(k: int, token: str) -> int | None:
            r = role[token]
            if r == "note":
                return k + 1 if k < limit else None
            if r == "reset":
                return 0
            if r == "commit" and k >= limit:
                return None
            return k

        return build_component(
            f"max-notes-per-onset={limit}", self.vocab, 0, step, classify=role.__getitem__,
            facts=lambda k: {"onset_notes": k},
        )  # fmt: skip

    # -- notes per bar -------------------------------------------------------------------------
    def bar_lengths(self) -> dict[str, int]:
        """Positions per bar of each time signature (from REMI's time component)."""
        time = self.named("time")
        if not time or "bar_length" not in time[0].info:
            raise UnsupportedConfigError("--notes-per-bar needs REMI's time constraint in the automaton")
        info = time[0].info
        names = [str(x) for x in info["time_signature_names"]]
        out: dict[str, int] = {}
        for ts, length in zip(info["time_signature"].tolist(), info["bar_length"].tolist(), strict=True):
            if ts >= 0:
                out[names[ts]] = int(length)
        return out

    def bar_component(self, lo: int, hi: int) -> Component:
        """Between ``lo`` and ``hi`` notes from one Bar token to the next (and to the end).

        States: ``("start",)`` before the first Bar; ``("ok", c)`` with ``c >= lo`` notes in
        this bar (with ``lo = 0``, every bar); while a bar still needs notes (``c < lo``),
        ``("ts",)`` after its Bar, ``("bar", L)`` once its length ``L`` (positions) is known,
        before its first Position, and ``("pos", c, L, rho, h, by_pitch)`` after a Position:
        ``rho`` the positions left in the bar (capped where more would not matter) and ``h``
        the notes that may still come at this onset, capped at the ``lo - c`` still needed:
        with ``remove_duplicated_notes`` no more than the allowed pitches above the last one,
        with ``--max-notes-per-onset`` no more than the limit leaves (``by_pitch``: the
        pitches bind, so a note must be one of the ``h`` highest allowed).

        So that no stream enters a bar it cannot fill (a dead end for the decoder), a token is
        refused when the notes still needed no longer fit at this onset and at the positions
        left (each holding at most the allowed pitches, or the limit). ``h`` also keeps the
        few highest pitches at an onset in ascending order as note-order does, so the
        decoder's distances stay exact when its table leaves note-order out. At ``hi`` notes a
        note, and a token that commits to one (a Position that needs a note, a Chord), is
        refused; with fewer than ``lo`` a Bar and EOS are.
        """
        option = f"--notes-per-bar {lo}:{hi}"
        if "Bar_None" not in self.vocab:
            raise UnsupportedConfigError(
                f"{option}: not supported for {_SCHEME_NAMES[self.scheme]}: its streams have no Bar tokens"
            )
        if self.has("Rest"):
            raise UnsupportedConfigError(
                f"{option}: not supported with rests (use_rests): rests cross bar lines without Bar tokens"
            )
        if lo > 0 and self.programs and self.dedup:
            raise UnsupportedConfigError(
                f"{option}: at least LO > 0 notes per bar is not supported with programs and "
                "remove_duplicated_notes (how many more notes an onset can hold is not tracked); use 0:HI"
            )
        lengths = self.bar_lengths() if lo > 0 else {}
        has_ts = self.has("TimeSig")
        inf = 1 << 30
        limit = self.constraints.max_notes_per_onset or inf
        dedup = self.dedup
        rank: dict[int, int] = {}  # allowed value -> how many allowed values are above it
        per_onset = inf
        if dedup and lo > 0:  # values at one onset (Pitch and PitchDrum share them in note order)
            pitched = self.values("Pitch")
            if self.constraints.key is not None or self.constraints.pitch_range is not None:
                pitched = self.constraints.allowed_pitches(pitched)
            values = sorted(set(pitched) | set(self.values("PitchDrum")))
            rank = {v: len(values) - 1 - i for i, v in enumerate(values)}
            per_onset = len(values)
        per_position = min(per_onset, limit)
        rho_max = -(-lo // per_position) if per_position < inf else 0
        role = self.roles(self.mask(lambda k, _v: k == "Bar"))

        def need(c: int) -> int:
            return max(lo - c, 0)

        def counted(c: int, length: int, rho: int, h: int, by_pitch: bool) -> tuple[Any, ...] | None:
            """The state with ``c`` notes (None when the notes still needed cannot fit)."""
            if c >= lo:
                return ("ok", c)
            if need(c) > h + rho * per_position:
                return None
            return ("pos", c, length, rho, min(h, need(c)), by_pitch and h <= need(c))

        def new_bar() -> tuple[Any, ...] | None:
            if lo == 0:
                return ("ok", 0)
            if has_ts:
                return ("ts",)
            length = next(iter(lengths.values()))
            return ("bar", length) if lo <= length * per_position else None

        def step(s: tuple[Any, ...], token: str) -> tuple[Any, ...] | None:
            phase = s[0]
            kind, value = _split(token)
            c = s[1] if phase in ("ok", "pos") else 0
            if kind == "Bar":
                return new_bar() if phase == "start" or c >= lo else None
            if kind == "EOS":
                return s if accepting(s) else None
            if phase == "ts":
                if kind != "TimeSig":
                    return s
                length = lengths.get(value)
                return ("bar", length) if length is not None and lo <= length * per_position else None
            if phase == "start":
                return s
            if phase == "ok":
                if kind in NOTE_KINDS:
                    return ("ok", c + 1) if c < hi else None
                return None if c >= hi and role[token] == "commit" else s
            length = s[1] if phase == "bar" else s[2]
            if kind == "Position":
                q = int(value)
                if q >= length:
                    return None
                h = min(per_onset, limit)
                return counted(c, length, min(length - 1 - q, rho_max), h, dedup and per_onset <= limit)
            if phase == "bar" or kind not in NOTE_KINDS:
                return s
            _, c, length, rho, h, by_pitch = s
            r = rank.get(int(value), -1) if dedup else inf
            if h == 0 or r < 0 or (by_pitch and r >= h):
                return None  # no room at this onset, not an allowed value, or not above the last
            return counted(c + 1, length, rho, min(r, h - 1), dedup and r <= h - 1)

        def accepting(s: tuple[Any, ...]) -> bool:
            return s[0] in ("start", "ok")

        def facts(s: tuple[Any, ...]) -> dict[str, int]:
            return {"bar_notes": s[1] if s[0] in ("ok", "pos") else 0, "lo": lo, "hi": hi}

        def classify(token: str) -> Hashable:
            kind, _ = _split(token)
            if kind in NOTE_KINDS:
                return token if dedup and lo > 0 else "note"
            if kind in ("Position", "TimeSig", "Bar", "EOS"):
                return token
            return role[token]

        return build_component(
            f"notes-per-bar={lo}:{hi}",
            self.vocab,
            ("start",),
            step,
            accepting,
            classify=classify,
            facts=facts,
        )


# ----------------------------------------------------------------------------- diagnostics


def _notes(n: int) -> str:
    return f"{n} note{'s' * (n != 1)}"


_EXPLAINED = frozenset(
    {"key", "pitch-range", "time-signature", "max-notes-per-onset", "notes-per-bar", "allowed-pitches"}
)


def explain(component: Component, state: int, token: str) -> str | None:
    """Why a composer constraint's ``component`` forbids ``token`` in ``state``, in the
    checker's words; ``None`` for a component that is not one of them."""
    name, _, arg = component.name.partition("=")
    if name not in _EXPLAINED:
        return None  # a grammar component (its facts need not be numbers)
    kind, _, value = token.partition("_")
    info = {
        k: int(a[state])
        for k, a in component.info.items()
        if a.ndim == 1 and a.shape[0] > state and np.issubdtype(a.dtype, np.integer)
    }
    if name == "key":
        key = parse_key(arg)
        return f"{token} is not in {key.tonic} {key.mode} (its pitch classes: {key.scale_names()})"
    if name == "pitch-range":
        lo, hi = parse_pitch_range(arg)
        return f"{token} is {'below' if int(value) < lo else 'above'} the pitch range {lo}..{hi}"
    if name == "time-signature":
        if kind == "TimeSig":
            return f"{token} is not the time signature asked for ({arg})"
        return f"{token} comes before TimeSig_{arg}, which must open the piece"
    if name == "max-notes-per-onset":
        if kind in NOTE_KINDS:
            return f"{token} would be note {info['onset_notes'] + 1} at one onset (at most {arg})"
        has = _notes(info["onset_notes"])
        return f"{token} needs one more note at this onset, which has {has} (at most {arg})"
    if name == "notes-per-bar":
        return _explain_bar(token, info)
    if name == "allowed-pitches":
        if "capacity" in info:
            return f"{token} needs a note-on, but every key an allowed note-on could open is held"
        return f"{token} would need a note above {info['top']}, the highest pitch allowed, at this onset"
    return None


def _explain_bar(token: str, info: dict[str, int]) -> str:
    kind, _, value = token.partition("_")
    lo, hi, c = info["lo"], info["hi"], info["bar_notes"]
    rule = f"(between {lo} and {hi} notes per bar)"
    if kind == "Bar":
        return f"{token} ends a bar of {_notes(c)} {rule}"
    if kind == "EOS":
        return f"{token} ends the last bar with {_notes(c)} {rule}"
    if kind == "TimeSig":
        return f"a bar of {value} cannot hold {_notes(lo)} here {rule}"
    if c >= hi:
        if kind in NOTE_KINDS:
            return f"{token} would be note {c + 1} of this bar {rule}"
        return f"{token} needs one more note in this bar, which has {_notes(c)} {rule}"
    need = max(lo - c - (kind in NOTE_KINDS), 0)
    return (
        f"{token} leaves too few notes possible in this bar (at this onset, in ascending pitch, and "
        f"at the positions left) for the {need} more it needs {rule}"
    )


def explain_end(component: Component, state: int) -> str | None:
    """Why a composer constraint is not satisfied where a stream ends, or ``None``."""
    if component.name.partition("=")[0] == "notes-per-bar" and "bar_notes" in component.info:
        c, lo = int(component.info["bar_notes"][state]), int(component.info["lo"][state])
        return f"the last bar has {_notes(c)} (at least {lo} per bar)"
    return None
