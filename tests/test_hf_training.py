"""Training transformers models through gramophone's loop (``train --backend hf``) and LoRA
fine-tunes (peft): the seed's Model 0.

Tiny GPT-2 and Llama models (d = 32, 2 layers) built from their configs, a few steps on the
chorales: the run's ``model/`` is a ``save_pretrained`` folder that ``decode --backend hf``
samples valid pieces from; a resumed run repeats an uninterrupted one exactly; the hf
backend's losses are the numpy reference's on the same logits; a LoRA run changes only
the adapters, its merged model has the peft model's logits, and decoding it needs no peft.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch
from safetensors.numpy import load_file

from gramophone.backends import TrainConfig, get_backend, losses_ref
from gramophone.backends import checkpoint as ckpt
from gramophone.cli import main
from gramophone.data.dataset import Dataset, load_dataset, train_batch
from gramophone.hf import HFBackend, LoraSpec, model_config, transformers_config
from gramophone.training import read_metrics, resolve_config, train
from tests.conftest import automaton_for, tokenizer_for
from tests.test_hf import assert_piece

ROOT = Path(__file__).parents[1]
TINY = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 64, "dropout": 0.1},
    "train": {
        "lr": 3e-3,
        "warmup_steps": 2,
        "total_steps": 3,
        "batch_size": 4,
        "seq_len": 64,
        "loss": "ce+structural",
        "label_smoothing": 0.0,
    },
}
QUIET = {"progress": False, "val_windows": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def dataset() -> Dataset:
    return load_dataset(tokenizer_for("shipped"), automaton_for("shipped"), progress=False)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def decoded(folder: Path, n: int) -> list[list[int]]:
    return [json.loads((folder / f"piece-{i:03d}.json").read_text())["ids"] for i in range(n)]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 trained 3 steps through the CLI (the LoRA tests start from its model)."""
    root = tmp_path_factory.mktemp("hf-run")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = root / "run"
    assert (
        main(["train", "--backend", "hf", "--model", "gpt2", "--config", str(config), "--out", str(out)]) == 0
    )
    return out


# ----------------------------------------------------------------------------- train, then decode


