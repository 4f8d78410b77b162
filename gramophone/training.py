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
                                    ``gramophone decode --checkpoint OUT/model`` loads
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

**Metrics.** Per training step: ``loss`` (the objective), ``nll`` (cross-entropy in nats
per token, no smoothing), ``structural`` (``-log`` of the mass on allowed tokens),
``grad_norm``, ``lr``, ``tokens_per_s``. Validation (:func:`evaluate_split`, from the
logits and the allowed masks of the data, the same code for both backends): ``nll`` per
target token, ``forbidden_mass`` (mean probability the model puts on tokens the grammar
forbids), ``nll_masked`` (the NLL after renormalising over the allowed tokens, what
hard-masked decoding samples from).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from gramophone.backends.config import ModelConfig, TrainConfig, get_preset
from gramophone.data.cache import atomic_write_bytes
from gramophone.data.dataset import DataConfig, Dataset, TokenSplit, load_dataset, train_batch
from gramophone.errors import CheckpointError, GramophoneError

if TYPE_CHECKING:
    from miditok import REMI

    from gramophone.backends import Backend
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
EVAL_TOKENS = 16384  # tokens per evaluation batch (windows = this // seq_len)
_CONFIG_SECTIONS = ("model", "train", "data")


class TrainingError(GramophoneError, ValueError):
    """A training run cannot start: a bad config, nothing to resume, a run in the way."""


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: model shape, optimisation, data; ``source`` says
    where it came from (``preset chorales``, ``config FILE``, ``checkpoint DIR``)."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "data": self.data.to_dict(),
            "source": self.source,
        }


def resolve_config(
    vocab_size: int,
    preset: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    steps: int | None = None,
) -> RunConfig:
    """The run config of a preset (default :data:`DEFAULT_PRESET`) or a JSON file.

    The file holds ``{"model": {...}, "train": {...}, "data": {...}}``: fields of
    :class:`ModelConfig` (``vocab_size`` may be left out: it is the tokenizer's),
    :class:`TrainConfig` (defaults for what is left out) and :class:`DataConfig`
    (optional). ``steps`` replaces ``train.total_steps`` (and caps the warmup).
    Every problem is one :class:`TrainingError` line naming the file or preset.
    """
    if preset is not None and config_file is not None:
        raise TrainingError("give --preset or --config, not both")
    data = DataConfig()
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
            if raw.get("data") is not None:
                data = DataConfig.from_dict(raw["data"])
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
    if steps is not None:
        train = with_steps(train, steps)
    if train.seq_len > model.max_len:
        raise TrainingError(
            f"{source}: train.seq_len ({train.seq_len}) exceeds model.max_len ({model.max_len})"
        )
    return RunConfig(model, train, data, source)


