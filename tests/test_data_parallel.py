"""Issue 9, "More than one process": torch DDP under torchrun (2 processes, gloo on the CPU)
and JAX on 2 forced host devices train the model a one-process run trains from the same
global batches, to float rounding; only the main process writes; --resume works.

The batch has 5 rows, so the 2 replicas get 3 and 2 rows (torch), or the JAX batch is padded
to 6 with a zero-weight row: the loss must be the global batch's weighted mean either way.
Dropout is 0 (a replica's dropout masks are its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gramophone.backends import checkpoint as ckpt
from gramophone.data.dataset import load_dataset, train_batch
from gramophone.training import read_metrics, resolve_config, train

from .conftest import automaton_for, tokenizer_for

DP_TINY = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 64, "dropout": 0.0},
    "train": {
        "lr": 3e-3,
        "warmup_steps": 2,
        "total_steps": 4,
        "batch_size": 5,
        "seq_len": 64,
        "loss": "ce+structural",
        "label_smoothing": 0.0,
    },
}
TIMEOUT = 300


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(DP_TINY))
    return path


def _one_process(backend: str, config: Path, out: Path) -> dict[str, np.ndarray]:
    """The reference: the same config in this process (builds the dataset cache first)."""
    run = resolve_config(229, config_file=config)
    train(out, backend=backend, config=run, checkpoint_every=2, final_eval=False, progress=False)
    return _weights(out)


def _weights(run: Path) -> dict[str, np.ndarray]:
    return ckpt.read_weights(ckpt.read_info(run / "model"))


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _assert_same_model(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        np.testing.assert_allclose(value, b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _assert_written_once(run: Path, world_size: int) -> None:
    rows = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one process logged, each step once
    assert {r["world_size"] for r in rows} == {world_size}
    assert json.loads((run / "run.json").read_text())["world_size"] == world_size
    assert not [p.name for p in run.rglob(".*")]  # no temporary folder left by another process


def test_rows_of_the_global_batch_split_it() -> None:
    split = load_dataset(tokenizer_for("shipped"), automaton_for("shipped"), progress=False)["train"]
    whole = train_batch(split, 32, 5, seed=3, step=7)
    parts = [train_batch(split, 32, 5, seed=3, step=7, rows=slice(r, None, 2)) for r in range(2)]
    for key, value in whole.items():
        assert np.array_equal(value[0::2], parts[0][key]) and np.array_equal(value[1::2], parts[1][key])


def test_torch_ddp_matches_one_process_and_resumes(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    reference = _one_process("torch", tiny, tmp_path / "one")
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "gramophone", "train", "--backend", "torch", "--checkpoint-every", "1"]
    out = _run([*cmd, "--config", str(tiny), "--stop-after", "2", "--out", str(run)])
    assert out.count("stopped at step 2") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step-000001", "step-000002"]
    out = _run([*cmd, "--resume", "--out", str(run)])  # both ranks load step 2
    assert out.count("trained to step 4") == 1
    _assert_same_model(_weights(run), reference)
    _assert_written_once(run, 2)
    one = [r for r in read_metrics(tmp_path / "one") if r["split"] == "train"]
    two = [r for r in read_metrics(run) if r["split"] == "train"]
    for a, b in zip(one, two, strict=True):  # the metrics are the global batch's
        for key in ("loss", "nll", "structural", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert json.loads((run / "eval.json").read_text())["world_size"] == 2


# Two devices need the flag before JAX starts: a process of its own, which stops halfway and
# resumes (one process: one compilation).
JAX_TWO_DEVICES = """
import sys
import jax
from gramophone.training import resolve_config, train

assert jax.device_count() == 2, jax.devices()
config, out = resolve_config(229, config_file=sys.argv[1]), sys.argv[2]
common = {"backend": "jax", "checkpoint_every": 2, "final_eval": False, "progress": False}
assert train(out, config=config, stop_after=2, **common).world_size == 2
train(out, resume=True, **common)
"""


def test_jax_two_devices_match_one(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("jax")
    reference = _one_process("jax", tiny, tmp_path / "one")
    run = tmp_path / "two"
    devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    _run([sys.executable, "-c", JAX_TWO_DEVICES, str(tiny), str(run)], env=devices)
    _assert_same_model(_weights(run), reference)
    _assert_written_once(run, 2)


def test_benchmark_tables_of_data_parallel_and_corpus_records() -> None:
    from gramophone.bench import corpus
    from gramophone.bench import train as bench_train
    from gramophone.bench.common import record

    common = {"preset": "chorales", "batch": 8, "seq_len": 512, "timed_steps": 6, "rounds": 2}
    runs = [
        record(
            "train_parallel",
            "gramophone-torch",
            "tokens_per_s",
            tps,
            "tokens/s",
            replicas=n,
            how="torchrun",
            step_ms=1.0,
            load_avg_1m=0.5,
            **common,
        )
        for n, tps in ((1, 1000.0), (2, 1600.0))
    ]
    runs.append(record("train_parallel", "gramophone-torch", "efficiency", 0.8, "", **common))
    text = "\n".join(bench_train.markdown(runs))
    assert "| torch | 2 | torchrun | 1,600 |" in text and "| 0.8 |" in text and "Data parallelism" in text
    built = [
        record("corpus_build", system, metric, value, "", corpus_files=10, seconds=1.0, used=10, tokens=100)
        for system, fps in (("miditok encode loop", 100.0), ("gramophone, 1 worker", 50.0))
        for metric, value in (("files_per_s", fps), ("tokens_per_s", fps * 10), ("peak_rss_mib", 300.0))
    ]
    text = "\n".join(corpus.markdown(built))
    assert "gramophone, 1 worker: 0.50x" in text and "| miditok encode loop | 1 | 100 | 1,000 |" in text
