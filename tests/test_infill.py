"""Bar infilling (``--infill A:B``) against oracles that do not use the automaton.

For pieces drawn from the language (random walks with a few bars) and cut from real
chorales, random bars ``A..B``, random budgets from the smallest that fits, random
sampling rules and adversarial stand-in models (which never see the kept bars after the
infill), on the numpy, torch and JAX loops and through the command line:

- every output piece is accepted by lark + the plain-Python references and has zero
  miditok ``tokens_errors``;
- bars ``1..A-1`` and ``B+1..`` are the prompt's, token for token, and bar ``A``'s Bar
  token too; the piece has as many bars as the prompt, so the middle holds exactly
  ``B - A + 1``;
- the piece fits the budget, which counts the kept bars;
- the mask never blocks the original: the prompt's own middle passes the infill tables
  token by token at the tightest budget (a mask that is too strict would fail here).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone.cli import main
from gramophone.decoding import DecodeRequest, Sampling, sample_numpy
from gramophone.decoding.driver import prepare_infill
from gramophone.decoding.infill import InfillPlan, parse_infill, plan_infill
from gramophone.errors import DecodingError
from gramophone.grammar import compile_tokenizer, derive
from gramophone.grammar.constraints import bars_component
from gramophone.kernels import numpy as kernels
from gramophone.tokenizers import encode_midi
from gramophone.tokenizers.learned import LearnedVocab, learned_vocab
from tests.conftest import automaton_for, grammar_for, tokenizer_for
from tests.reference import miditok_errors, reference_accepts
from tests.walks import random_walk

FEWER = settings(max_examples=max(4, settings.default.max_examples // 6))  # ~3 s of tables each
MAX_LEN = 1024  # the stand-in models' context


def _bars(names: list[str]) -> list[list[str]]:
    """Token names split before each Bar (element 0: what precedes the first bar)."""
    out: list[list[str]] = [[]]
    for t in names:
        if t == "Bar_None":
            out.append([])
        out[-1].append(t)
    return out


@functools.cache
def walk_piece(bars: int, seed: int) -> tuple[int, ...]:
    """A piece of the shipped language with exactly ``bars`` Bar tokens (BOS ... EOS)."""
    auto = automaton_for("shipped")
    counted = auto.with_component(bars_component(auto.vocab, bars))
    body = random_walk(counted, np.random.default_rng(seed), length=6 * bars, eos=False)
    index = auto.token_index
    return (index["BOS_None"], *body, index["EOS_None"])


@functools.cache
def chorale_piece(number: int, bars: int) -> tuple[int, ...]:
    """The first ``bars`` bars of a chorale, tokenized by miditok (BOS ... EOS)."""
    from gramophone.data import chorale_midis

    tok = tokenizer_for("shipped")
    ids = encode_midi(tok, chorale_midis(progress=False)[number])[0]
    names = [tok[i] for i in ids]
    cut = [j for j, t in enumerate(names) if t == "Bar_None"]
    end = cut[bars] if bars < len(cut) else len(ids)
    body = [i for i, t in zip(ids[:end], names[:end], strict=True) if t not in ("BOS_None", "EOS_None")]
    return (tok["BOS_None"], *body, tok["EOS_None"])


def _standin(V: int, seed: int, spike: float, eos: int) -> Any:
    """Fixed random logits per position, ``spike`` on a random half of the vocabulary
    (mass on forbidden tokens) and, at random, on EOS (a model in a hurry to stop)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(64, V)).astype(np.float32) * 3
    hot = rng.random(V) < 0.5
    hot[eos] = rng.random() < 0.5

    class Model:
        def prefill(self, ids: np.ndarray, lengths: np.ndarray, cache_len: int) -> Any:
            return np.where(hot, np.float32(spike), table[(lengths - 1) % 64]), None

        def step(self, token: np.ndarray, cache: Any, positions: np.ndarray) -> Any:
            return np.where(hot, np.float32(spike), table[positions % 64]), None

    return Model()


def assert_infilled(
    piece: list[int], prompt: tuple[int, ...], plan: InfillPlan, learned: LearnedVocab, budget: int
) -> None:
    """The output ``piece`` (model ids, EOS last) is valid and keeps the other bars."""
    tok, grammar = tokenizer_for("shipped"), grammar_for("shipped")
    names = [learned.base[b] for b in learned.expand(piece)[0]]
    before = [learned.base[b] for b in learned.expand(prompt)[0]]
    assert len(piece) <= budget
    assert names[0] == "BOS_None" and names[-1] == "EOS_None" and names.count("EOS_None") == 1
    assert reference_accepts(grammar, names), names
    assert miditok_errors(tok, piece) == 0, names
    got, want = _bars(names), _bars(before)
    assert len(got) == len(want), (len(got), len(want))
    for k in range(len(want)):
        if not plan.first <= k <= plan.last:
            assert got[k] == want[k], (k, got[k], want[k])
    assert all(got[k][0] == "Bar_None" for k in range(1, len(got)))


