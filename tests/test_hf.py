"""HuggingFace transformers under the grammar (:mod:`gramophone.hf`), against oracles that do
not use the automaton.

Tiny random GPT-2 and Llama models built from their configs (2 layers, d = 32; some with
spread logits, some with a vocabulary padded past the tokenizer's) run ``generate`` with
:class:`~gramophone.hf.GrammarLogitsProcessor`: greedy, sampling (temperature, top-k,
top-p), beam search (with and without sampling, several sequences per prompt), left-padded
batches of random valid prompts (some without BOS), bar counts and ``max_length`` from the
smallest that fits upwards, on the shipped REMI vocabulary and a trained BPE 1k one. Every
row must continue its prompt and end, within ``max_length``, as a piece accepted by lark on
the derived grammar plus the plain-Python constraint references (tests/reference.py), with
zero miditok ``tokens_errors`` and a note in its MIDI. Also: states follow rows through beam
reordering, bad prompts are one-line errors, ``--backend hf`` end to end through the CLI,
and the README's lines run.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
)

from gramophone.cli import main
from gramophone.errors import DecodingError
from gramophone.grammar import derive
from gramophone.grammar.checker import check_stream
from gramophone.hf import GrammarLogitsProcessor
from gramophone.kernels import numpy as K  # noqa: N812 - the README's spelling
from gramophone.tokenizers import decode_ids, load_tokenizer, model_vocab, save_tokenizer
from tests.learned_fixtures import trained_tokenizer, trained_tokenizer_path
from tests.profiles import scaled
from tests.reference import reference_accepts
from tests.walks import table_walk

CAP = 96  # positions of every tiny model
VOCABS = ("shipped", "bpe")
ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Two OpenMP threads on a busy two-core machine make every small op wait (see
    test_decoding.py); one is faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- fixtures


@functools.cache
def tokenizer(which: str) -> Any:
    return load_tokenizer() if which == "shipped" else trained_tokenizer("REMI", "BPE", "bar")


@functools.cache
def grammar(which: str) -> Any:
    return derive(tokenizer(which))


def processor(which: str, max_length: int | None = None, bars: int | None = None) -> GrammarLogitsProcessor:
    return GrammarLogitsProcessor(tokenizer(which), max_length, bars=bars)


@functools.cache
def tiny_model(arch: str, vocab_size: int, seed: int = 0, scale: float = 1.0, positions: int = CAP) -> Any:
    """A random 2-layer model built from its config; ``scale`` multiplies the output
    projection (spread logits: mass far from the allowed tokens)."""
    torch.manual_seed(seed)
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    model: Any
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=positions, n_embd=32, n_layer=2, n_head=2, **ids
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=positions,
            **ids,
        )
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model.eval()


# ----------------------------------------------------------------------------- oracles


def assert_piece(which: str, ids: list[int], bars: int | None = None) -> None:
    """One stream of model ids, BOS ... EOS: accepted by lark + the plain-Python references
    (on its base tokens), zero miditok errors, a note in its MIDI, ``bars`` Bar tokens."""
    from miditok import TokSequence

    tok = tokenizer(which)
    learned = model_vocab(tok)
    base, _ = learned.expand(ids)
    names = [learned.base[b] for b in base]
    assert names[0] == "BOS_None" and names[-1] == "EOS_None", names
    assert names.count("BOS_None") == 1 and names.count("EOS_None") == 1 and "PAD_None" not in names
    assert ids[-1] == learned.model_id("EOS_None"), "a piece ends with the one EOS id"
    assert reference_accepts(grammar(which), names), names
    assert any(n.startswith(("Pitch_", "PitchDrum_")) for n in names), names
    if bars is not None:
        assert names.count("Bar_None") == bars, names
    framing = {(learned.base.index(t),) for t in ("BOS_None", "EOS_None")}
    body = [i for i in ids if learned.pieces[i] not in framing]
    assert tok.tokens_errors(TokSequence(ids=list(body), are_ids_encoded=tok.is_trained)) == 0, names
    score = decode_ids(tok, ids)
    assert sum(len(t.notes) for t in score.tracks) >= 1, names


def assert_rows(
    which: str,
    out: np.ndarray,
    prompts: list[list[int]],
    *,
    max_length: int,
    bars: int | None,
    per_prompt: int,
    beam: bool,
) -> None:
    """Each output row: its prompt's left padding, the prompt, a valid piece ending within
    ``max_length``, then padding only (PAD; transformers' beam search may fill with EOS)."""
    t = processor(which, bars=bars).tables
    width = max(len(p) for p in prompts)
    assert out.shape[1] <= max_length
    for r, row in enumerate(out.tolist()):
        prompt = prompts[r // per_prompt]
        pad = width - len(prompt)
        assert row[:pad] == [t.pad] * pad
        body = row[pad:]
        assert body[: len(prompt)] == prompt
        assert t.eos in body[len(prompt) :], row
        end = body.index(t.eos) + 1
        assert set(body[end:]) <= ({t.pad, t.eos} if beam else {t.pad}), row
        piece = body[:end] if body[0] == t.bos else [t.bos, *body[:end]]
        assert_piece(which, piece, bars)


# ----------------------------------------------------------------------------- generate


@st.composite
def generate_cases(draw: st.DrawFn) -> dict[str, Any]:
    which = draw(st.sampled_from(VOCABS))
    bars = draw(st.sampled_from([None, None, 1, 2]))
    t = processor(which, bars=bars).tables
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prompts = []
    for _ in range(draw(st.integers(1, 3))):
        ids = table_walk(t, rng, draw(st.integers(0, 10)))
        without_bos = len(ids) > 1 and draw(st.integers(0, 3)) == 0  # a prompt without BOS, at times
        prompts.append(ids[1:] if without_bos else ids)
    width = max(len(p) for p in prompts)
    need = max(t.distance(t.run(p if p[:1] == [t.bos] else [t.bos, *p])) for p in prompts)
    max_length = min(CAP, width + need + draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 30])))
    mode = draw(st.sampled_from(["greedy", "sample", "beam", "beam-sample"]))
    kwargs: dict[str, Any] = {"do_sample": mode in ("sample", "beam-sample")}
    if mode == "sample":
        kwargs["temperature"] = draw(st.sampled_from([1.0, 0.3, 2.0, 20.0]))
        kwargs["top_k"] = draw(st.sampled_from([None, 1, 5, 300]))
        kwargs["top_p"] = draw(st.sampled_from([None, 0.05, 0.9]))
        kwargs["num_return_sequences"] = draw(st.integers(1, 2))
    if mode.startswith("beam"):
        kwargs["num_beams"] = draw(st.integers(2, 3))
        kwargs["num_return_sequences"] = draw(st.integers(1, kwargs["num_beams"]))
    return {
        "which": which,
        "bars": bars,
        "prompts": prompts,
        "max_length": max_length,
        "arch": draw(st.sampled_from(["gpt2", "llama"])),
        "seed": draw(st.integers(0, 2)),
        "scale": draw(st.sampled_from([1.0, 40.0])),
        "padded_vocab": draw(st.sampled_from([0, 0, 7])),  # a model vocabulary padded past the tokenizer's
        "kwargs": kwargs,
    }


