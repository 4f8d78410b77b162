"""Training throughput: tokens/s per backend, the structural loss's share of a step, and
how much of the machine's matrix-multiply throughput a step uses.

Every figure is measured in one process on real batches of the chorale dataset
(:func:`~gramophone.data.dataset.train_batch`), with the default training shape
(the ``chorales`` preset, d_model 128; ``quick``: a shorter window and fewer steps):

* ``train_step`` / ``tokens_per_s`` and ``step_ms``: median over timed steps, after
  untimed warm-up steps (JAX compiles in the first), for ``ce`` (batch without the
  ``allowed`` masks) and ``ce+structural`` (with them), so
* ``structural_share`` = ``1 - t(ce) / t(ce+structural)``: what the grammar costs in a
  step, mask transfer and the extra log-sum-exp included;
* ``batch_ms``: building one batch on the host (window gather + allowed-row gather);
* ``gemm`` / ``gflops``: float32 matrix multiply (n = 1024) with numpy and torch,
  the machine's practical peak here;
* ``mfu`` / ``fraction_of_gemm``: achieved model FLOP/s over the best GEMM GFLOP/s,
  with the training FLOPs per token ``6 N + 12 L T d`` (N: parameters of the matrix
  multiplies, the output head included and the embedding lookup not; the attention
  term counts QK^T and AV forward and backward without causal savings, as in PaLM).

Data parallelism (:func:`data_parallel`, the ``parallel`` part): the same model trained on
1 and 2 replicas of the same global batch, each replica on one thread: torch processes under
``torchrun`` (DistributedDataParallel over gloo, ``OMP_NUM_THREADS=1``), and JAX devices of
one process (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` with Eigen's threading
off, so a device is one thread). Each configuration runs in processes of its own
(:mod:`gramophone.bench.parallel`), the best of a few interleaved runs; ``tokens_per_s`` is
the global batch's, batch building included, and the ``efficiency`` of 2 replicas is
``throughput(2) / (2 throughput(1))``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gramophone.backends.config import ModelConfig, TrainConfig, get_preset
from gramophone.bench.common import markdown_table, record

__all__ = ["PRESET", "data_parallel", "gemm_gflops", "markdown", "plots", "run", "train_flops_per_token"]

PRESET = "chorales"
BENCH = "train_step"
PARALLEL = "train_parallel"
PARTS = ("step", "parallel")
# One thread per JAX device, as OMP_NUM_THREADS=1 makes one per torch process.
JAX_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_HOW = {
    "torch": ("one process", "torchrun processes (DDP, gloo)"),
    "jax": ("one device", "forced CPU devices of one process"),
}


def train_flops_per_token(model: ModelConfig, seq_len: int) -> tuple[float, int]:
    """``(FLOPs per trained token, N)``: ``6 N + 12 L T d`` with ``N`` the parameters of
    the matrix multiplies (blocks + output head; no embedding lookup, LayerNorms, biases)."""
    D, F, V, L = model.d_model, model.d_ff, model.vocab_size, model.n_layers
    n = L * (3 * D * D + D * D + 2 * D * F) + V * D
    return 6.0 * n + 12.0 * L * seq_len * D, n


def gemm_gflops(which: str, n: int = 1024, repeat: int = 7) -> float:
    """Median float32 GEMM throughput (GFLOP/s) of ``n x n @ n x n`` with numpy or torch."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    fn: Callable[[], object]
    if which == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fn = lambda: torch.mm(ta, tb)  # noqa: E731
    else:
        fn = lambda: a @ b  # noqa: E731
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def _step_times(
    backend_name: str,
    model: ModelConfig,
    trains: Mapping[str, TrainConfig],
    batches: list[dict[str, np.ndarray]],
    warmup: int,
) -> dict[str, list[float]]:
    """Wall seconds of each timed step, per loss; the losses' steps alternate, so that a
    change of the machine's load hits both alike. ``ce`` steps get batches without
    ``allowed``."""
    from gramophone.backends import get_backend

    be = get_backend(backend_name)
    states = {loss: be.init_state(be.init(model, seed=0), train) for loss, train in trains.items()}
    times: dict[str, list[float]] = {loss: [] for loss in trains}
    for i, full in enumerate(batches):
        for loss in trains:
            batch = full if loss != "ce" else {k: v for k, v in full.items() if k != "allowed"}
            t0 = time.perf_counter()
            states[loss], metrics = be.train_step(states[loss], batch)  # host floats: synchronised
            dt = time.perf_counter() - t0
            if not np.isfinite(metrics["loss"]):
                raise RuntimeError(f"{backend_name}: non-finite {loss} loss at bench step {i}")
            if i >= warmup:
                times[loss].append(dt)
    return times


