"""Model and training configuration: frozen dataclasses, the one source of truth.

Both backends read these and nothing else; a checkpoint's ``config.json`` stores
``ModelConfig.to_dict()`` and ``TrainConfig.to_dict()`` and reads them back with
``from_dict`` (unknown or missing keys are an error, never silently dropped).

>>> cfg = ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=2, d_ff=64)
>>> ModelConfig.from_dict(cfg.to_dict()) == cfg
True
>>> round(learning_rate(0, TrainConfig(lr=1e-3, warmup_steps=10)), 6)
0.0001
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

__all__ = [
    "LOSSES",
    "PRESETS",
    "LossName",
    "ModelConfig",
    "Preset",
    "TrainConfig",
    "get_preset",
    "learning_rate",
]

LossName = Literal["ce", "ce+structural", "masked"]
LOSSES: tuple[str, ...] = get_args(LossName)

_C = TypeVar("_C", "ModelConfig", "TrainConfig")


def _from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
    """Build ``cls`` from a mapping: unknown keys and missing required keys are errors."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**dict(data))
    except TypeError as exc:  # a missing required field
        raise ValueError(f"{cls.__name__}: {exc}") from None


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}")


def _check_float(
    owner: str,
    name: str,
    value: object,
    lo: float,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = True,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo):
        raise ValueError(f"{owner}.{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{owner}.{name} must be {'<' if hi_open else '<='} {hi}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder-only Transformer (identical in every backend).

    ``max_len`` bounds both the sinusoidal position table and the KV cache.
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    max_len: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        owner = "ModelConfig"
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            _check_int(owner, name, getattr(self, name), 1)
        _check_float(owner, "dropout", self.dropout, 0.0, 1.0)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.d_model % 2:
            raise ValueError(f"ModelConfig.d_model must be even (sinusoidal positions), got {self.d_model}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both backends (same formulas, same defaults).

    AdamW (``beta1``, ``beta2``, ``eps``; decoupled weight decay on matrices and
    embeddings only, not on biases or LayerNorm), global-norm gradient clipping at
    ``clip_norm``, and the learning rate of :func:`learning_rate`.
    ``loss`` is one of ``"ce"``, ``"ce+structural"``, ``"masked"``
    (see :mod:`gramophone.backends.losses_ref`).
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    total_steps: int = 2000
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    batch_size: int = 16
    seq_len: int = 256
    loss: LossName = "ce"
    structural_weight: float = 1.0
    seed: int = 0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    min_lr_ratio: float = 0.1
    fim_rate: float = 0.0  # share of training windows in fill-in-the-middle order (gramophone.data.fim)

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        _check_float(owner, "lr", self.lr, 0.0, lo_open=True)
        _check_float(owner, "weight_decay", self.weight_decay, 0.0)
        _check_int(owner, "warmup_steps", self.warmup_steps, 0)
        _check_int(owner, "total_steps", self.total_steps, 1)
        _check_float(owner, "clip_norm", self.clip_norm, 0.0, lo_open=True)
        _check_float(owner, "label_smoothing", self.label_smoothing, 0.0, 1.0)
        _check_int(owner, "batch_size", self.batch_size, 1)
        _check_int(owner, "seq_len", self.seq_len, 1)
        _check_float(owner, "structural_weight", self.structural_weight, 0.0)
        _check_int(owner, "seed", self.seed, 0)
        _check_float(owner, "beta1", self.beta1, 0.0, 1.0)
        _check_float(owner, "beta2", self.beta2, 0.0, 1.0)
        _check_float(owner, "eps", self.eps, 0.0)
        _check_float(owner, "min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, hi_open=False)
        _check_float(owner, "fim_rate", self.fim_rate, 0.0, 1.0, hi_open=False)
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(
                f"TrainConfig.warmup_steps ({self.warmup_steps}) must not exceed "
                f"total_steps ({self.total_steps})"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


def learning_rate(step: int, train: TrainConfig) -> float:
    """Learning rate used by update number ``step`` (0-based): linear warmup, cosine decay.

    Warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first
    update is not wasted). Then a cosine from ``lr`` down to ``lr * min_lr_ratio``
    reached at ``total_steps`` and held after it. Both backends implement exactly this.
    """
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    decay_steps = max(1, train.total_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.lr * (train.min_lr_ratio + (1.0 - train.min_lr_ratio) * cosine)


@dataclass(frozen=True)
class Preset:
    """A named model shape (everything but ``vocab_size``, known from the tokenizer) and
    its training settings."""

    name: str
    model: Mapping[str, Any] = field(hash=False)
    train: TrainConfig

    def model_config(self, vocab_size: int, **overrides: Any) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, **{**self.model, **overrides})


_CHORALES_SHAPE: Mapping[str, Any] = {
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 4,
    "d_ff": 512,
    "max_len": 512,
    "dropout": 0.1,
}
_CHORALES_TRAIN = TrainConfig(
    lr=1e-3,
    warmup_steps=50,
    total_steps=800,
    batch_size=8,
    seq_len=512,
    label_smoothing=0.0,
    loss="ce+structural",
    structural_weight=1.0,
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        model={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 128},
        train=TrainConfig(seq_len=64, batch_size=4, total_steps=20, warmup_steps=5),
    ),
    "small": Preset(
        name="small",
        model={"d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 1024, "max_len": 512},
        train=TrainConfig(),
    ),
    # The default: ~0.85M parameters (3.4 MB of float32), sized for ~35 minutes of training
    # on two shared CPU cores (~3.3M tokens); the bundled model is `chorales-long`. No label
    # smoothing: smoothing over the whole vocabulary puts mass on forbidden tokens, which is
    # exactly what the structural term removes (see the training notes in the README).
    "chorales": Preset(name="chorales", model=_CHORALES_SHAPE, train=_CHORALES_TRAIN),
    # The bundled model's recipe (gramophone/models/bundled, scripts/train_bundled.sh): the
    # `chorales` settings, 5x the updates (16.4M tokens) and twice the width (d_model 256,
    # d_ff 1024: ~3.3M parameters, 13 MB of float32). 800 updates left the small shape
    # undertrained (Pitch NLL ~3.0 nats, barely better with 512 tokens of context than with
    # 16); 4,000 updates of it used the context (gain 0.46 nats) but no more along the run;
    # the wider shape costs only ~1.4x per update on a CPU (attention and the softmax over
    # the vocabulary do not grow). Half of the windows are in fill-in-the-middle order
    # (gramophone.data.fim) so that --infill sees both sides.
    "chorales-long": Preset(
        name="chorales-long",
        model={**_CHORALES_SHAPE, "d_model": 256, "d_ff": 1024},
        train=_CHORALES_TRAIN.replace(warmup_steps=100, total_steps=4000, fim_rate=0.5),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