@st.composite
def infill_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], int, int]:
    if draw(st.booleans()):
        piece = walk_piece(draw(st.integers(1, 5)), draw(st.integers(0, 50)))
    else:
        piece = chorale_piece(draw(st.integers(0, 20)), draw(st.integers(1, 4)))
    n = [automaton_for("shipped").vocab[i] for i in piece].count("Bar_None")
    first = draw(st.integers(1, n))
    return piece, first, draw(st.integers(first, n))


@FEWER
@given(
    case=infill_cases(),
    extra=st.integers(0, 30),
    seed=st.integers(0, 1000),
    spike=st.sampled_from([0.0, 30.0, np.inf]),
    greedy=st.booleans(),
)
def test_numpy_infills_are_valid_and_keep_the_other_bars(
    case: tuple[tuple[int, ...], int, int], extra: int, seed: int, spike: float, greedy: bool
) -> None:
    piece, first, last = case
    auto = automaton_for("shipped")
    learned = learned_vocab(tokenizer_for("shipped"))
    plan = plan_infill(piece, auto, learned, (first, last))
    tables, prompt, budget, loop_budget = prepare_infill(auto, plan, None, MAX_LEN, learned=learned)
    need = prompt.min_total + len(plan.suffix)
    budget, loop_budget = need + extra, need + extra - len(plan.suffix)
    request = DecodeRequest(prompt.ids, prompt.state, 3, loop_budget, Sampling(greedy=greedy), seed=seed)
    result = sample_numpy(_standin(tables.vocab_size, seed, spike, tables.eos), tables, request)
    for stream in result.streams():
        assert_infilled(plan.splice(stream), piece, plan, learned, budget)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_device_loops_infill_exactly(backend: str) -> None:
    """The torch and JAX loops of random small models on the same cases (a few: JAX
    compiles one loop per tables shape)."""
    from gramophone.backends import ModelConfig, get_backend
    from gramophone.backends.base import init_weights

    config = ModelConfig(vocab_size=229, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=256, dropout=0.0)
    params = get_backend(backend).from_numpy(init_weights(config, 0), config)
    auto = automaton_for("shipped")
    learned = learned_vocab(tokenizer_for("shipped"))
    for k, (piece, first, last) in enumerate(
        [(walk_piece(4, 1), 2, 3), (chorale_piece(3, 3), 1, 1), (walk_piece(4, 2), 4, 4)]
    ):
        plan = plan_infill(piece, auto, learned, (first, last))
        tables, prompt, _, _ = prepare_infill(auto, plan, None, 256, learned=learned)
        loop_budget = prompt.min_total + 3 * k
        request = DecodeRequest(prompt.ids, prompt.state, 2, loop_budget, Sampling(), seed=k, capacity=256)
        if backend == "torch":
            from gramophone.decoding.torch_loop import gpt_model, sample_torch

            result = sample_torch(gpt_model(params), tables, request)
        else:
            from gramophone.decoding.jax_loop import gpt_model as jax_gpt
            from gramophone.decoding.jax_loop import sample_jax

            result = sample_jax(jax_gpt(), params, tables, request)
        for stream in result.streams():
            assert_infilled(plan.splice(stream), piece, plan, learned, loop_budget + len(plan.suffix))


@FEWER
@given(case=infill_cases())
def test_the_original_middle_passes_the_mask_at_the_tightest_budget(
    case: tuple[tuple[int, ...], int, int],
) -> None:
    piece, first, last = case
    auto = automaton_for("shipped")
    learned = learned_vocab(tokenizer_for("shipped"))
    plan = plan_infill(piece, auto, learned, (first, last))
    tables, _, _, _ = prepare_infill(auto, plan, None, MAX_LEN, learned=learned)
    stream = [*plan.prefix, *plan.middle, plan.eos]
    assert plan.splice(stream) == list(piece)
    state = tables.run(plan.prefix)[None, :]
    for t in range(len(plan.prefix), len(stream)):
        remaining = len(stream) - t  # this token included: no slack at all
        assert kernels.allowed(tables, state, remaining)[0, stream[t]], (t, tables.vocab[stream[t]])
        state = kernels.advance(tables, state, np.array([stream[t]]))