def run_generate(case: dict[str, Any]) -> np.ndarray:
    which, prompts = case["which"], case["prompts"]
    proc = processor(which, case["max_length"], case["bars"])
    V = proc.tables.vocab_size
    model = tiny_model(case["arch"], V + case["padded_vocab"], case["seed"], case["scale"])
    width = max(len(p) for p in prompts)
    rows = [[proc.pad_token_id] * (width - len(p)) + p for p in prompts]  # left padding
    ids = torch.tensor(rows)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(case["seed"])
    out = model.generate(
        ids,
        attention_mask=mask,
        logits_processor=LogitsProcessorList([proc]),
        **case["kwargs"],
        **proc.generate_kwargs(),
    )
    result: np.ndarray = out.numpy()
    assert (result < V).all(), "ids past the tokenizer's vocabulary are masked"
    return result


@settings(max_examples=scaled(30))
@given(case=generate_cases())
def test_generate_ends_every_row_valid_within_max_length(case: dict[str, Any]) -> None:
    out = run_generate(case)
    assert_rows(
        case["which"],
        out,
        case["prompts"],
        max_length=case["max_length"],
        bars=case["bars"],
        per_prompt=case["kwargs"].get("num_return_sequences", 1),
        beam="num_beams" in case["kwargs"],
    )