def test_train_gpt2_then_decode_its_model(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = base_run / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "gramophone.json"} <= {
        p.name for p in model.iterdir()
    }
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_inner"]) == (32, 2, 2, 64)
    assert (config["n_positions"], config["vocab_size"], config["resid_pdrop"]) == (64, 229, 0.1)
    tok = tokenizer_for("shipped")
    generation = json.loads((model / "generation_config.json").read_text())
    ids = (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"])
    assert ids == (tok["BOS_None"], tok["EOS_None"], tok["PAD_None"])
    assert (config["bos_token_id"], config["eos_token_id"]) == ids[:2] and config.get("pad_token_id") is None
    meta = json.loads((model / "gramophone.json").read_text())
    assert meta["automaton_hash"] == automaton_for("shipped").hash and "evaluation" in meta
    train_rows = [r for r in read_metrics(base_run) if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in train_rows)
    report = json.loads((base_run / "eval.json").read_text())
    assert report["backend"] == "hf" and report["test"]["tokens"] > 0
    info = ckpt.read_info(base_run / "checkpoints" / "step-000003")
    assert info.backend == "hf" and {"hf-model.safetensors", "optimizer-hf.pt"} <= set(info.files)

    out = tmp_path / "pieces"
    formats = ["--formats", "tokens", "--out", str(out)]
    code, stdout, err = cli(
        ["decode", "--backend", "hf", "--checkpoint", str(model), "--num", "3", "--seed", "2", *formats],
        capsys,
    )
    assert code == 0, err
    assert "all 3 valid" in stdout
    for piece in decoded(out, 3):
        assert len(piece) <= 64
        assert_piece("shipped", piece)
    # a training checkpoint decodes too, with --backend hf; with torch it is a one-line error
    step = base_run / "checkpoints" / "step-000003"
    code, stdout, err = cli(
        ["decode", "--backend", "hf", "--checkpoint", str(step), "--num", "2", "--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 0 and "all 2 valid" in stdout, err
    code, _, err = cli(
        ["decode", "--backend", "torch", "--checkpoint", str(step), "--out", str(tmp_path / "t")], capsys
    )
    assert code == 2 and "load it with --backend hf" in err and err.count("\n") == 1


def test_train_llama_then_decode(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, _, err = cli(
        ["train", "--backend", "hf", "--model", "llama", "--config", str(tiny_config), *("--out", str(out))],
        capsys,
    )
    assert code == 0, err
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 32
    assert config["intermediate_size"] == 64 and config["max_position_embeddings"] == 64
    pieces = tmp_path / "pieces"
    code, stdout, err = cli(
        ["decode", "--backend", "hf", "--checkpoint", str(out / "model"), "--num", "2", "--out", str(pieces)],
        capsys,
    )
    assert code == 0 and "all 2 valid" in stdout, err


def test_config_mapping_round_trips() -> None:
    run = resolve_config(229, preset="chorales")
    for arch in ("gpt2", "llama"):
        assert model_config(transformers_config(run.model, arch)) == run.model
    gpt2 = transformers_config(run.model, "gpt2")
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.n_inner, gpt2.n_positions) == (128, 4, 4, 512, 512)
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.1
    be = HFBackend(device="cpu")
    a, b = be.init(run.model, seed=3), be.init(run.model, seed=3)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert sum(p.numel() for p in a.parameters()) == 888_192


# ----------------------------------------------------------------------------- resume, losses


def _hf_weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "model" / "model.safetensors"))


def _train_rows(run: Path) -> list[tuple[int, float, float, float]]:
    return [
        (r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_metrics(run) if r["split"] == "train"
    ]


def test_resume_reproduces_an_uninterrupted_run(tiny_config: Path, tmp_path: Path) -> None:
    config = resolve_config(229, config_file=tiny_config, steps=6)  # dropout on: seeded by step
    common: dict[str, Any] = {"backend": "hf", "checkpoint_every": 3, "final_eval": False, **QUIET}
    common["dataset"] = dataset()
    full = train(tmp_path / "full", config=config, **common)
    part = train(tmp_path / "part", config=config, stop_after=4, **common)
    assert part.step == 4 and part.model_dir is None
    resumed = train(tmp_path / "part", resume=True, **common)
    assert resumed.step == full.step == 6
    a, b = _hf_weights(tmp_path / "full"), _hf_weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert _train_rows(tmp_path / "full") == _train_rows(tmp_path / "part")


@pytest.mark.parametrize(("loss", "smoothing"), [("ce", 0.1), ("ce+structural", 0.0), ("masked", 0.1)])
def test_losses_are_the_reference_losses(loss: str, smoothing: float) -> None:
    """``evaluate`` and the first ``train_step`` (no dropout) of the hf backend against
    :mod:`~gramophone.backends.losses_ref` on the model's own logits."""
    run = resolve_config(229, preset="tiny")
    model = run.model.replace(dropout=0.0)
    tc = TrainConfig(loss=loss, label_smoothing=smoothing, structural_weight=0.5, seq_len=32, batch_size=3)  # type: ignore[arg-type]
    batch = train_batch(dataset()["train"], tc.seq_len, tc.batch_size, seed=0, step=5)
    batch["weights"][1, 20:] = 0.0
    be = get_backend("hf")
    params = be.init(model, seed=1)
    ref = losses_ref.batch_loss(be.logits(params, batch["inputs"]), batch, tc)
    got = be.evaluate(params, batch, tc)
    assert set(got) == set(ref) == {"loss", "nll", "structural"}
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-5), key
    _, metrics = be.train_step(be.init_state(params, tc), batch)
    for key in ref:
        assert metrics[key] == pytest.approx(ref[key], abs=1e-5), key


# ----------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_run(base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    config = root / "tiny.json"
    config.write_text(json.dumps({**TINY, "train": {**TINY["train"], "lr": 3e-2, "total_steps": 3}}))
    out = root / "run"
    args = [
        "train",
        "--backend",
        "hf",
        "--init",
        str(base_run / "model"),
        "--lora",
        "r=4,alpha=8,dropout=0.1",
    ]
    assert main([*args, "--config", str(config), "--checkpoint-every", "3", "--out", str(out)]) == 0
    return out


def _base_name(name: str) -> str:
    """A peft state-dict name as the base model's (the output projection is tied to the
    token embedding: ``save_pretrained`` keeps one name of the two, safetensors the other)."""
    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
    return "transformer.wte.weight" if name == "lm_head.weight" else name


def test_lora_trains_only_the_adapters(base_run: Path, lora_run: Path) -> None:
    base = load_file(str(base_run / "model" / "model.safetensors"))
    info = ckpt.read_info(lora_run / "checkpoints" / "step-000003")
    assert info.meta["hf"]["lora"] == {
        "r": 4,
        "alpha": 8.0,
        "dropout": 0.1,
        "target_modules": ["c_attn", "c_proj"],
    }
    trained = load_file(str(ckpt.file_path(info, "hf-model.safetensors")))
    adapters = {k: v for k, v in trained.items() if ".lora_" in k}
    assert len(adapters) == 2 * 2 * 3  # A and B, 2 layers, c_attn + attn.c_proj + mlp.c_proj
    assert any(np.abs(v).max() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at 0
    frozen = {_base_name(k): v for k, v in trained.items() if ".lora_" not in k}
    assert frozen.keys() == base.keys()
    for name, value in frozen.items():
        assert np.array_equal(value, base[name]), name
    optimizer = torch.load(ckpt.file_path(info, "optimizer-hf.pt"), weights_only=True)["optimizer"]
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(adapters)
    adapter = lora_run / "model" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_run / "model"
    )


def test_a_lora_run_resumes_exactly(base_run: Path, tiny_config: Path, tmp_path: Path) -> None:
    """Stopped and resumed (the peft model rebuilt from the checkpoint, with a backend that
    knows nothing of --init or --lora), a LoRA run ends where an uninterrupted one does."""
    run = resolve_config(229, config_file=tiny_config, steps=4)
    run = dataclasses.replace(run, model=HFBackend().load(base_run / "model").model)
    common: dict[str, Any] = {"config": run, "checkpoint_every": 2, "final_eval": False, **QUIET}
    common["dataset"] = dataset()
    lora = {"init": base_run / "model", "lora": "r=4,dropout=0.1"}
    train(tmp_path / "full", backend=HFBackend(**lora), **common)
    train(tmp_path / "part", backend=HFBackend(**lora), stop_after=2, **common)
    del common["config"]
    train(tmp_path / "part", backend="hf", resume=True, **common)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = (load_file(str(tmp_path / r / "model" / name)) for r in ("full", "part"))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    assert _train_rows(tmp_path / "full") == _train_rows(tmp_path / "part")


def test_merged_model_has_the_peft_models_logits(base_run: Path, lora_run: Path) -> None:
    be = HFBackend(device="cpu")
    peft_model = be._model_of(ckpt.read_info(lora_run / "checkpoints" / "step-000003"))
    merged = be.load(lora_run / "model").params
    base = be.load(base_run / "model").params
    assert not any("lora" in k for k in merged.state_dict())
    ids = train_batch(dataset()["validation"], 48, 3, seed=0, step=0)["inputs"]
    want = be.logits(peft_model, ids)
    got = be.logits(merged, ids)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert np.abs(be.logits(base, ids) - want).max() > 1e-3  # the adapters did something


def test_the_merged_model_decodes_without_peft(lora_run: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['peft'] = None  # importing peft now fails\n"
        "from gramophone.cli import main\n"
        f"rc = main(['decode', '--backend', 'hf', '--checkpoint', {str(lora_run / 'model')!r},\n"
        f"           '--num', '2', '--formats', 'tokens', '--out', {str(tmp_path / 'out')!r}])\n"
        "assert sys.modules['peft'] is None\n"
        "sys.exit(rc)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert "all 2 valid" in got.stdout


# ----------------------------------------------------------------------------- errors


def test_errors_are_one_line(
    base_run: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_args = ["train", "--config", str(tiny_config)]
    cases = [
        (
            ["--backend", "torch", "--model", "gpt2"],
            "--model chooses a transformers model: it is for --backend hf",
        ),
        (["--backend", "hf", "--model", "bart"], "--model 'bart': the hf backend builds gpt2 or llama"),
        (["--backend", "hf", "--lora", "r=8"], "--lora fine-tunes a trained model: give it with --init DIR"),
        (
            ["--backend", "hf", "--init", str(base_run / "model"), "--lora", "r=0"],
            "r must be a positive integer",
        ),
        (["--backend", "hf", "--init", str(base_run / "model"), "--lora", "rank=8"], "unknown key 'rank'"),
        (["--backend", "hf", "--resume", "--init", str(base_run / "model")], "--init starts a run; --resume"),
        (["--backend", "hf", "--init", str(tmp_path)], "no tokenizer.json beside the model"),
    ]
    for args, message in cases:
        code, _, err = cli([*train_args, *args, "--out", str(tmp_path / "run")], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    assert LoraSpec.parse("alpha=32,targets=c_attn") == LoraSpec(alpha=32.0, target_modules=("c_attn",))


# ----------------------------------------------------------------------------- measuring


def test_validity_rows_of_an_hf_model(base_run: Path) -> None:
    from gramophone.bench import validity_table

    records, streams = validity_table.run_models({"tiny": ("hf", base_run / "model")}, n=3, budget=64)
    rows = {r["sampling"]: r for r in records if r["benchmark"] == "validity"}
    assert rows.keys() == {"free", "masked"} and rows["masked"]["n"] == rows["free"]["n"] == 3
    assert rows["masked"]["value"] == 1.0  # under the grammar every piece is valid
    assert rows["masked"]["training"] == "tiny" and rows["masked"]["validation_nll"] > 0
    assert 0 < rows["masked"]["mask_removed_mass"] < 1
    assert len(streams["tiny"]["masked"]) == 3


def test_the_minor_subset(tmp_path: Path) -> None:
    from symusic import Score

    from gramophone.bench.style import chorale_modes, minor_share, write_subset
    from gramophone.data import chorale_names, split_names

    links = write_subset(tmp_path / "minor", "minor", ["train"])
    train = set(split_names(chorale_names())["train"])
    modes = chorale_modes(train)
    assert len(links) == sum(m == "minor" for m in modes.values()) > 100
    assert all(link.is_symlink() and link.resolve().is_file() for link in links)
    assert {link.stem for link in links} == {n.split("/")[-1] for n, m in modes.items() if m == "minor"}
    assert len(write_subset(tmp_path / "minor", "minor", ["train"])) == len(links)  # again: replaced
    share, pieces = minor_share(Score(str(link)) for link in links[:40])
    assert pieces == 40 and share > 0.75  # the key finder agrees with the key signatures
