"""Fill-in-the-middle windows (gramophone/data/fim.py) and FIM-trained infilling.

The rewritten windows are checked against the plain windows they come from, with an
automaton run of their own (not the rows the rewrite copies): each rewritten window is
``suffix BOS prefix middle EOS`` for two bar starts of the plain window, every scored
target is what the grammar allows after the tokens before it *in the piece*, and the EOS
that ends the middle stands exactly where the kept suffix begins. Then a model trained
with ``fim_rate`` decodes ``--infill`` through the suffix-first context, valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone.cli import main
from gramophone.data import Dataset, load_dataset, train_batch
from gramophone.data.fim import fim_batch, fim_tokens
from gramophone.grammar import REJECT
from tests.conftest import automaton_for, tokenizer_for

SEQ = 128


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(tokenizer_for("shipped"), automaton_for("shipped"), progress=False)


def _allowed_after(tokens: list[int]) -> np.ndarray:
    """bool[V]: what the shipped automaton allows after ``tokens`` run from its start."""
    auto = automaton_for("shipped")
    states = auto.start_states.copy()
    for t in tokens:
        states = np.array([c.transitions[s, t] for c, s in zip(auto.components, states, strict=True)])
        assert (states != REJECT).all()
    return auto.allowed(states)


@settings(max_examples=max(5, settings.default.max_examples // 3), deadline=None)
@given(step=st.integers(0, 10_000), rate=st.sampled_from([0.5, 1.0]))
def test_fim_windows_are_the_plain_windows_reordered(dataset: Dataset, step: int, rate: float) -> None:
    vocab = automaton_for("shipped").vocab
    tok = fim_tokens(vocab)
    plain = train_batch(dataset["train"], SEQ, 4, 0, step)
    fim = fim_batch(plain, rate, 0, step, tok)
    again = fim_batch(plain, rate, 0, step, tok)
    assert all((fim[k] == again[k]).all() for k in fim)  # a function of (seed, step)
    for r in range(4):
        x = np.concatenate([plain["inputs"][r], plain["targets"][r, -1:]])
        y = np.concatenate([fim["inputs"][r], fim["targets"][r, -1:]])
        if (x == y).all():
            continue
        n = 1 + int((plain["weights"][r] > 0).sum())
        x = x[:n].tolist()
        y = y.tolist()
        sep = y.index(tok.bos)
        end = sep + y[sep:].index(tok.eos)
        suffix, body = y[:sep], y[sep + 1 : end]
        start = 1 if x[0] == tok.bos else 0
        cut = start + len(body)  # where the suffix begins in the plain window
        assert x[start:cut] == body, "prefix + middle are the window's tokens"
        rest = x[cut:]
        if rest and rest[-1] == tok.eos:
            rest = rest[:-1]
        assert rest[: len(suffix)] == suffix, "the suffix is the rest of the window"
        assert (cut < n and tok.starts_bar[x[cut]]) or x[cut] == tok.eos, (
            "the middle ends at a bar or the end"
        )
        # every target but the given ones is scored, and is what the grammar allows after
        # the piece's own tokens before it (a fresh run; a window may start at a Bar)
        w = fim["weights"][r]
        for k in range(end):
            target = y[k + 1]
            if k < sep - 1:  # a suffix token: x[cut + k + 1]
                before = x[: cut + k + 1]
            elif k == sep - 1:
                assert w[k] == 0 and target == tok.bos, "the separator is given"
                continue
            elif k + 1 == end:
                assert target == tok.eos and w[k] == 1
                assert _allowed_after(x[:cut] if start else [*x[:cut]])[x[cut]] or x[cut] == tok.eos
                continue
            else:
                before = x[: start + k - sep]
            if not before:
                assert w[k] == 0 and not start, "a window's first Bar after BOS is given"
                continue
            assert w[k] == 1
            assert _allowed_after(before)[target], (k, vocab[target])
        assert not w[end:].any()


def test_fim_rate_zero_changes_nothing(dataset: Dataset) -> None:
    plain = train_batch(dataset["train"], SEQ, 4, 0, 3)
    same = fim_batch(plain, 0.0, 0, 3, fim_tokens(automaton_for("shipped").vocab))
    assert all((plain[k] == same[k]).all() for k in plain)


TINY_FIM = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 256, "dropout": 0.0},
    "train": {
        "lr": 3e-3,
        "warmup_steps": 1,
        "total_steps": 3,
        "batch_size": 2,
        "seq_len": 256,
        "loss": "ce+structural",
        "label_smoothing": 0.0,
        "fim_rate": 0.5,
    },
}


def test_a_fim_trained_model_infills_through_the_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gramophone.decoding.infill import plan_infill
    from gramophone.tokenizers import write_token_file
    from gramophone.tokenizers.learned import learned_vocab
    from tests.test_infill import assert_infilled, chorale_piece

    config = tmp_path / "fim.json"
    config.write_text(json.dumps(TINY_FIM))
    run = tmp_path / "run"
    assert main(["train", "--backend", "torch", "--config", str(config), "--out", str(run)]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["train"]["fim_rate"] == 0.5
    piece = chorale_piece(4, 3)
    prompt = tmp_path / "p.json"
    write_token_file(prompt, list(piece), tokenizer_for("shipped"))
    out = tmp_path / "o"
    code = main(
        [
            "decode",
            "--backend",
            "torch",
            "--checkpoint",
            str(run / "model"),
            "--prompt",
            str(prompt),
            "--infill",
            "2:2",
            "--num",
            "2",
            "--formats",
            "tokens",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    plan = plan_infill(piece, automaton_for("shipped"), learned_vocab(tokenizer_for("shipped")), (2, 2))
    assert summary["prompt_tokens"] == len(plan.suffix) + len(plan.prefix), "the model read the suffix first"
    for name in ("piece-000", "piece-001"):
        ids = json.loads((out / f"{name}.json").read_text())["ids"]
        ids = ids[0] if ids and isinstance(ids[0], list) else ids
        assert_infilled(
            list(ids), piece, plan, learned_vocab(tokenizer_for("shipped")), summary["max_tokens"]
        )
    # The benchmark's infill validity (free and masked) runs the same code: under the mask
    # every infill is finished, keeps the bars and is valid by miditok, whatever the model.
    from gramophone.bench.infill import holes, infill_validity
    from gramophone.data import load_dataset
    from gramophone.decoding.driver import load_model
    from gramophone.decoding.rules import Sampling

    loaded = load_model("torch", run / "model")
    data = load_dataset(loaded.tokenizer, progress=False)
    cases = holes(data["test"], data.vocab, loaded.config.max_len, 3)
    got = infill_validity(loaded, cases, Sampling())
    assert got["masked"] == {"valid": 1.0, "finished": 1.0, "exact_bars": 1.0, "n": len(cases)}
    assert got["free"]["n"] == len(cases) == 3
    assert 0.0 <= got["free"]["valid"] <= got["free"]["exact_bars"] <= got["free"]["finished"] <= 1.0
