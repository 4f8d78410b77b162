"""Training and decoding with a trained vocabulary (miditok's BPE recipe), end to end from
the command line, on both backends: the structural loss and the validation's forbidden mass
are computed over the learned ids, a resumed run continues, and the run's model decodes
valid pieces (the checker and miditok's own ``tokens_errors`` on the learned ids)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gramophone.backends import checkpoint as ckpt
from gramophone.cli import main
from gramophone.tokenizers import load_tokenizer, model_automaton, model_vocab
from gramophone.training import read_metrics
from tests.learned_fixtures import trained_tokenizer_path
from tests.test_training import TINY


def _decode(
    backend: str,
    model: Path,
    out: Path,
    *,
    num: int,
    max_tokens: int,
    seed: int,
    capsys: pytest.CaptureFixture[str],
) -> list[list[int]]:
    """``gramophone decode`` from ``model`` into ``out``: the ids of each piece written."""
    code = main(
        ["decode", "--backend", backend, "--checkpoint", str(model), "--num", str(num),
         "--max-tokens", str(max_tokens), "--no-audio", "--seed", str(seed), "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    pieces = [json.loads(p.read_text())["ids"] for p in sorted(out.glob("piece-*.json"))]
    assert len(pieces) == num
    return pieces


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_train_and_decode_with_a_bpe_vocabulary(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from miditok import TokSequence

    tok_path = trained_tokenizer_path("REMI", "BPE", "bar")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "train": {**TINY["train"], "total_steps": 4}}))
    out = tmp_path / "run"
    args = ["train", "--backend", backend, "--tokenizer", str(tok_path), "--config", str(config)]
    assert main([*args, "--checkpoint-every", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    tokenizer = load_tokenizer(tok_path)
    learned = model_vocab(tokenizer)
    info = ckpt.read_info(out / "model")
    assert info.model.vocab_size == len(learned) > 900
    assert info.meta["automaton_hash"] == model_automaton(tokenizer).hash
    val = [r for r in read_metrics(out) if r["split"] == "validation" and not r.get("final")]
    assert val and 0.0 < val[-1]["forbidden_mass"] < 1.0 and val[-1]["nll_masked"] < val[-1]["nll"]
    # resume with the run's own tokenizer (no --tokenizer) for two more steps (a longer schedule)
    more = ["train", "--backend", backend, "--resume", "--steps", "6", "--reschedule", "--out", str(out)]
    assert main(more) == 0, capsys.readouterr().err
    assert ckpt.read_info(out / "model").step == 6

    dec = tmp_path / "decoded"
    pieces = _decode(backend, out / "model", dec, num=3, max_tokens=40, seed=3, capsys=capsys)
    assert (
        main(["check", "--tokenizer", str(dec / "tokenizer.json"), *map(str, dec.glob("piece-*.json"))]) == 0
    )
    for ids in pieces:
        assert len(ids) <= 40
        assert ids[0] == learned.model_id("BOS_None") and ids[-1] == learned.model_id("EOS_None")
        body = ids[1:-1]
        assert tokenizer.tokens_errors(TokSequence(ids=list(body), are_ids_encoded=True)) == 0
        base, _ = learned.expand(ids)
        assert np.isin([learned.base[b].split("_")[0] for b in base], ["Pitch"]).any()


# ----------------------------------------------------------------------------- schemes without bars


def _chorale_folder(root: Path, n: int = 24) -> Path:
    """``n`` chorale MIDI files copied into ``root`` (user data for ``--data``)."""
    from gramophone.data import chorale_midis

    root.mkdir()
    for p in chorale_midis()[:n]:
        shutil.copy(p, root / p.name)
    return root


@pytest.mark.parametrize(("scheme", "model"), [("TSD", None), ("TSD", "Unigram"), ("MIDILike", "BPE")])
def test_windows_of_a_scheme_without_bars_open_on_an_onset(scheme: str, model: str | None) -> None:
    """Without Bar tokens, a training window starts at its stream's BOS or right after a
    token that ends with a time move (read from the token names, not the grammar), so the
    corpus yields windows past each stream's first; their masks are the whole stream's."""
    import miditok

    from gramophone.data import chorale_midis, chorale_names
    from gramophone.data.dataset import DataConfig, build_dataset

    if model is None:
        tokenizer = getattr(miditok, scheme)(load_tokenizer().config)
    else:
        tokenizer = load_tokenizer(trained_tokenizer_path(scheme, model, "bar"))
    names = chorale_names()[:12]
    data = build_dataset(
        tokenizer, model_automaton(tokenizer), DataConfig(transpose=(0, 0)),
        names=names, paths=chorale_midis(names=names), progress=False,
    )  # fmt: skip
    vocab = model_vocab(tokenizer).names
    for split in data.splits.values():
        starts = split.bar_starts
        assert starts.size > 0 or split.num_streams == 0
        for p in starts:
            s = int(split.stream_of(np.array([p]))[0])
            first, end = int(split.stream_starts[s]), int(split.stream_starts[s + 1])
            assert first + 1 < p < end - 1
            last_base = vocab[split.ids[p - 1]].split("+")[-1]
            assert last_base.split("_")[0] in ("TimeShift", "Rest"), vocab[split.ids[p - 1]]
        windows = split.windows(64)
        assert len(windows) > split.num_streams  # windows past the streams' first
        batch = split.batch(windows[-3:], 64)
        for r, a in enumerate(windows[-3:]):  # each target's mask: the whole stream's state there
            n = int(batch["weights"][r].sum())
            assert n > 0
            rows = split.states[a : a + n]  # the state after inputs[:t+1]
            assert (batch["allowed"][r, :n] == split.allowed[rows]).all()
            assert batch["allowed"][r, np.arange(n), batch["targets"][r, :n]].all()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_train_and_decode_with_a_tsd_vocabulary_on_a_folder(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TSD (no Bar tokens) with a trained Unigram vocabulary: ``train --data`` and
    ``decode`` from the command line; fill-in-the-middle (which cuts at bars) is one clear
    error."""
    from miditok import TokSequence

    tok_path = trained_tokenizer_path("TSD", "Unigram", "bar")
    data = _chorale_folder(tmp_path / "midi")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "train": {**TINY["train"], "total_steps": 3}}))
    out = tmp_path / "run"
    args = [
        "train",
        "--backend",
        backend,
        "--tokenizer",
        str(tok_path),
        "--data",
        str(data),
        "--workers",
        "1",
    ]
    assert main([*args, "--config", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    tokenizer = load_tokenizer(tok_path)
    learned = model_vocab(tokenizer)
    assert ckpt.read_info(out / "model").model.vocab_size == len(learned)
    for ids in _decode(
        backend, out / "model", tmp_path / "decoded", num=2, max_tokens=48, seed=1, capsys=capsys
    ):
        assert len(ids) <= 48 and ids[-1] == learned.model_id("EOS_None")
        assert tokenizer.tokens_errors(TokSequence(ids=list(ids[1:-1]), are_ids_encoded=True)) == 0

    fim = tmp_path / "fim.json"
    fim.write_text(json.dumps({**TINY, "train": {**TINY["train"], "fim_rate": 0.5}}))
    capsys.readouterr()
    assert main([*args, "--config", str(fim), "--out", str(tmp_path / "fim-run")]) == 2
    err = capsys.readouterr().err
    assert "needs Bar tokens" in err and err.count("\n") == 1 and not (tmp_path / "fim-run").exists()
