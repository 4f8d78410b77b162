"""DistributedDataParallel under ``torchrun``: the process group its environment describes.

``torchrun --standalone --nproc_per_node=N -m gramophone train --backend torch ...`` starts
N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. :func:`join` initialises the default process group from them (gloo on
the CPU, NCCL on GPUs, each process on the GPU ``LOCAL_RANK``), unless the caller has done it
already, and a second gloo group with no practical time limit for the waits on the host (the
main process building the corpus or evaluating while the others wait). Without
``WORLD_SIZE`` > 1 nothing is joined: one process, as before.

How the torch backend trains in such a group (:class:`~.backend.TorchTraining`): the module
is wrapped in ``DistributedDataParallel``; rank ``r`` of ``N`` feeds rows ``r::N`` of the
global batch; its loss is its share of the global weighted mean (numerators over the global
weight total, :func:`all_sum`), times ``N`` since DDP averages gradients over the ranks, so
the gradient is the global batch's; the metrics are summed over the ranks.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from gramophone.backends.base import DataParallel

__all__ = ["all_sum", "join"]

# Host-side waits (a corpus built by rank 0, its final evaluation) may take hours.
HOST_WAIT = timedelta(days=7)


def all_sum(x: Tensor) -> Tensor:
    """``x`` summed over the ranks of the default group (in place; returned)."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def join(device: torch.device) -> tuple[DataParallel, torch.device]:
    """Join the run's process group (see the module notes): how this process takes part,
    and the device it trains on (``cuda:LOCAL_RANK`` for a CUDA ``device``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not dist.is_initialized():
        return DataParallel(), device
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE is {size} but this torch has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    size, rank = dist.get_world_size(), dist.get_rank()
    host = dist.new_group(backend="gloo", timeout=HOST_WAIT) if size > 1 else None

    def barrier() -> None:
        if host is not None:
            dist.barrier(group=host)

    def close() -> None:
        barrier()
        if created:
            dist.destroy_process_group()

    return DataParallel(size, size, rank, barrier, close), device