@pytest.mark.parametrize("which", VOCABS)
@pytest.mark.parametrize("mode", ["sample", "beam"])
def test_without_max_length_rows_are_valid_beginnings_or_pieces(which: str, mode: str) -> None:
    proc = processor(which)
    kwargs = {"do_sample": True, "temperature": 3.0} if mode == "sample" else {"num_beams": 3}
    model = tiny_model("gpt2", proc.tables.vocab_size)
    torch.manual_seed(0)
    out = model.generate(
        torch.tensor([[proc.bos_token_id]] * 4),
        logits_processor=LogitsProcessorList([proc]),
        max_new_tokens=30,
        eos_token_id=proc.eos_token_id,
        pad_token_id=proc.pad_token_id,
        **kwargs,
    )
    learned = model_vocab(tokenizer(which))
    for ids in proc.pieces(out):
        if ids[-1] == proc.eos_token_id:
            assert_piece(which, ids)
        else:  # cut by generate's own limit: a valid beginning (the checker's word)
            violation = check_stream(proc.tables.automaton, learned.expand(ids)[0]).violation
            assert violation is None or violation.rejected_by == "end", violation


@pytest.mark.parametrize("which", VOCABS)
def test_greedy_generate_is_the_decode_loop_token_for_token(which: str) -> None:
    """``generate`` + the processor and gramophone's own torch loop over the same model
    (``--backend hf``) pick the same tokens greedily under the same budget."""
    from gramophone.decoding import DecodeRequest, Sampling, prepare_prompt
    from gramophone.hf import backend_sampler

    for budget in (12, 40):
        proc = processor(which, budget)
        model = tiny_model("llama", proc.tables.vocab_size, 1, 40.0)
        out = model.generate(
            torch.tensor([[proc.bos_token_id]]),
            logits_processor=LogitsProcessorList([proc]),
            do_sample=False,
            **proc.generate_kwargs(),
        )
        p = prepare_prompt(proc.tables, proc.grammar, [])
        request = DecodeRequest(p.ids, p.state, 1, budget, Sampling(greedy=True))
        ours = backend_sampler(None, model)(proc.tables, request).streams()[0]
        assert proc.pieces(out)[0] == ours
        assert_piece(which, ours)


@pytest.mark.parametrize("which", VOCABS)
def test_composer_constraints_hold_under_generate(which: str) -> None:
    """``constraints=`` composes the composer's automata with the grammar: every pitch
    sampled is in D minor (natural, harmonic and melodic: 9 pitch classes) and in 50..80,
    by a plain reading of the token names, and every row is a valid piece."""
    from gramophone.grammar import ComposerConstraints

    constraints = ComposerConstraints.parse(key="D:minor", pitch_range="50:80")
    proc = GrammarLogitsProcessor(tokenizer(which), 96, constraints=constraints)
    model = tiny_model("gpt2", proc.tables.vocab_size, 2, 8.0)
    torch.manual_seed(0)
    out = model.generate(
        torch.tensor([[proc.bos_token_id]]),
        logits_processor=LogitsProcessorList([proc]),
        do_sample=True,
        num_return_sequences=6,
        **proc.generate_kwargs(),
    )
    d_minor = {2, 4, 5, 7, 9, 10, 11, 0, 1}
    learned = model_vocab(tokenizer(which))
    pitches = 0
    for row in proc.pieces(out):
        assert_piece(which, row)
        for name in (learned.base[b] for b in learned.expand(row)[0]):
            if name.startswith("Pitch_"):
                pitch = int(name[len("Pitch_") :])
                assert pitch % 12 in d_minor and 50 <= pitch <= 80, name
                pitches += 1
    assert pitches > 0