def test_learned_tokens_across_a_cut_are_written_as_single_tokens() -> None:
    """A BPE vocabulary trained without the per-bar split learns tokens across bar lines:
    the kept side holds the same base tokens, and infills are valid."""
    from tests.learned_fixtures import trained_tokenizer

    tok = trained_tokenizer("REMI", "BPE", "no")
    auto = compile_tokenizer(tok)
    learned = learned_vocab(tok)
    grammar = derive(tok)
    from miditok import TokSequence

    names = [automaton_for("shipped").vocab[i] for i in chorale_piece(5, 4)]
    seq = TokSequence(tokens=names[1:-1], ids=[auto.token_index[t] for t in names[1:-1]])
    tok.encode_token_ids(seq)  # miditok's own BPE encoding of the base ids
    index = auto.token_index
    model_ids = [int(learned.single[index["BOS_None"]]), *seq.ids, int(learned.single[index["EOS_None"]])]
    straddling = 0
    for first, last in [(1, 1), (2, 3), (2, 4), (4, 4)]:
        plan = plan_infill(model_ids, auto, learned, (first, last))
        assert (
            learned.expand([*plan.prefix, *plan.middle, *plan.suffix, plan.eos])[0]
            == learned.expand(model_ids)[0]
        )
        straddling += len(plan.prefix) + len(plan.middle) + len(plan.suffix) + 1 - len(model_ids)
        tables, prompt, _, _ = prepare_infill(auto, plan, None, MAX_LEN, learned=learned)
        budget = prompt.min_total + 10
        request = DecodeRequest(prompt.ids, prompt.state, 2, budget, Sampling(), seed=first)
        result = sample_numpy(_standin(tables.vocab_size, first, 30.0, tables.eos), tables, request)
        for stream in result.streams():
            out = plan.splice(stream)
            out_names = [learned.base[b] for b in learned.expand(out)[0]]
            assert reference_accepts(grammar, out_names), out_names
            got, want = _bars(out_names), _bars(names)
            assert [got[k] for k in range(len(got)) if not first <= k <= last] == [
                want[k] for k in range(len(want)) if not first <= k <= last
            ]
    assert straddling > 0, "no learned token crossed a cut: the case this test is for did not occur"


@pytest.mark.parametrize(("text", "want"), [("2:3", (2, 3)), ("4", (4, 4)), (" 1 : 2 ", (1, 2))])
def test_parse_infill(text: str, want: tuple[int, int]) -> None:
    assert parse_infill(text) == want


@pytest.mark.parametrize("text", ["0:1", "3:2", "a:b", "1:2:3", ""])
def test_parse_infill_rejects(text: str) -> None:
    with pytest.raises(DecodingError, match="--infill"):
        parse_infill(text)


def test_plan_refuses_incomplete_pieces_and_missing_bars() -> None:
    auto = automaton_for("shipped")
    learned = learned_vocab(tokenizer_for("shipped"))
    piece = walk_piece(3, 0)
    with pytest.raises(DecodingError, match="has 3 bar"):
        plan_infill(piece, auto, learned, (2, 4))
    vocab = auto.vocab
    last_duration = max(j for j, i in enumerate(piece) if vocab[i].startswith("Duration_"))
    cut = piece[:last_duration] + piece[last_duration + 1 :]  # a note without its Duration
    with pytest.raises(DecodingError, match="not a complete valid piece"):
        plan_infill(cut, auto, learned, (1, 1))


# ----------------------------------------------------------------------------- command line


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-bar chorale excerpt as a token file."""
    from gramophone.tokenizers import write_token_file

    path = tmp_path_factory.mktemp("infill") / "prompt.json"
    write_token_file(path, list(chorale_piece(7, 4)), tokenizer_for("shipped"))
    return path


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_cli_infill_with_the_bundled_model(
    backend: str, prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        [
            "decode",
            "--backend",
            backend,
            "--num",
            "2",
            "--formats",
            "tokens,midi",
            "--prompt",
            str(prompt_file),
            "--infill",
            "2:3",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "all 2 valid" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["infill"] == [2, 3]
    learned = learned_vocab(tokenizer_for("shipped"))
    plan = plan_infill(chorale_piece(7, 4), automaton_for("shipped"), learned, (2, 3))
    for name in ("piece-000", "piece-001"):
        ids = json.loads((tmp_path / "o" / f"{name}.json").read_text())["ids"]
        ids = ids[0] if ids and isinstance(ids[0], list) else ids
        assert_infilled(list(ids), chorale_piece(7, 4), plan, learned, summary["max_tokens"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--infill", "2:3"], "--infill needs --prompt"),
        (["--infill", "2:9", "--prompt", "PROMPT"], "has 4 bar"),
        (["--infill", "1:2", "--bars", "2", "--prompt", "PROMPT"], "cannot be used with --bars"),
        (["--infill", "x", "--prompt", "PROMPT"], "expected A:B"),
        (["--infill", "1:1", "--prompt", "PROMPT", "--max-tokens", "20"], "--max-tokens 20 is too small"),
    ],
)
def test_cli_infill_errors_are_one_line(
    extra: list[str], message: str, prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(prompt_file) if a == "PROMPT" else a for a in extra]
    code, _, err = _run(
        ["decode", "--backend", "torch", "--formats", "tokens", *args, "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
