"""The interface every model backend implements, framework-neutral in its signatures.

At the boundary arrays are numpy: ``ids`` int32[B, T], logits float32[..., V]. What a
backend hands back and takes again without looking inside is opaque: ``params`` (a
``torch.nn.Module`` or a JAX pytree), a training ``state`` and a decoding ``cache``.

A training batch is a mapping of numpy arrays::

    {"inputs":  int32[B, T],
     "targets": int32[B, T],
     "weights": float32[B, T],      # 0 on padding
     "allowed": bool[B, T, V]}      # tokens the grammar allows at each target position;
                                    # needed by "ce+structural" and "masked", optional for "ce"

Decoding uses a fixed-size KV cache of ``cache_len`` (<= ``max_len``) positions:
``prefill`` runs the prompt and fills positions ``[0, T)``; ``decode_step`` writes the
token at ``position`` and attends to positions ``<= position`` (a mask by position, so
rows of a batch may be at different positions). The cache returned must be used in the
next call (the torch backend updates it in place, the JAX backend returns a new one).

A third backend subclasses :class:`Backend`, implements the abstract methods, and is
registered with :func:`gramophone.backends.register_backend`.

**Data parallelism.** Training asks the backend once, before it makes a state, how this
process takes part in a data-parallel run (:meth:`Backend.data_parallel`, a
:class:`DataParallel`): the torch backend joins the process group ``torchrun`` describes
(DistributedDataParallel), the JAX backend shards the batch over every device
(``jax.distributed`` across hosts). A backend that does neither trains in one process.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gramophone.backends import checkpoint as ckpt
from gramophone.backends.config import ModelConfig, TrainConfig
from gramophone.errors import CheckpointError

__all__ = [
    "Backend",
    "Batch",
    "Checkpoint",
    "DataParallel",
    "check_ids",
    "check_positions",
    "init_weights",
    "sinusoidal_positions",
]

Batch = Mapping[str, np.ndarray]
Params = Any  # backend-specific, opaque to callers
State = Any
Cache = Any

# LayerNorm epsilon, the same in both frameworks (torch's default; flax's is 1e-6).
LN_EPS = 1e-5
# Standard deviation of the normal initialisation of weights and embeddings; the two
# residual projections of each block are scaled by 1/sqrt(2 * n_layers) (GPT-2).
INIT_STD = 0.02


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
    """float32[max_len, d_model]: ``pe[p, 2i] = sin(p / 10000^(2i/d))``, ``pe[p, 2i+1] = cos(..)``.

    Computed once in float64 and shared by both backends, so they add identical values.
    """
    pos = np.arange(max_len, dtype=np.float64)[:, None]  # (L, 1)
    inv_freq = np.exp(-np.log(10000.0) * np.arange(0, d_model, 2) / d_model)  # (D/2,)
    pe = np.zeros((max_len, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(pos * inv_freq)
    pe[:, 1::2] = np.cos(pos * inv_freq)
    return pe.astype(np.float32)


def check_ids(ids: np.ndarray, vocab_size: int, what: str = "token ids") -> np.ndarray:
    """``ids`` as int32; a ``ValueError`` unless every id is in ``[0, vocab_size)`` (torch
    would fail on the device, JAX would silently clamp the lookup)."""
    arr = np.asarray(ids)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"{what} outside the vocabulary [0, {vocab_size}): min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int32, copy=False)


def check_positions(position: int | np.ndarray, batch: int, cache_len: int) -> np.ndarray:
    """``position`` broadcast to int32[batch]; a ``ValueError`` unless ``0 <= p < cache_len``
    (out of range, torch would fail on the device and JAX would silently drop the write)."""
    pos = np.broadcast_to(np.asarray(position, dtype=np.int64), (batch,))
    if pos.min(initial=0) < 0 or pos.max(initial=0) >= cache_len:
        raise ValueError(f"decode position {pos.tolist()} outside the cache [0, {cache_len})")
    return pos.astype(np.int32)


def init_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial parameters in the checkpoint layout, from numpy's PCG64 seeded by ``seed``.

    Both backends initialise from this, so the same seed gives the same model in either
    framework (and initialisation never compiles anything). Weight matrices and the token
    embedding ~ N(0, 0.02); the two residual projections of each block (``attn.proj``,
    ``mlp.proj``) ~ N(0, 0.02 / sqrt(2 n_layers)); biases 0; LayerNorm scales 1.
    """
    rng = np.random.default_rng(seed)
    resid_std = INIT_STD / np.sqrt(2 * config.n_layers)
    out: dict[str, np.ndarray] = {}
    for name, shape in ckpt.expected_shapes(config).items():
        if name.endswith("bias"):
            arr = np.zeros(shape)
        elif len(shape) == 1:  # LayerNorm scale
            arr = np.ones(shape)
        else:
            std = resid_std if name.endswith("proj.weight") else INIT_STD
            arr = rng.normal(0.0, std, size=shape)
        out[name] = arr.astype(np.float32)
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint: parameters in the backend's form plus ``config.json``."""

    params: Params
    model: ModelConfig
    train: TrainConfig | None
    step: int
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class DataParallel:
    """How this process takes part in data-parallel training (:meth:`Backend.data_parallel`).

    The global batch of a step is what a one-process run of the same config trains on
    (:func:`~gramophone.data.dataset.train_batch`); ``processes`` processes each feed the
    rows :meth:`rows` of it, and ``world_size`` replicas (torch: the processes; JAX: the
    devices of every process) compute one update from the whole of it. Process 0 (``main``)
    alone writes the run folder. ``barrier()`` waits for every process (no time limit: the
    main process may be building the corpus); ``close()`` ends the run's group (a barrier
    first), once training is over.
    """

    world_size: int = 1
    processes: int = 1
    process: int = 0
    barrier: Callable[[], None] = field(default=_nothing, compare=False, repr=False)
    close: Callable[[], None] = field(default=_nothing, compare=False, repr=False)

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder (checkpoints, metrics, the model)."""
        return self.process == 0

    def rows(self) -> slice:
        """The rows of the global batch this process feeds: ``process::processes``."""
        return slice(self.process, None, self.processes)


class Backend(ABC):
    """One framework's implementation of the gramophone Transformer."""

    name: ClassVar[str]
    #: file names of this backend's optimizer state inside a checkpoint directory
    optimizer_files: ClassVar[tuple[str, ...]] = ()

    # ----------------------------------------------------------------- parameters

    def init(self, config: ModelConfig, seed: int = 0) -> Params:
        """Fresh parameters from :func:`init_weights`: the same ``seed`` gives identical
        parameters, in this backend and in every other."""
        return self.from_numpy(init_weights(config, seed), config)

    @abstractmethod
    def config_of(self, params: Params) -> ModelConfig:
        """The model configuration ``params`` were built for."""

    @abstractmethod
    def to_numpy(self, params: Params) -> dict[str, np.ndarray]:
        """Name -> float32 array in the checkpoint layout (:func:`checkpoint.expected_shapes`)."""

    @abstractmethod
    def from_numpy(self, weights: Mapping[str, np.ndarray], config: ModelConfig) -> Params:
        """Parameters from arrays in the checkpoint layout."""

    # ----------------------------------------------------------------- inference

    @abstractmethod
    def logits(self, params: Params, ids: np.ndarray) -> np.ndarray:
        """Full causal forward pass (no dropout): int32[B, T] -> float32[B, T, V]."""

    @abstractmethod
    def prefill(
        self, params: Params, ids: np.ndarray, cache_len: int | None = None, lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, Cache]:
        """Run a prompt and build a KV cache of ``cache_len`` positions (default ``max_len``).

        ``ids`` int32[B, T] with ``T <= cache_len``; ``lengths`` int32[B] (default ``T``)
        for right-padded prompts of different lengths. Returns float32[B, V], the logits
        after the last real token of each row (position ``lengths - 1``), and the cache.
        """

    @abstractmethod
    def decode_step(
        self, params: Params, token: np.ndarray, cache: Cache, position: int | np.ndarray
    ) -> tuple[np.ndarray, Cache]:
        """Feed ``token`` int32[B] at ``position`` (int or int32[B], ``< cache_len``).

        Returns float32[B, V], the logits for the next position, and the updated cache.
        """

    # ----------------------------------------------------------------- training

    def data_parallel(self) -> DataParallel:
        """Join the data-parallel run this process belongs to, if any, and say how it takes
        part; training calls it once, before :meth:`init_state` or :meth:`load_state`, and
        the states made after it train data-parallel. Default: one process, one replica."""
        return DataParallel()

    @abstractmethod
    def evaluate(self, params: Params, batch: Batch, train: TrainConfig) -> dict[str, float]:
        """Batch losses without dropout or update: ``loss`` (objective of ``train.loss``),
        ``nll`` and, with ``allowed`` in the batch, ``structural`` (weighted means)."""

    @abstractmethod
    def init_state(self, params: Params, train: TrainConfig, step: int = 0) -> State:
        """A training state (parameters + fresh AdamW state) starting at update ``step``."""

    @abstractmethod
    def train_step(self, state: State, batch: Batch) -> tuple[State, dict[str, float]]:
        """One update. Metrics: ``loss``, ``nll``, ``structural`` (if ``allowed``),
        ``grad_norm`` (before clipping), ``lr`` (used by this update).
        Use the returned state (the old one may have been updated in place or donated).
        A state made after :meth:`data_parallel` takes this process's rows of the global
        batch (:meth:`DataParallel.rows`), and the update and metrics are the global batch's."""

    @abstractmethod
    def state_params(self, state: State) -> Params:
        """The current parameters of a training state."""

    @abstractmethod
    def state_step(self, state: State) -> int:
        """How many updates the state has taken."""

    @abstractmethod
    def state_train(self, state: State) -> TrainConfig:
        """The training configuration of a state."""

    @abstractmethod
    def _optimizer_writers(self, state: State) -> dict[str, Callable[[Path], object]]:
        """File name -> writer of this backend's optimizer state (see ``optimizer_files``)."""

    @abstractmethod
    def _restore_optimizer(self, state: State, info: ckpt.CheckpointInfo) -> State:
        """``state`` with its optimizer state read from the checkpoint's files."""

    # ----------------------------------------------------------------- checkpoints

    def save(
        self,
        path: str | os.PathLike[str],
        params: Params,
        *,
        train: TrainConfig | None = None,
        step: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``params`` (no optimizer state) as a checkpoint directory."""
        return ckpt.save_checkpoint(
            path,
            self.to_numpy(params),
            self.config_of(params),
            train=train,
            step=step,
            meta=meta,
            backend=self.name,
        )

    def save_state(
        self, path: str | os.PathLike[str], state: State, *, meta: Mapping[str, Any] | None = None
    ) -> Path:
        """Write a training state (parameters + this backend's optimizer state)."""
        params = self.state_params(state)
        return ckpt.save_checkpoint(
            path,
            self.to_numpy(params),
            self.config_of(params),
            train=self.state_train(state),
            step=self.state_step(state),
            meta=meta,
            backend=self.name,
            extra_files=self._optimizer_writers(state),
        )

    def load(self, path: str | os.PathLike[str]) -> Checkpoint:
        """Read a checkpoint written by any backend; raises :class:`CheckpointError`."""
        info = ckpt.read_info(path)
        params = self.from_numpy(ckpt.read_weights(info), info.model)
        return Checkpoint(params, info.model, info.train, info.step, info.meta, info.path)

    def load_native(
        self, path: str | os.PathLike[str], tokenizer: Any, automaton: Any = None
    ) -> Checkpoint | None:
        """A checkpoint in this backend's own framework format (the ``hf`` backend: a
        ``save_pretrained`` folder), loaded and checked against ``tokenizer`` (and
        ``automaton``); :func:`gramophone.models.load_checkpoint` asks this first. ``None``
        (the default): gramophone's checkpoint format, which ``load_checkpoint`` reads."""
        del path, tokenizer, automaton
        return None

    def export_native(self, info: ckpt.CheckpointInfo, dest: Path, meta: Mapping[str, Any]) -> None:
        """Fill the new folder ``dest`` with the model of a training checkpoint that holds no
        gramophone weights (``info.files`` has no ``model.safetensors``: this backend wrote
        its own), in this backend's own format, with ``meta``; what
        :func:`gramophone.training.export_model` calls for such a checkpoint (``hf``: a
        ``save_pretrained`` folder)."""
        del dest, meta
        raise CheckpointError(f"{info.path}: the {self.name} backend has no model format of its own")

    def load_state(self, path: str | os.PathLike[str], train: TrainConfig | None = None) -> State:
        """A training state to resume from: parameters and step of the checkpoint, and this
        backend's optimizer state when the checkpoint has it (else a fresh one).
        ``train`` overrides the stored training configuration."""
        info = ckpt.read_info(path)
        train = train or info.train or TrainConfig()
        params = self.from_numpy(ckpt.read_weights(info), info.model)
        state = self.init_state(params, train, step=info.step)
        if self.optimizer_files and all(n in info.files for n in self.optimizer_files):
            state = self._restore_optimizer(state, info)
        return state