def run(quick: bool = False, parts: Sequence[str] = PARTS) -> list[dict[str, Any]]:
    """Measure (see the module notes): ``parts`` ``step`` (one process) and ``parallel``
    (:func:`data_parallel`); returns records."""
    records = _one_process(quick) if "step" in parts else []
    if "parallel" in parts:
        records += data_parallel(quick)
    return records


def _replica_run(backend: str, n: int, args: list[str]) -> dict[str, Any]:
    """One :mod:`gramophone.bench.parallel` measurement with ``n`` replicas."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    module = ["-m", "gramophone.bench.parallel", "--backend", backend, *args]
    if backend == "torch" and n > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            *module,
        ]
    else:
        cmd = [sys.executable, *module]
    if backend == "jax":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n} {JAX_ONE_THREAD}"
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{backend} with {n} replicas failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def data_parallel(quick: bool = False, rounds: int | None = None) -> list[dict[str, Any]]:
    """Tokens/s with 1 and 2 replicas per backend and the efficiency (see the module notes);
    the best of ``rounds`` runs of each configuration (default 2, ``quick`` 1), interleaved."""
    from gramophone.backends import available_backends
    from gramophone.data.dataset import load_dataset

    load_dataset(progress=False)  # built once, before processes read it at once
    T, B = (128, 4) if quick else (512, 8)
    warmup, steps = (1, 4) if quick else (2, 6)
    rounds = rounds or (1 if quick else 2)
    args = ["--seq-len", str(T), "--batch", str(B), "--warmup", str(warmup), "--steps", str(steps)]
    common = {"preset": PRESET, "batch": B, "seq_len": T, "timed_steps": steps, "rounds": rounds}
    records: list[dict[str, Any]] = []
    for backend in [b for b in ("torch", "jax") if b in available_backends()]:
        best: dict[int, dict[str, Any]] = {}
        load = round(os.getloadavg()[0], 2)
        for _ in range(rounds):
            for n in (1, 2):
                got = _replica_run(backend, n, args)
                if n not in best or got["tokens_per_s"] > best[n]["tokens_per_s"]:
                    best[n] = got
        system = f"gramophone-{backend}"
        for n, got in best.items():
            how = _HOW[backend][n > 1]
            extra = {**common, "replicas": n, "how": how, "step_ms": got["step_ms"], "load_avg_1m": load}
            records.append(record(PARALLEL, system, "tokens_per_s", got["tokens_per_s"], "tokens/s", **extra))
        eff = best[2]["tokens_per_s"] / (2 * best[1]["tokens_per_s"])
        records.append(
            record(
                PARALLEL, system, "efficiency", round(eff, 3), "throughput(2) / (2 throughput(1))", **common
            )
        )
    return records


def _one_process(quick: bool) -> list[dict[str, Any]]:
    """The one-process figures (see the module notes)."""
    from gramophone.backends import available_backends
    from gramophone.data.dataset import load_dataset, train_batch

    preset = get_preset(PRESET)
    dataset = load_dataset(progress=False)
    model = preset.model_config(len(dataset.vocab))
    base = preset.train
    if quick:
        base = base.replace(seq_len=128, batch_size=4)
    warmup, timed = (1, 3) if quick else (2, 8)
    T, B = base.seq_len, base.batch_size
    batches = [train_batch(dataset["train"], T, B, seed=123, step=s) for s in range(warmup + timed)]
    t0 = time.perf_counter()
    for s in range(warmup + timed):
        train_batch(dataset["train"], T, B, seed=7, step=s)
    batch_ms = (time.perf_counter() - t0) / (warmup + timed) * 1e3

    flops_tok, n_mm = train_flops_per_token(model, T)
    params = sum(int(np.prod(s)) for s in _shapes(model))
    common = {
        "preset": PRESET,
        "batch": B,
        "seq_len": T,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
        "params": params,
        "threads": _threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    records: list[dict[str, Any]] = [
        record(BENCH, "gramophone", "batch_ms", round(batch_ms, 2), "ms", **common)
    ]
    gemm = {which: gemm_gflops(which) for which in ("numpy", "torch")}
    for which, value in gemm.items():
        records.append(record("gemm", which, "gflops", round(value, 2), "GFLOP/s", n=1024, dtype="float32"))
    peak = max(gemm.values())
    losses = ("ce", "ce+structural")
    # gramophone's own Transformer in each framework (hf runs transformers models, and does not train yet)
    for name in [n for n in available_backends() if n != "hf"]:
        times = _step_times(name, model, {loss: base.replace(loss=loss) for loss in losses}, batches, warmup)
        step = {loss: statistics.median(t) for loss, t in times.items()}
        system = f"gramophone-{name}"
        for loss in losses:
            tps = B * T / step[loss]
            records.append(
                record(BENCH, system, "tokens_per_s", round(tps, 1), "tokens/s", loss=loss, **common)
            )
            records.append(
                record(BENCH, system, "step_ms", round(step[loss] * 1e3, 1), "ms", loss=loss, **common)
            )
            achieved = tps * flops_tok / 1e9
            records.append(
                record(
                    BENCH,
                    system,
                    "fraction_of_gemm",
                    round(achieved / peak, 4),
                    "fraction",
                    loss=loss,
                    model_gflops=round(achieved, 2),
                    gemm_gflops=round(peak, 2),
                    flops_per_token=flops_tok,
                    matmul_params=n_mm,
                    **common,
                )
            )
        share = 1.0 - step["ce"] / step["ce+structural"]
        records.append(
            record(BENCH, system, "structural_share", round(share, 4), "fraction of step", **common)
        )
    return records


def _shapes(model: ModelConfig) -> Iterable[tuple[int, ...]]:
    from gramophone.backends.checkpoint import expected_shapes

    return expected_shapes(model).values()


def _threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:
        return None


def markdown(records: list[Mapping[str, Any]]) -> list[str]:
    """The section's tables: one process, then data parallelism (each when measured)."""
    lines: list[str] = []
    if any(r.get("benchmark") == BENCH for r in records):
        lines += _step_markdown(records)
    parallel = [r for r in records if r.get("benchmark") == PARALLEL]
    if parallel:
        lines += ["", *_parallel_markdown(parallel)] if lines else _parallel_markdown(parallel)
    return lines


