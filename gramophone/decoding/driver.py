"""The decode driver: checkpoint -> tables -> batches on the chosen backend's loop -> files.

:func:`decode_to_folder` is what ``gramophone decode`` runs; the pieces below it are usable
on their own (:func:`load_model`, :func:`sampler_for`, :func:`generate`).

**Loops per backend.** ``torch`` and ``jax`` have device loops
(:mod:`~gramophone.decoding.torch_loop`, :mod:`~gramophone.decoding.jax_loop`), imported
only when chosen. Any other backend registered with
:func:`gramophone.backends.register_backend` decodes with the numpy reference loop over its
``prefill``/``decode_step`` (correct, one host round trip per step) unless its registry
entry names a loop of its own (``register_backend(..., loop=MODULE)``); neither needs a
change here.

**Budget.** ``max_tokens`` is the length of every output stream, everything included:
the prompt, BOS first and EOS last. A budget below the shortest valid completion is a
:class:`DecodingError` that names that minimum (8 tokens for the shipped config:
``BOS Bar TimeSig Position Pitch Velocity Duration EOS``; with ``--bars N``,
``2N + 6``); a budget above the model's context (``max_len``) is one too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gramophone.decoding.framing import decoding_automaton
from gramophone.decoding.infill import InfillPlan, parse_infill, plan_infill
from gramophone.decoding.loop import DecodeRequest, DecodeResult, backend_model, sample_numpy
from gramophone.decoding.prompt import PreparedPrompt, prepare_prompt
from gramophone.decoding.rules import DEFAULT_SAMPLING, INF, Sampling
from gramophone.decoding.tables import DecodingTables, decoding_tables
from gramophone.errors import DecodingError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.backends import Backend, ModelConfig, TrainConfig
    from gramophone.grammar import Automaton
    from gramophone.grammar.composer import ComposerConstraints
    from gramophone.tokenizers.learned import LearnedVocab

__all__ = [
    "FORMATS",
    "DecodeOptions",
    "DecodeSummary",
    "LoadedModel",
    "check_budget",
    "decode_to_folder",
    "generate",
    "load_model",
    "sampler_for",
    "split_batches",
]

SampleFn = Callable[[DecodingTables, DecodeRequest], DecodeResult]


def sampler_for(backend: Backend, params: Any) -> SampleFn:
    """The decoding loop for ``backend`` and its ``params`` (the one its registry entry names,
    :func:`gramophone.backends.register_backend`)."""
    from gramophone.backends import decode_loop

    module = decode_loop(backend.name)
    if module is None:
        model = backend_model(backend, params)
        return lambda tables, request: sample_numpy(model, tables, request)
    factory: Callable[[Backend, Any], SampleFn] = importlib.import_module(module).backend_sampler
    return factory(backend, params)


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedModel:
    """A checkpoint loaded for decoding, with its tokenizer and grammar."""

    backend: Backend
    params: Any
    config: ModelConfig
    tokenizer: MusicTokenizer
    automaton: Automaton
    path: Path
    train: TrainConfig | None = None  # how it was trained, when the checkpoint says


def load_model(backend_name: str, checkpoint: str | Path | None = None) -> LoadedModel:
    """Load ``checkpoint`` (default: the bundled model) on ``backend_name``; a training run
    folder stands for its final model, else its latest checkpoint
    (:func:`~gramophone.models.resolve_checkpoint`).

    The tokenizer is the checkpoint's ``tokenizer.json`` when it has one, else the shipped
    config. Raises :class:`CheckpointError` (missing, corrupted, or trained for another
    vocabulary or grammar) and :class:`~gramophone.BackendUnavailableError`.
    """
    from gramophone.backends import get_backend
    from gramophone.grammar import compile_tokenizer
    from gramophone.models import (
        bundled_checkpoint_path,
        checkpoint_tokenizer,
        load_checkpoint,
        resolve_checkpoint,
    )
    from gramophone.tokenizers import model_vocab
    from gramophone.tokenizers.learned import lift_automaton

    backend = get_backend(backend_name)
    path = bundled_checkpoint_path() if checkpoint is None else resolve_checkpoint(checkpoint)
    tokenizer = checkpoint_tokenizer(path)
    automaton = compile_tokenizer(tokenizer)
    checked = lift_automaton(automaton, model_vocab(tokenizer))  # the grammar over the model's ids
    loaded = load_checkpoint(backend, path, tokenizer, checked)
    return LoadedModel(backend, loaded.params, loaded.model, tokenizer, automaton, path, loaded.train)


# ----------------------------------------------------------------------------- generation


def check_budget(prompt: PreparedPrompt, budget: int, max_len: int, bars: int | None = None) -> None:
    """:class:`DecodingError` unless ``prompt.min_total <= budget <= max_len``; the message
    names the minimum (and says when even the model's whole context is too short)."""
    bar_text = f" with exactly {bars} bars" if bars is not None else ""
    if len(prompt.ids) > 1:
        what = f"continuing the prompt ({len(prompt.ids)} tokens with BOS) to a valid piece{bar_text}"
    else:
        what = f"the shortest valid piece{bar_text} (BOS ... EOS, one note at least)"
    if prompt.min_total > max_len:
        fix = "a shorter prompt" if len(prompt.ids) > 1 else "fewer bars"
        raise DecodingError(
            f"{what} needs {prompt.min_total} tokens, more than the model's context of {max_len}: use {fix}"
        )
    if budget > max_len:
        raise DecodingError(f"--max-tokens {budget} exceeds the model's context of {max_len} tokens")
    if budget < prompt.min_total:
        raise DecodingError(f"--max-tokens {budget} is too small: {what} needs {prompt.min_total} tokens")


def prepare(
    automaton: Automaton,
    prompt_ids: list[int] | None,
    budget: int,
    max_len: int,
    options: DecodeOptions,
    *,
    learned: LearnedVocab | None = None,
) -> tuple[DecodingTables, PreparedPrompt]:
    """Tables over ``learned`` (default: the base vocabulary) and the checked prompt; a
    :class:`DecodingError` that names the minimum when the budget is too small."""
    name = str(options.prompt or "the prompt")
    tables = decoding_tables(automaton, options.bars, learned=learned)
    if options.constraints is not None and tables.shortest() >= INF:
        bars = f" --bars {options.bars}" if options.bars is not None else ""
        raise DecodingError(f"no valid piece satisfies {options.constraints.describe()}{bars}")
    prompt = prepare_prompt(tables, automaton, prompt_ids, name=name)
    check_budget(prompt, budget, max_len, options.bars)
    return tables, prompt


def prepare_infill(
    automaton: Automaton,
    plan: InfillPlan,
    max_tokens: int | None,
    max_len: int,
    *,
    learned: LearnedVocab | None = None,
    name: str = "the prompt",
    sees_suffix: bool = False,
) -> tuple[DecodingTables, PreparedPrompt, int, int]:
    """Tables and the loop's prompt to infill ``plan`` (see :mod:`~gramophone.decoding.infill`):
    ``(tables, prompt, budget, loop_budget)``. ``budget`` is the length of each output piece.

    A causal model that never reads the kept bars after the hole continues the prefix:
    ``loop_budget = budget - len(plan.suffix)`` (default ``budget``: the model's context
    plus the kept bars). A model trained in fill-in-the-middle order (``sees_suffix``,
    :mod:`gramophone.data.fim`) reads ``suffix + prefix`` (BOS between them, as the prefix
    starts with it) while the tables follow the prefix alone: the loop writes the piece's
    length, ``loop_budget = budget`` (default: the model's context)."""
    tables = decoding_tables(automaton, plan.bars, learned=learned, suffix=plan.suffix_base)
    prompt = prepare_prompt(tables, automaton, list(plan.prefix), name=f"{name} before bar {plan.first}")
    tail = len(plan.suffix)
    read = tail if sees_suffix else 0  # kept tokens the model reads
    budget = max_tokens if max_tokens is not None else max_len + tail - read
    need = prompt.min_total + tail
    around = f"{len(plan.prefix)} tokens before, {tail} after"
    what = f"infilling bars {plan.first}..{plan.last} of {name} ({around})"
    if prompt.min_total + read > max_len:
        raise DecodingError(
            f"{what} needs {prompt.min_total + read} tokens of context, more than the model's {max_len}"
        )
    if budget < need:
        raise DecodingError(f"--max-tokens {budget} is too small: {what} needs {need} tokens")
    if budget - tail + read > max_len:
        raise DecodingError(
            f"--max-tokens {budget} leaves the model {budget - tail + read} tokens to read, more than its "
            f"context of {max_len}: use --max-tokens {max_len + tail - read} at most"
        )
    if sees_suffix:
        prompt = PreparedPrompt((*plan.suffix, *prompt.ids), prompt.state, prompt.min_total + tail)
    return tables, prompt, budget, budget - tail + read


def split_batches(num: int, batch_size: int) -> list[int]:
    """Equal batch sizes of at most ``batch_size`` covering ``num`` pieces (one compiled
    shape for JAX).

    >>> split_batches(100, 64)
    [50, 50]
    """
    n = -(-num // max(1, batch_size))
    return [-(-num // n)] * n  # the last batch may hold a few extra pieces, dropped


@dataclass
class GenerateOutput:
    """Streams (PAD removed, EOS kept) and totals."""

    streams: list[list[int]]
    seconds: float
    compile_seconds: float


def generate(
    sample: SampleFn,
    tables: DecodingTables,
    prompt: PreparedPrompt,
    *,
    num: int,
    budget: int,
    sampling: Sampling,
    seed: int = 0,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> GenerateOutput:
    """``num`` streams in batches; batch ``i`` is seeded with ``seed * 1_000_003 + i``."""
    streams: list[list[int]] = []
    seconds = compile_seconds = 0.0
    for i, size in enumerate(split_batches(num, batch_size)):
        request = DecodeRequest(
            prompt.ids, prompt.state, size, budget, sampling, (seed * 1_000_003 + i) % 2**63
        )
        result = sample(tables, request)
        got = result.streams()[: num - len(streams)]
        streams.extend(got)
        seconds += result.seconds
        compile_seconds += result.compile_seconds
        if on_batch is not None:
            on_batch(len(got))
    return GenerateOutput(streams, seconds, compile_seconds)


# ----------------------------------------------------------------------------- the command


#: What ``decode`` can write per piece, and the files of each: ``tokens`` (miditok token
#: file + token names), ``midi``, ``roll`` (piano-roll picture, matplotlib) and ``wav``
#: (FluidSynth).
FORMATS: dict[str, tuple[str, ...]] = {
    "tokens": (".json", ".txt"),
    "midi": (".mid",),
    "roll": (".png",),
    "wav": (".wav",),
}


@dataclass(frozen=True)
class DecodeOptions:
    """``gramophone decode``'s options (see the CLI help). ``formats``: what to write per
    piece (names of :data:`FORMATS`); ``None`` is every format the installed extras allow,
    without ``wav`` when ``audio`` is false."""

    backend: str
    out: Path
    checkpoint: Path | None = None
    num: int = 4
    max_tokens: int | None = None
    seed: int = 0
    sampling: Sampling = DEFAULT_SAMPLING
    prompt: Path | None = None
    bars: int | None = None
    audio: bool = True
    formats: tuple[str, ...] | None = None
    strict: bool = False  # a MIDI prompt whose tokenizing loses content is an error
    infill: tuple[int, int] | None = None  # regenerate bars A..B of the prompt (1-based, inclusive)
    constraints: ComposerConstraints | None = None  # --key, --pitch-range ... (grammar.composer)
    batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.formats is not None:
            unknown = [f for f in self.formats if f not in FORMATS]
            if unknown or not self.formats:
                what = f"unknown format {unknown[0]!r}" if unknown else "no format"
                raise DecodingError(f"--formats: {what}; choose from {','.join(FORMATS)}")
            if "wav" in self.formats and not self.audio:
                raise DecodingError("--no-audio contradicts --formats wav")
        if self.num < 1:
            raise DecodingError(f"--num must be at least 1, got {self.num}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise DecodingError(f"--max-tokens must be at least 2, got {self.max_tokens}")
        if self.seed < 0:
            raise DecodingError(f"--seed must be >= 0, got {self.seed}")
        if self.bars is not None and self.bars < 1:
            raise DecodingError(f"--bars must be at least 1, got {self.bars}")
        if self.infill is not None:
            if self.prompt is None:
                raise DecodingError("--infill needs --prompt FILE: the piece whose bars are regenerated")
            if self.bars is not None:
                raise DecodingError("--infill keeps the prompt's bar count; it cannot be used with --bars")
            parse_infill(f"{self.infill[0]}:{self.infill[1]}")


@dataclass
class DecodeSummary:
    """What :func:`decode_to_folder` did."""

    backend: str
    out: Path
    pieces: int
    tokens: int  # in all output streams
    generated: int  # tokens sampled (prompts excluded)
    seconds: float  # decode loops
    compile_seconds: float
    invalid: list[str] = field(default_factory=list)  # "piece-003: reason"
    empty: list[str] = field(default_factory=list)  # pieces whose MIDI has no note
    audio_note: str | None = None  # why WAV files were not written
    roll_note: str | None = None  # why piano rolls were not written

    @property
    def all_valid(self) -> bool:
        return not self.invalid and not self.empty

    def lines(self) -> list[str]:
        rate = self.generated / self.seconds if self.seconds > 0 else float("nan")
        compiled = f" (+{self.compile_seconds:.1f} s compiling)" if self.compile_seconds else ""
        out = [
            f"decoded {self.pieces} piece(s) with {self.backend}: {self.tokens} tokens, {self.generated} "
            f"generated in {self.seconds:.2f} s{compiled}, {rate:.0f} tokens/s",
        ]
        if self.all_valid:
            out.append(f"all {self.pieces} valid (grammar checker) -> {self.out}")
        else:
            out += [f"INVALID {x}" for x in self.invalid] + [f"NO NOTES {x}" for x in self.empty]
        if self.audio_note:
            out.append(f"no WAV files: {self.audio_note}")
        if self.roll_note:
            out.append(f"no piano rolls: {self.roll_note}")
        return out


def read_prompt(
    path: Path, tokenizer: MusicTokenizer, *, strict: bool = False, warn: Callable[[str], None] | None = None
) -> list[int]:
    """One stream from a token file or a MIDI file (a :class:`DecodingError` for several).

    A MIDI file whose tokenizing loses content (:mod:`gramophone.tokenizers.losses`: a 7/8
    prompt tokenized in 4/4, notes outside the pitch range ...): ``warn`` receives one line
    per kind of loss (``PATH: what was lost``); with ``strict`` it is a one-line
    :class:`~gramophone.errors.TokenFileError` instead."""
    from gramophone.tokenizers import read_token_file
    from gramophone.tokenizers.losses import file_losses

    streams = read_token_file(path, tokenizer)
    if len(streams) != 1:
        raise DecodingError(
            f"{path}: holds {len(streams)} streams (tracks); a prompt must be one stream "
            "(a single-track MIDI file or a token file with one stream)"
        )
    for loss in file_losses(tokenizer, path, strict=strict):
        if warn is not None:
            warn(f"{path}: {loss.message}")
    return streams[0]


def output_formats(options: DecodeOptions) -> tuple[list[str], dict[str, str]]:
    """The formats to write, in :data:`FORMATS` order, and why a default one is left out
    (``{"roll": reason}``, ``{"wav": reason}``). A format asked for by name that the
    installed extras cannot write is an error (one line saying what to install)."""
    from gramophone.audio import AudioUnavailableError, check_wav

    explicit = options.formats is not None
    chosen = set(options.formats or ()) if explicit else {f for f in FORMATS if options.audio or f != "wav"}
    left_out: dict[str, str] = {}
    if "roll" in chosen and importlib.util.find_spec("matplotlib") is None:
        reason = "matplotlib is not installed (pip install 'gramophone[audio]')"
        if explicit:
            raise DecodingError(f"--formats roll: {reason}")
        chosen.discard("roll")
        left_out["roll"] = reason
    if "wav" in chosen:
        try:
            check_wav()
        except AudioUnavailableError as exc:
            if explicit:
                raise DecodingError(f"--formats wav: {exc}") from None
            chosen.discard("wav")
            left_out["wav"] = str(exc)
    return [f for f in FORMATS if f in chosen], left_out


def piece_names(num: int) -> list[str]:
    """``piece-000`` ... : zero-padded to at least 3 digits, so names sort in order."""
    width = max(3, len(str(num - 1)))
    return [f"piece-{i:0{width}d}" for i in range(num)]


def decode_to_folder(
    options: DecodeOptions,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> DecodeSummary:
    """Decode ``options.num`` pieces and write, into ``options.out``: ``tokenizer.json``,
    ``summary.json``, ``index.html`` (a page to listen to and look at the pieces,
    :mod:`~gramophone.decoding.page`) and, per piece and chosen format (:func:`output_formats`),
    ``piece-NNN.json`` (miditok token file) + ``.txt`` (token names), ``.mid``, ``.png``
    (piano roll) and ``.wav`` (a note in the summary says why a default one is missing).
    Every piece is checked with the grammar checker; ``warn`` receives what tokenizing a
    MIDI prompt lost (:func:`read_prompt`; ``options.strict``: an error). The folder follows
    :mod:`gramophone._outdir`: the files of a previous ``decode`` there are replaced, a
    folder holding other files is refused.
    """
    from tqdm import tqdm

    from gramophone._files import atomic_write
    from gramophone._outdir import claim_output_folder
    from gramophone.decoding.page import INDEX, count_bars, write_index
    from gramophone.grammar.checker import check_stream
    from gramophone.grammar.composer import with_constraints
    from gramophone.tokenizers import save_tokenizer
    from gramophone.tokenizers.learned import learned_vocab

    loaded = load_model(options.backend, options.checkpoint)
    if options.constraints is not None:  # composed before any table, prompt check or output check
        loaded.automaton = with_constraints(loaded.automaton, options.constraints)
    budget = options.max_tokens if options.max_tokens is not None else loaded.config.max_len
    prompt_ids = None
    if options.prompt is not None:
        prompt_ids = read_prompt(options.prompt, loaded.tokenizer, strict=options.strict, warn=warn)
    learned = learned_vocab(loaded.tokenizer)
    plan: InfillPlan | None = None
    loop_budget = budget
    if options.infill is not None:
        assert prompt_ids is not None
        name = str(options.prompt)
        plan = plan_infill(prompt_ids, loaded.automaton, learned, options.infill, name=name)
        sees_suffix = loaded.train is not None and loaded.train.fim_rate > 0
        tables, prompt, budget, loop_budget = prepare_infill(
            loaded.automaton,
            plan,
            options.max_tokens,
            loaded.config.max_len,
            learned=learned,
            name=name,
            sees_suffix=sees_suffix,
        )
    else:
        tables, prompt = prepare(
            loaded.automaton, prompt_ids, budget, loaded.config.max_len, options, learned=learned
        )
    formats, left_out = output_formats(options)
    names = piece_names(options.num)
    planned = ["tokenizer.json", "summary.json", INDEX]
    planned += [n + suffix for n in names for f in formats for suffix in FORMATS[f]]
    folder = claim_output_folder(options.out, "decode", planned)
    out = folder.path

    sample = sampler_for(loaded.backend, loaded.params)
    with tqdm(total=options.num, desc="decoding", unit="piece", disable=not options.progress) as bar:
        gen = generate(
            sample,
            tables,
            prompt,
            num=options.num,
            budget=loop_budget,
            sampling=options.sampling,
            seed=options.seed,
            batch_size=options.batch_size,
            on_batch=bar.update,
        )

    generated = sum(len(s) - len(prompt.ids) for s in gen.streams)
    checker = tables.automaton
    if plan is not None:
        context = len(prompt.ids) - len(plan.prefix)  # kept tokens the model read first (FIM)
        gen.streams = [plan.splice(s[context:]) for s in gen.streams]
        checker = decoding_automaton(loaded.automaton, plan.bars)  # the whole piece, kept bars included
    save_tokenizer(loaded.tokenizer, out / "tokenizer.json")
    summary = DecodeSummary(
        backend=options.backend,
        out=out,
        pieces=len(gen.streams),
        tokens=sum(len(s) for s in gen.streams),
        generated=generated,
        seconds=gen.seconds,
        compile_seconds=gen.compile_seconds,
        audio_note=left_out.get("wav"),
        roll_note=left_out.get("roll"),
    )
    if log is not None:
        for name, why in left_out.items():
            log(f"no {'WAV files' if name == 'wav' else 'piano rolls'}: {why}")
    records = []
    pieces = tqdm(
        zip(names, gen.streams, strict=True),
        total=options.num,
        desc="writing",
        unit="piece",
        disable=not options.progress,
    )
    for name, ids in pieces:
        report = check_stream(checker, tables.learned.expand(ids)[0])
        if report.violation is not None:
            summary.invalid.append(f"{name}: {report.violation}")
        notes = _write_piece(out / name, ids, loaded.tokenizer, formats, summary=summary, log=log)
        if notes == 0:
            summary.empty.append(name)
        bars = count_bars(loaded.tokenizer, ids, tables.learned.expand(ids)[0])
        records.append(
            {"piece": name, "tokens": len(ids), "notes": notes, "bars": bars, "valid": report.valid}
        )
    atomic_write(
        out / "summary.json",
        json.dumps(
            {
                "format": "gramophone-decode-summary",
                "backend": options.backend,
                "checkpoint": str(loaded.path),
                "num": options.num,
                "max_tokens": budget,
                "seed": options.seed,
                "sampling": dataclasses.asdict(options.sampling),
                "prompt": None if options.prompt is None else str(options.prompt),
                "prompt_tokens": len(prompt.ids),
                "bars": options.bars,
                "infill": None if plan is None else [plan.first, plan.last],
                "constraints": None if options.constraints is None else options.constraints.to_dict(),
                "formats": formats,
                "seconds": summary.seconds,
                "compile_seconds": summary.compile_seconds,
                "pieces": records,
            },
            indent=2,
        )
        + "\n",
    )
    write_index(out, summary)
    folder.finish()
    return summary


def _write_piece(
    stem: Path,
    ids: list[int],
    tokenizer: MusicTokenizer,
    formats: list[str],
    *,
    summary: DecodeSummary,
    log: Callable[[str], None] | None,
) -> int:
    """Write one piece in ``formats`` (``wav`` is dropped from ``formats`` with a note in
    ``summary`` when FluidSynth fails); returns its number of notes."""
    from gramophone.audio import AudioUnavailableError, piano_roll, render_wav
    from gramophone.tokenizers import decode_ids, write_token_file

    if "tokens" in formats:
        write_token_file(stem.with_suffix(".json"), ids, tokenizer)
    score = decode_ids(tokenizer, ids)
    if "midi" in formats or "wav" in formats:
        midi = stem.with_suffix(".mid") if "midi" in formats else stem.parent / f".{stem.name}.mid"
        score.dump_midi(str(midi))
        if "wav" in formats:
            try:
                render_wav(midi, stem.with_suffix(".wav"))
            except AudioUnavailableError as exc:
                summary.audio_note = str(exc)
                formats.remove("wav")
                if log is not None:
                    log(f"no WAV files: {exc}")
            finally:
                if "midi" not in formats:
                    midi.unlink(missing_ok=True)
    if "roll" in formats:
        piano_roll(score, stem.with_suffix(".png"), title=stem.name)
    return sum(len(t.notes) for t in score.tracks)
