"""Trained vocabularies (BPE, Unigram, WordPiece): learned ids in token IO, `check`, `tokenize`.

Vocabularies of 1,000 tokens are trained on 40 chorales (``tests/learned_fixtures.py``) and
every chorale is encoded by miditok: the expansion of learned ids into base tokens agrees
with miditok's own, every encoded chorale passes the checker, corruptions miditok flags are
rejected with the learned token named, and the command line reads and writes learned ids.
"""

from __future__ import annotations

import copy
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gramophone._outdir import MANIFEST
from gramophone.cli import main
from gramophone.errors import TokenFileError
from gramophone.grammar import compile_tokenizer
from gramophone.grammar.checker import check_stream
from gramophone.tokenizers import (
    decode_ids,
    encode_score,
    load_tokenizer,
    model_vocab,
    read_token_file,
    read_tokens,
    write_token_file,
)
from tests.learned_fixtures import MODELS, SPLITS, chorales, trained_tokenizer, trained_tokenizer_path
from tests.profiles import scaled

#: miditok's WordPiece without splitting encodes a whole chorale as one "word", longer than
#: its ``max_input_chars_per_word`` (400): it becomes the unknown token. Not lossless, so
#: not in the zero-false-rejection test; see test_wordpiece_without_split_is_refused.
LOSSLESS = [(m, s) for m in MODELS for s in SPLITS if (m, s) != ("WordPiece", "no")]
SPECIALS = ("PAD", "BOS", "EOS")
HELD_OUT = 100  # a chorale the vocabularies were not trained on


# -- miditok's encodings of every chorale -------------------------------------------------
@cache
def corpus(scheme: str = "REMI") -> tuple[Path, ...]:
    """Every chorale for REMI; for TSD the 40 the vocabularies were trained on and 40 others
    (miditok tokenizes ~50 chorales a second here)."""
    return chorales() if scheme == "REMI" else chorales()[:80]


@cache
def base_sequences(scheme: str = "REMI") -> tuple[Any, ...]:
    """miditok's tokens of the corpus with the shipped options, before a model encodes them
    (``tokenizer.encode(path, encode_ids=False)``; one stream per chorale)."""
    tokenizer = trained_tokenizer(scheme, "BPE", "bar")
    out = []
    for path in corpus(scheme):
        (seq,) = tokenizer.encode(path, encode_ids=False)
        out.append(seq)
    return tuple(out)


@cache
def learned_streams(model: str, split: str, scheme: str = "REMI") -> tuple[tuple[int, ...], ...]:
    """Every chorale as miditok's ``tokenizer.encode`` gives it with the trained tokenizer:
    the base sequences encoded by its model, in one batch (what ``encode`` does per file)."""
    tokenizer = trained_tokenizer(scheme, model, split)
    seqs = []
    for seq in base_sequences(scheme):
        c = copy.copy(seq)  # encode_token_ids rebinds .ids and .bytes of the copy only
        c.bytes = ""
        seqs.append(c)
    tokenizer.encode_token_ids(seqs)
    return tuple(tuple(int(i) for i in s.ids) for s in seqs)


def miditok_base_ids(tokenizer: Any, ids: list[int]) -> list[int]:
    """Learned ids -> base ids, miditok's way."""
    from miditok import TokSequence

    seq = TokSequence(ids=list(ids), are_ids_encoded=True)
    tokenizer.decode_token_ids(seq)
    return [int(i) for i in seq.ids]


def miditok_errors(tokenizer: Any, ids: list[int]) -> float:
    from miditok import TokSequence

    return float(tokenizer.tokens_errors(TokSequence(ids=list(ids), are_ids_encoded=True)))


def test_learned_streams_are_miditok_encode() -> None:
    """The batched shortcut above is what ``tokenizer.encode`` returns file by file."""
    for model, split in [("BPE", "bar"), ("Unigram", "no"), ("WordPiece", "bar")]:
        tokenizer = trained_tokenizer("REMI", model, split)
        for k in (0, HELD_OUT):
            (seq,) = tokenizer.encode(chorales()[k])
            assert tuple(seq.ids) == learned_streams(model, split)[k]


