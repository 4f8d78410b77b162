"""Issue 3's data pipeline and training loop: windows, augmentation, allowed masks,
training from the CLI on both backends, resume (also after kill -9), checkpoint checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gramophone.backends import checkpoint as ckpt
from gramophone.backends import losses_ref
from gramophone.cli import main
from gramophone.data.dataset import (
    DataConfig,
    Dataset,
    TokenSplit,
    load_dataset,
    pitch_offsets,
    tokenizer_pitch_range,
    train_batch,
)
from gramophone.errors import CheckpointError
from gramophone.models import check_compatible, checkpoint_meta, load_checkpoint
from gramophone.training import (
    TrainingError,
    latest_checkpoint,
    read_metrics,
    resolve_config,
    score_logits,
    train,
)

from .conftest import automaton_for, tokenizer_for

# A tiny model that learns visibly in a dozen steps (one JAX compile per configuration).
TINY = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 64, "dropout": 0.1},
    "train": {
        "lr": 3e-3,
        "warmup_steps": 2,
        "total_steps": 12,
        "batch_size": 4,
        "seq_len": 64,
        "loss": "ce+structural",
        "label_smoothing": 0.0,
    },
}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """The shipped tokenizer's chorale dataset (built once into the shared cache)."""
    return load_dataset(tokenizer_for("shipped"), automaton_for("shipped"), progress=False)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _targets_positions(split: TokenSplit) -> np.ndarray:
    """Positions (into ``ids``) that are some window's target: all but each stream's BOS."""
    mask = np.ones(len(split.ids), dtype=bool)
    mask[split.stream_starts[:-1]] = False
    return np.flatnonzero(mask)


# ---------------------------------------------------------------------------------------
# Data


def test_splits_are_disjoint_by_piece_and_framed(dataset: Dataset) -> None:
    vocab = dataset.vocab
    bos, eos = vocab.index("BOS_None"), vocab.index("EOS_None")
    pieces = [set(dataset[s].pieces) for s in ("train", "validation", "test")]
    assert not (pieces[0] & pieces[1] or pieces[0] & pieces[2] or pieces[1] & pieces[2])
    assert sum(len(p) for p in pieces) >= 350
    for split in dataset.splits.values():
        starts, ends = split.stream_starts[:-1], split.stream_starts[1:]
        assert (split.ids[starts] == bos).all() and (split.ids[ends - 1] == eos).all()
        assert np.isin(split.ids, [bos]).sum() == split.num_streams  # BOS only first
        assert np.isin(split.ids, [eos]).sum() == split.num_streams  # EOS only last
    # no augmentation outside training
    assert (dataset["validation"].stream_offset == 0).all() and (dataset["test"].stream_offset == 0).all()
    assert len(set(dataset["train"].stream_offset.tolist())) == 12


@pytest.mark.parametrize("seq_len", [64, 512])
def test_windows_start_at_bar_boundaries(dataset: Dataset, seq_len: int) -> None:
    split = dataset["train"]
    bar = dataset.vocab.index("Bar_None")
    starts = split.windows(seq_len)
    at_stream_start = np.isin(starts, split.stream_starts[:-1])
    assert (at_stream_start | (split.ids[starts] == bar)).all()
    # a piece's first bar is not a separate window start: its window has the BOS
    assert not np.isin(starts, split.stream_starts[:-1] + 1).any()
    # every stream's start, and its end (EOS) is reached by some window
    assert at_stream_start.sum() == split.num_streams
    ends = split.stream_starts[1:][split.stream_of(starts)]
    reach = np.zeros(split.num_streams, dtype=bool)
    reach[split.stream_of(starts)[starts + seq_len + 1 >= ends]] = True
    # ... unless its last bar alone is longer than a window
    last_bar = np.full(split.num_streams, -1)
    last_bar[split.stream_of(split.bar_starts)] = split.bar_starts  # bar_starts ascend: the last wins
    long_tail = (last_bar >= 0) & (split.stream_starts[1:] - last_bar > seq_len + 1)
    assert (reach | long_tail).all()
    assert reach.mean() > (0.8 if seq_len < 100 else 0.999)
    batch = split.batch(starts[:64], seq_len)
    assert batch["inputs"].shape == (64, seq_len) and batch["allowed"].shape == (
        64,
        seq_len,
        len(dataset.vocab),
    )
    # padding (past EOS) has weight 0 and PAD ids; real targets have weight 1
    pad = split.pad_id
    assert ((batch["weights"] == 0) == (batch["targets"] == pad)).all()


