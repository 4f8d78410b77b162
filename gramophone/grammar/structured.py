"""The Structured grammar derived from a miditok tokenizer config (``miditok.Structured``).

Structured writes every note as ``TimeShift [Program] Pitch [Velocity] Duration``; the
TimeShift moves time from the previous note's onset (``TimeShift_0.0.1``: no move, the note
starts with the previous one). miditok turns every other token type off for this scheme
(bars, positions, rests, tempos, time signatures, chords, pedals, pitch bends, control
changes, pitch intervals, program changes, key signatures, attribute controls), so the
shipped grammar file (``grammars/structured.lark``) is small; :func:`derive` narrows it to
one config and refuses, with a clear :class:`~gramophone.UnsupportedConfigError`, every
option it does not cover.

What miditok's ``tokens_errors`` checks for Structured, and what gramophone adds
--------------------------------------------------------------------------------
``tokens_errors`` (``MusicTokenizer._tokens_errors``) checks only the succession of token
types against ``Structured._create_token_types_graph`` (Pitch -> Velocity -> Duration ->
TimeShift -> [Program ->] Pitch). Its duplicated-note check never fires for Structured:
it forgets the pitches played "at the current time" at *every* TimeShift, including
``TimeShift_0.0.1``, and every note is preceded by one. It does not look at the first token
or at the end of the stream either.

gramophone's automaton adds:

- the stream starts with a note's TimeShift and ends after a whole note (optionally
  framed by BOS / EOS PAD*); at least one note;
- without programs a stream is one track: all its notes are ``Pitch`` or all are
  ``PitchDrum`` (miditok writes PitchDrum only for a drum track);
- with programs, ``Program_-1`` (drums) is followed by ``PitchDrum`` when
  ``use_pitchdrum_tokens`` is set and every other program by ``Pitch``, as miditok writes;
- with ``remove_duplicated_notes``, the **note-order** component: notes at one onset
  (joined by ``TimeShift_0.0.1``) come as miditok writes them: each program's notes
  together (a *run*; the runs in the order of the score's tracks, which miditok keeps: it
  sorts the notes of all tracks by time only, stably) and pitches strictly ascending within
  a run (it sorts each track's notes by time then pitch before removing duplicates, and
  merges the tracks of one program when programs are in one stream); with programs, the
  **program-runs** components (:func:`~gramophone.grammar.constraints.program_runs_components`):
  one run per program at an onset. Together they forbid duplicated notes (same program,
  pitch and onset). ``TimeShift_0.0.1`` is refused where no note could follow it at the
  same onset (after the highest pitch of the only program, or, where the programs fit one
  program-runs component, of the last program left), so the lockstep product has no dead
  end (with more programs, see that function for the one it leaves).

Without ``remove_duplicated_notes`` there is no order constraint: miditok writes the notes
of one onset in symusic's (time, duration, pitch) order and any order decodes to the same
notes. There is no time constraint: time only moves forward and nothing bounds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gramophone.errors import UnsupportedConfigError
from gramophone.grammar.automaton import Component
from gramophone.grammar.constraints import program_runs_components
from gramophone.grammar.fsa import REJECT
from gramophone.grammar.schemes import (
    absent_terminals,
    grammar_file_text,
    refuse_common_options,
)

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = ["StructuredGrammar", "derive", "note_order_component"]

#: The TimeShift that does not move time (miditok's value for a shift of 0 ticks).
ZERO_SHIFT = "TimeShift_0.0.1"

#: Options miditok's Structured turns off when it builds its vocabulary. A tokenizer built
#: by miditok always has them off; one whose config was edited afterwards is refused.
_FORCED_OFF = (
    "use_chords",
    "use_rests",
    "use_tempos",
    "use_time_signatures",
    "use_sustain_pedals",
    "use_pitch_bends",
    "use_control_changes",
    "use_pitch_intervals",
    "program_changes",
    "use_key_signatures",
)


@dataclass(frozen=True)
class StructuredGrammar:
    """A Structured grammar narrowed to one config: lark text plus the constraints' parameters."""

    text: str
    absent_terminals: tuple[str, ...]
    remove_duplicated_notes: bool
    use_programs: bool
    drums_use_pitchdrum: bool  # with programs: Program_-1 is followed by PitchDrum
    scheme: str = "structured"

    def components(self, vocab: Sequence[str]) -> list[Component]:
        """With ``remove_duplicated_notes``, the note order at one onset (and with programs,
        one run per program); else none."""
        if not self.remove_duplicated_notes:
            return []
        out = [note_order_component(vocab, self.use_programs, self.drums_use_pitchdrum)]
        if self.use_programs:
            out += program_runs_components(
                vocab, ("TimeShift",), run_kinds=("Program",), zero_shift=ZERO_SHIFT
            )
        return out


