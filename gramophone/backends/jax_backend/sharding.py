"""Data parallelism in JAX: the batch sharded over every device, hosts joined by ``jax.distributed``.

:func:`join` first joins a multi-process run when the environment describes one:
``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) with ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``, or a SLURM or Open MPI job of more than one task (JAX's own detection of
the cluster). Then, with more than one device in all, a :class:`~jax.sharding.Mesh` over
``jax.devices()`` with one axis, ``data``: the training state is replicated on every device
(:func:`replicate`) and the batch's rows are split over them (:func:`shard_rows`); the jitted
step is unchanged, and XLA sums its weighted means over the whole batch, so an update is the
one a single device makes from the same global batch. On the CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX is imported) makes N
devices of one host's cores. With one device nothing here is used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gramophone.backends.base import DataParallel

__all__ = ["DATA_AXIS", "join", "local_copy", "replicate", "shard_rows"]

DATA_AXIS = "data"


def _cluster_processes() -> int:
    """Tasks of a SLURM step or an Open MPI job (JAX detects either), else 1."""
    env = os.environ
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env:
        return int(env.get("SLURM_NTASKS", "1"))
    if "OMPI_MCA_orte_hnp_uri" in env:
        return int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
    return 1


def _initialize_distributed() -> None:
    """``jax.distributed.initialize`` when the environment describes several processes."""
    if jax.distributed.is_initialized():
        return
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        count, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
        jax.distributed.initialize(
            num_processes=None if count is None else int(count),
            process_id=None if index is None else int(index),
        )
    elif _cluster_processes() > 1:
        jax.distributed.initialize()


def join() -> tuple[DataParallel, Mesh | None]:
    """Join the run (see the module notes): how this process takes part, and the mesh over
    every device (``None`` for a single device: nothing is sharded)."""
    _initialize_distributed()
    devices, processes, process = jax.device_count(), jax.process_count(), jax.process_index()
    if devices == 1:
        return DataParallel(), None
    mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))

    def barrier() -> None:
        if processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("gramophone")

    return DataParallel(devices, processes, process, barrier, barrier), mesh


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` (values this process holds: numpy or one device's) as one
    array replicated on every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x: Any) -> jax.Array:
        arr = np.asarray(x)
        return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])

    return jax.tree.map(put, tree)


def local_copy(tree: Any) -> Any:
    """A replicated ``tree`` as arrays on one of this process's devices (no copy): what
    evaluation and checkpoints read on the main process alone."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def shard_rows(batch: Mapping[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    """This process's rows of a global batch of ``global_rows`` rows, split over the devices
    of ``mesh`` along the ``data`` axis. Rows are added (copies of the first, ``weights``
    0) up to the same count on every process, a multiple of its devices: they change no sum,
    so the weighted means stay the global batch's."""
    local = len(mesh.local_devices)
    processes = jax.process_count()
    n = len(batch["weights"])
    rows = n if processes == 1 else -(-global_rows // processes)
    if n > rows:
        raise ValueError(f"{n} rows on this process, more than its share ({rows}) of {global_rows}")
    per_process = math.ceil(rows / local) * local
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    out: dict[str, jax.Array] = {}
    for key, value in batch.items():
        arr = np.asarray(value)
        if per_process > n:
            extra = np.repeat(arr[:1], per_process - n, axis=0)
            if key == "weights":
                extra = np.zeros_like(extra)
            arr = np.concatenate([arr, extra])
        out[key] = jax.make_array_from_process_local_data(sharding, arr)
    return out
