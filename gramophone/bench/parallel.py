"""One data-parallel training measurement, run in the processes it measures.

``python -m gramophone.bench.parallel --backend torch|jax [--seq-len T] [--batch B]
[--warmup W] [--steps K]``, started by :func:`gramophone.bench.train.run` as one process
(JAX: over every device it sees, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) or
under ``torchrun --nproc_per_node=N`` (torch DDP). Every process trains the ``chorales``
preset's model on its rows of the same global batches of chorale windows, as
``gramophone train`` does (:meth:`~gramophone.backends.Backend.data_parallel`, rows
``p::P``); the main process prints one line ``RESULT {json}``: the global batch's tokens
per second over the ``K`` timed steps (wall time from before the first to after the last,
batch building included, after ``W`` untimed steps: JAX compiles in the first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "measure"]

PRESET = "chorales"


def measure(backend: str, seq_len: int, batch: int, warmup: int, steps: int) -> dict[str, Any] | None:
    """Train ``warmup + steps`` steps data-parallel; the main process's figures, else None."""
    import numpy as np

    from gramophone.backends import get_backend, get_preset
    from gramophone.data.dataset import load_dataset, train_batch

    be = get_backend(backend)
    replicas = be.data_parallel()
    dataset = load_dataset(progress=False)
    preset = get_preset(PRESET)
    model = preset.model_config(len(dataset.vocab))
    train = preset.train.replace(seq_len=seq_len, batch_size=batch, loss="ce+structural")
    state = be.init_state(be.init(model, seed=0), train)
    rows = replicas.rows() if replicas.processes > 1 else None
    split = dataset["train"]
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        part = train_batch(split, seq_len, batch, seed=123, step=step, rows=rows)
        state, metrics = be.train_step(state, part)  # host floats: synchronised
        if not np.isfinite(metrics["loss"]):
            raise RuntimeError(f"non-finite loss at step {step}")
    elapsed = time.perf_counter() - t0
    replicas.close()
    if not replicas.main:
        return None
    return {
        "backend": backend,
        "world_size": replicas.world_size,
        "processes": replicas.processes,
        "tokens_per_s": round(batch * seq_len * steps / elapsed, 1),
        "step_ms": round(elapsed / steps * 1e3, 1),
        "batch": batch,
        "seq_len": seq_len,
        "steps": steps,
        "warmup": warmup,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", required=True, choices=("torch", "jax"))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    result = measure(args.backend, args.seq_len, args.batch, args.warmup, args.steps)
    if result is not None:
        sys.stdout.write("RESULT " + json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