@pytest.mark.parametrize("seq_len", [64, 300])
def test_eval_windows_score_every_target_once(dataset: Dataset, seq_len: int) -> None:
    split = dataset["validation"]
    starts, first = split.eval_windows(seq_len)
    bar = dataset.vocab.index("Bar_None")
    counts = np.zeros(len(split.ids), dtype=np.int64)
    for i in range(0, len(starts), 256):
        b = split.batch(starts[i : i + 256], seq_len, first[i : i + 256])
        pos = starts[i : i + 256, None] + 1 + np.arange(seq_len)
        np.add.at(counts, pos[b["weights"] > 0], 1)
    assert (counts[_targets_positions(split)] == 1).all()
    assert counts[split.stream_starts[:-1]].sum() == 0
    at_start = np.isin(starts, split.stream_starts[:-1])
    if seq_len >= 300:  # mid-bar starts only where a bar is longer than half a window
        assert (at_start | (split.ids[starts] == bar)).mean() > 0.99


def test_every_target_is_allowed(dataset: Dataset) -> None:
    for split in dataset.splits.values():
        pos = _targets_positions(split)
        ok = split.allowed[split.states[pos - 1], split.ids[pos]]
        assert ok.all(), f"{split.name}: {int((~ok).sum())} targets forbidden"
        batch = train_batch(split, 128, 16, seed=1, step=3)
        w = batch["weights"] > 0
        hit = np.take_along_axis(batch["allowed"], batch["targets"][..., None], axis=-1)[..., 0]
        assert hit[w].all()
        assert not batch["allowed"][~w].any()  # padding rows allow nothing
    # the masks are informative: far from everything is allowed
    frac = dataset.allowed[:-1].mean()
    assert 0.01 < frac < 0.5


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=6), st.sampled_from([64, 200]))
def test_mask_is_what_the_automaton_allows_after_the_window_prefix(
    dataset: Dataset, picks: list[int], seq_len: int
) -> None:
    """allowed[t] == the automaton's allowed set after inputs[:t+1] of the window alone."""
    auto = automaton_for("shipped")
    split = dataset["train"]
    windows = split.windows(seq_len)
    starts = windows[np.array(picks) % len(windows)]
    batch = split.batch(starts, seq_len)
    states = auto.run_batch(batch["inputs"])[:, 1:]  # after inputs[:t+1]
    expect = auto.allowed_batch(states)
    w = batch["weights"] > 0
    assert (expect[w] == batch["allowed"][w]).all()


@given(
    st.lists(st.integers(0, 127), min_size=1, max_size=12),
    st.integers(0, 60),
    st.integers(61, 127),
    st.integers(-12, 0),
    st.integers(0, 12),
)
def test_pitch_offsets_keep_every_pitch_in_range(
    pitches: list[int], lo: int, hi: int, span_lo: int, span_hi: int
) -> None:
    offsets = pitch_offsets(pitches, (lo, hi), (span_lo, span_hi))
    assert 0 in offsets and offsets == sorted(set(offsets))
    for k in range(span_lo, span_hi + 1):
        fits = all(lo <= p + k <= hi for p in pitches)
        if k != 0:
            assert (k in offsets) == fits