# -- (a) LearnedVocab against miditok ------------------------------------------------------
@pytest.mark.parametrize(("model", "split"), [(m, s) for m in MODELS for s in SPLITS])
def test_learned_vocab_matches_miditok(model: str, split: str) -> None:
    tokenizer = trained_tokenizer("REMI", model, split)
    vocab = model_vocab(tokenizer)
    assert vocab.trained and len(vocab) == len(tokenizer) == 1000
    # Every learned id alone: miditok's expansion is ours, except Unigram's special pieces.
    differ = {}
    for i in range(len(vocab)):
        theirs = miditok_base_ids(tokenizer, [i])
        if theirs != list(vocab.pieces[i]):
            differ[i] = theirs
    if model == "Unigram":
        # miditok stores PAD/BOS/EOS as three-character pieces ("!#!") and decodes them to
        # PAD X PAD; here they are the special token X itself (tokenizer["EOS_None"]).
        pad = tokenizer.vocab["PAD_None"]
        expected = {tokenizer.vocab[f"{s}_None"]: [pad, tokenizer.vocab[f"{s}_None"], pad] for s in SPECIALS}
        assert differ == expected
        for s in SPECIALS:
            assert vocab.pieces[tokenizer.vocab[f"{s}_None"]] == (tokenizer.vocab[f"{s}_None"],)
    else:
        assert differ == {}
    # Every encoded chorale: same base ids both ways, and (but WordPiece without splitting)
    # the base tokens miditok produced before encoding.
    lossy = 0
    for c, (ids, seq) in enumerate(zip(learned_streams(model, split), base_sequences(), strict=True)):
        base, owner = vocab.expand(ids)
        lossy += base != list(seq.ids)
        if c % 5 == 0:  # miditok's way on 70 chorales
            assert base == miditok_base_ids(tokenizer, list(ids))
            assert owner == [k for k, i in enumerate(ids) for _ in vocab.pieces[i]]
    assert lossy == (348 if (model, split) == ("WordPiece", "no") else 0)


# -- (b) every chorale encoded by miditok passes the checker -------------------------------
@pytest.mark.parametrize(("model", "split"), LOSSLESS)
def test_every_encoded_chorale_is_valid(model: str, split: str) -> None:
    tokenizer = trained_tokenizer("REMI", model, split)
    automaton, vocab = compile_tokenizer(tokenizer), model_vocab(tokenizer)
    streams = learned_streams(model, split)
    assert len(streams) == len(chorales()) >= 350
    rejected = []
    for ids in streams:
        report = check_stream(automaton, ids, learned=vocab)
        if report.violation is not None:
            rejected.append(str(report.violation))
        else:
            assert report.learned_tokens == len(ids) < report.tokens
    assert not rejected, f"{len(rejected)} false rejections, first: {rejected[0]}"


@pytest.mark.parametrize("model", MODELS)
def test_every_encoded_chorale_is_valid_tsd(model: str) -> None:
    """TSD too (its scheme compiles over the base vocabulary like REMI's)."""
    tokenizer = trained_tokenizer("TSD", model, "bar")
    automaton, vocab = compile_tokenizer(tokenizer), model_vocab(tokenizer)
    streams = learned_streams(model, "bar", "TSD")
    for ids, seq in zip(streams, base_sequences("TSD"), strict=True):
        assert vocab.expand(ids)[0] == list(seq.ids)
        violation = check_stream(automaton, ids, learned=vocab).violation
        assert violation is None, str(violation)


def test_wordpiece_without_split_is_refused() -> None:
    """WordPiece with encode_ids_split="no" loses a whole chorale: encode_score says so
    rather than return the unknown token."""
    from symusic import Score

    tokenizer = trained_tokenizer("REMI", "WordPiece", "no")
    message = r"not encode these \d+ tokens losslessly.*max_input_chars_per_word=400"
    with pytest.raises(TokenFileError, match=message):
        encode_score(tokenizer, Score(str(chorales()[HELD_OUT])))


# -- (c) corruptions miditok flags are rejected, naming the learned token ------------------
@cache
def plain_ids(model: str) -> tuple[int, ...]:
    """Learned ids whose pieces hold no special token (miditok lets nothing follow EOS)."""
    vocab = model_vocab(trained_tokenizer("REMI", model, "bar"))
    return tuple(
        i for i, p in enumerate(vocab.pieces) if p and not any(vocab.base[b].startswith(SPECIALS) for b in p)
    )


