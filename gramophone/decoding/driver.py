"""The decode driver: checkpoint -> tables -> batches on the chosen backend's loop -> files.

:func:`decode_to_folder` is what ``gramophone decode`` runs; the pieces below it are usable
on their own (:func:`load_model`, :func:`sampler_for`, :func:`generate`).

**Loops per backend.** ``torch`` and ``jax`` have device loops
(:mod:`~gramophone.decoding.torch_loop`, :mod:`~gramophone.decoding.jax_loop`), imported
only when chosen. Any other backend registered with
:func:`gramophone.backends.register_backend` decodes with the numpy reference loop over its
``prefill``/``decode_step`` (correct, one host round trip per step) until it registers a
loop of its own with :func:`register_loop`; neither needs a change here.

**Budget.** ``max_tokens`` is the length of every output stream, everything included:
the prompt, BOS first and EOS last. A budget below the shortest valid completion is a
:class:`DecodingError` that names that minimum (8 tokens for the shipped config:
``BOS Bar TimeSig Position Pitch Velocity Duration EOS``; with ``--bars N``,
``2N + 6``); a budget above the model's context (``max_len``) is one too.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gramophone.decoding.loop import DecodeRequest, DecodeResult, backend_model, sample_numpy
from gramophone.decoding.rules import Sampling
from gramophone.decoding.tables import DecodingTables, PreparedPrompt, decoding_tables, prepare_prompt
from gramophone.errors import DecodingError, GramophoneError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.backends import Backend, ModelConfig
    from gramophone.grammar import Automaton
    from gramophone.tokenizers.learned import LearnedVocab

__all__ = [
    "DecodeOptions",
    "DecodeSummary",
    "LoadedModel",
    "check_budget",
    "decode_to_folder",
    "generate",
    "load_model",
    "register_loop",
    "sampler_for",
    "split_batches",
]

SampleFn = Callable[[DecodingTables, DecodeRequest], DecodeResult]

_LOOPS: dict[str, str] = {
    "torch": "gramophone.decoding.torch_loop",
    "jax": "gramophone.decoding.jax_loop",
}


def register_loop(backend_name: str, module: str) -> None:
    """Decode ``backend_name`` with ``module.backend_sampler(backend, params)``, a function
    ``(tables, request) -> DecodeResult`` (see :mod:`gramophone.decoding.loop`)."""
    _LOOPS[backend_name] = module


def sampler_for(backend: Backend, params: Any) -> SampleFn:
    """The decoding loop for ``backend`` and its ``params``."""
    module = _LOOPS.get(backend.name)
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


def load_model(backend_name: str, checkpoint: str | Path | None = None) -> LoadedModel:
    """Load ``checkpoint`` (default: the bundled model) on ``backend_name``.

    The tokenizer is the checkpoint's ``tokenizer.json`` when it has one, else the shipped
    config. Raises :class:`CheckpointError` (missing, corrupted, or trained for another
    vocabulary or grammar) and :class:`~gramophone.BackendUnavailableError`.
    """
    from gramophone.backends import checkpoint as ckpt
    from gramophone.backends import get_backend
    from gramophone.grammar import compile_tokenizer
    from gramophone.models import check_compatible
    from gramophone.tokenizers import load_tokenizer, model_automaton

    backend = get_backend(backend_name)
    if checkpoint is None:
        from gramophone.models import bundled_checkpoint_path

        path = bundled_checkpoint_path()
    else:
        path = Path(checkpoint)
    info = ckpt.read_info(path)
    tok_file = path / "tokenizer.json"
    tokenizer = load_tokenizer(tok_file if tok_file.is_file() else None)
    automaton = compile_tokenizer(tokenizer)
    checked = model_automaton(tokenizer) if tokenizer.is_trained else automaton
    check_compatible(info.meta, info.model.vocab_size, tokenizer, checked, where=str(path))
    loaded = backend.load(path)
    return LoadedModel(backend, loaded.params, info.model, tokenizer, automaton, path)


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
    prompt = prepare_prompt(tables, automaton, prompt_ids, name=name)
    check_budget(prompt, budget, max_len, options.bars)
    return tables, prompt


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


@dataclass(frozen=True)
class DecodeOptions:
    """``gramophone decode``'s options (see the CLI help)."""

    backend: str
    out: Path
    checkpoint: Path | None = None
    num: int = 4
    max_tokens: int | None = None
    seed: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    prompt: Path | None = None
    bars: int | None = None
    audio: bool = True
    batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.num < 1:
            raise DecodingError(f"--num must be at least 1, got {self.num}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise DecodingError(f"--max-tokens must be at least 2, got {self.max_tokens}")
        if self.seed < 0:
            raise DecodingError(f"--seed must be >= 0, got {self.seed}")
        if self.bars is not None and self.bars < 1:
            raise DecodingError(f"--bars must be at least 1, got {self.bars}")


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
        return out


def read_prompt(path: Path, tokenizer: MusicTokenizer) -> list[int]:
    """One stream from a token file or a MIDI file (a :class:`DecodingError` for several)."""
    from gramophone.tokenizers import read_token_file

    streams = read_token_file(path, tokenizer)
    if len(streams) != 1:
        raise DecodingError(
            f"{path}: holds {len(streams)} streams (tracks); a prompt must be one stream "
            "(a single-track MIDI file or a token file with one stream)"
        )
    return streams[0]


def decode_to_folder(options: DecodeOptions, log: Callable[[str], None] | None = None) -> DecodeSummary:
    """Decode ``options.num`` pieces and write, into ``options.out``: ``tokenizer.json``
    and, per piece, ``piece-NNN.json`` (miditok token file) + ``.txt`` (token names),
    ``.mid``, ``.png`` (piano roll) and ``.wav`` (unless ``audio=False`` or FluidSynth is
    missing: then ``audio_note`` says why). Every piece is checked with the grammar checker.
    """
    from tqdm import tqdm

    from gramophone.audio import AudioUnavailableError, piano_roll, render_wav
    from gramophone.grammar.checker import check_stream
    from gramophone.tokenizers import decode_ids, write_token_file

    loaded = load_model(options.backend, options.checkpoint)
    budget = options.max_tokens if options.max_tokens is not None else loaded.config.max_len
    prompt_ids = read_prompt(options.prompt, loaded.tokenizer) if options.prompt is not None else None
    from gramophone.tokenizers.learned import learned_vocab

    learned = learned_vocab(loaded.tokenizer)
    tables, prompt = prepare(
        loaded.automaton, prompt_ids, budget, loaded.config.max_len, options, learned=learned
    )
    out = Path(options.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GramophoneError(f"{out}: cannot create the output folder ({exc.strerror})") from None

    sample = sampler_for(loaded.backend, loaded.params)
    with tqdm(total=options.num, desc="decoding", unit="piece", disable=not options.progress) as bar:
        gen = generate(
            sample,
            tables,
            prompt,
            num=options.num,
            budget=budget,
            sampling=options.sampling,
            seed=options.seed,
            batch_size=options.batch_size,
            on_batch=bar.update,
        )

    loaded.tokenizer.save(out / "tokenizer.json")
    summary = DecodeSummary(
        backend=options.backend,
        out=out,
        pieces=len(gen.streams),
        tokens=sum(len(s) for s in gen.streams),
        generated=sum(len(s) - len(prompt.ids) for s in gen.streams),
        seconds=gen.seconds,
        compile_seconds=gen.compile_seconds,
    )
    audio = options.audio
    records = []
    for i, ids in enumerate(tqdm(gen.streams, desc="writing", unit="piece", disable=not options.progress)):
        stem = out / f"piece-{i:03d}"
        write_token_file(stem.with_suffix(".json"), ids, loaded.tokenizer)
        report = check_stream(tables.automaton, tables.learned.expand(ids)[0])
        if report.violation is not None:
            summary.invalid.append(f"{stem.name}: {report.violation}")
        score = decode_ids(loaded.tokenizer, ids)
        notes = sum(len(t.notes) for t in score.tracks)
        if notes == 0:
            summary.empty.append(stem.name)
        score.dump_midi(str(stem.with_suffix(".mid")))
        piano_roll(score, stem.with_suffix(".png"), title=stem.name)
        if audio:
            try:
                render_wav(stem.with_suffix(".mid"), stem.with_suffix(".wav"))
            except AudioUnavailableError as exc:
                summary.audio_note = str(exc)
                audio = False
                if log is not None:
                    log(f"no WAV files: {exc}")
        records.append({"piece": stem.name, "tokens": len(ids), "notes": notes, "valid": report.valid})
    (out / "summary.json").write_text(
        json.dumps(
            {
                "backend": options.backend,
                "checkpoint": str(loaded.path),
                "num": options.num,
                "max_tokens": budget,
                "seed": options.seed,
                "sampling": dataclasses.asdict(options.sampling),
                "prompt": None if options.prompt is None else str(options.prompt),
                "prompt_tokens": len(prompt.ids),
                "bars": options.bars,
                "seconds": summary.seconds,
                "compile_seconds": summary.compile_seconds,
                "pieces": records,
            },
            indent=2,
        )
        + "\n"
    )
    return summary
