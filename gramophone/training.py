"""Training over any backend: batches a function of ``(seed, step)``, atomic checkpoints, resume.

One loop for every backend (:func:`train`); it only calls the :class:`Backend` interface.
A run folder holds::

    OUT/run.json                    what was asked: backend, config source, configs
    OUT/checkpoints/step-000100/    backend.save_state: weights + optimizer state +
                                    config.json (meta: vocabulary, tokenizer and automaton
                                    hashes, data config) + tokenizer.json
    OUT/checkpoints/LATEST          name of the newest complete checkpoint
    OUT/metrics.jsonl               one JSON object per line (``split``: train,
                                    validation, test; ``final`` on the last evaluation)
    OUT/loss.png                    loss curve (matplotlib, when installed)
    OUT/model/                      the final parameters only (+ tokenizer.json): what
                                    ``gramophone decode --checkpoint OUT`` loads
    OUT/eval.json                   validation and test metrics of the final model

**Resuming.** Each checkpoint is written into a temporary folder and renamed into place
(a rename is atomic), then ``LATEST`` is replaced atomically; a run killed at any moment
(``kill -9`` included) leaves the previous checkpoint intact, and :func:`latest_checkpoint`
falls back to the newest folder that reads back whole. Batch ``k`` depends only on
``(seed, k)`` (:func:`~gramophone.data.dataset.train_batch`), dropout only on
``(seed, step)`` in both backends, and the optimizer state is restored, so a resumed run
repeats exactly what the uninterrupted run would have done from the checkpoint on,
losing at most the steps since the last checkpoint. ``metrics.jsonl`` is cut back to
the checkpoint's step on resume.

**More than one process or device.** :meth:`Backend.data_parallel
<gramophone.backends.Backend.data_parallel>` joins the run (torch: the process group
``torchrun`` sets up, DistributedDataParallel; JAX: every device, hosts joined by
``jax.distributed``). The global batch of step ``k`` is still ``train_batch(seed, k)``, what a
one-process run trains on; process ``p`` of ``P`` builds and feeds its rows ``p::P``, and the
backend makes the update of the whole batch (the weighted means taken over the global batch),
so the run matches a one-process run up to float rounding. Process 0 alone writes the run
folder (``run.json``, metrics, checkpoints, plots, ``model/``, ``eval.json``), prints notes and
the progress bar, and evaluates (validation and the final evaluation run on it alone, on one
device); it also builds the corpus first, the others then reading it from the cache. Every
process resumes from the same checkpoint. ``world_size`` (the number of data-parallel
replicas: torch processes, JAX devices) is in ``run.json``, each training record and
``eval.json``.

**Metrics.** Per training step: ``loss`` (the objective), ``nll`` (cross-entropy in nats
per token, no smoothing), ``structural`` (``-log`` of the mass on allowed tokens),
``grad_norm``, ``lr``, ``tokens_per_s`` (of the global batch), ``world_size``. Validation
(:func:`evaluate_split`, from the logits and the allowed masks of the data, the same code
for both backends): ``nll`` per target token, ``forbidden_mass`` (mean probability the
model puts on tokens the grammar forbids), ``nll_masked`` (the NLL after renormalising over
the allowed tokens, what hard-masked decoding samples from).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from gramophone._files import atomic_write, atomic_write_bytes
from gramophone.backends.config import ModelConfig, TrainConfig, get_preset, learning_rate
from gramophone.data.corpus import load_data
from gramophone.data.dataset import DataConfig, Dataset, TokenSplit, train_batch
from gramophone.data.fim import fim_batch, fim_tokens
from gramophone.errors import CheckpointError, GramophoneError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.backends import Backend
    from gramophone.backends.base import DataParallel
    from gramophone.grammar import Automaton

__all__ = [
    "DEFAULT_PRESET",
    "RunConfig",
    "TrainResult",
    "TrainingError",
    "evaluate_split",
    "export_model",
    "latest_checkpoint",
    "read_metrics",
    "resolve_config",
    "train",
]

DEFAULT_PRESET = "chorales"
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
EVAL_FILE = "eval.json"
RUN_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"
KEEP_CHECKPOINTS = 2
EVAL_TOKENS = 16384  # tokens per evaluation batch (windows = this // seq_len) ...
EVAL_CELLS = 1 << 25  # ... and at most this many logits (tokens x V): 128 MiB of float32


def eval_batch_size(seq_len: int, vocab_size: int) -> int:
    """Windows per evaluation batch: :data:`EVAL_TOKENS` tokens, fewer with a large
    vocabulary (:data:`EVAL_CELLS` logits: at V = 30,000 and 16,384 tokens the batch's
    logits alone would take 1.9 GiB, and scoring them four times that)."""
    return max(1, min(EVAL_TOKENS // seq_len, EVAL_CELLS // (seq_len * max(vocab_size, 1))))


_CONFIG_SECTIONS = ("model", "train", "data")


class TrainingError(GramophoneError, ValueError):
    """A training run cannot start: a bad config, nothing to resume, a run in the way."""


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: model shape, optimisation, data; ``source`` says
    where it came from (``preset chorales``, ``config FILE``, ``checkpoint DIR``);
    ``notes``: what was changed on the way (a warmup shortened to fit ``--steps``)."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    source: str = ""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "data": self.data.to_dict(),
            "source": self.source,
            "schedule": schedule_dict(self.train),
            "notes": list(self.notes),
        }


def resolve_config(
    vocab_size: int,
    preset: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    data_paths: Sequence[str] | None = None,
) -> RunConfig:
    """The run config of a preset (default :data:`DEFAULT_PRESET`) or a JSON file.

    The file holds ``{"model": {...}, "train": {...}, "data": {...}}``: fields of
    :class:`ModelConfig` (``vocab_size`` may be left out: it is the tokenizer's),
    :class:`TrainConfig` (defaults for what is left out) and :class:`DataConfig`
    (optional). ``steps`` replaces ``train.total_steps``; a warmup longer than that is
    shortened to it, which ``notes`` says. ``data_paths`` (``--data``) replaces the data's
    ``paths`` (relative paths are from the current folder; in the file, from the file's).
    Every problem is one :class:`TrainingError` line naming the file or preset.
    """
    from gramophone.data.corpus import resolve_data_paths

    if preset is not None and config_file is not None:
        raise TrainingError("give --preset or --config, not both")
    data, data_d = DataConfig(), dict[str, Any]()
    if config_file is not None:
        path = Path(config_file)
        where = str(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingError(f"{where}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingError(f"{where}: cannot read the config file ({exc})") from None
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(raw, dict):
            raise TrainingError(f'{where}: expected a JSON object {{"model": ..., "train": ...}}')
        unknown = sorted(set(raw) - set(_CONFIG_SECTIONS))
        if unknown:
            raise TrainingError(
                f"{where}: unknown section(s) {', '.join(unknown)} (expected {', '.join(_CONFIG_SECTIONS)})"
            )
        try:
            model_d = dict(raw.get("model") or {})
            if model_d.setdefault("vocab_size", vocab_size) != vocab_size:
                raise ValueError(
                    f"model.vocab_size is {model_d['vocab_size']} but the tokenizer has {vocab_size} tokens"
                )
            model = ModelConfig.from_dict(model_d)
            train = TrainConfig.from_dict(raw.get("train") or {})
            data_d = dict(raw.get("data") or {})
            if "paths" in data_d:
                data_d["paths"] = resolve_data_paths(data_d["paths"], base=path.parent)
            data = DataConfig.from_dict(data_d)
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"{where}: {exc}") from None
        source = f"config {where}"
    else:
        name = preset or DEFAULT_PRESET
        try:
            p = get_preset(name)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        model, train, source = p.model_config(vocab_size), p.train, f"preset {name}"
    if data_paths is not None:
        data = DataConfig.from_dict({**data_d, "paths": resolve_data_paths(data_paths)})
    if train.seq_len > model.max_len:
        raise TrainingError(
            f"{source}: train.seq_len ({train.seq_len}) exceeds model.max_len ({model.max_len})"
        )
    run = RunConfig(model, train, data, source)
    return run if steps is None else _run_with_steps(run, steps)


def with_steps(train: TrainConfig, steps: int) -> TrainConfig:
    """``train`` with ``total_steps = steps``, its warmup shortened to ``steps`` when longer
    (:func:`_run_with_steps` says so in the run's notes)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TrainingError(f"--steps must be a positive integer, got {steps!r}")
    return train.replace(total_steps=steps, warmup_steps=min(train.warmup_steps, steps))


def _run_with_steps(run: RunConfig, steps: int) -> RunConfig:
    """``run`` over ``steps`` updates, with a note when that shortens the warmup."""
    train = with_steps(run.train, steps)
    notes = run.notes
    if train.warmup_steps < run.train.warmup_steps:
        notes += (
            f"--steps {steps} is shorter than the warmup of {run.train.warmup_steps} steps: "
            f"warmup shortened to {train.warmup_steps} steps",
        )
    return dataclasses.replace(run, train=train, notes=notes)


def schedule_dict(train: TrainConfig) -> dict[str, Any]:
    """The learning-rate schedule of ``train`` (:func:`~gramophone.backends.learning_rate`),
    fixed when a run starts: what ``run.json`` records."""
    return {
        "kind": "linear warmup, cosine decay",
        "peak_lr": train.lr,
        "warmup_steps": train.warmup_steps,
        "total_steps": train.total_steps,
        "final_lr": train.lr * train.min_lr_ratio,
    }


def describe_schedule(train: TrainConfig) -> str:
    """``schedule_dict`` in words, for messages."""
    return (
        f"{train.total_steps} steps: warmup {train.warmup_steps}, peak {train.lr:g}, "
        f"cosine decay to {train.lr * train.min_lr_ratio:g}"
    )


# ---------------------------------------------------------------------------------------
# Checkpoint folders


def _step_dir(root: Path, step: int) -> Path:
    return root / CHECKPOINTS / f"step-{step:06d}"


def _readable(path: Path) -> bool:
    from gramophone.backends import checkpoint as ckpt

    try:
        info = ckpt.read_info(path)
        for name in info.files:
            ckpt.file_path(info, name)
    except CheckpointError:
        return False
    return True


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run folder, or ``None``.

    ``checkpoints/LATEST`` names it; when that is missing or does not read back whole
    (sizes and SHA-256 checked), the newest ``step-*`` folder that does.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    with contextlib.suppress(OSError):
        name = (root / LATEST).read_text(encoding="utf-8").strip()
        if name and "/" not in name and _readable(root / name):
            return root / name
    for path in sorted(root.glob("step-*"), reverse=True):
        if path.is_dir() and path.name[5:].isdigit() and _readable(path):
            return path
    return None


def _write_dir_atomically(dest: Path, fill: Any) -> Path:
    """Call ``fill(tmp_dir)``, then move the folder into place as ``dest`` (replacing it)."""
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        fill(tmp)
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _prune(run_dir: Path, keep: Path) -> None:
    root = run_dir / CHECKPOINTS
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for path in steps[:-KEEP_CHECKPOINTS]:
        if path != keep:  # hidden first (one rename), so an interrupted delete leaves no step-*
            gone = path.parent / f".{path.name}.old-{os.getpid()}"
            with contextlib.suppress(OSError):
                os.replace(path, gone)
                shutil.rmtree(gone, ignore_errors=True)
    for path in root.glob(".step-*"):  # temporary folders of killed runs
        shutil.rmtree(path, ignore_errors=True)


def export_model(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], extra_meta: Mapping[str, Any] | None = None
) -> Path:
    """Copy a checkpoint's parameters (no optimizer state) + ``tokenizer.json`` to ``dest``.

    ``source`` is a checkpoint folder or a run folder (its ``model/``, else its latest
    checkpoint). Framework-free: reads and writes safetensors. ``extra_meta`` is merged
    into the meta (e.g. evaluation figures). A checkpoint of a backend with a model format
    of its own (``hf``: no gramophone weights in it) is exported by that backend
    (:meth:`~gramophone.backends.Backend.export_native`: a ``save_pretrained`` folder).
    """
    from gramophone.backends import checkpoint as ckpt

    src = Path(source)
    if not (src / ckpt.CONFIG_FILE).is_file():
        found = src / MODEL_DIR if (src / MODEL_DIR / ckpt.CONFIG_FILE).is_file() else latest_checkpoint(src)
        if found is None:
            raise CheckpointError(f"{src}: neither a checkpoint nor a run folder with one")
        src = found
    info = ckpt.read_info(src)
    native = info.backend is not None and ckpt.WEIGHTS_FILE not in info.files
    weights = None if native else ckpt.read_weights(info)
    meta = {**info.meta, **(extra_meta or {})}

    def fill(tmp: Path) -> None:
        if weights is None:  # the backend's own format (hf: save_pretrained)
            from gramophone.backends import get_backend

            get_backend(str(info.backend)).export_native(info, tmp, meta)
        else:
            ckpt.save_checkpoint(tmp, weights, info.model, train=info.train, step=info.step, meta=meta)
        if (src / TOKENIZER_FILE).is_file():
            shutil.copyfile(src / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        for f in tmp.rglob("*"):  # temporary files are private (0600); a model is to be shared
            if f.is_file():
                f.chmod(0o644)

    return _write_dir_atomically(Path(dest), fill)


# ---------------------------------------------------------------------------------------
# Metrics


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def _rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_bytes(run_dir / METRICS_FILE, text.encode("utf-8"))


def plot_metrics(run_dir: str | os.PathLike[str]) -> Path | None:
    """Draw ``loss.png`` from ``metrics.jsonl``: training loss (raw and smoothed) and
    validation NLL against the step; forbidden mass below. ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    tr = [r for r in records if r.get("split") == "train"]
    va = [r for r in records if r.get("split") == "validation"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    if tr:
        steps = np.array([r["step"] for r in tr])
        nll = np.array([r["nll"] for r in tr])
        ax.plot(steps, nll, color="tab:blue", alpha=0.25, lw=0.8)
        ema, smooth = nll[0], []
        for v in nll:
            ema = 0.95 * ema + 0.05 * v
            smooth.append(ema)
        ax.plot(steps, smooth, color="tab:blue", label="train NLL (EMA)")
        if "structural" in tr[0]:
            ax2.plot(
                steps, [r["structural"] for r in tr], color="tab:blue", alpha=0.5, label="train structural"
            )
    if va:
        ax.plot(
            [r["step"] for r in va], [r["nll"] for r in va], "o-", color="tab:orange", label="validation NLL"
        )
        ax2.plot(
            [r["step"] for r in va],
            [r["forbidden_mass"] for r in va],
            "o-",
            color="tab:orange",
            label="validation forbidden mass",
        )
    ax.set_ylabel("nats / token")
    ax.legend()
    ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / PLOT_FILE
    try:  # interrupted or a write error: no half-written picture left
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# Evaluation


def score_logits(logits: np.ndarray, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Weighted sums over a batch from logits float32[B, T, V] and the batch's
    ``targets``/``weights``/``allowed``: ``nll``, ``forbidden_mass``, ``nll_masked`` and
    ``weight`` (divide by ``weight`` for means). The target always counts as allowed.
    Per-position values in float32, sums in float64."""
    x = np.asarray(logits, dtype=np.float32)
    targets, weights = batch["targets"], batch["weights"].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)  # (B, T, V)
    b, t = np.indices(targets.shape)
    allow = np.array(batch["allowed"], dtype=bool, copy=True)
    allow[b, t, targets] = True
    logz = np.log(e.sum(axis=-1, dtype=np.float64))  # (B, T)
    nll = logz - x[b, t, targets]
    log_allowed = np.log(np.where(allow, e, 0.0).sum(axis=-1, dtype=np.float64)) - logz  # <= 0
    forbidden = -np.expm1(log_allowed)
    return {
        "nll": float((weights * nll).sum()),
        "forbidden_mass": float((weights * forbidden).sum()),
        "nll_masked": float((weights * (nll + log_allowed)).sum()),
        "weight": float(weights.sum()),
    }


def _eval_batches(
    split: TokenSplit, seq_len: int, batch_size: int, max_windows: int | None
) -> Iterator[dict[str, np.ndarray]]:
    starts, first = split.eval_windows(seq_len)
    if max_windows is not None and max_windows < len(starts):
        pick = np.sort(np.random.Generator(np.random.PCG64(0)).permutation(len(starts))[:max_windows])
        starts, first = starts[pick], first[pick]
    for i in range(0, len(starts), batch_size):
        s, f = starts[i : i + batch_size], first[i : i + batch_size]
        if len(s) < batch_size:  # keep one shape (no recompilation): repeat, with weight 0
            extra = batch_size - len(s)
            s = np.concatenate([s, np.repeat(s[:1], extra)])
            f = np.concatenate([f, np.full(extra, np.iinfo(np.int64).max)])
        yield split.batch(s, seq_len, f)


def evaluate_split(
    backend: Backend,
    params: Any,
    split: TokenSplit,
    seq_len: int,
    *,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> dict[str, float]:
    """Per-token metrics of ``params`` on a split (no dropout), every target scored once.

    Windows of ``seq_len`` tokens from :meth:`TokenSplit.eval_windows`;
    ``max_windows`` takes a fixed subset of them (periodic validation). Returns
    ``nll`` (nats per token), ``perplexity``, ``forbidden_mass``, ``nll_masked`` and
    ``tokens`` (how many targets were scored).
    """
    total: dict[str, float] = {"nll": 0.0, "forbidden_mass": 0.0, "nll_masked": 0.0, "weight": 0.0}
    for batch in _eval_batches(split, seq_len, batch_size, max_windows):
        logits = backend.logits(params, batch["inputs"])
        for k, v in score_logits(logits, batch).items():
            total[k] += v
    n = max(total.pop("weight"), 1e-12)
    out = {k: v / n for k, v in total.items()}
    out["perplexity"] = math.exp(out["nll"])
    out["tokens"] = round(n)
    return out


# ---------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    """What :func:`train` did: the run folder, the step reached, the last checkpoint,
    the exported model (``None`` when stopped early) and the final evaluation."""

    out: Path
    step: int
    checkpoint: Path | None
    model_dir: Path | None
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)
    world_size: int = 1  # data-parallel replicas
    main: bool = True  # False on the other processes of a data-parallel run (they write nothing)


def _check_resume_config(given: RunConfig | None, stored: RunConfig, steps: int | None) -> None:
    """A config given on resume must be the run's own (up to the schedule length when
    ``steps`` replaces it)."""
    if given is None:
        return

    def norm(t: TrainConfig) -> TrainConfig:
        return t if steps is None else t.replace(total_steps=10**9, warmup_steps=0)

    if given.model != stored.model or norm(given.train) != norm(stored.train) or given.data != stored.data:
        raise TrainingError(
            f"the run was started with another config ({stored.source}); "
            "leave out --preset/--config to resume it"
        )


def _note(message: str) -> None:
    print(f"gramophone: note: {message}", file=sys.stderr)


def _resumed_run(
    stored: RunConfig, run_dir: Path, start: int, steps: int | None, reschedule: bool
) -> tuple[RunConfig, tuple[str, ...]]:
    """The run to resume at step ``start``: ``stored`` with its notes from ``run.json``, its
    schedule unchanged, or (``reschedule``) over ``steps`` updates; and the new notes."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        old = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))["notes"]
        stored = dataclasses.replace(stored, notes=tuple(str(n) for n in old))
    was = stored.train
    if steps is None or steps == was.total_steps:
        if reschedule:
            raise TrainingError(f"--reschedule needs --steps other than the run's own ({was.total_steps})")
        return stored, ()
    if steps < start:
        raise TrainingError(f"{run_dir}: the run is at step {start}, beyond --steps {steps}")
    if not reschedule:
        raise TrainingError(
            f"{run_dir}: the learning-rate schedule was fixed when the run started "
            f"({describe_schedule(was)}); to train to step {steps}, add --reschedule (the cosine "
            f"decay then ends at step {steps}), or leave out --steps to finish the run as planned"
        )
    run = _run_with_steps(stored, steps)
    now = run.train
    note = (
        f"schedule changed at step {start}: from {describe_schedule(was)} to {describe_schedule(now)}; "
        f"the learning rate of update {start + 1} is {learning_rate(start, now):.3g} "
        f"(was {learning_rate(start, was):.3g})"
    )
    run = dataclasses.replace(run, notes=(*run.notes, note))
    return run, run.notes[len(stored.notes) :]


@dataclass
class _Start:
    """Where a run starts: its config, the backend's state at ``step``, the metrics kept,
    the checkpoint resumed from and the notes to show."""

    run: RunConfig
    state: Any
    step: int
    records: list[dict[str, Any]]
    checkpoint: Path | None
    notes: tuple[str, ...]


def _resume_start(
    be: Backend,
    run_dir: Path,
    *,
    config: RunConfig | None,
    steps: int | None,
    reschedule: bool,
    fits: Callable[[Any, Path], None],
    main: bool = True,
) -> _Start:
    """The state of the run in ``run_dir`` at its last checkpoint (``fits(info, path)``
    checks the checkpoint against the tokenizer and grammar); ``main``: this process cuts
    ``metrics.jsonl`` back to it."""
    from gramophone.backends import checkpoint as ckpt

    existing = latest_checkpoint(run_dir)
    if existing is None:
        raise TrainingError(f"{run_dir}: no checkpoint to resume from (start without --resume)")
    info = ckpt.read_info(existing)
    fits(info, existing)
    if info.backend not in (None, be.name):
        raise TrainingError(
            f"{existing}: the run was trained with backend {info.backend!r}; resume it with "
            f"--backend {info.backend} (its optimizer state is {info.backend}'s)"
        )
    stored = RunConfig(
        info.model,
        info.train or TrainConfig(),
        DataConfig.from_dict(info.meta.get("data") or {}),
        str(info.meta.get("source", f"checkpoint {existing}")),
    )
    _check_resume_config(config, stored, steps)
    run, notes = _resumed_run(stored, run_dir, info.step, steps, reschedule)
    state = be.load_state(existing, run.train)
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= info.step and not r.get("final")]
    if main:
        _rewrite_metrics(run_dir, records)
    return _Start(run, state, info.step, records, existing, notes)


def _fresh_start(
    be: Backend,
    run_dir: Path,
    *,
    config: RunConfig | None,
    steps: int | None,
    reschedule: bool,
    vocab_size: int,
) -> _Start:
    """A new run: ``config`` (default: the default preset) over ``steps`` updates."""
    existing = latest_checkpoint(run_dir)
    if existing is not None:
        raise TrainingError(
            f"{run_dir}: already holds a training run ({existing.name}); "
            "pass --resume to continue it, or choose another --out"
        )
    if reschedule:
        raise TrainingError("--reschedule changes the schedule of a resumed run: use it with --resume")
    run = config or resolve_config(vocab_size)
    if steps is not None:
        run = _run_with_steps(run, steps)
    if run.model.vocab_size != vocab_size:
        raise TrainingError(
            f"model.vocab_size is {run.model.vocab_size} but the tokenizer has {vocab_size} tokens"
        )
    if run.train.seq_len > run.model.max_len:
        raise TrainingError(
            f"train.seq_len ({run.train.seq_len}) exceeds model.max_len ({run.model.max_len})"
        )
    state = be.init_state(be.init(run.model, seed=run.train.seed), run.train)
    return _Start(run, state, 0, [], None, run.notes)


class _RunFolder:
    """The run folder while training: ``run.json``, ``metrics.jsonl`` (appended), the
    checkpoints (each written whole, ``LATEST`` naming the newest, old ones pruned).
    ``writes``: False on the processes of a data-parallel run but the main one, where
    nothing here touches the disk."""

    def __init__(
        self, run_dir: Path, be: Backend, start: _Start, tokenizer: MusicTokenizer, replicas: DataParallel
    ) -> None:
        self.path, self.be, self.tokenizer = run_dir, be, tokenizer
        self.records = start.records
        self.elapsed0 = float(self.records[-1].get("time", 0.0)) if self.records else 0.0
        self.t0 = time.perf_counter()
        self.world_size, self.writes = replicas.world_size, replicas.main

    def open(self, run: RunConfig, *, new: bool) -> None:
        """Create the folder (a new run) and write ``run.json``; one-line errors."""
        if not self.writes:
            return
        try:
            if new:
                self.path.mkdir(parents=True, exist_ok=True)
                _rewrite_metrics(self.path, self.records)
            record = {"backend": self.be.name, "world_size": self.world_size, **run.to_dict()}
            atomic_write(self.path / RUN_FILE, json.dumps(record, indent=2) + "\n")
        except OSError as exc:  # named by the file in the way (os.replace's target), else the folder
            where = exc.filename2 or (self.path if self.path.exists() else None) or exc.filename
            raise TrainingError(f"{where}: cannot write the run folder ({exc.strerror})") from None

    def log(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        record["time"] = round(self.elapsed0 + time.perf_counter() - self.t0, 3)
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        self.records.append(record)

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> Path:
        if not self.writes:  # the main process writes it
            return _step_dir(self.path, step)

        def fill(tmp: Path) -> None:
            self.be.save_state(tmp, state, meta=meta)
            self.tokenizer.save(tmp / TOKENIZER_FILE)

        path = _write_dir_atomically(_step_dir(self.path, step), fill)
        atomic_write(self.path / CHECKPOINTS / LATEST, path.name + "\n")
        _prune(self.path, path)
        return path


def train(
    out: str | os.PathLike[str],
    *,
    backend: str | Backend = "torch",
    config: RunConfig | None = None,
    resume: bool = False,
    steps: int | None = None,
    reschedule: bool = False,
    stop_after: int | None = None,
    checkpoint_every: int = 100,
    eval_every: int | None = None,
    val_windows: int | None = 32,
    final_eval: bool = True,
    progress: bool = True,
    dataset: Dataset | None = None,
    tokenizer: MusicTokenizer | None = None,
    automaton: Automaton | None = None,
    on_note: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> TrainResult:
    """Train (or resume) a model on the run's data (``config.data``: the chorales by
    default, or MIDI folders tokenized by ``workers`` processes,
    :func:`~gramophone.data.corpus.load_data`) into the run folder ``out``.

    ``config``: the run config (default: :data:`DEFAULT_PRESET`; on resume, the
    checkpoint's, and a different one is an error). ``steps`` replaces the total number
    of updates. The learning-rate schedule (warmup, total steps, peak, decay) is fixed
    when the run starts and stored with it; on resume it continues unchanged, and a
    ``steps`` other than the run's own is an error unless ``reschedule`` (then the cosine
    decay is recomputed to end at ``steps``, from the resumed step on). ``stop_after``:
    stop after that many updates (counted from 0, checkpointing there) without
    finishing, as an interruption would; resuming continues the same schedule.
    ``on_note`` receives notes (a shortened warmup, a changed schedule; default: stderr).
    Checkpoints every ``checkpoint_every`` updates and at the end; validation (on a fixed
    subset of ``val_windows`` windows, all when ``None``) every ``eval_every`` (default:
    ``checkpoint_every``). At the end: ``model/`` (parameters only), and with
    ``final_eval`` the full validation and test NLL in ``eval.json``.

    Under ``torchrun`` (torch) or with several JAX devices the run is data-parallel (see the
    module notes): every process calls this with the same arguments, and only the main one
    writes; the others return a :class:`TrainResult` with ``main`` False.
    """
    from gramophone.backends import get_backend
    from gramophone.models import check_compatible, checkpoint_meta
    from gramophone.tokenizers import load_tokenizer, model_automaton

    if checkpoint_every < 1:
        raise TrainingError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    be = get_backend(backend) if isinstance(backend, str) else backend
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: not a folder (--out names the run folder)")
    tok = tokenizer if tokenizer is not None else load_tokenizer()
    grammar = automaton if automaton is not None else model_automaton(tok)
    replicas = be.data_parallel()  # before any state: DDP wraps the module, JAX places it
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and replicas.processes != launched:  # every process would write the run alone
        raise TrainingError(
            f"{launched} processes were started (WORLD_SIZE={launched}), but the {be.name} backend "
            "does not train across them: torchrun is for --backend torch (or hf); JAX uses every "
            "device of one process, and jax.distributed across hosts"
        )
    notes = (on_note or _note) if replicas.main else (lambda message: None)
    progress = progress and replicas.main
    if resume:
        fits = lambda info, path: check_compatible(info.meta, info.model.vocab_size, tok, grammar, where=path)  # noqa: E731
        start = _resume_start(
            be, run_dir, config=config, steps=steps, reschedule=reschedule, fits=fits, main=replicas.main
        )
    else:
        start = _fresh_start(
            be, run_dir, config=config, steps=steps, reschedule=reschedule, vocab_size=len(grammar.vocab)
        )
    if start.run.train.batch_size < replicas.processes:
        raise TrainingError(
            f"train.batch_size ({start.run.train.batch_size}) is smaller than the number of "
            f"processes ({replicas.processes}): each process needs a row of the batch"
        )
    if start.run.train.fim_rate > 0 and "Bar_None" not in tok.vocab:
        raise TrainingError(
            f"train.fim_rate {start.run.train.fim_rate} needs Bar tokens (fill-in-the-middle cuts "
            f"windows at bars); this {type(tok).__name__} tokenizer has none: set fim_rate to 0"
        )
    for note in start.notes:
        notes(note)
    # The data before the run folder: a corpus that cannot be built leaves nothing behind.
    if dataset is None:  # built by the main process; the others read it from the cache after
        if not replicas.main:
            replicas.barrier()
        dataset = load_data(tok, grammar, start.run.data, workers=workers, progress=progress, on_note=notes)
        if replicas.main:
            replicas.barrier()
    data = dataset
    if data.automaton_hash != grammar.hash or tuple(data.vocab) != tuple(grammar.vocab):
        raise TrainingError("the dataset was built for another tokenizer or grammar")
    folder = _RunFolder(run_dir, be, start, tok, replicas)
    folder.open(start.run, new=not resume)
    meta = checkpoint_meta(
        tok, grammar, data=start.run.data.to_dict(), corpus=data.corpus, source=start.run.source
    )
    tc = start.run.train
    end = tc.total_steps if stop_after is None else min(tc.total_steps, stop_after)
    state, last, last_ckpt = _train_loop(
        folder,
        start,
        data,
        meta,
        end=end,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every or checkpoint_every,
        val_windows=val_windows,
        progress=progress,
        rows=replicas.rows() if replicas.processes > 1 else None,
    )
    step_reached = max(start.step, end)
    world = replicas.world_size
    if not replicas.main:  # the main process saves, evaluates and exports; wait for it
        replicas.close()
        return TrainResult(run_dir, step_reached, None, None, {}, last, world, main=False)
    if step_reached < tc.total_steps:  # stopped early on purpose: no export
        replicas.close()
        return TrainResult(run_dir, step_reached, last_ckpt, None, {}, last, world)
    if last_ckpt is None or be.state_step(state) != step_reached:
        last_ckpt = folder.save(step_reached, state, meta)
    evaluation = _final_evaluation(folder, state, data, start.run, step_reached) if final_eval else {}
    extra = {"evaluation": evaluation} if evaluation else None
    model_dir = export_model(last_ckpt, run_dir / MODEL_DIR, extra_meta=extra)
    plot_metrics(run_dir)
    replicas.close()
    return TrainResult(run_dir, step_reached, last_ckpt, model_dir, evaluation, last, world)


def _train_loop(
    folder: _RunFolder,
    start: _Start,
    data: Dataset,
    meta: Mapping[str, Any],
    *,
    end: int,
    checkpoint_every: int,
    eval_every: int,
    val_windows: int | None,
    progress: bool,
    rows: slice | None = None,
) -> tuple[Any, dict[str, float], Path | None]:
    """Updates ``start.step + 1 .. end``: log each, validate every ``eval_every``,
    checkpoint every ``checkpoint_every`` and at ``end``. Returns the state, the last
    update's metrics and the last checkpoint. ``rows``: this process's rows of each batch
    (a data-parallel run; the main process alone logs, validates and checkpoints)."""
    be, tc, state = folder.be, start.run.train, start.state
    split, val = data["train"], data["validation"]
    eval_batch = eval_batch_size(tc.seq_len, len(data.vocab))
    fim = fim_tokens(data.vocab) if tc.fim_rate > 0 else None
    last: dict[str, float] = {}
    last_ckpt = start.checkpoint
    ema: float | None = None
    bar = tqdm(
        total=tc.total_steps,
        initial=start.step,
        desc=f"train ({be.name})",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        for step in range(start.step, end):
            ts = time.perf_counter()
            own = rows if fim is None else None  # FIM draws over the whole batch: made whole first
            batch = train_batch(split, tc.seq_len, tc.batch_size, tc.seed, step, rows=own)
            if fim is not None:
                batch = fim_batch(batch, tc.fim_rate, tc.seed, step, fim)
                batch = batch if rows is None else {k: v[rows] for k, v in batch.items()}
            state, metrics = be.train_step(state, batch)
            dt = time.perf_counter() - ts
            done = step + 1
            last = {k: float(v) for k, v in metrics.items()}
            folder.log(
                {
                    "step": done,
                    "split": "train",
                    **last,
                    "tokens_per_s": round(tc.batch_size * tc.seq_len / dt, 1),
                    "world_size": folder.world_size,
                }
            )
            ema = last["loss"] if ema is None else 0.9 * ema + 0.1 * last["loss"]
            bar.update(1)
            postfix = {"loss": f"{ema:.3f}"}
            if folder.writes and (done % eval_every == 0 or done == end):
                params = be.state_params(state)
                v = evaluate_split(
                    be, params, val, tc.seq_len, batch_size=eval_batch, max_windows=val_windows
                )
                folder.log({"step": done, "split": "validation", "subset": val_windows, **v})
                postfix["val_nll"] = f"{v['nll']:.3f}"
                if done < tc.total_steps:  # the finished run is plotted once, at the end
                    plot_metrics(folder.path)
            bar.set_postfix(postfix)
            if done % checkpoint_every == 0 or done == end:
                last_ckpt = folder.save(done, state, meta)
    return state, last, last_ckpt


def _final_evaluation(
    folder: _RunFolder, state: Any, data: Dataset, run: RunConfig, step: int
) -> dict[str, dict[str, float]]:
    """Full validation and test NLL, logged and written to ``eval.json``."""
    be, seq_len = folder.be, run.train.seq_len
    params = be.state_params(state)
    evaluation: dict[str, dict[str, float]] = {}
    for name in ("validation", "test"):
        evaluation[name] = evaluate_split(
            be, params, data[name], seq_len, batch_size=eval_batch_size(seq_len, len(data.vocab))
        )
        folder.log({"step": step, "split": name, "final": True, **evaluation[name]})
    report = {"step": step, "backend": be.name, "world_size": folder.world_size, "source": run.source}
    report |= evaluation
    report["train_time_s"] = folder.records[-1]["time"] if folder.records else 0.0
    atomic_write(folder.path / EVAL_FILE, json.dumps(report, indent=2) + "\n")
    return evaluation
