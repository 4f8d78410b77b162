"""Training and decoding with a trained vocabulary (miditok's BPE recipe), end to end from
the command line, on both backends: the structural loss and the validation's forbidden mass
are computed over the learned ids, a resumed run continues, and the run's model decodes
valid pieces (the checker and miditok's own ``tokens_errors`` on the learned ids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gramophone.backends import checkpoint as ckpt
from gramophone.cli import main
from gramophone.tokenizers import load_tokenizer, model_automaton, model_vocab
from gramophone.training import read_metrics
from tests.learned_fixtures import trained_tokenizer_path
from tests.test_training import TINY


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
    code = main(
        ["decode", "--backend", backend, "--checkpoint", str(out / "model"), "--num", "3",
         "--max-tokens", "40", "--no-audio", "--seed", "3", "--out", str(dec)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for piece in sorted(dec.glob("piece-*.json")):
        ids = json.loads(piece.read_text())["ids"]
        assert len(ids) <= 40
        assert ids[0] == learned.model_id("BOS_None") and ids[-1] == learned.model_id("EOS_None")
        assert main(["check", "--tokenizer", str(dec / "tokenizer.json"), str(piece)]) == 0
        body = ids[1:-1]
        assert tokenizer.tokens_errors(TokSequence(ids=list(body), are_ids_encoded=True)) == 0
        base, _ = learned.expand(ids)
        assert np.isin([learned.base[b].split("_")[0] for b in base], ["Pitch"]).any()