# ----------------------------------------------------------------------------- the processor's states


def test_states_follow_row_content_through_beam_reordering() -> None:
    """Rows reordered, duplicated and extended between calls (as beam search does) get the
    masks a fresh processor computes from their content; after EOS only PAD."""
    which = "shipped"
    proc = processor(which, 40)
    t = proc.tables
    rng = np.random.default_rng(3)
    a, b = table_walk(t, rng, 6), table_walk(t, rng, 4)
    width = max(len(a), len(b))
    rows = [[t.pad] * (width - len(r)) + r for r in (a, b)]
    scores = torch.zeros((2, t.vocab_size))
    first = proc(torch.tensor(rows), scores)
    allowed = torch.isfinite(first).numpy()

    def pick(i: int, k: int) -> int:
        return int(np.nonzero(allowed[i])[0][k % allowed[i].sum()])

    # b first, a twice with different tokens, b with EOS when it may end (else another token)
    end_b = t.eos if allowed[1, t.eos] else pick(1, 5)
    nxt = [rows[1] + [pick(1, 0)], rows[0] + [pick(0, 1)], rows[0] + [pick(0, 2)], rows[1] + [end_b]]
    got = proc(torch.tensor(nxt), torch.zeros((4, t.vocab_size)))
    want = processor(which, 40)(torch.tensor(nxt), torch.zeros((4, t.vocab_size)))
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    for i, row in enumerate(nxt):
        state = t.run(row[row.index(t.bos) :])
        expect = K.allowed(t, state[None, :], 40 - len(row))[0]
        if row[-1] == t.eos:
            expect = np.arange(t.vocab_size) == t.pad
        assert (torch.isfinite(got[i]).numpy() == expect).all(), i
    # a third step from the reordered rows: the ended row stays at PAD only
    third = proc(
        torch.tensor([[*nxt[3], t.pad if nxt[3][-1] == t.eos else pick(1, 1)]]),
        torch.zeros((1, t.vocab_size)),
    )
    if nxt[3][-1] == t.eos:
        assert torch.isfinite(third[0]).nonzero().flatten().tolist() == [t.pad]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["BOS_None", "Bar_None", "TimeSig_4/4", "Pitch_60", "Velocity_63", "Duration_1.0.4"]],
            "input_ids row 0 is not a valid beginning of a piece: token 3 (Pitch_60)",
        ),
        (
            [["PAD_None", "Bar_None", "Position_0", "Pitch_60"]],
            "input_ids row 0 (after 1 pad tokens) is not a valid beginning of a piece: token 1 (Position_0)",
        ),
        ([["BOS_None", "Bar_None", "PAD_None", "PAD_None"]], "pad batches on the left"),
        ([["BOS_None", "Bar_None", "TimeSig_4/4", "EOS_None"]], "ends (EOS at token 3) before it is"),
        ([["BOS_None", "Bar_None"], ["BOS_None", "BOS_None"]], "input_ids row 1 is not a valid beginning"),
    ],
)
def test_a_bad_prompt_is_a_one_line_error_at_the_first_call(rows: list[list[str]], message: str) -> None:
    tok = tokenizer("shipped")
    ids = torch.tensor([[tok[n] for n in r] for r in rows])
    with pytest.raises(DecodingError) as info:
        processor("shipped", 40)(ids, torch.zeros((len(rows), len(tok))))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_max_length_too_small_for_a_prompt_and_too_few_scores() -> None:
    tok = tokenizer("shipped")
    ids = torch.tensor([[tok["BOS_None"], tok["Bar_None"], tok["TimeSig_4/4"]]])
    with pytest.raises(DecodingError, match=r"needs 5 more tokens .* max_length 6 leaves 3 after its 3"):
        processor("shipped", 6)(ids, torch.zeros((1, len(tok))))
    with pytest.raises(DecodingError, match="fewer than the tokenizer's 229"):
        processor("shipped", 60)(ids, torch.zeros((1, 100)))
    proc = processor("shipped", 60)
    want = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 60}
    assert proc.generate_kwargs() == want
    # a model's own pad id, even one past the tokenizer's vocabulary, is left padding too
    model_pad = GrammarLogitsProcessor(tokenizer("shipped"), 60, pad_token_id=300)
    padded = torch.tensor([[300, 300, *ids[0].tolist()]])
    masked = model_pad(padded, torch.zeros((1, len(tok))))
    assert torch.equal(
        torch.isfinite(masked), torch.isfinite(processor("shipped", 58)(ids, torch.zeros((1, 229))))
    )
    from_path = GrammarLogitsProcessor(trained_tokenizer_path("REMI", "BPE", "bar"), 60)  # a tokenizer.json
    assert from_path.tables.vocab_size == 1000 and from_path.tables.learned.trained