def assert_names_learned_token(model: str, ids: list[int]) -> None:
    """The stream is rejected and the violation names the learned token it sits in."""
    tokenizer = trained_tokenizer("REMI", model, "bar")
    vocab = model_vocab(tokenizer)
    violation = check_stream(compile_tokenizer(tokenizer), ids, learned=vocab).violation
    assert violation is not None
    k = violation.learned_index
    assert k is not None
    if k == len(ids):  # the stream ends early
        assert violation.index == len(vocab.expand(ids)[0]) and violation.learned_token == "<end of stream>"
        return
    start = sum(len(vocab.pieces[i]) for i in ids[:k])
    assert start <= violation.index < start + len(vocab.pieces[ids[k]])
    assert vocab.base[vocab.pieces[ids[k]][violation.index - start]] == violation.token
    assert violation.learned_token == vocab.names[ids[k]]
    assert f"in learned token {k} ({vocab.names[ids[k]]})" in str(violation)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=scaled(30))
@given(data=st.data())
def test_corruptions_miditok_flags_are_rejected(model: str, data: st.DataObject) -> None:
    tokenizer = trained_tokenizer("REMI", model, "bar")
    streams = learned_streams(model, "bar")
    ids = list(streams[data.draw(st.integers(0, len(streams) - 1))])
    choices = plain_ids(model)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(ids) - 1))
        op = data.draw(st.sampled_from(["replace", "insert", "delete", "swap", "duplicate"]))
        if op == "replace":
            ids[i] = data.draw(st.sampled_from(choices))
        elif op == "insert":
            ids.insert(i, data.draw(st.sampled_from(choices)))
        elif op == "delete" and len(ids) > 1:
            del ids[i]
        elif op == "swap" and i + 1 < len(ids):
            ids[i], ids[i + 1] = ids[i + 1], ids[i]
        else:
            ids.insert(i, ids[i])
    if miditok_errors(tokenizer, ids) > 0:
        assert_names_learned_token(model, ids)


def flagged_deletion(model: str) -> tuple[list[int], int]:
    """The first chorale with the first learned token whose deletion miditok flags."""
    tokenizer = trained_tokenizer("REMI", model, "bar")
    ids = list(learned_streams(model, "bar")[0])
    for k in range(1, len(ids)):
        corrupt = ids[:k] + ids[k + 1 :]
        if miditok_errors(tokenizer, corrupt) > 0:
            return corrupt, k
    raise AssertionError("no deletion is flagged by miditok")


@pytest.mark.parametrize("model", MODELS)
def test_a_flagged_deletion_is_rejected(model: str) -> None:
    """The corruption test can fail: a deletion miditok flags, rejected by the checker."""
    corrupt, _ = flagged_deletion(model)
    assert_names_learned_token(model, corrupt)


# -- (d) the command line -----------------------------------------------------------------
def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


OLD_KEYS = {"file", "valid", "index", "token", "before", "rejected_by", "reason", "expected", "tokens"}


def test_check_learned_json_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok_path = str(trained_tokenizer_path("REMI", "BPE", "bar"))
    vocab = model_vocab(trained_tokenizer("REMI", "BPE", "bar"))
    good = list(learned_streams("BPE", "bar")[0])
    bad, k = flagged_deletion("BPE")
    files = {name: tmp_path / f"{name}.json" for name in ("good", "bad", "two")}
    files["good"].write_text(json.dumps({"ids": good}))
    files["bad"].write_text(json.dumps({"ids": bad}))
    files["two"].write_text(json.dumps([good, bad]))
    code, out, err = run(["check", "--tokenizer", tok_path, *map(str, files.values())], capsys)
    assert code == 1, err
    n_base = len(vocab.expand(good)[0])
    assert f"good.json: valid ({len(good)} learned tokens, {n_base} base tokens)" in out
    assert f"in learned token {k} ({vocab.names[bad[k]]})" in out
    assert "two.json: invalid at stream 1, base token" in out

    code, out, _ = run(["check", "--json", "--tokenizer", tok_path, *map(str, files.values())], capsys)
    assert code == 1
    good_rec, bad_rec, two_rec = (json.loads(line) for line in out.splitlines())
    assert good_rec == {
        "file": str(files["good"]),
        "valid": True,
        "tokens": n_base,
        "learned_tokens": len(good),
    }
    assert set(bad_rec) == OLD_KEYS | {"learned_index", "learned_token", "learned_tokens"}
    assert bad_rec["valid"] is False and bad_rec["learned_index"] == k == bad_rec["learned_tokens"]
    assert bad_rec["learned_token"] == vocab.names[bad[k]]
    assert bad_rec["token"] in bad_rec["learned_token"].split("+")
    assert two_rec["stream"] == 1 and two_rec["learned_index"] == k

    # A stream cut after a learned token that ends on a Pitch ends incomplete.
    ends_on_pitch = [j for j, i in enumerate(good) if vocab.names[i].rsplit("+", 1)[-1].startswith("Pitch_")]
    cut = good[: ends_on_pitch[0] + 1]
    files["cut"] = tmp_path / "cut.json"
    files["cut"].write_text(json.dumps({"ids": cut}))
    code, out, _ = run(["check", "--tokenizer", tok_path, str(files["cut"])], capsys)
    assert code == 1
    assert f"(<end of stream>, after {len(cut)} learned tokens)" in out and "ends incomplete" in out
    code, out, _ = run(["check", "--json", "--tokenizer", tok_path, str(files["cut"])], capsys)
    record = json.loads(out)
    assert record["learned_index"] == record["learned_tokens"] == len(cut)
    assert record["learned_token"] == record["token"] == "<end of stream>"