def test_augmentation_transposes_whole_pieces_within_range(dataset: Dataset) -> None:
    """Each transposed stream is the original with every pitch moved by its offset (no note
    dropped or clipped), every pitch in range, and each piece gets exactly the offsets
    that keep it in range."""
    vocab = dataset.vocab
    lo, hi = tokenizer_pitch_range(tokenizer_for("shipped"))
    pitch_of = np.array([int(t[6:]) if t.startswith("Pitch_") else -1 for t in vocab])
    id_of = {int(t[6:]): i for i, t in enumerate(vocab) if t.startswith("Pitch_")}
    split = dataset["train"]
    span = DataConfig().transpose
    originals = {int(p): s for s, p in enumerate(split.stream_piece) if split.stream_offset[s] == 0}
    assert len(originals) == len(split.pieces)
    for s in range(split.num_streams):
        ids, k = split.stream(s), int(split.stream_offset[s])
        base = split.stream(originals[int(split.stream_piece[s])])
        is_pitch = pitch_of[base] >= 0
        assert len(ids) == len(base)
        assert (ids[~is_pitch] == base[~is_pitch]).all()
        moved = pitch_of[base[is_pitch]] + k
        assert lo <= moved.min() and moved.max() <= hi
        assert (ids[is_pitch] == np.array([id_of[p] for p in moved])).all()
    for p, s in originals.items():
        base_pitches = pitch_of[split.stream(s)]
        expect = pitch_offsets(base_pitches[base_pitches >= 0], (lo, hi), span)
        got = sorted(split.stream_offset[split.stream_piece == p].tolist())
        assert got == expect


def test_train_batches_are_a_function_of_seed_and_step(dataset: Dataset) -> None:
    split = dataset["train"]
    a, b = train_batch(split, 64, 4, seed=0, step=5), train_batch(split, 64, 4, seed=0, step=5)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["inputs"] == train_batch(split, 64, 4, seed=0, step=6)["inputs"]).all()
    assert not (a["inputs"] == train_batch(split, 64, 4, seed=1, step=5)["inputs"]).all()


# ---------------------------------------------------------------------------------------
# Metrics


@given(st.integers(0, 2**31 - 1))
def test_score_logits_matches_the_reference_losses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    B, T, V = 2, 5, 7
    logits = rng.normal(size=(B, T, V)) * 3
    targets = rng.integers(0, V, (B, T))
    allowed = rng.random((B, T, V)) < 0.4
    weights = (rng.random((B, T)) < 0.8).astype(np.float32)
    weights[0, 0] = 1.0
    batch = {"targets": targets, "allowed": allowed, "weights": weights}
    got = score_logits(logits, batch)
    ref = losses_ref.per_position_losses(logits, targets, allowed, loss="ce")
    n = float(weights.sum())
    assert got["weight"] == pytest.approx(n)
    assert got["nll"] / n == pytest.approx(losses_ref.weighted_mean(ref["nll"], weights), rel=1e-6)
    forbidden = -np.expm1(-ref["structural"])
    assert got["forbidden_mass"] / n == pytest.approx(losses_ref.weighted_mean(forbidden, weights), abs=1e-7)
    masked = losses_ref.per_position_losses(logits, targets, allowed, loss="masked")["loss"]
    assert got["nll_masked"] / n == pytest.approx(losses_ref.weighted_mean(masked, weights), rel=1e-6)


# ---------------------------------------------------------------------------------------
# Training from the CLI


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_cli_training_lowers_the_loss(
    backend: str, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--backend",
            backend,
            "--config",
            str(tiny_config),
            "--checkpoint-every",
            "6",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = read_metrics(out)
    nll = [r["nll"] for r in records if r["split"] == "train"]
    assert len(nll) == 12
    assert np.mean(nll[-3:]) < np.mean(nll[:3]) - 0.1
    val = [r for r in records if r["split"] == "validation" and not r.get("final")]
    assert [r["step"] for r in val] == [6, 12] and val[1]["nll"] < val[0]["nll"]
    assert 0.0 < val[1]["forbidden_mass"] < 1.0 and val[1]["nll_masked"] < val[1]["nll"]
    report = json.loads((out / "eval.json").read_text())
    assert report["validation"]["tokens"] == dataset_targets("validation")
    assert report["test"]["nll"] < np.log(len(automaton_for("shipped").vocab))  # better than uniform
    assert (out / "loss.png").stat().st_size > 1000
    info = ckpt.read_info(out / "model")
    assert info.step == 12 and "optimizer-torch.pt" not in info.files and info.backend is None
    assert info.meta["automaton_hash"] == automaton_for("shipped").hash
    assert "NLL" in capsys.readouterr().out


def dataset_targets(name: str) -> int:
    return load_dataset(tokenizer_for("shipped"), automaton_for("shipped"), progress=False)[name].num_targets


def _weights(run: Path) -> dict[str, np.ndarray]:
    return ckpt.read_weights(ckpt.read_info(run / "model"))


def _train_rows(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run) if r["split"] == "train"]