def derive(tokenizer: MusicTokenizer) -> StructuredGrammar:
    """Narrow the Structured grammar to ``tokenizer``'s config (or refuse the config)."""
    from miditok import Structured

    if not isinstance(tokenizer, Structured):
        raise UnsupportedConfigError(
            f"tokenizer {type(tokenizer).__name__} is not supported: this grammar is for Structured"
        )
    cfg = tokenizer.config
    for option in _FORCED_OFF:
        if getattr(cfg, option):
            raise UnsupportedConfigError(
                f"tokenizer option {option}={getattr(cfg, option)!r} is not supported "
                "(miditok's Structured turns it off; the config was edited after construction)"
            )
    refuse_common_options(cfg, flags={})

    drums = cfg.use_programs and -1 in cfg.programs
    absent = absent_terminals(
        cfg,
        [
            ("PROGRAM", cfg.use_programs and any(p >= 0 for p in cfg.programs)),
            ("DRUM_PROGRAM", drums),
            ("VELOCITY", cfg.use_velocities),
            ("PITCH_DRUM", cfg.use_pitchdrum_tokens),
        ],
    )
    overrides = []
    if cfg.use_programs:
        overrides.append("%override piece: (note | drum_note)+")
    else:
        overrides += ["%override program:", "%override drum_program:"]
        if not cfg.use_pitchdrum_tokens:
            overrides.append("%override piece: note+")
    if not cfg.use_pitchdrum_tokens:
        overrides.append("%override drum_pitch: PITCH")
    if not cfg.use_velocities:
        overrides.append("%override velocity:")
    text = grammar_file_text("structured")
    if overrides:
        text += "\n// Derived from the tokenizer config:\n" + "\n".join(overrides) + "\n"
    return StructuredGrammar(
        text=text,
        absent_terminals=tuple(sorted(absent)),
        remove_duplicated_notes=bool(cfg.remove_duplicated_notes),
        use_programs=bool(cfg.use_programs),
        drums_use_pitchdrum=bool(cfg.use_pitchdrum_tokens),
    )


