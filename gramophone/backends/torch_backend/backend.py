"""The PyTorch backend: numpy at the boundary, :class:`GPT` inside.

``params`` is the ``GPT`` module itself. Training is plain PyTorch: AdamW with two
parameter groups (decay on matrices and embeddings only), ``LambdaLR`` with
:func:`~gramophone.backends.config.learning_rate`, ``clip_grad_norm_``. Dropout draws from
a generator seeded by ``(seed, step)`` inside ``torch.random.fork_rng``, so a run is
reproducible and resumable without touching torch's global random state.

That training half is :class:`TorchTraining`, a mixin over any ``nn.Module`` that maps
``inputs`` to logits (:meth:`TorchTraining._forward`); the ``hf`` backend
(:mod:`gramophone.hf`) trains transformers models with it. Only parameters that require
gradients are optimised (a LoRA fine-tune freezes the rest). Under ``torchrun`` it trains
with ``DistributedDataParallel`` (:mod:`~gramophone.backends.torch_backend.distributed`):
each rank takes its rows of the global batch, and the update is the global batch's.

For decoding loops that stay on the device (no host sync per step) use the module's own
``GPT.prefill`` / ``GPT.decode_step`` on tensors; the methods here convert to numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch spelling)
from torch import Tensor

from gramophone.backends import checkpoint as ckpt
from gramophone.backends.base import Backend, Batch, DataParallel, check_ids, check_positions
from gramophone.backends.config import ModelConfig, TrainConfig, learning_rate
from gramophone.backends.torch_backend.model import GPT, KVCache
from gramophone.errors import CheckpointError

__all__ = ["TorchBackend", "TorchTrainState", "TorchTraining", "compute_losses"]

OPTIMIZER_FILE = "optimizer-torch.pt"


@dataclass
class TorchTrainState:
    """Mutable training state: the module, its optimizer and schedule, the update count;
    ``ddp``: the module wrapped in ``DistributedDataParallel`` (under ``torchrun``)."""

    model: Any  # GPT, or a transformers model (the hf backend)
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train: TrainConfig
    step: int = 0
    ddp: Any = None


def compute_losses(
    logits: Tensor, batch: Mapping[str, Tensor], train: TrainConfig, denom: Tensor | None = None
) -> dict[str, Tensor]:
    """Weighted-mean losses (scalars) of ``logits`` (B, T, V) against ``batch``; the same
    formulas as :mod:`gramophone.backends.losses_ref`. ``denom``: the weight total to divide
    by (default: the batch's); a data-parallel rank passes the global batch's, so that its
    losses are its shares of the global means."""
    targets, weights = batch["targets"].long(), batch["weights"].float()
    allowed = batch.get("allowed")
    eps = train.label_smoothing
    denom = (weights.sum() if denom is None else denom).clamp_min(1e-8)

    def mean(x: Tensor) -> Tensor:
        return (x * weights).sum() / denom

    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    nll = -logp.gather(-1, targets[..., None])[..., 0]  # (B, T)
    ce = (1 - eps) * nll - eps * logp.mean(dim=-1)  # (B, T)
    out = {"nll": mean(nll)}
    if allowed is None:
        if train.loss != "ce":
            raise ValueError(f"loss {train.loss!r} needs 'allowed' in the batch")
        out["loss"] = mean(ce)
        return out
    # the target always counts as allowed (see losses_ref)
    allow = allowed.bool().scatter(-1, targets[..., None], True)  # (B, T, V)
    structural = -torch.logsumexp(logp.masked_fill(~allow, -torch.inf), dim=-1)  # (B, T)
    out["structural"] = mean(structural)
    if train.loss == "ce":
        out["loss"] = mean(ce)
    elif train.loss == "ce+structural":
        out["loss"] = mean(ce + train.structural_weight * structural)
    else:  # masked: renormalise over the allowed tokens
        logq = F.log_softmax(logits.float().masked_fill(~allow, -torch.inf), dim=-1)
        smooth = -logq.masked_fill(~allow, 0.0).sum(-1) / allow.sum(-1)  # (B, T)
        masked = (1 - eps) * -logq.gather(-1, targets[..., None])[..., 0] + eps * smooth
        out["loss"] = mean(masked)
    return out


class TorchTraining:
    """The training half of a PyTorch backend (see the module notes), for any module whose
    :meth:`_forward` gives logits ``(B, T, V)`` and whose ``config.vocab_size`` is ``V``.
    Needs ``self.device``; the optimizer state is the file ``optimizer_files[0]``."""

    device: torch.device
    optimizer_files: ClassVar[tuple[str, ...]] = (OPTIMIZER_FILE,)
    _replicas: DataParallel = DataParallel()  # what data_parallel() joined

    def _forward(self, model: Any, inputs: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` of ``inputs`` ``(B, T)`` (train or eval mode as set)."""
        out: Tensor = model(inputs)
        return out

    # ----------------------------------------------------------------- helpers

    def _tensor(self, x: np.ndarray | Tensor, dtype: torch.dtype) -> Tensor:
        if isinstance(x, Tensor):
            return x.to(self.device, dtype)
        arr = np.asarray(x)
        if not arr.flags.writeable:  # torch wants writable memory (e.g. broadcast views)
            arr = arr.copy()
        return torch.as_tensor(arr, device=self.device).to(dtype)

    def _batch(self, batch: Batch, vocab_size: int) -> dict[str, Tensor]:
        check_ids(batch["inputs"], vocab_size, "inputs")
        check_ids(batch["targets"], vocab_size, "targets")
        out = {
            "inputs": self._tensor(batch["inputs"], torch.long),
            "targets": self._tensor(batch["targets"], torch.long),
            "weights": self._tensor(batch["weights"], torch.float32),
        }
        if batch.get("allowed") is not None:
            out["allowed"] = self._tensor(batch["allowed"], torch.bool)
        return out

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Seed torch's generators inside, restore the caller's random state after."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # ----------------------------------------------------------------- training

    def data_parallel(self) -> DataParallel:
        """Join the process group ``torchrun`` describes (gloo on the CPU, NCCL on GPUs, this
        process on ``cuda:LOCAL_RANK``); states made afterwards train with DDP, until the
        returned ``close()``."""
        from gramophone.backends.torch_backend.distributed import join

        joined, self.device = join(self.device)

        def close() -> None:
            joined.close()
            self._replicas = DataParallel()

        self._replicas = dataclasses.replace(joined, close=close)
        return self._replicas

    @torch.no_grad()
    def evaluate(self, params: Any, batch: Batch, train: TrainConfig) -> dict[str, float]:
        params.eval()
        b = self._batch(batch, params.config.vocab_size)
        return {k: float(v) for k, v in compute_losses(self._forward(params, b["inputs"]), b, train).items()}

    def init_state(self, params: Any, train: TrainConfig, step: int = 0) -> TorchTrainState:
        trainable = [p for p in params.parameters() if p.requires_grad]  # all but frozen (LoRA)
        decay = [p for p in trainable if p.dim() >= 2]  # matrices, embeddings
        no_decay = [p for p in trainable if p.dim() < 2]  # biases, LayerNorm
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": train.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=train.lr,
            betas=(train.beta1, train.beta2),
            eps=train.eps,
        )
        for group in optimizer.param_groups:
            group["initial_lr"] = train.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: learning_rate(s, train) / train.lr,
            last_epoch=step - 1,
        )
        ddp = None
        if self._replicas.world_size > 1:  # buffers are constants: not synchronised each step
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            ddp = DistributedDataParallel(params, device_ids=ids, forward_sync_buffers=False)
        return TorchTrainState(params, optimizer, scheduler, train, step, ddp)

    def train_step(self, state: TorchTrainState, batch: Batch) -> tuple[TorchTrainState, dict[str, float]]:
        model, train = state.model, state.train
        net = model if state.ddp is None else state.ddp
        net.train()
        b = self._batch(batch, model.config.vocab_size)
        lr = state.scheduler.get_last_lr()[0]
        rank = self._replicas.process  # 0 alone: the masks of a one-process run
        with self._seeded(train.seed * 1_000_003 + state.step + (rank << 40)):  # dropout masks
            logits = self._forward(net, b["inputs"])
            if state.ddp is None:
                losses = compute_losses(logits, b, train)
                objective = losses["loss"]
            else:  # this rank's share of the global means; DDP averages gradients over ranks
                from gramophone.backends.torch_backend.distributed import all_sum

                losses = compute_losses(logits, b, train, denom=all_sum(b["weights"].sum()))
                objective = losses["loss"] * self._replicas.world_size
            state.optimizer.zero_grad(set_to_none=True)
            objective.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm)
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        if state.ddp is not None:  # the global batch's means: the ranks' shares summed
            from gramophone.backends.torch_backend.distributed import all_sum

            total = all_sum(torch.stack([v.detach() for v in losses.values()]))
            losses = dict(zip(losses, total, strict=True))
        metrics = {k: float(v.detach()) for k, v in losses.items()}
        metrics |= {"grad_norm": float(grad_norm), "lr": float(lr)}
        return state, metrics

    def state_params(self, state: TorchTrainState) -> Any:
        return state.model

    def state_step(self, state: TorchTrainState) -> int:
        return state.step

    def state_train(self, state: TorchTrainState) -> TrainConfig:
        return state.train

    def _optimizer_writers(self, state: TorchTrainState) -> dict[str, Callable[[Path], object]]:
        # the schedule is a function of the step: rebuilt on load, not stored
        payload = {"optimizer": state.optimizer.state_dict(), "step": state.step}
        return {self.optimizer_files[0]: lambda tmp: torch.save(payload, tmp)}

    def _restore_optimizer(self, state: TorchTrainState, info: ckpt.CheckpointInfo) -> TorchTrainState:
        path = ckpt.file_path(info, self.optimizer_files[0])
        assert path is not None
        try:
            payload = torch.load(path, map_location=self.device, weights_only=True)
            state.optimizer.load_state_dict(payload["optimizer"])
        except Exception as exc:  # torch raises many kinds on a bad file
            raise CheckpointError(f"{path}: cannot restore the optimizer ({exc})") from None
        if payload.get("step") != info.step:
            raise CheckpointError(
                f"{path}: optimizer is at step {payload.get('step')} but {ckpt.CONFIG_FILE} says {info.step}"
            )
        # the stored groups carry the rate of the stored schedule: the state's own applies
        for group, lr in zip(state.optimizer.param_groups, state.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        return state


class TorchBackend(TorchTraining, Backend):
    """PyTorch implementation. ``device`` defaults to CUDA when available, else CPU."""

    name = "torch"
    optimizer_files = (OPTIMIZER_FILE,)

    def __init__(self, device: str | torch.device | None = None) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    # ----------------------------------------------------------------- parameters

    def config_of(self, params: GPT) -> ModelConfig:
        return params.config

    def to_numpy(self, params: GPT) -> dict[str, np.ndarray]:
        return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in params.state_dict().items()}

    def from_numpy(self, weights: Mapping[str, np.ndarray], config: ModelConfig) -> GPT:
        ckpt.check_weights(weights, config, "weights")
        with self._seeded(0):  # construction draws default inits we overwrite
            model = GPT(config)
        model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()})
        return model.to(self.device)

    # ----------------------------------------------------------------- inference

    @torch.inference_mode()
    def logits(self, params: GPT, ids: np.ndarray) -> np.ndarray:
        params.eval()
        ids = check_ids(ids, params.config.vocab_size)
        return params(self._tensor(ids, torch.long)).float().cpu().numpy()

    @torch.inference_mode()
    def prefill(
        self, params: GPT, ids: np.ndarray, cache_len: int | None = None, lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, KVCache]:
        params.eval()
        ids_t = self._tensor(check_ids(ids, params.config.vocab_size), torch.long)
        lengths_t = None if lengths is None else self._tensor(lengths, torch.long)
        logits, cache = params.prefill(ids_t, cache_len or params.config.max_len, lengths_t)
        return logits.float().cpu().numpy(), cache

    @torch.inference_mode()
    def decode_step(
        self, params: GPT, token: np.ndarray, cache: KVCache, position: int | np.ndarray
    ) -> tuple[np.ndarray, KVCache]:
        params.eval()
        token_t = self._tensor(check_ids(token, params.config.vocab_size), torch.long)
        pos = self._tensor(check_positions(position, len(token_t), cache.cache_len), torch.long)
        logits, cache = params.decode_step(token_t, cache, pos)
        return logits.float().cpu().numpy(), cache