def with_steps(train: TrainConfig, steps: int) -> TrainConfig:
    """``train`` with ``total_steps = steps`` (warmup capped at ``steps``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TrainingError(f"--steps must be a positive integer, got {steps!r}")
    return train.replace(total_steps=steps, warmup_steps=min(train.warmup_steps, steps))


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
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".step-*"):  # temporary folders of killed runs
        shutil.rmtree(path, ignore_errors=True)


def export_model(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], extra_meta: Mapping[str, Any] | None = None
) -> Path:
    """Copy a checkpoint's parameters (no optimizer state) + ``tokenizer.json`` to ``dest``.

    ``source`` is a checkpoint folder or a run folder (its ``model/``, else its latest
    checkpoint). Framework-free: reads and writes safetensors. ``extra_meta`` is merged
    into the meta (e.g. evaluation figures).
    """
    from gramophone.backends import checkpoint as ckpt

    src = Path(source)
    if not (src / ckpt.CONFIG_FILE).is_file():
        found = src / MODEL_DIR if (src / MODEL_DIR / ckpt.CONFIG_FILE).is_file() else latest_checkpoint(src)
        if found is None:
            raise CheckpointError(f"{src}: neither a checkpoint nor a run folder with one")
        src = found
    info = ckpt.read_info(src)
    weights = ckpt.read_weights(info)
    meta = {**info.meta, **(extra_meta or {})}

    def fill(tmp: Path) -> None:
        ckpt.save_checkpoint(tmp, weights, info.model, train=info.train, step=info.step, meta=meta)
        if (src / TOKENIZER_FILE).is_file():
            shutil.copyfile(src / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        for f in tmp.iterdir():  # temporary files are private (0600); a model is to be shared
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
    tmp = run_dir / f".{PLOT_FILE}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
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


def train(
    out: str | os.PathLike[str],
    *,
    backend: str | Backend = "torch",
    config: RunConfig | None = None,
    resume: bool = False,
    steps: int | None = None,
    stop_after: int | None = None,
    checkpoint_every: int = 100,
    eval_every: int | None = None,
    val_windows: int | None = 32,
    final_eval: bool = True,
    progress: bool = True,
    dataset: Dataset | None = None,
    tokenizer: REMI | None = None,
    automaton: Automaton | None = None,
) -> TrainResult:
    """Train (or resume) a model on the chorales into the run folder ``out``.

    ``config``: the run config (default: :data:`DEFAULT_PRESET`; on resume, the
    checkpoint's, and a different one is an error). ``steps`` replaces the total number
    of updates (the schedule's length). ``stop_after``: stop after that many updates
    (counted from 0, checkpointing there) without finishing, as an interruption would.
    Checkpoints every ``checkpoint_every`` updates and at the end; validation (on a fixed
    subset of ``val_windows`` windows, all when ``None``) every ``eval_every`` (default:
    ``checkpoint_every``). At the end: ``model/`` (parameters only), and with
    ``final_eval`` the full validation and test NLL in ``eval.json``.
    """
    from gramophone.backends import checkpoint as ckpt
    from gramophone.backends import get_backend
    from gramophone.models import check_compatible, checkpoint_meta
    from gramophone.tokenizers import load_tokenizer, model_automaton

    if checkpoint_every < 1:
        raise TrainingError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    be = get_backend(backend) if isinstance(backend, str) else backend
    run_dir = Path(out)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    automaton = automaton if automaton is not None else model_automaton(tokenizer)
    vocab_size = len(automaton.vocab)

    existing = latest_checkpoint(run_dir)
    if resume:
        if existing is None:
            raise TrainingError(f"{run_dir}: no checkpoint to resume from (start without --resume)")
        info = ckpt.read_info(existing)
        check_compatible(info.meta, info.model.vocab_size, tokenizer, automaton, where=existing)
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
        run = (
            stored
            if steps is None
            else RunConfig(stored.model, with_steps(stored.train, steps), stored.data, stored.source)
        )
        start = info.step
        if run.train.total_steps < start:
            raise TrainingError(
                f"{existing}: the run is at step {start}, beyond --steps {run.train.total_steps}"
            )
        state = be.load_state(existing, run.train)
        records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start and not r.get("final")]
        _rewrite_metrics(run_dir, records)
    else:
        if existing is not None:
            raise TrainingError(
                f"{run_dir}: already holds a training run ({existing.name}); "
                "pass --resume to continue it, or choose another --out"
            )
        run = config or resolve_config(vocab_size)
        if steps is not None:
            run = RunConfig(run.model, with_steps(run.train, steps), run.data, run.source)
        if run.model.vocab_size != vocab_size:
            raise TrainingError(
                f"model.vocab_size is {run.model.vocab_size} but the tokenizer has {vocab_size} tokens"
            )
        if run.train.seq_len > run.model.max_len:
            raise TrainingError(
                f"train.seq_len ({run.train.seq_len}) exceeds model.max_len ({run.model.max_len})"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        params = be.init(run.model, seed=run.train.seed)
        state = be.init_state(params, run.train)
        start = 0
        records = []
        _rewrite_metrics(run_dir, records)
    atomic_write_bytes(
        run_dir / RUN_FILE,
        (json.dumps({"backend": be.name, **run.to_dict()}, indent=2) + "\n").encode(),
    )

    data = dataset if dataset is not None else load_dataset(tokenizer, automaton, run.data, progress=progress)
    if data.automaton_hash != automaton.hash or tuple(data.vocab) != tuple(automaton.vocab):
        raise TrainingError("the dataset was built for another tokenizer or grammar")
    meta = checkpoint_meta(
        tokenizer, automaton, data=run.data.to_dict(), corpus=data.corpus, source=run.source
    )
    tc = run.train
    end = tc.total_steps if stop_after is None else min(tc.total_steps, stop_after)
    eval_every = eval_every or checkpoint_every
    eval_batch = max(1, EVAL_TOKENS // tc.seq_len)
    elapsed0 = float(records[-1].get("time", 0.0)) if records else 0.0
    t0 = time.perf_counter()
    last_ckpt = existing if resume else None

    def save(step: int) -> Path:
        def fill(tmp: Path) -> None:
            be.save_state(tmp, state, meta=meta)
            tokenizer.save(tmp / TOKENIZER_FILE)

        path = _write_dir_atomically(_step_dir(run_dir, step), fill)
        atomic_write_bytes(run_dir / CHECKPOINTS / LATEST, (path.name + "\n").encode())
        _prune(run_dir, path)
        return path

    def log(record: dict[str, Any]) -> None:
        record["time"] = round(elapsed0 + time.perf_counter() - t0, 3)
        with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        records.append(record)

    split = data["train"]
    val = data["validation"]
    last: dict[str, float] = {}
    bar = tqdm(
        total=tc.total_steps,
        initial=start,
        desc=f"train ({be.name})",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    ema: float | None = None
    with bar:
        for step in range(start, end):
            ts = time.perf_counter()
            batch = train_batch(split, tc.seq_len, tc.batch_size, tc.seed, step)
            state, metrics = be.train_step(state, batch)
            dt = time.perf_counter() - ts
            done = step + 1
            last = {k: float(v) for k, v in metrics.items()}
            log(
                {
                    "step": done,
                    "split": "train",
                    **last,
                    "tokens_per_s": round(tc.batch_size * tc.seq_len / dt, 1),
                }
            )
            ema = last["loss"] if ema is None else 0.9 * ema + 0.1 * last["loss"]
            bar.update(1)
            postfix = {"loss": f"{ema:.3f}"}
            if done % eval_every == 0 or done == end:
                v = evaluate_split(
                    be,
                    be.state_params(state),
                    val,
                    tc.seq_len,
                    batch_size=eval_batch,
                    max_windows=val_windows,
                )
                log({"step": done, "split": "validation", "subset": val_windows, **v})
                postfix["val_nll"] = f"{v['nll']:.3f}"
                if done < tc.total_steps:  # the finished run is plotted once, below
                    plot_metrics(run_dir)
            bar.set_postfix(postfix)
            if done % checkpoint_every == 0 or done == end:
                last_ckpt = save(done)
    step_reached = max(start, end)
    if step_reached < tc.total_steps:  # stopped early on purpose: no export
        return TrainResult(run_dir, step_reached, last_ckpt, None, {}, last)

    if last_ckpt is None or be.state_step(state) != step_reached:
        last_ckpt = save(step_reached)
    evaluation: dict[str, dict[str, float]] = {}
    if final_eval:
        params = be.state_params(state)
        for name in ("validation", "test"):
            evaluation[name] = evaluate_split(be, params, data[name], tc.seq_len, batch_size=eval_batch)
            log({"step": step_reached, "split": name, "final": True, **evaluation[name]})
        report = {"step": step_reached, "backend": be.name, "source": run.source, **evaluation}
        report["train_time_s"] = records[-1]["time"] if records else 0.0
        atomic_write_bytes(run_dir / EVAL_FILE, (json.dumps(report, indent=2) + "\n").encode())
    extra = {"evaluation": evaluation} if evaluation else None
    model_dir = export_model(last_ckpt, run_dir / MODEL_DIR, extra_meta=extra)
    plot_metrics(run_dir)
    return TrainResult(run_dir, step_reached, last_ckpt, model_dir, evaluation, last)