def _parallel_markdown(records: list[Mapping[str, Any]]) -> list[str]:
    rows = []
    for r in records:
        if r["metric"] != "tokens_per_s":
            continue
        eff = next(
            (e["value"] for e in records if e["metric"] == "efficiency" and e["system"] == r["system"]), None
        )
        rows.append(
            {
                "backend": r["system"].removeprefix("gramophone-"),
                "replicas": r["replicas"],
                "as": r["how"],
                "tokens/s": r["value"],
                "step ms": r["step_ms"],
                "efficiency": eff if r["replicas"] == 2 else None,
                "load (1 min)": r["load_avg_1m"],
            }
        )
    first = records[0]
    return [
        f"**Data parallelism.** The `{first.get('preset')}` preset's model, global batch "
        f"{first.get('batch')} x {first.get('seq_len')} tokens (the same for 1 and 2 replicas), "
        f"{first.get('timed_steps')} timed steps after warm-up, best of {first.get('rounds')} "
        "interleaved runs; one thread per replica (torch: "
        "`OMP_NUM_THREADS=1` per process; JAX: forced host devices with Eigen's threading off). "
        "Efficiency = throughput(2) / (2 throughput(1)); the load average is the machine's at the start.",
        "",
        *markdown_table(
            rows, ["backend", "replicas", "as", "tokens/s", "step ms", "efficiency", "load (1 min)"]
        ),
    ]