def test_check_text_midi_and_bad_ids_with_a_trained_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text names base tokens; MIDI is tokenized into learned ids; ids are bounded by the
    trained vocabulary."""
    tokenizer = trained_tokenizer("REMI", "Unigram", "bar")
    tok_path = str(trained_tokenizer_path("REMI", "Unigram", "bar"))
    text = tmp_path / "base.txt"
    text.write_text(" ".join(base_sequences()[0].tokens) + "\n")
    out_of_range = tmp_path / "range.json"
    out_of_range.write_text(json.dumps({"ids": [3, len(tokenizer)]}))
    midi = chorales()[HELD_OUT]
    code, out, err = run(["check", "--tokenizer", tok_path, str(text), str(midi), str(out_of_range)], capsys)
    assert code == 2
    assert f"base.txt: valid ({len(base_sequences()[0].tokens)} tokens)" in out
    assert f"{midi}: valid ({len(learned_streams('Unigram', 'bar')[HELD_OUT])} learned tokens" in out
    (line,) = err.strip().splitlines()
    assert str(out_of_range) in line and f"id {len(tokenizer)} is outside the vocabulary (0..999)" in line


def test_tokenize_writes_learned_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    midi = chorales()[HELD_OUT]
    out_dir = tmp_path / "tok"
    for model, split in [("BPE", "bar"), ("Unigram", "no"), ("WordPiece", "bar")]:
        tok_path = str(trained_tokenizer_path("REMI", model, split))
        code, out, err = run(["tokenize", "--tokenizer", tok_path, str(midi), "--out", str(out_dir)], capsys)
        assert code == 0, err
        ids = json.loads((out_dir / f"{midi.stem}.json").read_text())["ids"]
        assert ids == list(learned_streams(model, split)[HELD_OUT])
        assert f"{len(ids)} learned tokens" in out
        tokenizer = load_tokenizer(out_dir / "tokenizer.json")
        assert tokenizer.is_trained and len(tokenizer) == 1000
        base = base_sequences()[HELD_OUT]
        assert miditok_base_ids(tokenizer, ids) == list(base.ids)  # miditok decodes them back
        assert (out_dir / f"{midi.stem}.txt").read_text().split() == list(base.tokens)
        code, out, _ = run(
            ["check", "--tokenizer", str(out_dir / "tokenizer.json"), str(out_dir / f"{midi.stem}.json")],
            capsys,
        )
        assert code == 0 and "learned tokens" in out
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"{midi.stem}.json", f"{midi.stem}.txt", "tokenizer.json", MANIFEST]
    )


def test_tokenize_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unreadable MIDI, a model that cannot encode losslessly, an unwritable output: one line
    each naming the file, exit 2, no partial file; the other files are still written."""
    good, blocked = (tmp_path / p.name for p in chorales()[HELD_OUT : HELD_OUT + 2])
    for src, dest in zip(chorales()[HELD_OUT : HELD_OUT + 2], (good, blocked), strict=True):
        shutil.copyfile(src, dest)  # inputs in one folder: outputs named by their stems
    bad_midi = tmp_path / "bad.mid"
    bad_midi.write_bytes(b"MThd\x00\x00garbage")
    out_dir = tmp_path / "out"
    (out_dir / f"{blocked.stem}.txt").mkdir(parents=True)  # the .txt cannot be written
    tok_path = str(trained_tokenizer_path("REMI", "BPE", "bar"))
    midis = [str(bad_midi), str(blocked), str(good)]
    code, out, err = run(["tokenize", "--tokenizer", tok_path, *midis, "--out", str(out_dir)], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert str(bad_midi) in lines[0] and "not a readable MIDI file" in lines[0]
    assert f"{blocked.stem}.txt" in lines[1] and "cannot write" in lines[1]
    assert f"{good}: 1 stream(s)" in out
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"{good.stem}.json", f"{good.stem}.txt", f"{blocked.stem}.txt", "tokenizer.json", MANIFEST]
    )  # nothing of bad.mid, no JSON of the blocked file, no temp file

    lossy = tmp_path / "lossy"
    tok_path = str(trained_tokenizer_path("REMI", "WordPiece", "no"))
    code, out, err = run(["tokenize", "--tokenizer", tok_path, str(good), "--out", str(lossy)], capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert str(good) in line and "losslessly" in line
    assert sorted(p.name for p in lossy.iterdir()) == sorted(["tokenizer.json", MANIFEST])


# -- token IO ------------------------------------------------------------------------------
def test_decode_ids_decodes_learned_ids() -> None:
    """A trained tokenizer's learned ids decode to the notes of the base ids (input kept)."""
    tokenizer = trained_tokenizer("REMI", "Unigram", "bar")
    ids = list(learned_streams("Unigram", "bar")[HELD_OUT])
    kept = list(ids)
    score = decode_ids(tokenizer, ids)
    assert ids == kept
    reference = decode_ids(load_tokenizer(), list(base_sequences()[HELD_OUT].ids))
    notes = [(n.time, n.duration, n.pitch) for t in score.tracks for n in t.notes]
    assert notes and notes == [(n.time, n.duration, n.pitch) for t in reference.tracks for n in t.notes]


def test_token_files_say_what_their_ids_are(tmp_path: Path) -> None:
    tokenizer = trained_tokenizer("REMI", "BPE", "bar")
    ids = list(learned_streams("BPE", "bar")[0])
    path = tmp_path / "piece.json"
    write_token_file(path, ids, tokenizer)
    assert read_token_file(path, tokenizer) == [ids]
    json_file = read_tokens(path, tokenizer)
    assert json_file.learned and json_file.streams == [ids]
    text_file = read_tokens(path.with_suffix(".txt"), tokenizer)
    assert not text_file.learned and text_file.streams == [model_vocab(tokenizer).expand(ids)[0]]
    with pytest.raises(TokenFileError, match=r"piece\.txt: a text file holds base token names"):
        read_token_file(path.with_suffix(".txt"), tokenizer)
    untrained = read_tokens(path.with_suffix(".txt"), load_tokenizer())
    assert not untrained.learned and untrained.streams == text_file.streams


def test_write_token_file_leaves_no_partial_file(tmp_path: Path) -> None:
    tokenizer = trained_tokenizer("REMI", "BPE", "bar")
    (tmp_path / "piece.txt").mkdir()
    with pytest.raises(TokenFileError, match=r"piece\.txt: cannot write"):
        write_token_file(tmp_path / "piece.json", [3, 4], tokenizer)
    assert [p.name for p in tmp_path.iterdir()] == ["piece.txt"]
    with pytest.raises(TokenFileError, match="outside the vocabulary"):
        write_token_file(tmp_path / "other.json", [len(tokenizer)], tokenizer)


@pytest.mark.parametrize("scheme", ["REMI", "TSD", "MIDILike", "Structured"])
def test_load_tokenizer_any_supported_scheme(scheme: str, tmp_path: Path) -> None:
    import miditok

    path = tmp_path / "t.json"
    getattr(miditok, scheme)().save(path)
    assert type(load_tokenizer(path)).__name__ == scheme


def test_load_tokenizer_refuses_other_schemes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import miditok

    path = tmp_path / "cp.json"
    miditok.CPWord().save(path)
    with pytest.raises(TokenFileError) as info:
        load_tokenizer(path)
    assert str(info.value) == (
        f"{path}: tokenization 'CPWord' is not supported (supported: REMI, TSD, MIDILike, Structured)"
    )
    code, _, err = run(["check", "--tokenizer", str(path), str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "'CPWord' is not supported" in err
