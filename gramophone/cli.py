"""The command line: a thin argparse front over library calls.

Exit status of every subcommand: 0 success, 1 a negative answer (``check``: some stream
is invalid), 2 an error (unreadable input, bad usage). Errors are one line on stderr,
naming the file and the problem; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gramophone._version import __version__
from gramophone.errors import GramophoneError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.grammar import Automaton
    from gramophone.grammar.composer import ComposerConstraints

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


def _err(message: str) -> None:
    """An error: one line on stderr, ``gramophone: error: MESSAGE`` (argparse's format)."""
    print(f"gramophone: error: {message}", file=sys.stderr)


def _note(message: str) -> None:
    """A note that is not an error (a file skipped): ``gramophone: MESSAGE`` on stderr."""
    print(f"gramophone: {message}", file=sys.stderr)


def _load(tokenizer_path: str | None) -> tuple[MusicTokenizer, Automaton]:
    """The tokenizer and the automaton of its scheme, over its base vocabulary."""
    from gramophone.grammar import compile_tokenizer
    from gramophone.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    return tokenizer, compile_tokenizer(tokenizer)


def _add_constraint_options(p: argparse.ArgumentParser) -> None:
    """The composer constraints (gramophone/grammar/composer.py), shared by check and decode."""
    group = p.add_argument_group(
        "composer constraints",
        "each one more automaton intersected with the grammar (README: Constraints a composer asks for)",
    )
    group.add_argument(
        "--key",
        metavar="TONIC:MODE",
        help="pitched notes in this key's scale only (D:minor, F#:major, Bb:major; a minor key holds the "
        "raised 6th and 7th too); drum notes are not pitches",
    )
    group.add_argument(
        "--pitch-range", metavar="LO:HI", help="pitched notes between these MIDI numbers, inclusive (48:84)"
    )
    group.add_argument(
        "--time-signature",
        metavar="N/D",
        help="every bar in this time signature (one of the tokenizer's TimeSig tokens)",
    )
    group.add_argument(
        "--max-notes-per-onset",
        metavar="N",
        help="at most N notes start at one time (a new Position, Bar, TimeShift or Rest is a new onset)",
    )
    group.add_argument(
        "--notes-per-bar",
        metavar="LO:HI",
        help="between LO and HI notes in every bar, the last one included (REMI without rests)",
    )


def _constraints(args: argparse.Namespace) -> ComposerConstraints | None:
    """The composer constraints asked for, or None (a malformed one: ConstraintError)."""
    from gramophone.grammar.composer import ComposerConstraints

    constraints = ComposerConstraints.parse(
        key=args.key,
        pitch_range=args.pitch_range,
        time_signature=args.time_signature,
        max_notes_per_onset=args.max_notes_per_onset,
        notes_per_bar=args.notes_per_bar,
    )
    return None if constraints.empty else constraints


# -- check ------------------------------------------------------------------------------
def _text_token_streams(chunks: Iterator[str], name: str, index: dict[str, int]) -> Iterator[Iterator[int]]:
    """Lazily split text into streams (blank-line separated) of ids, for large inputs."""
    from gramophone.errors import TokenFileError

    pending: list[str] = []
    lines = _lines(chunks)

    def stream() -> Iterator[int]:
        count = 0
        while True:
            if not pending:
                line = next(lines, None)
                if line is None or not line.strip():
                    return
                pending.extend(reversed(line.split()))
            tok = pending.pop()
            idx = index.get(tok)
            if idx is None:
                raise TokenFileError(f"{name}: token {count}: unknown token name {tok!r}")
            count += 1
            yield idx

    while True:
        # Skip blank lines between streams.
        line = next(lines, None)
        while line is not None and not line.strip():
            line = next(lines, None)
        if line is None:
            return
        pending.extend(reversed(line.split()))
        yield stream()


def _lines(chunks: Iterator[str]) -> Iterator[str]:
    rest = ""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split("\n")
        yield from complete
    if rest:
        yield rest


def _file_streams(path: str, tokenizer: MusicTokenizer) -> tuple[Iterable[Iterable[int]], bool]:
    """Streams of ids for one input, and whether they are learned ids of a trained vocabulary
    (else base ids): plain text (base tokens) lazily, any other input read whole."""
    from gramophone.errors import TokenFileError
    from gramophone.tokenizers import MIDI_SUFFIXES, TokenFile, parse_token_bytes, read_tokens

    def whole(tokens: TokenFile) -> tuple[Iterable[Iterable[int]], bool]:
        return tokens.streams, tokens.learned

    if path == "-":
        data = sys.stdin.buffer.read()
        return whole(parse_token_bytes(data, "<stdin>", tokenizer))
    p = Path(path)
    if p.is_dir() or not p.exists() or p.suffix.lower() in MIDI_SUFFIXES:
        return whole(read_tokens(p, tokenizer))
    try:
        with p.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read ({exc.strerror})") from exc
    stripped = head.lstrip()
    if head[:4] == b"MThd" or stripped[:1] in (b"{", b"[") or b"\x00" in head or not stripped:
        return whole(read_tokens(p, tokenizer))
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        if len(head) < 4096:  # not a truncated multi-byte character at the edge
            return whole(read_tokens(p, tokenizer))

    def chunks() -> Iterator[str]:
        try:
            with p.open(encoding="utf-8") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk
        except UnicodeDecodeError as exc:
            raise TokenFileError(f"{path}: not UTF-8 text ({exc.reason})") from exc

    return _text_token_streams(chunks(), path, tokenizer.vocab), False


_CHECKED_SUFFIXES = (".json", ".txt", ".mid", ".midi", ".smf")


def _not_a_token_file(path: Path) -> str | None:
    """Why ``check`` skips ``path`` in a folder or glob, or None: a miditok tokenizer file
    (``tokenizer.save``) or a ``decode`` summary, which gramophone writes beside token files."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    if path.name == "tokenizer.json":
        return "a tokenizer file"
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if b'"ids"' in head:
        return None
    if b'"tokenization"' in head or b'"_vocab_base"' in head:
        return "a tokenizer file"
    if b'"format": "gramophone-decode-summary"' in head:
        return "a decode summary"
    return None


def _expand_check_paths(paths: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """Files as given; a folder becomes its token and MIDI files (recursively, sorted);
    tokenizer files and decode summaries are skipped with a note (``decode`` and
    ``tokenize`` write them beside their token files, so ``check DIR`` and
    ``check DIR/*.json`` just work)."""
    for name in paths:
        p = Path(name)
        if name != "-" and p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _CHECKED_SUFFIXES)
            files = []
            for f in found:
                why = _not_a_token_file(f)
                if why:
                    _note(f"{f}: skipped ({why}, not a token file)")
                else:
                    files.append(str(f))
            if files:
                yield from ((f, None) for f in files)
            else:
                yield name, f"{name}: no token files (.json, .txt) or MIDI files in this folder"
        elif name != "-" and (why := _not_a_token_file(p)):
            _note(f"{name}: skipped ({why}, not a token file)")
        else:
            yield name, None


def cmd_check(args: argparse.Namespace) -> int:
    from gramophone.grammar.checker import check_stream
    from gramophone.grammar.composer import with_constraints
    from gramophone.tokenizers import model_vocab
    from gramophone.tokenizers.losses import file_losses

    try:
        constraints = _constraints(args)
        tokenizer, automaton = _load(args.tokenizer)
        automaton = with_constraints(automaton, constraints)
        learned_vocab = model_vocab(tokenizer) if tokenizer.is_trained else None
    except GramophoneError as exc:
        _err(str(exc))
        return EXIT_ERROR
    status = EXIT_OK
    for path, problem in _expand_check_paths(args.files):
        record: dict[str, Any] = {"file": path}
        try:
            if problem is not None:
                raise GramophoneError(problem)
            streams, learned = _file_streams(path, tokenizer)
            losses = file_losses(tokenizer, path, strict=args.strict)  # MIDI: what tokenizing lost
            if losses:
                record["warnings"] = [loss.message for loss in losses]
            vocab = learned_vocab if learned else None
            total = learned_total = 0
            violation = None
            record["valid"] = True
            n_streams = 0
            for s, ids in enumerate(streams):
                n_streams += 1
                report = check_stream(automaton, ids, learned=vocab)
                total += report.tokens
                learned_total += report.learned_tokens or 0
                violation = report.violation
                if violation is not None:
                    record["valid"] = False
                    if s or (isinstance(streams, list) and len(streams) > 1):
                        record["stream"] = s
                    record.update(violation.to_dict())
                    break
            if n_streams == 0:
                raise GramophoneError(f"{path}: no token stream in the file")
            record["tokens"] = total
            if vocab is not None:
                record["learned_tokens"] = learned_total
        except GramophoneError as exc:
            message = str(exc)
            record = {"file": path, "error": message}
            status = EXIT_ERROR
        if "error" in record:
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                _err(record["error"])
            continue
        if not record["valid"] and status == EXIT_OK:
            status = EXIT_INVALID
        if args.json:
            print(json.dumps(record), flush=True)
            continue
        for warning in record.get("warnings", []):
            _note(f"warning: {path}: {warning}")
        if record["valid"]:
            counted = f"{record['tokens']} tokens"
            if "learned_tokens" in record:
                counted = f"{record['learned_tokens']} learned tokens, {record['tokens']} base tokens"
            if any(loss.kind == "no-notes" for loss in losses):
                print(f"{path}: nothing musical remains after tokenizing ({counted}, no note)")
            else:
                print(f"{path}: valid ({counted})")
        elif violation is not None:
            where = f"stream {record['stream']}, " if "stream" in record else ""
            before = " ".join(record["before"])
            ctx = f" after '... {before}'" if before else ""
            print(
                f"{path}: invalid at {where}{violation.where}{ctx}\n"
                f"  rejected by {record['rejected_by']}: {record['reason']}\n"
                f"  expected: {record['expected']}"
            )
    return status


# -- tokenize ---------------------------------------------------------------------------
def _expand_midi_paths(paths: Sequence[str]) -> Iterator[str]:
    """Files as given; a folder becomes its MIDI files (recursively, sorted, as ``train
    --data`` finds them)."""
    from gramophone.data.corpus import MIDI_FILE_SUFFIXES, midi_files_below

    for name in paths:
        p = Path(name)
        if p.is_dir():
            found = midi_files_below(p)
            if not found:
                suffixes = ", ".join(MIDI_FILE_SUFFIXES)
                raise GramophoneError(f"{name}: no MIDI files ({suffixes}) in this folder")
            yield from map(str, found)
        else:
            yield name


def cmd_tokenize(args: argparse.Namespace) -> int:
    from gramophone._outdir import claim_output_folder, output_names
    from gramophone.tokenizers import encode_midi, load_tokenizer, save_tokenizer, write_token_streams

    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except GramophoneError as exc:
        _err(str(exc))
        return EXIT_ERROR
    try:
        inputs = list(dict.fromkeys(_expand_midi_paths(args.midi)))  # a file given twice is tokenized once
        names = output_names(inputs)
        planned = ["tokenizer.json", *(n + suffix for n in names for suffix in (".json", ".txt"))]
        folder = claim_output_folder(args.out, "tokenize", planned)
        out = folder.path
        save_tokenizer(tokenizer, out / "tokenizer.json")
    except GramophoneError as exc:
        _err(str(exc))
        return EXIT_ERROR
    status = EXIT_OK
    for path, name in zip(inputs, names, strict=True):
        try:
            streams = encode_midi(tokenizer, path)
            write_token_streams(out / f"{name}.json", streams, tokenizer)
        except GramophoneError as exc:
            _err(str(exc))
            status = EXIT_ERROR
            continue
        n = sum(len(s) for s in streams)
        what = f"{n} learned tokens" if tokenizer.is_trained else f"{n} tokens"
        print(f"{path}: {len(streams)} stream(s), {what} -> {out / name}.json, .txt")
    folder.finish()
    return status


# -- decode -----------------------------------------------------------------------------
def cmd_decode(args: argparse.Namespace) -> int:
    from gramophone.decoding import DecodeOptions, Sampling, decode_to_folder
    from gramophone.decoding.infill import parse_infill
    from gramophone.decoding.rules import DEFAULT_SAMPLING

    if args.greedy and (args.temperature, args.top_k, args.top_p) != (None, None, None):
        _err("--greedy takes no --temperature, --top-k or --top-p")
        return EXIT_ERROR
    # Each setting not given keeps the measured default (DEFAULT_SAMPLING); --top-p 1 turns
    # a default nucleus off.
    sampling = Sampling(
        greedy=args.greedy,
        temperature=DEFAULT_SAMPLING.temperature if args.temperature is None else args.temperature,
        top_k=DEFAULT_SAMPLING.top_k if args.top_k is None else args.top_k,
        top_p=DEFAULT_SAMPLING.top_p if args.top_p is None else args.top_p,
    )
    options = DecodeOptions(
        backend=args.backend,
        out=Path(args.out),
        checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
        num=args.num,
        max_tokens=args.max_tokens,
        seed=args.seed,
        sampling=sampling,
        prompt=None if args.prompt is None else Path(args.prompt),
        bars=args.bars,
        audio=not args.no_audio,
        formats=None if args.formats is None else tuple(f.strip() for f in args.formats.split(",")),
        strict=args.strict,
        infill=None if args.infill is None else parse_infill(args.infill),
        constraints=_constraints(args),
    )
    try:
        summary = decode_to_folder(options, warn=lambda message: _note(f"warning: {message}"))
    except OSError as exc:
        _err(f"{exc.filename or args.out}: {exc.strerror or exc}")
        return EXIT_ERROR
    for line in summary.lines():
        print(line)
    return EXIT_OK if summary.all_valid else EXIT_INVALID


# -- train ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from gramophone.backends import get_backend
    from gramophone.tokenizers import load_tokenizer, model_automaton
    from gramophone.training import TOKENIZER_FILE, latest_checkpoint, resolve_config, train

    # a missing framework fails before the data is built
    backend = get_backend(args.backend, **_hf_train_options(args))
    tok_path = args.tokenizer
    if tok_path is None and args.resume:  # the run's own tokenizer
        last = latest_checkpoint(Path(args.out))
        if last is not None and (last / TOKENIZER_FILE).is_file():
            tok_path = str(last / TOKENIZER_FILE)
    if tok_path is None and args.init is not None and (Path(args.init) / TOKENIZER_FILE).is_file():
        tok_path = str(Path(args.init) / TOKENIZER_FILE)  # the tokenizer of the model fine-tuned
    tokenizer = load_tokenizer(tok_path)
    automaton = model_automaton(tokenizer)
    config = None
    if not args.resume or args.preset is not None or args.config is not None:
        config = resolve_config(len(automaton.vocab), args.preset, args.config, args.steps, args.data)
    if args.init is not None and config is not None:  # the shape is the model's: checked, then kept
        loaded = backend.load_native(args.init, tokenizer, automaton)
        assert loaded is not None
        what = f"init {args.init}" + (f", lora {args.lora}" if args.lora else "")
        config = dataclasses.replace(config, model=loaded.model, source=f"{config.source}; {what}")
    if config is None and args.data is not None:  # --resume: the run's own data
        _check_resume_data(Path(args.out), args.data)
    result = train(
        args.out,
        backend=backend,
        config=config,
        resume=args.resume,
        steps=args.steps,
        reschedule=args.reschedule,
        stop_after=args.stop_after,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        tokenizer=tokenizer,
        automaton=automaton,
        workers=args.workers,
    )
    if not result.main:  # another process of a data-parallel run: the main one reports
        return EXIT_OK
    if result.model_dir is None:
        print(f"{result.out}: stopped at step {result.step}; --resume continues the run")
        return EXIT_OK
    print(f"{result.out}: trained to step {result.step}; model in {result.model_dir}")
    for split, metrics in result.evaluation.items():
        if not metrics["tokens"]:
            print(f"  {split}: empty (no piece in this split)")
            continue
        print(
            f"  {split}: NLL {metrics['nll']:.4f} nats/token ({metrics['tokens']} tokens), "
            f"forbidden mass {metrics['forbidden_mass']:.2e}"
        )
    return EXIT_OK


def _hf_train_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--model``, ``--init``, ``--lora``: options of the hf backend that start a run."""
    given = {k: v for k in ("model", "init", "lora") if (v := getattr(args, k)) is not None}
    if not given:
        return given
    first = next(iter(given))
    if args.backend != "hf":
        raise GramophoneError(
            f"--{first} chooses a transformers model: it is for --backend hf, not --backend {args.backend}"
        )
    if args.resume:
        raise GramophoneError(
            f"--{first} starts a run; --resume continues the run in {args.out} "
            "with its own model: leave it out"
        )
    return given


def _check_resume_data(run_dir: Path, paths: Sequence[str]) -> None:
    """``--data`` on ``--resume`` must name the run's own data."""
    from gramophone.backends import checkpoint as ckpt
    from gramophone.data.corpus import resolve_data_paths
    from gramophone.data.dataset import DataConfig
    from gramophone.training import TrainingError, latest_checkpoint

    last = latest_checkpoint(run_dir)
    if last is None:
        return  # train() says there is nothing to resume
    stored = DataConfig.from_dict(ckpt.read_info(last).meta.get("data") or {})
    if stored.paths != resolve_data_paths(paths):
        raise TrainingError(
            f"{run_dir}: the run trains on {' '.join(stored.paths)}; leave out --data to resume it"
        )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on the Bach chorales or your MIDI files",
        description=(
            "Train the Transformer on the chorales (tokenized with the shipped config, transposed "
            "for augmentation, split by piece) or on your MIDI files (--data: folders and files, "
            "tokenized once in parallel and cached, bad files skipped with a line each, split by "
            "file) with the grammar's allowed masks. Writes into DIR: "
            "checkpoints/ (every --checkpoint-every steps, atomically), metrics.jsonl, loss.png, "
            "model/ (final parameters) and eval.json (validation and test NLL). --resume continues "
            "from the last checkpoint with the same batches an uninterrupted run would see. The "
            "learning-rate schedule (linear warmup, cosine decay over --steps; a warmup longer than "
            "--steps is shortened, with a note) is fixed when the run starts and recorded in "
            "DIR/run.json; --resume continues it unchanged; metrics.jsonl has each step's lr. "
            "Data-parallel: torchrun --standalone --nproc_per_node=N -m gramophone train --backend "
            "torch ... (DistributedDataParallel; each process takes its rows of the same global batch, "
            "process 0 writes DIR); --backend jax trains on every device JAX sees (jax.distributed "
            "across hosts when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set)."
        ),
    )
    p.add_argument(
        "--backend",
        required=True,
        metavar="torch|jax|hf",
        help="framework to train with (hf: a HuggingFace transformers model, see --model)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="TOKENIZER.json",
        help="tokenizer file written by miditok's tokenizer.save, trained (BPE/Unigram/WordPiece) or not "
        "(default: the shipped REMI config; with --resume: the run's own; with --init: the model's)",
    )
    p.add_argument(
        "--model",
        metavar="gpt2|llama",
        help="with --backend hf: the transformers architecture, built from the config's model shape "
        "(d_model, n_layers, n_heads, d_ff, max_len, dropout; default gpt2); model/ is a "
        "save_pretrained folder",
    )
    p.add_argument(
        "--init",
        metavar="DIR",
        help="with --backend hf: start from this save_pretrained folder (a run's model/), keeping its "
        "shape and tokenizer; --preset/--config give the training settings",
    )
    p.add_argument(
        "--lora",
        metavar="r=8,alpha=16,dropout=0.05",
        help="with --init: train LoRA adapters only (peft; GPT-2's c_attn/c_proj); model/ is saved "
        "merged (decodes without peft), the adapter in model/adapter/",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--preset",
        metavar="NAME",
        help="named model + training config: tiny, small, chorales (the default: d_model 128, "
        "800 updates, ~35 min on a CPU), chorales-long (the bundled model's recipe: d_model 256, "
        "4,000 updates, half FIM)",
    )
    group.add_argument(
        "--config", metavar="FILE", help='JSON {"model": {...}, "train": {...}, "data": {...}}'
    )
    p.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="MIDI folders (searched recursively for .mid/.midi), files, or chorales (the default); "
        'replaces the config\'s "data": {"paths": [...]}',
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="processes that tokenize --data (default: the CPU count, at most 8, or this process alone "
        "for fewer than 128 new files; 1: this process)",
    )
    p.add_argument("--steps", type=_positive_int, metavar="N", help="total updates (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from its last checkpoint")
    p.add_argument(
        "--reschedule",
        action="store_true",
        help="with --resume --steps M other than the run's own: end the cosine decay at step M instead "
        "(the learning rate changes from the resumed step on); without it that --steps is refused",
    )
    p.add_argument(
        "--stop-after",
        type=_positive_int,
        metavar="K",
        help="stop after update K (checkpointed) without finishing; --resume continues the same schedule",
    )
    p.add_argument(
        "--checkpoint-every", type=_positive_int, default=100, metavar="K", help="steps between checkpoints"
    )
    p.add_argument(
        "--eval-every", type=_positive_int, metavar="K", help="steps between validations (default: K above)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.set_defaults(func=cmd_train)


def cmd_bench(args: argparse.Namespace) -> int:
    from gramophone.bench.runner import SECTIONS, run_all

    known = [name for name, _, _ in SECTIONS]
    chosen = args.only.split(",") if args.only else None
    unknown = sorted(set(chosen or ()) - set(known))
    if unknown:
        _err(f"unknown benchmark section(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return EXIT_ERROR
    results = run_all(args.quick, Path(args.out), chosen)
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
    if results["failed"]:
        _err(f"some sections failed: {', '.join(results['failed'])} (see their *-error.txt in {args.out})")
        return 1
    return 0


def _add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite",
        description=(
            "Run every benchmark (grammar core, mask step and compile time against the peer engines "
            "xgrammar / outlines-core / llguidance when installed, training and decoding throughput, "
            "the validity table of three models trained with ce, ce+structural and masked losses) and "
            "write DIR/results.json, DIR/report.md and plots. --quick runs a reduced set in a few "
            "minutes; the full run trains three models (about an hour on two cores; reused afterwards "
            "from the cache). DIR must be new, empty, or written by an earlier bench, whose files are "
            "removed first (listed in DIR/.gramophone-files); a folder holding other files is refused. "
            "Exit status 1 when a section failed (the others are still written)."
        ),
    )
    p.add_argument("--quick", action="store_true", help="reduced sizes and repeats (a few minutes)")
    p.add_argument(
        "--only",
        metavar="A,B",
        help="only these sections (grammar, peers, vocab, corpus, train, decode, validity, music, context, "
        "infill)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_bench)


# -- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from gramophone.decoding.rules import DEFAULT_SAMPLING

    parser = argparse.ArgumentParser(
        prog="gramophone",
        description=(
            "Grammar-constrained generation of symbolic music (miditok's REMI, TSD, MIDILike and "
            "Structured tokens, trained vocabularies too)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gramophone {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    tok_help = "tokenizer file written by miditok's tokenizer.save (default: the shipped config)"
    p = sub.add_parser(
        "check",
        help="check token files against the grammar",
        description=(
            "Check token streams against the grammar of the tokenizer's config (REMI, TSD, MIDILike "
            "or Structured; with a vocabulary trained by BPE, Unigram or WordPiece or not). FILE is a "
            'miditok JSON token file ({"ids": [...]} or a list of id lists; the learned ids of a '
            "trained tokenizer), plain text of base token names separated by white space (blank "
            "lines separate streams), a MIDI file (tokenized with the config), or - for standard "
            "input. For each invalid file the first violation is reported in base tokens: where "
            "(and in which learned token), what rejected it, and what was expected. A MIDI file "
            "whose tokenizing loses content (time signatures outside the vocabulary, notes outside "
            "the pitch range, programs not in the config, tempos or durations beyond the "
            "tokenizer's range) gets a warning per kind of loss on stderr (--strict: an error). "
            "Exit status: 0 all valid, 1 some invalid, 2 some file could not be read (or, with "
            "--strict, lost content when tokenized)."
        ),
    )
    p.add_argument("--tokenizer", metavar="TOKENIZER.json", help=tok_help)
    p.add_argument("--json", action="store_true", help="one JSON object per file per line (JSON Lines)")
    p.add_argument(
        "--strict", action="store_true", help="a MIDI file whose tokenizing loses content is an error"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_constraint_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "tokenize",
        help="tokenize MIDI files into token files",
        description="Tokenize MIDI files with the tokenizer (learned ids for a trained one); writes "
        "NAME.json (miditok's format), NAME.txt (base token names) and tokenizer.json into DIR. "
        "NAME is the file's path relative to the deepest folder holding every MIDI given (its stem "
        "when they share one folder; a/x.mid b/x.mid give DIR/a/x.json and DIR/b/x.json). DIR must be "
        "new, empty, or written by an earlier run of gramophone, whose files are removed first (it "
        "records them in DIR/.gramophone-files); a folder holding other files is refused. "
        "A file that cannot be read or tokenized is one line on stderr (exit status 2); the "
        "others are still written, each file whole or not at all.",
    )
    p.add_argument("--tokenizer", metavar="TOKENIZER.json", help=tok_help)
    p.add_argument(
        "midi",
        nargs="+",
        metavar="MIDI",
        help="MIDI files, or folders (their .mid/.midi/.smf files, recursively)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser(
        "decode",
        help="generate pieces with a model, hard-masked by the grammar",
        description=(
            "Sample pieces from a checkpoint (default: the bundled model) with every token masked "
            "by the grammar's automaton, so each piece is valid and complete (BOS ... EOS, one note "
            "at least) within --max-tokens, which counts every token of a piece (prompt, BOS and EOS "
            "included). Writes into DIR: tokenizer.json, summary.json and per piece piece-NNN.json "
            "(miditok token file) and .txt, .mid, .png (piano roll) and .wav (FluidSynth), or the "
            "--formats chosen. DIR must be new, empty, or written by an earlier run of gramophone, "
            "whose files are removed first (it records them in DIR/.gramophone-files): pieces of two "
            "runs never mix, and a folder holding other files is refused. "
            "Exit status: 0 all pieces valid, 1 some invalid (a bug), 2 an error."
        ),
    )
    p.add_argument(
        "--backend",
        required=True,
        metavar="torch|jax|hf",
        help="framework that runs the model (hf: a transformers save_pretrained folder as --checkpoint, "
        "with the tokenizer.json beside it)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="DIR|RUN",
        help="checkpoint folder, or a training run folder (its model/, else its latest checkpoint); "
        "default: the bundled model",
    )
    p.add_argument("--num", type=int, default=4, metavar="N", help="pieces to generate (default 4)")
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="length budget of each piece, every token included (default: the model's context)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help=f"softmax temperature > 0 (default {DEFAULT_SAMPLING.temperature:g}: the defaults were "
        "chosen by measurement, see the README)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="sample among the K most likely allowed tokens"
        + ("" if DEFAULT_SAMPLING.top_k is None else f" (default {DEFAULT_SAMPLING.top_k})"),
    )
    p.add_argument(
        "--top-p",
        type=float,
        metavar="P",
        help="nucleus sampling: smallest set of mass >= P ("
        + ("default off" if DEFAULT_SAMPLING.top_p is None else f"default {DEFAULT_SAMPLING.top_p:g}")
        + "; 1 turns it off)",
    )
    p.add_argument("--greedy", action="store_true", help="always the most likely allowed token")
    p.add_argument(
        "--prompt",
        metavar="FILE",
        help="continue this token file (JSON/text, one stream) or single-track MIDI file",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a MIDI prompt whose tokenizing loses content (see check) is an error, not a warning",
    )
    p.add_argument("--bars", type=int, metavar="N", help="exactly N bars (Bar tokens) per piece")
    p.add_argument(
        "--infill",
        metavar="A:B",
        help="regenerate exactly bars A..B (1-based, inclusive) of the --prompt piece and keep every "
        "other bar token for token; the budget counts the kept bars",
    )
    p.add_argument(
        "--formats",
        metavar="A,B",
        help="what to write per piece, any of tokens (.json + .txt), midi, roll (piano-roll .png) and wav "
        "(default: all that the installed extras allow); --formats tokens writes many pieces fast",
    )
    p.add_argument("--no-audio", action="store_true", help="no WAV files (the default formats less wav)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_constraint_options(p)
    p.set_defaults(func=cmd_decode)

    _add_train_parser(sub)
    _add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `gramophone check ... | head`: stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    except GramophoneError as exc:
        _err(str(exc))
        return EXIT_ERROR
    except OSError as exc:  # a file read or written deep in a library call (disk full, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"{where}{exc.strerror or exc}")
        return EXIT_ERROR
    except ImportError as exc:  # an optional package that a library call needs
        _err(_missing_package(exc))
        return EXIT_ERROR


#: The extra of pyproject.toml that installs each optional package gramophone imports.
_EXTRAS = {
    "torch": "torch",
    "safetensors": "torch",
    "jax": "jax",
    "flax": "jax",
    "optax": "jax",
    "music21": "data",
    "pretty_midi": "audio",
    "fluidsynth": "audio",
    "matplotlib": "audio",
    "transformers": "hf",
    "peft": "hf",
}


def _missing_package(exc: ImportError) -> str:
    """``NAME is not installed (...): pip install 'gramophone[EXTRA]'`` for an ImportError."""
    name = (exc.name or "").split(".")[0]
    if not name:
        return str(exc)
    extra = _EXTRAS.get(name)
    hint = f": pip install 'gramophone[{extra}]'" if extra else ""
    return f"{name} is not installed or cannot be imported ({exc}){hint}"


if __name__ == "__main__":
    sys.exit(main())
