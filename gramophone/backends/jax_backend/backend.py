"""The JAX/Flax backend: numpy at the boundary, pure jitted functions inside.

``params`` is a :class:`JaxParams` pytree (the Flax ``params`` tree plus its static
:class:`ModelConfig`), so every function below is jitted once per configuration.
The module-level functions (:func:`forward`, :func:`prefill`, :func:`decode_step`,
:func:`train_step`) are the ones to call inside a ``lax.while_loop`` or a training driver;
the :class:`JaxBackend` methods wrap them with numpy conversions.

Optimiser: ``optax.chain(clip_by_global_norm, scale_by_adam, add_decayed_weights)`` followed
by ``-lr(step)`` — the composition ``optax.adamw`` is made of, with the learning rate read
from the state's own step counter so that a resumed run (fresh or restored optimizer) follows
the same schedule as the torch backend. Weight decay applies to matrices and embeddings only.

Training on several devices (:meth:`JaxBackend.data_parallel`, :mod:`.sharding`): the state
is replicated over a one-axis mesh of every device, the batch's rows are split over it, and
the same :func:`train_step` is jitted for that placement (its outputs kept replicated).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from gramophone.backends import checkpoint as ckpt
from gramophone.backends.base import Backend, Batch, DataParallel, check_ids, check_positions
from gramophone.backends.config import ModelConfig, TrainConfig
from gramophone.backends.jax_backend.model import (
    GPT,
    from_checkpoint_names,
    to_checkpoint_names,
)
from gramophone.errors import CheckpointError

__all__ = [
    "JaxBackend",
    "JaxKVCache",
    "JaxParams",
    "JaxTrainState",
    "compute_losses",
    "decode_step",
    "evaluate",
    "forward",
    "learning_rate",
    "make_optimizer",
    "prefill",
    "train_step",
]

OPTIMIZER_FILE = "optimizer-jax.safetensors"
Array = jax.Array


@flax.struct.dataclass
class JaxParams:
    """The Flax ``params`` tree and (static) the configuration it was built for."""

    tree: Any
    config: ModelConfig = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class JaxKVCache:
    """Keys and values of every layer, (L, B, nh, S, hs) each."""

    k: Array
    v: Array


@flax.struct.dataclass
class JaxTrainState:
    step: Array  # int32 scalar: updates taken
    params: JaxParams
    opt_state: Any
    train: TrainConfig = flax.struct.field(pytree_node=False)


# ------------------------------------------------------------------ inference


@jax.jit
def forward(params: JaxParams, ids: Array) -> Array:
    """int32[B, T] -> float32[B, T, V], no dropout."""
    return cast(Array, GPT(params.config).apply({"params": params.tree}, ids))


@functools.partial(jax.jit, static_argnames=("cache_len",))
def prefill(params: JaxParams, ids: Array, lengths: Array, cache_len: int) -> tuple[Array, JaxKVCache]:
    """Prompt ``ids`` int32[B, T], ``lengths`` int32[B] -> (float32[B, V], cache)."""
    out = GPT(params.config).apply({"params": params.tree}, ids, lengths, cache_len, method=GPT.prefill)
    logits, (k, v) = cast(tuple[Array, tuple[Array, Array]], out)
    return logits, JaxKVCache(k, v)


@functools.partial(jax.jit, donate_argnames=("cache",))
def decode_step(
    params: JaxParams, token: Array, cache: JaxKVCache, positions: Array
) -> tuple[Array, JaxKVCache]:
    """``token`` int32[B] at ``positions`` int32[B] -> (float32[B, V], new cache).
    The cache passed in is donated: use the returned one."""
    out = GPT(params.config).apply(
        {"params": params.tree}, token, (cache.k, cache.v), positions, method=GPT.decode
    )
    logits, (k, v) = cast(tuple[Array, tuple[Array, Array]], out)
    return logits, JaxKVCache(k, v)


# ------------------------------------------------------------------ losses and training


def compute_losses(logits: Array, batch: Mapping[str, Array], train: TrainConfig) -> dict[str, Array]:
    """Weighted-mean losses (scalars) of ``logits`` (B, T, V) against ``batch``; the same
    formulas as :mod:`gramophone.backends.losses_ref`."""
    targets, weights = batch["targets"], batch["weights"].astype(jnp.float32)
    allowed = batch.get("allowed")
    eps = train.label_smoothing
    denom = jnp.maximum(weights.sum(), 1e-8)

    def mean(x: Array) -> Array:
        return (x * weights).sum() / denom

    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)  # (B, T, V)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    ce = (1 - eps) * nll - eps * logp.mean(axis=-1)  # (B, T)
    out = {"nll": mean(nll)}
    if allowed is None:
        if train.loss != "ce":
            raise ValueError(f"loss {train.loss!r} needs 'allowed' in the batch")
        out["loss"] = mean(ce)
        return out
    # the target always counts as allowed (see losses_ref)
    V = logits.shape[-1]
    allow = allowed.astype(bool) | jax.nn.one_hot(targets, V, dtype=bool)  # (B, T, V)
    structural = -jax.nn.logsumexp(jnp.where(allow, logp, -jnp.inf), axis=-1)  # (B, T)
    out["structural"] = mean(structural)
    if train.loss == "ce":
        out["loss"] = mean(ce)
    elif train.loss == "ce+structural":
        out["loss"] = mean(ce + train.structural_weight * structural)
    else:  # masked: renormalise over the allowed tokens
        logq = jax.nn.log_softmax(jnp.where(allow, logits, -jnp.inf), axis=-1)
        smooth = -jnp.where(allow, logq, 0.0).sum(-1) / allow.sum(-1)  # (B, T)
        tgt = jnp.take_along_axis(logq, targets[..., None], axis=-1)[..., 0]
        out["loss"] = mean((1 - eps) * -tgt + eps * smooth)
    return out


@functools.partial(jax.jit, static_argnames=("train",))
def evaluate(params: JaxParams, batch: Mapping[str, Array], train: TrainConfig) -> dict[str, Array]:
    return compute_losses(forward(params, batch["inputs"]), batch, train)


def learning_rate(step: Array, train: TrainConfig) -> Array:
    """:func:`gramophone.backends.config.learning_rate` in jnp (traceable)."""
    s = jnp.asarray(step, jnp.float32)
    warm = train.lr * (s + 1) / max(train.warmup_steps, 1)
    progress = jnp.clip((s - train.warmup_steps) / max(1, train.total_steps - train.warmup_steps), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress))
    decayed = train.lr * (train.min_lr_ratio + (1.0 - train.min_lr_ratio) * cosine)
    return jnp.where(s < train.warmup_steps, warm, decayed)


@functools.cache
def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """Clipping + Adam + decoupled weight decay; the ``-lr`` scaling is done by train_step."""
    return optax.chain(
        optax.clip_by_global_norm(train.clip_norm),
        optax.scale_by_adam(b1=train.beta1, b2=train.beta2, eps=train.eps),
        optax.add_decayed_weights(train.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
    )


@functools.partial(jax.jit, donate_argnames=("state",))
def train_step(state: JaxTrainState, batch: Mapping[str, Array]) -> tuple[JaxTrainState, dict[str, Array]]:
    """One AdamW update; pure, jitted once per (model, train) configuration.
    The state passed in is donated: use the returned one."""
    train, config = state.train, state.params.config
    # Dropout masks depend on (seed, step) only, so runs are reproducible and resumable.
    # "rbg" (XLA's RngBitGenerator) compiles several times faster than threefry on CPU.
    dropout_rng = jax.random.fold_in(jax.random.key(train.seed, impl="rbg"), state.step)

    def loss_fn(tree: Any) -> tuple[Array, dict[str, Array]]:
        logits = cast(
            Array,
            GPT(config).apply(
                {"params": tree}, batch["inputs"], deterministic=False, rngs={"dropout": dropout_rng}
            ),
        )
        losses = compute_losses(logits, batch, train)
        return losses["loss"], losses

    grads, losses = jax.grad(loss_fn, has_aux=True)(state.params.tree)
    tx = make_optimizer(train)
    updates, opt_state = tx.update(grads, state.opt_state, state.params.tree)
    lr = learning_rate(state.step, train)
    tree = jax.tree.map(lambda p, u: p - lr * u, state.params.tree, updates)
    new_state = dataclasses.replace(
        state, step=state.step + 1, params=dataclasses.replace(state.params, tree=tree), opt_state=opt_state
    )
    return new_state, {**losses, "grad_norm": optax.tree.norm(grads), "lr": lr}


@functools.cache
def _replicated_train_step(mesh: jax.sharding.Mesh) -> Callable[..., tuple[JaxTrainState, dict[str, Array]]]:
    """:func:`train_step` jitted for a state replicated on ``mesh`` and a batch split over it
    (its outputs replicated: the state stays where it was)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = cast(Any, train_step).__wrapped__  # the Python function under jit
    return jax.jit(step, donate_argnames=("state",), out_shardings=replicated)