def test_importing_gramophone_does_not_import_transformers() -> None:
    code = (
        "import sys, gramophone, gramophone.cli, gramophone.decoding, gramophone.backends\n"
        "import gramophone.models\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "from gramophone.backends import known_backends\n"
        "assert 'hf' in known_backends()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_gramophone_hf_without_transformers_says_what_to_install() -> None:
    code = "import sys\nsys.modules['transformers'] = None\nimport gramophone.hf\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gramophone.hf needs transformers"), last
    assert "pip install 'gramophone[hf]'" in last


# ----------------------------------------------------------------------------- the backend


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_backend_prefill_and_steps_match_the_full_forward(arch: str) -> None:
    """Right-padded prompts of different lengths, then one token per row at its position:
    the logits of a full forward pass over each row."""
    from gramophone.backends import get_backend

    backend = get_backend("hf", device="cpu")
    model = tiny_model(arch, 229, 2)
    rng = np.random.default_rng(0)
    full = rng.integers(3, 229, (3, 9))
    lengths = np.array([6, 4, 5])
    ids = np.where(np.arange(6)[None, :] < lengths[:, None], full[:, :6], 0)
    want = backend.logits(model, full)  # (B, T, V)
    logits, cache = backend.prefill(model, ids, 9, lengths)
    np.testing.assert_allclose(logits, want[np.arange(3), lengths - 1], atol=1e-4)
    for k in range(3):
        pos = lengths + k
        logits, cache = backend.decode_step(model, full[np.arange(3), pos], cache, pos)
        np.testing.assert_allclose(logits, want[np.arange(3), pos], atol=1e-4)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 written by save_pretrained, the shipped tokenizer.json beside it."""
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    tiny_model("gpt2", 229, 0, 20.0, 64).save_pretrained(path)
    save_tokenizer(tokenizer("shipped"), path / "tokenizer.json")
    return path


def decode_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (save_pretrained's progress bars)
    code = main(["decode", "--backend", "hf", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _written(folder: Path, n: int) -> list[list[int]]:
    import json

    return [json.loads((folder / f"piece-{i:03d}.json").read_text())["ids"] for i in range(n)]


def test_cli_decode_backend_hf(hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    sample = ["--checkpoint", str(hf_folder), "--num", "3", "--seed", "1", "--top-k", "30"]
    code, stdout, err = decode_cli(
        [*sample, "--formats", "tokens,midi", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "decoded 3 piece(s) with hf" in stdout and "all 3 valid" in stdout
    for i, ids in enumerate(_written(out, 3)):
        assert len(ids) <= 64  # the model's context: the default budget
        assert (out / f"piece-{i:03d}.mid").stat().st_size > 0
        assert_piece("shipped", ids)
    # same seed, same pieces (the torch loop's noise)
    again = tmp_path / "again"
    decode_cli(
        [*sample, "--formats", "tokens", "--out", str(again)],
        capsys,
    )
    assert _written(again, 3) == _written(out, 3)


def test_cli_decode_backend_hf_with_a_prompt_and_bars(
    hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = tmp_path / "prompt.txt"
    body = "Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_63 Duration_1.0.4"
    prompt.write_text(body + "\n")
    out = tmp_path / "out"
    code, stdout, err = decode_cli(
        [
            *("--checkpoint", str(hf_folder), "--num", "2", "--max-tokens", "30", "--bars", "2"),
            *("--temperature", "2", "--prompt", str(prompt), "--formats", "tokens,midi", "--out", str(out)),
        ],
        capsys,
    )
    assert code == 0, err
    assert "all 2 valid" in stdout
    tok = tokenizer("shipped")
    head = [tok["BOS_None"], *(tok[n] for n in body.split())]
    for ids in _written(out, 2):
        assert ids[: len(head)] == head and len(ids) <= 30
        assert_piece("shipped", ids, bars=2)


def test_cli_decode_backend_hf_infills_bars_exactly(
    hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--infill`` on a transformers model that never sees the kept bars: the other bars
    are kept token for token and the piece is valid (tests/test_infill.py's oracle)."""
    from gramophone.decoding.infill import plan_infill
    from gramophone.grammar import compile_tokenizer
    from gramophone.tokenizers import write_token_file
    from tests.test_infill import assert_infilled, walk_piece

    piece = walk_piece(3, 7)
    prompt = tmp_path / "piece.json"
    write_token_file(prompt, list(piece), tokenizer("shipped"))
    out = tmp_path / "out"
    code, stdout, err = decode_cli(
        [
            *("--checkpoint", str(hf_folder), "--num", "2", "--infill", "2:2", "--prompt", str(prompt)),
            *("--formats", "tokens", "--out", str(out)),
        ],
        capsys,
    )
    assert code == 0, err
    assert "all 2 valid" in stdout
    learned = model_vocab(tokenizer("shipped"))
    plan = plan_infill(piece, compile_tokenizer(tokenizer("shipped")), learned, (2, 2))
    for ids in _written(out, 2):
        assert_infilled(ids, piece, plan, learned, 64 + len(plan.suffix))