def note_order_component(vocab: Sequence[str], use_programs: bool, drums_use_pitchdrum: bool) -> Component:
    """Notes at one onset as miditok writes them: pitches strictly ascending within a
    program's run (see the module notes; one run per program is the program-runs
    components' part).

    An onset is a group of notes joined by ``TimeShift_0.0.1``; any other TimeShift starts a
    new one. States: per program ``j`` (one pseudo program without programs) ``(j, none)``
    and ``(j, p)`` for every pitch ``p`` of the kind that program is written with (Pitch,
    or PitchDrum for drums; without programs both kinds, the syntax keeping one per
    stream); with programs, state 0 is "no program yet at this onset". Start: state 0.
    A Program token of another program starts its run. ``TimeShift_0.0.1`` and a repeated
    Program token are refused where no higher pitch (or other program) is left to follow
    them, so the lockstep product has no dead end.
    """
    kinds = [tok.partition("_")[::2] for tok in vocab]
    values: dict[str, list[int]] = {
        k: sorted({int(v) for kk, v in kinds if kk == k}) for k in ("Pitch", "PitchDrum")
    }
    groups: list[tuple[int, tuple[str, ...]]]
    if use_programs:
        program_values = sorted({int(v) for k, v in kinds if k == "Program"})
        # per program: the pitch kinds it is written with
        groups = [
            (j, ("PitchDrum",) if j == -1 and drums_use_pitchdrum else ("Pitch",)) for j in program_values
        ]
    else:
        groups = [(-2, ("Pitch", "PitchDrum"))]  # -2: no program
    # Enumerate the states. With programs, state 0 is "no program yet at this onset".
    prog_of: list[int] = [-2] if use_programs else []  # program of each state (-2: none)
    kind_of: list[str] = [""] if use_programs else []  # pitch kind of ``last`` ("": none)
    last_of: list[int] = [-1] if use_programs else []  # last pitch at this onset (-1: none)
    head: dict[int, int] = {}  # program -> its (j, none) state
    state_of: dict[tuple[int, str, int], int] = {}
    for j, pitch_kinds in groups:
        head[j] = len(prog_of)
        prog_of.append(j)
        kind_of.append("")
        last_of.append(-1)
        for k in pitch_kinds:
            for p in values[k]:
                state_of[(j, k, p)] = len(prog_of)
                prog_of.append(j)
                kind_of.append(k)
                last_of.append(p)
    S = len(prog_of)
    prog = np.array(prog_of, dtype=np.int64)
    last = np.array(last_of, dtype=np.int64)
    kind_arr = np.array(kind_of)
    # A state whose last note is the highest pitch of its kind has no higher note left in
    # its program at this onset.
    top = {k: (max(v) if v else -1) for k, v in values.items()}
    at_top = np.array([k != "" and last_of[s] == top[k] for s, k in enumerate(kind_of)], dtype=bool)
    identity = np.arange(S, dtype=np.int32)
    programs_sorted = np.array(sorted(head), dtype=np.int64)
    other_program = np.array([bool((programs_sorted != p).any()) for p in prog_of], dtype=bool)
    start_state = 0  # with programs: no program yet; without: the pseudo program's head
    # group[s]: index of the state's program in ``groups`` (-1: no program yet);
    # dst_of[kind][g, i]: the state after pitch values[kind][i] in group g (-1: not its kind).
    group_index = {j: g for g, (j, _) in enumerate(groups)}
    group = np.array([group_index.get(j, -1) for j in prog_of], dtype=np.int64)
    dst_of = {k: np.full((len(groups), len(values[k])), -1, dtype=np.int64) for k in values}
    for (j, k, p), sid in state_of.items():
        dst_of[k][group_index[j], values[k].index(p)] = sid

    T = np.empty((S, len(vocab)), dtype=np.int32)
    for v, (kind, value) in enumerate(kinds):
        if kind == "TimeShift":
            if vocab[v] == ZERO_SHIFT:
                T[:, v] = np.where(at_top & ~other_program, REJECT, identity)
            else:
                T[:, v] = start_state
        elif kind in ("Pitch", "PitchDrum"):
            p = int(value)
            dst = dst_of[kind][:, values[kind].index(p)][group]  # -1 where the group lacks the kind
            ok = (group >= 0) & (dst >= 0) & ((kind_arr == "") | ((kind_arr == kind) & (last < p)))
            T[:, v] = np.where(ok, dst, REJECT)
        elif kind == "Program" and use_programs:
            j = int(value)
            # Back to the same program only if a higher pitch is left for it (the syntax
            # wants a pitch after a Program token); another program starts its run.
            same = (prog == j) & ~at_top
            other = prog != j  # includes none (-2)
            T[:, v] = np.where(same, identity, np.where(other, head[j], REJECT))
        else:
            T[:, v] = identity
    return Component(
        name="note-order",
        transitions=T,
        accepting=np.ones(S, dtype=bool),
        start=start_state,
        info={"program": prog.astype(np.int32), "last_pitch": last.astype(np.int32)},
        neutral=True,  # an ending never needs another note at this onset
    )
