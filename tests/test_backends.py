"""The two model backends: same checkpoint, same logits, same losses, same training."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gramophone.backends import (
    PRESETS,
    Backend,
    ModelConfig,
    TrainConfig,
    available_backends,
    get_backend,
    get_preset,
    learning_rate,
    losses_ref,
    register_backend,
)
from gramophone.backends import checkpoint as ckpt
from gramophone.backends.base import init_weights
from gramophone.errors import BackendUnavailableError, CheckpointError, GramophoneError

BACKENDS = ["torch", "jax"]
CFG = ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=24, dropout=0.0)
# One training configuration for every test that trains without dropout (one JAX compile).
TRAIN = TrainConfig(
    lr=1e-2,
    warmup_steps=2,
    total_steps=10,
    loss="ce+structural",
    structural_weight=0.5,
    label_smoothing=0.1,
    clip_norm=1.0,
)


@pytest.fixture(scope="module")
def backends() -> dict[str, Backend]:
    return {name: get_backend(name) for name in BACKENDS}


def make_batch(seed: int, B: int = 3, T: int = 10, V: int = CFG.vocab_size) -> dict:
    """Random batch: the last row is half padding (weights 0, nothing allowed), and some
    targets are outside the allowed set (the losses count them as allowed)."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, V, (B, T)).astype(np.int32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    weights = np.ones((B, T), np.float32)
    allowed = rng.random((B, T, V)) < 0.3
    b, t = np.indices((B, T))
    allowed[b, t, targets] = rng.random((B, T)) < 0.8
    weights[-1, T // 2 :] = 0.0
    allowed[-1, T // 2 :] = False
    return {"inputs": inputs, "targets": targets, "weights": weights, "allowed": allowed}


def ids_batch(seed: int, B: int = 3, T: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)


# ----------------------------------------------------------------------------- registry


def test_import_does_not_load_frameworks() -> None:
    code = (
        "import sys, gramophone.backends, gramophone.backends.checkpoint, "
        "gramophone.backends.losses_ref\n"
        "heavy = [m for m in ('torch', 'jax', 'flax', 'optax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_registry() -> None:
    assert set(BACKENDS) <= set(available_backends())
    assert get_backend("torch") is get_backend("torch")
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'mxnet'.*jax, torch"):
        get_backend("mxnet")
    register_backend("fake", "gramophone_fake_module", "Fake", requires=("gramophone_fake_framework",))
    assert "fake" not in available_backends()
    with pytest.raises(ImportError, match=r"gramophone_fake_framework.*gramophone\[fake\]"):
        get_backend("fake")
    err = BackendUnavailableError("x")
    assert isinstance(err, GramophoneError)
    assert isinstance(err, ImportError)


# ----------------------------------------------------------------------------- configs


def test_configs_round_trip_and_validate() -> None:
    assert ModelConfig.from_dict(CFG.to_dict()) == CFG
    assert TrainConfig.from_dict(TRAIN.to_dict()) == TRAIN
    assert json.loads(json.dumps(TRAIN.to_dict())) == TRAIN.to_dict()
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**CFG.to_dict(), "n_embd": 3})
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig.from_dict({"d_model": 32})
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="focal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(vocab_size=10, dropout=1.0)
    tiny = get_preset("tiny")
    m = tiny.model_config(vocab_size=100)
    assert (m.d_model, m.n_layers, m.n_heads, m.d_ff, m.max_len) == (32, 2, 2, 64, 128)
    assert (tiny.train.seq_len, tiny.train.batch_size, tiny.train.total_steps) == (64, 4, 20)
    small = PRESETS["small"].model_config(vocab_size=100)
    assert small == ModelConfig(vocab_size=100)
    with pytest.raises(ValueError, match="known presets: chorales, chorales-long, small, tiny"):
        get_preset("huge")


def test_the_long_preset_is_the_bundled_models_recipe() -> None:
    """``--preset chorales-long`` (scripts/train_bundled.sh) trains exactly the model that
    ships: the shape and every training setting the bundled checkpoint recorded."""
    import dataclasses

    from gramophone.backends import checkpoint as ckpt
    from gramophone.models import bundled_checkpoint_path

    info = ckpt.read_info(bundled_checkpoint_path())
    preset = get_preset("chorales-long")
    assert info.model == preset.model_config(info.model.vocab_size)
    assert info.train is not None and dataclasses.asdict(info.train) == dataclasses.asdict(preset.train)


def test_learning_rate_schedule() -> None:
    from gramophone.backends.jax_backend.backend import (
        learning_rate as jax_lr,
    )

    train = TrainConfig(lr=1.0, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    lrs = [learning_rate(s, train) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0
    assert lrs[12] == lrs[13] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    np.testing.assert_allclose([float(jax_lr(s, train)) for s in range(14)], lrs, rtol=1e-6)


# ----------------------------------------------------------------------------- parity


def test_init_names_shapes_and_flax_tree(backends: dict[str, Backend]) -> None:
    # imported here so that collecting this file does not import jax
    import jax
    import jax.numpy as jnp

    from gramophone.backends.jax_backend import model as flax_model

    shapes = ckpt.expected_shapes(CFG)
    for be in backends.values():
        weights = be.to_numpy(be.init(CFG, seed=0))
        assert list(weights) == list(shapes) or sorted(weights) == sorted(shapes)
        assert {k: v.shape for k, v in weights.items()} == shapes
        assert all(v.dtype == np.float32 for v in weights.values())
    # the tree built from checkpoint names is exactly the one Flax's own init would make
    abstract = jax.eval_shape(
        lambda k: flax_model.GPT(CFG).init(k, jnp.zeros((1, 1), jnp.int32)), jax.random.key(0)
    )["params"]
    ours = backends["jax"].init(CFG, seed=0).tree
    assert jax.tree.structure(abstract) == jax.tree.structure(ours)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, ours)


@pytest.mark.parametrize(("src", "dst"), [("torch", "jax"), ("jax", "torch")])
def test_checkpoint_parity(backends: dict[str, Backend], tmp_path: Path, src: str, dst: str) -> None:
    a, b = backends[src], backends[dst]
    params = a.init(CFG, seed=3)
    a.save(tmp_path / "ck", params, train=TRAIN, step=7, meta={"tokenizer": {"x": 1}})
    loaded = b.load(tmp_path / "ck")
    assert (loaded.model, loaded.train, loaded.step, loaded.meta) == (CFG, TRAIN, 7, {"tokenizer": {"x": 1}})
    wa, wb = a.to_numpy(params), b.to_numpy(loaded.params)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    ids = ids_batch(0)
    la, lb = a.logits(params, ids), b.logits(loaded.params, ids)
    assert la.shape == (3, 12, CFG.vocab_size)
    assert la.dtype == lb.dtype == np.float32
    assert np.abs(la - lb).max() <= 1e-4


def test_same_seed_same_init_across_frameworks(backends: dict[str, Backend]) -> None:
    ids = ids_batch(1)
    lt = backends["torch"].logits(backends["torch"].init(CFG, seed=5), ids)
    lj = backends["jax"].logits(backends["jax"].init(CFG, seed=5), ids)
    assert np.abs(lt - lj).max() <= 1e-4


def _cached_logits(
    be: Backend, params: object, ids: np.ndarray, prefix: int, lengths: np.ndarray | None = None
) -> np.ndarray:
    """Logits at every position from prefill(ids[:, :prefix]) then one decode_step per
    token; rows may have different prompt ``lengths`` (right-padded)."""
    B, T = ids.shape
    lengths = np.full(B, prefix) if lengths is None else lengths
    out = np.zeros((B, T, CFG.vocab_size), np.float32)
    logits, cache = be.prefill(params, ids[:, :prefix], cache_len=16, lengths=lengths)
    pos = lengths.copy()
    out[np.arange(B), pos - 1] = logits
    while pos.min() < T:
        p = np.minimum(pos, T - 1)  # finished rows re-feed their last token harmlessly
        logits, cache = be.decode_step(params, ids[np.arange(B), p], cache, p)
        live = pos < T
        out[np.arange(B)[live], p[live]] = logits[live]
        pos += 1
    return out


@pytest.mark.parametrize("name", BACKENDS)
def test_cached_decoding_matches_full_forward(backends: dict[str, Backend], name: str) -> None:
    be = backends[name]
    params = be.init(CFG, seed=2)
    ids = ids_batch(2)
    full = be.logits(params, ids)
    cached = _cached_logits(be, params, ids, prefix=5)
    assert np.abs(cached[:, 4:] - full[:, 4:]).max() <= 1e-4
    # ragged prompts: rows at different positions in the same decode step
    lengths = np.array([2, 5, 3])
    ragged = _cached_logits(be, params, ids, prefix=5, lengths=lengths)
    for b, n in enumerate(lengths):
        assert np.abs(ragged[b, n - 1 :] - full[b, n - 1 :]).max() <= 1e-4
    # a scalar position works too; one outside the cache is an error
    _, cache = be.prefill(params, ids[:, :5], cache_len=16)
    logits, cache = be.decode_step(params, ids[:, 5], cache, 5)
    assert np.abs(logits - full[:, 5]).max() <= 1e-4
    with pytest.raises(ValueError, match="outside the cache"):
        be.decode_step(params, ids[:, 6], cache, 16)
    with pytest.raises(ValueError, match="cache_len"):
        be.prefill(params, ids, cache_len=CFG.max_len + 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        be.logits(params, ids + CFG.vocab_size)


def test_jax_decode_step_is_traced_once(backends: dict[str, Backend]) -> None:
    from gramophone.backends.jax_backend import backend as jax_impl

    be = backends["jax"]
    params, ids = be.init(CFG, seed=2), ids_batch(2)
    _, cache = be.prefill(params, ids[:, :5], cache_len=16)
    _, cache = be.decode_step(params, ids[:, 5], cache, 5)
    traces = jax_impl.decode_step._cache_size()
    for t in range(6, 12):
        _, cache = be.decode_step(params, ids[:, t], cache, np.full(3, t))
    assert jax_impl.decode_step._cache_size() == traces


def test_cached_decoding_across_frameworks(backends: dict[str, Backend], tmp_path: Path) -> None:
    torch_be, jax_be = backends["torch"], backends["jax"]
    torch_be.save(tmp_path / "ck", torch_be.init(CFG, seed=4))
    ids = ids_batch(4)
    full_torch = torch_be.logits(torch_be.load(tmp_path / "ck").params, ids)
    cached_jax = _cached_logits(jax_be, jax_be.load(tmp_path / "ck").params, ids, prefix=5)
    assert np.abs(cached_jax[:, 4:] - full_torch[:, 4:]).max() <= 1e-4


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("loss", ["ce", "ce+structural", "masked"])
def test_losses_match_reference(backends: dict[str, Backend], loss: str) -> None:
    train = TRAIN.replace(loss=loss)
    batch = make_batch(7)
    weights = init_weights(CFG, seed=6)
    params = {n: be.from_numpy(weights, CFG) for n, be in backends.items()}
    logits = backends["torch"].logits(params["torch"], batch["inputs"])
    ref = losses_ref.batch_loss(logits, batch, train)
    assert set(ref) == {"loss", "nll", "structural"}
    assert np.isfinite(list(ref.values())).all()
    for name, be in backends.items():
        got = be.evaluate(params[name], batch, train)
        assert set(got) == set(ref)
        for key in ref:
            assert got[key] == pytest.approx(ref[key], abs=1e-4), (name, key)


def test_reference_losses_by_hand() -> None:
    logits = np.log(np.array([[[0.5, 0.25, 0.25]]]))
    targets = np.array([[1]])
    allowed = np.array([[[False, True, True]]])
    per = losses_ref.per_position_losses(
        logits, targets, allowed, loss="ce+structural", structural_weight=2.0
    )
    assert per["nll"][0, 0] == pytest.approx(np.log(4))
    assert per["structural"][0, 0] == pytest.approx(np.log(2))
    assert per["loss"][0, 0] == pytest.approx(np.log(4) + 2 * np.log(2))
    masked = losses_ref.per_position_losses(logits, targets, allowed, loss="masked", label_smoothing=0.2)
    assert masked["loss"][0, 0] == pytest.approx(np.log(2))  # q = (0, 1/2, 1/2)
    assert losses_ref.weighted_mean(np.array([1.0, 3.0]), np.array([0.0, 1.0])) == 3.0
    with pytest.raises(ValueError, match="needs the 'allowed'"):
        losses_ref.per_position_losses(logits, targets, loss="masked")


# ----------------------------------------------------------------------------- training


def _train(
    be: Backend, weights: dict, train: TrainConfig, steps: int, config: ModelConfig = CFG
) -> tuple[list[dict], dict[str, np.ndarray]]:
    state = be.init_state(be.from_numpy(weights, config), train)
    history = []
    for _ in range(steps):  # one batch, so that the loss goes down
        state, metrics = be.train_step(state, make_batch(100))
        history.append(metrics)
    return history, be.to_numpy(be.state_params(state))


def test_training_tracks_across_frameworks(backends: dict[str, Backend]) -> None:
    weights = init_weights(CFG, seed=8)
    runs = {name: _train(be, weights, TRAIN, steps=5) for name, be in backends.items()}
    (h_torch, w_torch), (h_jax, w_jax) = runs["torch"], runs["jax"]
    assert h_torch[-1]["loss"] < h_torch[0]["loss"]
    for mt, mj in zip(h_torch, h_jax, strict=True):
        assert set(mt) == set(mj) == {"loss", "nll", "structural", "grad_norm", "lr"}
        for key in mt:
            assert mj[key] == pytest.approx(mt[key], rel=1e-3), key
    assert [m["lr"] for m in h_torch] == pytest.approx([learning_rate(s, TRAIN) for s in range(5)], rel=1e-6)
    assert max(np.abs(w_torch[k] - w_jax[k]).max() for k in w_torch) < 1e-3


@pytest.mark.parametrize("name", BACKENDS)
def test_determinism(backends: dict[str, Backend], name: str) -> None:
    be = backends[name]
    a, b = be.to_numpy(be.init(CFG, seed=11)), be.to_numpy(be.init(CFG, seed=11))
    c = be.to_numpy(be.init(CFG, seed=12))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["tok_emb.weight"], c["tok_emb.weight"])
    ids = ids_batch(3)
    assert np.array_equal(be.logits(be.from_numpy(a, CFG), ids), be.logits(be.from_numpy(b, CFG), ids))
    # dropout on, masked loss (forbidden logits at -inf): same seed, same run; finite.
    # (one layer: compiling the JAX step with dropout is the slowest part of this file)
    cfg = CFG.replace(dropout=0.2, n_layers=1)
    a = init_weights(cfg, seed=11)
    train = TRAIN.replace(loss="masked")
    h1, w1 = _train(be, a, train, steps=2, config=cfg)
    h2, w2 = _train(be, a, train, steps=2, config=cfg)
    assert h1 == h2
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert all(np.isfinite(list(m.values())).all() for m in h1)
    assert all(np.isfinite(w).all() for w in w1.values())
    # dropout was active: the first loss is not the loss without dropout
    torch_be = backends["torch"]
    batch = make_batch(100)
    logits = torch_be.logits(torch_be.from_numpy(a, cfg), batch["inputs"])
    no_dropout = losses_ref.batch_loss(logits, batch, train)["loss"]
    assert h1[0]["loss"] != pytest.approx(no_dropout, rel=1e-4)


@pytest.mark.parametrize("name", BACKENDS)
def test_resume_from_checkpoint(backends: dict[str, Backend], tmp_path: Path, name: str) -> None:
    be = backends[name]
    weights = init_weights(CFG, seed=10)
    _, straight = _train(be, weights, TRAIN, steps=3)
    state = be.init_state(be.from_numpy(weights, CFG), TRAIN)
    for _ in range(2):
        state, _ = be.train_step(state, make_batch(100))
    be.save_state(tmp_path / "ck", state, meta={"note": "resume"})
    info = ckpt.read_info(tmp_path / "ck")
    assert info.step == 2
    assert set(info.files) == {ckpt.WEIGHTS_FILE, *be.optimizer_files}
    state = be.load_state(tmp_path / "ck")
    assert be.state_step(state) == 2
    state, _ = be.train_step(state, make_batch(100))
    resumed = be.to_numpy(be.state_params(state))
    assert max(np.abs(straight[k] - resumed[k]).max() for k in straight) <= 1e-6


# ----------------------------------------------------------------------------- checkpoint


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "ck"
    ckpt.save_checkpoint(path, init_weights(CFG, 0), CFG, train=TRAIN, step=1)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        get_backend("torch").load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_checkpoint_missing_directory_and_config(saved: Path, tmp_path: Path) -> None:
    assert "does not exist" in _load_error(tmp_path / "nowhere")
    (saved / "config.json").unlink()
    assert _load_error(saved).startswith(f"{saved / 'config.json'}: missing")


def test_checkpoint_bad_config_json(saved: Path) -> None:
    (saved / "config.json").write_text("{not json", encoding="utf-8")
    assert "config.json: not valid JSON" in _load_error(saved)
    (saved / "config.json").write_text('{"model": {}}', encoding="utf-8")
    assert "not a gramophone checkpoint config" in _load_error(saved)


def _weights_file(path: Path) -> Path:
    found = ckpt.file_path(ckpt.read_info(path), ckpt.WEIGHTS_FILE, verify=False)
    assert found is not None
    return found


def test_checkpoint_truncated_or_corrupted_weights(saved: Path) -> None:
    weights_file = _weights_file(saved)
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    msg = _load_error(saved)
    assert msg.startswith(f"{weights_file}: truncated or corrupted")
    # truncated, and config.json without the file records (a hand-made checkpoint, the plain
    # file name): safetensors' own check
    plain = saved / ckpt.WEIGHTS_FILE
    weights_file.rename(plain)
    cfg = json.loads((saved / "config.json").read_text())
    cfg["files"] = {}
    (saved / "config.json").write_text(json.dumps(cfg))
    assert _load_error(saved).startswith(f"{plain}: truncated or corrupted")
    plain.write_bytes(data[:5])
    assert _load_error(saved).startswith(f"{plain}: truncated or corrupted")
    # same size, one byte flipped: the recorded SHA-256 catches it
    ckpt.save_checkpoint(saved, init_weights(CFG, 0), CFG)
    weights_file = _weights_file(saved)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    weights_file.write_bytes(bytes(flipped))
    assert "SHA-256 differs" in _load_error(saved)
    weights_file.unlink()
    assert _load_error(saved) == f"{weights_file}: missing (listed in config.json)"


def test_checkpoint_shape_mismatch(saved: Path) -> None:
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model"]["vocab_size"] = 40
    (saved / "config.json").write_text(json.dumps(cfg))
    msg = _load_error(saved)
    assert "tensor 'tok_emb.weight' has shape (37, 32)" in msg
    assert "expects (40, 32)" in msg
    cfg["model"]["n_layers"] = 3
    cfg["model"]["vocab_size"] = 37
    (saved / "config.json").write_text(json.dumps(cfg))
    assert "missing 'blocks.2.ln1.weight'" in _load_error(saved)
    cfg["model"]["d_model"] = 30
    (saved / "config.json").write_text(json.dumps(cfg))
    assert "invalid configuration" in _load_error(saved)
    with pytest.raises(CheckpointError, match="has shape"):
        ckpt.save_checkpoint(saved, init_weights(CFG, 0), CFG.replace(d_ff=32))


def test_checkpoint_rewrite_is_atomic_and_keeps_other_files(saved: Path) -> None:
    """config.json is the one commit point: a reader that read the old config before a save
    still reads the old weights whole after it; the save before that is cleaned up."""
    (saved / "notes.txt").write_text("keep me")
    old_info = ckpt.read_info(saved)
    old_weights = ckpt.read_weights(old_info)
    old_name = _weights_file(saved).name
    ckpt.save_checkpoint(saved, init_weights(CFG, 1), CFG, step=2)
    assert old_name in {p.name for p in saved.iterdir()}
    assert (saved / "notes.txt").read_text() == "keep me"
    assert ckpt.read_info(saved).step == 2
    new_weights = ckpt.read_weights(ckpt.read_info(saved))
    assert not np.array_equal(new_weights["tok_emb.weight"], old_weights["tok_emb.weight"])
    # the reader in flight: old config, old weights, checked whole
    again = ckpt.read_weights(old_info)
    assert all(np.array_equal(again[k], old_weights[k]) for k in old_weights)
    ckpt.save_checkpoint(saved, init_weights(CFG, 2), CFG, step=3)
    names = sorted(p.name for p in saved.iterdir())
    assert len(names) == 4 and "config.json" in names and "notes.txt" in names, names
    assert old_name not in names
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.read_weights(old_info)  # two saves later, the first weights are gone
    assert not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize("name", BACKENDS)
def test_corrupted_optimizer_state(backends: dict[str, Backend], tmp_path: Path, name: str) -> None:
    be = backends[name]
    state = be.init_state(be.init(CFG, seed=0), TRAIN)
    be.save_state(tmp_path / "ck", state)
    opt_file = ckpt.file_path(ckpt.read_info(tmp_path / "ck"), be.optimizer_files[0])
    assert opt_file is not None
    opt_file.write_bytes(opt_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{opt_file.name}: truncated or corrupted"):
        be.load_state(tmp_path / "ck")
    # the weights alone still load (optimizer files are only for resuming)
    assert be.load(tmp_path / "ck").step == 0
