"""The REMI grammar derived from a miditok tokenizer config, and its compilation.

The shipped grammar file (``grammars/remi.lark``) describes the richest REMI language
gramophone supports; :func:`derive` narrows it to one config and refuses, with a clear
:class:`~gramophone.UnsupportedConfigError`, every option it does not cover.
:func:`compile_remi` compiles it with the constraint automata and caches the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gramophone.errors import UnsupportedConfigError
from gramophone.grammar.automaton import Automaton, Component
from gramophone.grammar.constraints import (
    TimeModel,
    drum_pitch_component,
    note_order_component,
    program_runs_components,
    time_component,
)
from gramophone.grammar.schemes import compile_tokenizer, grammar_file_text

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = ["RemiGrammar", "compile_remi", "derive", "grammar_file_text"]

#: Options (and the value that is supported) checked by :func:`derive`.
_UNSUPPORTED_FLAGS = {
    "use_key_signatures": False,
    "use_control_changes": False,
    "use_pitch_intervals": False,
    "program_changes": False,
    "sustain_pedal_duration": False,
}


@dataclass(frozen=True)
class RemiGrammar:
    """A grammar narrowed to one config: lark text plus the constraints' parameters."""

    text: str
    absent_terminals: tuple[str, ...]
    time: TimeModel
    remove_duplicated_notes: bool
    use_programs: bool
    drum_pitches: bool = False  # programs and PitchDrum tokens: drum pitches under Program_-1 only
    scheme: str = "remi"

    def components(self, vocab: Sequence[str]) -> list[Component]:
        """Time (positions, bars, rests); with programs and PitchDrum tokens, drum pitches;
        with ``remove_duplicated_notes``, note order (and with programs, one run each)."""
        out = [time_component(vocab, self.time)]
        if self.drum_pitches:
            out.append(drum_pitch_component(vocab))
        if self.remove_duplicated_notes:
            out.append(note_order_component(vocab, self.use_programs))
            if self.use_programs:
                out += program_runs_components(vocab, ("Position", "Bar", "Rest"))
        return out


def derive(tokenizer: MusicTokenizer) -> RemiGrammar:
    """Narrow the REMI grammar to ``tokenizer``'s config (or refuse the config)."""
    from miditok import REMI
    from miditok.constants import TIME_SIGNATURE

    if not isinstance(tokenizer, REMI):
        raise UnsupportedConfigError(
            f"tokenizer {type(tokenizer).__name__} is not supported: gramophone's grammar is for REMI"
        )
    cfg = tokenizer.config
    for option, supported in _UNSUPPORTED_FLAGS.items():
        if bool(getattr(cfg, option)) != supported:
            raise UnsupportedConfigError(
                f"tokenizer option {option}={getattr(cfg, option)!r} is not supported"
            )
    if cfg.use_programs and not cfg.one_token_stream_for_programs:
        raise UnsupportedConfigError(
            "use_programs with one_token_stream_for_programs=False is not supported "
            "(programs in one stream only)"
        )
    params = cfg.additional_params
    if params.get("use_bar_end_tokens"):
        raise UnsupportedConfigError("tokenizer option use_bar_end_tokens=True is not supported")
    if params.get("max_bar_embedding") is not None:
        raise UnsupportedConfigError("tokenizer option max_bar_embedding is not supported (Bar_None only)")
    active_ac = sorted(k for k, v in vars(cfg).items() if k.startswith("ac_") and v is True)
    if active_ac:
        raise UnsupportedConfigError(f"attribute controls are not supported ({', '.join(active_ac)})")
    programs = set(cfg.programs) if cfg.use_programs else {0}
    missing = programs - set(cfg.use_note_duration_programs)
    if missing:
        raise UnsupportedConfigError(
            "use_note_duration_programs must cover every program (Duration tokens for all notes); "
            f"missing {sorted(missing)[:5]}"
        )

    specials = {tok.split("_")[0] for tok in cfg.special_tokens}
    absent = set()
    for terminal, present in (
        ("BOS", "BOS" in specials),
        ("EOS", "EOS" in specials),
        ("PAD", "PAD" in specials),
        ("TIME_SIG", cfg.use_time_signatures),
        ("REST", cfg.use_rests),
        ("TEMPO", cfg.use_tempos),
        ("CHORD", cfg.use_chords),
        ("PROGRAM", cfg.use_programs),
        ("VELOCITY", cfg.use_velocities),
        ("PEDAL", cfg.use_sustain_pedals),
        ("PEDAL_OFF", cfg.use_sustain_pedals),
        ("PITCH_BEND", cfg.use_pitch_bends),
    ):
        if not present:
            absent.add(terminal)
    overrides = []
    if not cfg.use_velocities:
        overrides.append("%override velocity:")
    if not cfg.use_programs:
        overrides += ["%override program:", "%override later_runs:"]
    elif cfg.use_pitch_bends:
        # One program's run at an onset may be its pitch bend alone (no note of it starts
        # there): miditok writes `Program_a PitchBend Program_b PitchBend` and, after notes
        # of a lower program, `Program_b PitchBend Position` (found by tests/test_random_scores).
        # The grammar file's `onset`/`later_runs` want notes after every later pitch bend.
        overrides += [
            "%override onset: pedals | pedals? pitch_bend later_runs | pedals? pitch_bend? notes",
            "%override later_runs: (pitch_bend (chord? note+)? | chord note+)*",
        ]
    if not cfg.use_time_signatures:
        overrides.append("%override time_sig:")
    text = grammar_file_text("remi")
    if overrides:
        text += "\n// Derived from the tokenizer config:\n" + "\n".join(overrides) + "\n"

    time_sigs = (
        tuple((int(n), int(d)) for n, d in tokenizer.time_signatures) if cfg.use_time_signatures else ()
    )
    model = TimeModel(
        positions_per_beat=int(cfg.max_num_pos_per_beat),
        time_signatures=time_sigs,
        default_time_signature=(int(TIME_SIGNATURE[0]), int(TIME_SIGNATURE[1])),
        use_time_signatures=bool(cfg.use_time_signatures),
        use_rests=bool(cfg.use_rests),
    )
    return RemiGrammar(
        text=text,
        absent_terminals=tuple(sorted(absent)),
        time=model,
        remove_duplicated_notes=bool(cfg.remove_duplicated_notes),
        use_programs=bool(cfg.use_programs),
        drum_pitches=bool(cfg.use_programs and cfg.use_pitchdrum_tokens),
    )


def compile_remi(tokenizer: MusicTokenizer, *, use_cache: bool = True) -> Automaton:
    """Compile the grammar of a REMI ``tokenizer`` (see :func:`~gramophone.grammar.compile_tokenizer`,
    which accepts every supported scheme)."""
    from miditok import REMI

    if not isinstance(tokenizer, REMI):
        raise UnsupportedConfigError(
            f"tokenizer {type(tokenizer).__name__} is not REMI: use compile_tokenizer"
        )
    return compile_tokenizer(tokenizer, use_cache=use_cache)