def plots(records: list[Mapping[str, Any]], out: Path) -> list[Path]:
    """Tokens/s with 1 and 2 replicas per backend (when the parallel part was measured)."""
    rows = [r for r in records if r.get("benchmark") == PARALLEL and r.get("metric") == "tokens_per_s"]
    if not rows:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    systems = sorted({r["system"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.35
    for k, n in enumerate((1, 2)):
        values = [
            next((r["value"] for r in rows if r["system"] == s and r["replicas"] == n), 0) for s in systems
        ]
        xs = [i + (k - 0.5) * width for i in range(len(systems))]
        ax.bar(xs, values, width, label=f"{n} replica{'s' if n > 1 else ''}")
    ax.set_xticks(range(len(systems)), [s.removeprefix("gramophone-") for s in systems])
    ax.set_ylabel("tokens / s (global batch)")
    ax.set_title("Training throughput, data-parallel, one thread per replica")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "train_parallel.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _step_markdown(records: list[Mapping[str, Any]]) -> list[str]:
    """The one-process tables."""
    steps = [r for r in records if r.get("benchmark") == BENCH and r.get("metric") == "tokens_per_s"]
    rows = []
    for r in steps:
        match = {
            m["metric"]: m
            for m in records
            if m.get("benchmark") == BENCH and m.get("system") == r["system"] and m.get("loss") == r["loss"]
        }
        frac = match.get("fraction_of_gemm", {})
        rows.append(
            {
                "backend": r["system"].removeprefix("gramophone-"),
                "loss": r["loss"],
                "tokens/s": r["value"],
                "step ms": match.get("step_ms", {}).get("value"),
                "model GFLOP/s": frac.get("model_gflops"),
                "of GEMM peak": frac.get("value"),
            }
        )
    shares = [r for r in records if r.get("metric") == "structural_share"]
    gemm = {r["system"]: r["value"] for r in records if r.get("benchmark") == "gemm"}
    batch = next((r for r in records if r.get("metric") == "batch_ms"), None)
    first = steps[0] if steps else {}
    return [
        f"Model: the `{first.get('preset')}` preset ({first.get('params')} parameters, "
        f"d_model {first.get('d_model')}, {first.get('n_layers')} layers), batch {first.get('batch')} x "
        f"{first.get('seq_len')} tokens of real chorale windows; torch threads {first.get('threads')}, "
        f"1-minute load average {first.get('load_avg_1m')} at the start.",
        "",
        *markdown_table(rows, ["backend", "loss", "tokens/s", "step ms", "model GFLOP/s", "of GEMM peak"]),
        "",
        "Structural loss share of a step (`1 - t(ce) / t(ce+structural)`, mask transfer included): "
        + ", ".join(f"{r['system'].removeprefix('gramophone-')} {100 * r['value']:.1f}%" for r in shares)
        + ".",
        "",
        "float32 GEMM (1024^3): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gemm.items())
        + (f"; building one batch on the host: {batch['value']:.1f} ms." if batch else "."),
        "Model FLOPs per token: 6 N + 12 L T d (N: parameters of the matrix multiplies).",
    ]