# ------------------------------------------------------------------ the backend


def _floats(metrics: Mapping[str, Array]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


class JaxBackend(Backend):
    """JAX/Flax implementation, on JAX's default device."""

    name = "jax"
    optimizer_files = (OPTIMIZER_FILE,)
    _mesh: jax.sharding.Mesh | None = None  # every device, after data_parallel()

    def _batch(self, batch: Batch, vocab_size: int) -> dict[str, Array]:
        out = {
            "inputs": jnp.asarray(check_ids(batch["inputs"], vocab_size, "inputs")),
            "targets": jnp.asarray(check_ids(batch["targets"], vocab_size, "targets")),
            "weights": jnp.asarray(batch["weights"], jnp.float32),
        }
        if batch.get("allowed") is not None:
            out["allowed"] = jnp.asarray(batch["allowed"], bool)
        return out

    # ----------------------------------------------------------------- parameters

    def config_of(self, params: JaxParams) -> ModelConfig:
        return params.config

    def to_numpy(self, params: JaxParams) -> dict[str, np.ndarray]:
        return to_checkpoint_names(jax.device_get(params.tree))

    def from_numpy(self, weights: Mapping[str, np.ndarray], config: ModelConfig) -> JaxParams:
        ckpt.check_weights(weights, config, "weights")
        return JaxParams(from_checkpoint_names(weights), config)

    # ----------------------------------------------------------------- inference

    def logits(self, params: JaxParams, ids: np.ndarray) -> np.ndarray:
        ids_j = jnp.asarray(check_ids(ids, params.config.vocab_size))
        return np.asarray(forward(params, ids_j))

    def prefill(
        self,
        params: JaxParams,
        ids: np.ndarray,
        cache_len: int | None = None,
        lengths: np.ndarray | None = None,
    ) -> tuple[np.ndarray, JaxKVCache]:
        ids_j = jnp.asarray(check_ids(ids, params.config.vocab_size))
        B, T = ids_j.shape
        cache_len = cache_len or params.config.max_len
        if not T <= cache_len <= params.config.max_len:
            raise ValueError(
                f"need prompt length {T} <= cache_len {cache_len} <= max_len {params.config.max_len}"
            )
        lengths_j = jnp.full((B,), T, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
        logits, cache = prefill(params, ids_j, lengths_j, cache_len)
        return np.asarray(logits), cache

    def decode_step(
        self, params: JaxParams, token: np.ndarray, cache: JaxKVCache, position: int | np.ndarray
    ) -> tuple[np.ndarray, JaxKVCache]:
        token_j = jnp.asarray(check_ids(token, params.config.vocab_size))
        positions = jnp.asarray(check_positions(position, len(token_j), cache.k.shape[3]))
        logits, cache = decode_step(params, token_j, cache, positions)
        return np.asarray(logits), cache

    # ----------------------------------------------------------------- training

    def data_parallel(self) -> DataParallel:
        """Join a multi-host run (``jax.distributed``) when the environment describes one, and
        with several devices in all train on every one of them (:mod:`.sharding`)."""
        from gramophone.backends.jax_backend.sharding import join

        replicas, self._mesh = join()
        return replicas

    def evaluate(self, params: JaxParams, batch: Batch, train: TrainConfig) -> dict[str, float]:
        return _floats(evaluate(params, self._batch(batch, params.config.vocab_size), train))

    def init_state(self, params: JaxParams, train: TrainConfig, step: int = 0) -> JaxTrainState:
        # copy: train_step donates the state, the caller keeps its params
        tree = jax.tree.map(jnp.array, params.tree)
        state = JaxTrainState(
            jnp.asarray(step, jnp.int32),
            dataclasses.replace(params, tree=tree),
            make_optimizer(train).init(tree),
            train,
        )
        return self._placed(state)

    def _placed(self, state: JaxTrainState) -> JaxTrainState:
        """``state`` replicated on every device after :meth:`data_parallel` (else as it is)."""
        if self._mesh is None:
            return state
        from gramophone.backends.jax_backend.sharding import replicate

        return cast(JaxTrainState, replicate(state, self._mesh))

    def train_step(self, state: JaxTrainState, batch: Batch) -> tuple[JaxTrainState, dict[str, float]]:
        if self._mesh is None:
            batch_j = self._batch(batch, state.params.config.vocab_size)
            state, metrics = train_step(state, batch_j)
            return state, _floats(metrics)
        from gramophone.backends.jax_backend.sharding import shard_rows

        V = state.params.config.vocab_size
        host = {
            "inputs": check_ids(batch["inputs"], V, "inputs"),
            "targets": check_ids(batch["targets"], V, "targets"),
            "weights": np.asarray(batch["weights"], np.float32),
        }
        if batch.get("allowed") is not None:
            host["allowed"] = np.asarray(batch["allowed"], bool)
        sharded = shard_rows(host, self._mesh, state.train.batch_size)
        state, metrics = _replicated_train_step(self._mesh)(state, sharded)
        return state, _floats(metrics)

    def state_params(self, state: JaxTrainState) -> JaxParams:
        if self._mesh is not None:  # evaluation and checkpoints: one device's copy
            from gramophone.backends.jax_backend.sharding import local_copy

            return cast(JaxParams, local_copy(state.params))
        return state.params

    def state_step(self, state: JaxTrainState) -> int:
        return int(state.step)

    def state_train(self, state: JaxTrainState) -> TrainConfig:
        return state.train

    def _optimizer_writers(self, state: JaxTrainState) -> dict[str, Callable[[Path], object]]:
        opt_state = state.opt_state
        if self._mesh is not None:
            from gramophone.backends.jax_backend.sharding import local_copy

            opt_state = local_copy(opt_state)
        leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
        arrays = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
        metadata = {"step": str(int(state.step))}
        return {OPTIMIZER_FILE: lambda tmp: save_file(arrays, str(tmp), metadata=metadata)}

    def _restore_optimizer(self, state: JaxTrainState, info: ckpt.CheckpointInfo) -> JaxTrainState:
        path = ckpt.file_path(info, OPTIMIZER_FILE)
        assert path is not None
        try:
            with safe_open(str(path), framework="numpy") as f:
                stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupted ({exc})") from None
        if metadata.get("step") != str(info.step):
            raise CheckpointError(
                f"{path}: optimizer is at step {metadata.get('step')} but {ckpt.CONFIG_FILE} says {info.step}"
            )
        template, treedef = jax.tree_util.tree_flatten_with_path(state.opt_state)
        leaves = []
        for key_path, leaf in template:
            key = jax.tree_util.keystr(key_path)
            arr = stored.get(key)
            if arr is None or arr.shape != leaf.shape or arr.dtype != leaf.dtype:
                found = "missing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
                raise CheckpointError(
                    f"{path}: optimizer entry {key} is {found}, expected {leaf.dtype}{list(leaf.shape)}"
                )
            leaves.append(arr)
        opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
        if self._mesh is not None:
            from gramophone.backends.jax_backend.sharding import replicate

            return dataclasses.replace(state, opt_state=replicate(opt_state, self._mesh))
        return dataclasses.replace(state, opt_state=jax.tree.map(jnp.asarray, opt_state))
