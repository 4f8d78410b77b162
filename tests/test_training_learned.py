"""Training and decoding with a trained vocabulary (miditok's BPE recipe), end to end from
the command line, on both backends: the structural loss and the validation's forbidden mass
are computed over the learned ids, a resumed run continues, and the run's model decodes
valid pieces (the checker and miditok's own ``tokens_errors`` on the learned ids)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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


def _random_tuples(auto: object, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """State tuples ``int32[*shape, K]``: each component's state drawn at random, some
    tuples rejected (REJECT in one component)."""
    from gramophone.grammar import REJECT

    comps = auto.components  # type: ignore[attr-defined]
    out = np.stack([rng.integers(0, c.num_states, size=shape) for c in comps], axis=-1).astype(np.int32)
    out[rng.random(shape) < 0.1, 0] = REJECT
    return out


def test_allowed_rows_built_in_blocks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """``allowed_batch`` builds blocks of rows (bounded temporaries at a 30k vocabulary):
    three rows a block gives what one block gives, for any leading shape."""
    from gramophone.grammar import automaton as automaton_module

    auto = model_automaton(load_tokenizer(trained_tokenizer_path("REMI", "BPE", "bar")))
    states = _random_tuples(auto, np.random.default_rng(0), (7, 5))
    whole = auto.allowed_batch(states)
    monkeypatch.setattr(automaton_module, "_ALLOWED_BLOCK", 3 * len(auto.vocab))
    assert whole.shape == (7, 5, len(auto.vocab))
    assert (auto.allowed_batch(states) == whole).all()
    assert not whole[states[..., 0] < 0].any()  # a rejected tuple allows nothing


def test_window_start_check_compares_the_rows_of_distinct_pairs() -> None:
    """The check that windows may start at bars compares allowed rows per distinct pair of
    state tuples (not a bool[windows, tokens, V] array): the same answer as comparing every
    pair's rows, and a split whose states were tampered with at a bar is refused."""
    import dataclasses

    from gramophone.data.dataset import DataError, _check_window_starts, _same_allowed, build_dataset

    tok = load_tokenizer(trained_tokenizer_path("REMI", "BPE", "bar"))
    auto = model_automaton(tok)
    rng = np.random.default_rng(1)
    a = _random_tuples(auto, rng, (40, 4))
    b = np.where(rng.random((40, 4, 1)) < 0.5, a, _random_tuples(auto, rng, (40, 4)))
    b[0, 0] = a[0, 0]
    want = (auto.allowed_batch(a) == auto.allowed_batch(b)).all(axis=-1)
    assert (_same_allowed(auto, a, b) == want).all()
    assert want.any() and not want.all()

    from gramophone.data import chorale_names

    split = build_dataset(tok, auto, names=chorale_names()[:12], progress=False)["train"]
    unique = _unique_tuples(auto, split)
    _check_window_starts(split, auto, unique)  # the real split passes
    at = int(split.bar_starts[len(split.bar_starts) // 2]) + 1  # a token after a bar
    seen = np.unique(split.states)
    rows = split.allowed[seen]
    other = int(seen[np.flatnonzero((rows != split.allowed[split.states[at]]).any(axis=1))[0]])
    tampered = dataclasses.replace(split, states=split.states.copy())
    tampered.states[at] = other
    with pytest.raises(DataError, match="windows cannot start at bars"):
        _check_window_starts(tampered, auto, unique)


def _unique_tuples(auto: object, split: object) -> np.ndarray:
    """The state tuple of each allowed row ``split`` uses (rows it does not use: zeros), as
    the automaton run along its streams gives them."""
    s: Any = split
    out = np.zeros((s.allowed.shape[0] - 1, auto.num_components), np.int32)  # type: ignore[attr-defined]
    for i in range(s.num_streams):
        ids = s.stream(i)
        lo = int(s.stream_starts[i])
        out[s.states[lo : lo + len(ids)]] = auto.run_batch(ids[None].astype(np.int32))[0, 1:]  # type: ignore[attr-defined]
    return out