def test_cli_decode_backend_hf_errors_are_one_line(
    hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(hf_folder, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    other_vocab = tmp_path / "other-vocab"
    tiny_model("gpt2", 100, 0, 1.0, 64).save_pretrained(other_vocab)
    save_tokenizer(tokenizer("shipped"), other_vocab / "tokenizer.json")
    not_hf = tmp_path / "not-hf"
    not_hf.mkdir()
    (not_hf / "config.json").write_text('{"model": {}}')
    save_tokenizer(tokenizer("shipped"), not_hf / "tokenizer.json")
    cases = [
        (["--checkpoint", str(no_tokenizer)], "no tokenizer.json beside the model"),
        (["--checkpoint", str(other_vocab)], "the model has a vocabulary of 100 tokens, the tokenizer 229"),
        (["--checkpoint", str(not_hf)], "not a transformers model folder (config.json has no model_type)"),
        ([], "not a transformers model folder"),  # the bundled model is gramophone's format
        (["--checkpoint", str(tmp_path / "nowhere")], "checkpoint directory does not exist"),
        (["--checkpoint", str(hf_folder), "--max-tokens", "100"], "exceeds the model's context of 64 tokens"),
    ]
    for args, message in cases:
        code, _, err = decode_cli([*args, "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err


# ----------------------------------------------------------------------------- README


def test_the_readme_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``python`` block of the README's "HuggingFace transformers" section, verbatim."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## HuggingFace transformers", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code.group(1), "README.md", "exec"), {})
    written = sorted(tmp_path.glob("piece-*.mid"))
    assert len(written) == 4
    from symusic import Score

    assert all(Score(str(p)).note_num() >= 1 for p in written)