def test_resume_reproduces_an_uninterrupted_run(tiny_config: Path, tmp_path: Path) -> None:
    config = resolve_config(229, config_file=tiny_config, steps=9)  # dropout on: seeded by step
    common = {"backend": "torch", "checkpoint_every": 3, "final_eval": False, "progress": False}
    full = train(tmp_path / "full", config=config, **common)
    part = train(tmp_path / "part", config=config, stop_after=5, **common)
    assert part.step == 5 and part.model_dir is None
    assert latest_checkpoint(tmp_path / "part") == tmp_path / "part" / "checkpoints" / "step-000005"
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(tmp_path / "part", config=config, **common)
    resumed = train(tmp_path / "part", resume=True, **common)
    assert resumed.step == full.step == 9
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert _train_rows(tmp_path / "full") == _train_rows(tmp_path / "part")


def test_kill_9_then_resume(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    steps = 150
    cmd = [sys.executable, "-m", "gramophone", "train", "--backend", "torch", "--config", str(tiny_config)]
    cmd += ["--steps", str(steps), "--checkpoint-every", "4", "--eval-every", "1000", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            latest = latest_checkpoint(out)
            if latest is not None and int(latest.name[5:]) >= 8:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = max(r["step"] for r in read_metrics(out))
    saved = latest_checkpoint(out)
    assert saved is not None and int(saved.name[5:]) <= killed_at < steps
    code = main(["train", "--backend", "torch", "--resume", "--eval-every", "1000", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    steps_logged = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps_logged == list(range(1, steps + 1))  # no gap, no step twice
    assert ckpt.read_info(out / "model").step == steps


def test_latest_checkpoint_skips_a_corrupted_one(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = resolve_config(229, config_file=tiny_config, steps=6)
    train(out, config=config, checkpoint_every=3, final_eval=False, progress=False)
    newest = out / "checkpoints" / "step-000006"
    assert latest_checkpoint(out) == newest
    weights = ckpt.file_path(ckpt.read_info(newest), ckpt.WEIGHTS_FILE)
    assert weights is not None
    weights.write_bytes(weights.read_bytes()[:-8])  # torn write
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000003"
    (out / "checkpoints" / "LATEST").unlink()
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000003"


# ---------------------------------------------------------------------------------------
# Checkpoints that do not fit the tokenizer, and CLI errors


def test_mismatched_checkpoint_is_a_clear_error(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok, auto = tokenizer_for("shipped"), automaton_for("shipped")
    out = tmp_path / "run"
    train(out, config=resolve_config(229, config_file=tiny_config, steps=2), final_eval=False, progress=False)
    meta = ckpt.read_info(out / "model").meta
    check_compatible(meta, 229, tok, auto)  # the real one fits

    renamed = {**meta, "vocab": [*meta["vocab"][:5], "Pitch_999", *meta["vocab"][6:]]}
    with pytest.raises(CheckpointError, match="vocabulary mismatch at id 5"):
        check_compatible(renamed, 229, tok, auto)
    with pytest.raises(CheckpointError, match="grammar mismatch"):
        check_compatible({**meta, "automaton_hash": "0" * 16}, 229, tok, auto)
    with pytest.raises(CheckpointError, match="vocabulary of 100 tokens"):
        check_compatible(meta, 100, tok, auto)
    other = automaton_for("rests")  # another config's grammar
    with pytest.raises(CheckpointError, match="grammar mismatch"):
        check_compatible(meta, 229, tok, other)

    # through the CLI: resuming a run whose checkpoint records another grammar
    cfg_path = latest_checkpoint(out)
    assert cfg_path is not None
    data = json.loads((cfg_path / "config.json").read_text())
    data["meta"]["automaton_hash"] = "f" * 16
    (cfg_path / "config.json").write_text(json.dumps(data))
    code = main(["train", "--backend", "torch", "--resume", "--steps", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "grammar mismatch" in err and "Traceback" not in err and err.count("\n") == 1
    from gramophone.backends import get_backend

    with pytest.raises(CheckpointError, match="grammar mismatch"):
        load_checkpoint(get_backend("torch"), cfg_path, tok, auto)
    checkpoint_meta(tok, auto)  # what training writes: the same keys checked here
    assert set(checkpoint_meta(tok, auto)) >= {"vocab", "vocab_hash", "automaton_hash", "tokenizer_hash"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "torch", "--preset", "huge"], "unknown preset 'huge'"),
        (["--backend", "mxnet"], "unknown backend 'mxnet'"),
        (["--backend", "torch", "--config", "{missing}"], "config file not found"),
        (["--backend", "torch", "--config", "{broken}"], "not valid JSON"),
        (["--backend", "torch", "--config", "{unknown}"], "unknown field(s) d_modle"),
        (["--backend", "torch", "--config", "{section}"], "unknown section(s) optimiser"),
        (["--backend", "torch", "--config", "{vocab}"], "tokenizer has 229 tokens"),
        (["--backend", "torch", "--config", "{seq}"], "exceeds model.max_len"),
        (["--backend", "torch", "--resume"], "no checkpoint to resume from"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "missing": tmp_path / "nope.json",
        "broken": tmp_path / "broken.json",
        "unknown": tmp_path / "unknown.json",
        "section": tmp_path / "section.json",
        "vocab": tmp_path / "vocab.json",
        "seq": tmp_path / "seq.json",
    }
    files["broken"].write_text('{"model": ')
    files["unknown"].write_text(json.dumps({"model": {"d_modle": 8}}))
    files["section"].write_text(json.dumps({"optimiser": {}}))
    files["vocab"].write_text(json.dumps({"model": {"vocab_size": 300}}))
    files["seq"].write_text(json.dumps({"model": {"max_len": 32}, "train": {"seq_len": 64}}))
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    code = main(["train", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_bundled_checkpoint_path_is_a_clear_error_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gramophone import models

    monkeypatch.setattr(models.resources, "files", lambda package: tmp_path)
    with pytest.raises(CheckpointError, match="bundled model is missing"):
        models.bundled_checkpoint_path()


def test_bundled_model_fits_the_shipped_tokenizer() -> None:
    from gramophone import models
    from gramophone.backends import get_backend

    path = models.bundled_checkpoint_path()  # shipped with the package: missing is a failure
    info = ckpt.read_info(path)
    assert set(info.files) == {"model.safetensors"}  # parameters only, no optimizer state
    weights = ckpt.file_path(info, ckpt.WEIGHTS_FILE)
    assert weights is not None and weights.stat().st_size <= 20 * 2**20
    assert {"validation", "test"} <= set(info.meta["evaluation"])
    loaded = load_checkpoint(get_backend("torch"), path, tokenizer_for("shipped"), automaton_for("shipped"))
    assert loaded.model.vocab_size == len(automaton_for("shipped").vocab)


def test_evaluation_batches_bound_the_logits_of_a_large_vocabulary() -> None:
    """An evaluation batch holds EVAL_TOKENS tokens, fewer windows when its logits would
    pass EVAL_CELLS (a 30k vocabulary), and always at least one window."""
    from gramophone.training import EVAL_CELLS, EVAL_TOKENS, eval_batch_size

    assert eval_batch_size(512, 229) == EVAL_TOKENS // 512
    for seq_len, vocab in [(512, 30_000), (256, 10_000), (1024, 50_000), (128, 1_000), (512, 2_000)]:
        n = eval_batch_size(seq_len, vocab)
        assert 1 <= n <= EVAL_TOKENS // seq_len
        assert n == 1 or n * seq_len * vocab <= EVAL_CELLS
    assert eval_batch_size(512, 30_000) == 2
    assert eval_batch_size(4096, 1 << 20) == 1
