"""Training throughput: tokens/s per backend, the structural loss's share of a step, and
how much of the machine's matrix-multiply throughput a step uses.

Every figure is measured in one process on real batches of the chorale dataset
(:func:`~gramophone.data.dataset.train_batch`), with the bundled model's shape
(the ``chorales`` preset; ``quick``: a shorter window and fewer steps):

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
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from gramophone.backends.config import ModelConfig, TrainConfig, get_preset
from gramophone.bench.common import markdown_table, record

__all__ = ["PRESET", "gemm_gflops", "markdown", "run", "train_flops_per_token"]

PRESET = "chorales"
BENCH = "train_step"


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


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure (see the module notes); returns records."""
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
    """The section's tables."""
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
