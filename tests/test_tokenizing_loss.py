"""What tokenizing a MIDI file loses: the analysis (gramophone.tokenizers.losses), the
warnings of `gramophone check` and `decode --prompt`, and --strict.

The files are built with symusic: a 7/8 piece (miditok's default vocabulary has no 7/8: it
is tokenized in 4/4 and its bar lines move), notes outside the pitch range, a file whose
only notes are outside it, a track of a program the config does not list, a tempo beyond
the range, a note longer than the longest Duration; and what is not a loss: quantization,
and a clean chorale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gramophone.cli import main
from gramophone.errors import TokenFileError
from gramophone.tokenizers import load_tokenizer
from gramophone.tokenizers.losses import file_losses, tokenizing_losses

SHIPPED_RANGE = "24-96"  # the shipped config's pitch range


def _score(
    meters: list[tuple[int, int, int]],
    notes: list[tuple[int, int, int]],
    *,
    tpq: int = 480,
    program: int = 0,
    tempos: tuple[tuple[int, float], ...] = (),
) -> Any:
    """One track of ``(time, duration, pitch)`` notes, meters ``(tick, num, den)``."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    score: Any = Score(tpq)
    for tick, n, d in meters:
        score.time_signatures.append(TimeSignature(tick, n, d))
    for tick, qpm in tempos:
        score.tempos.append(Tempo(tick, qpm))
    track: Any = Track(program=program)
    for time, duration, pitch in notes:
        track.notes.append(Note(time, duration, pitch, 90))
    score.tracks.append(track)
    return score


def _write(score: Any, path: Path) -> Path:
    score.dump_midi(str(path))
    return path


def seven_eight() -> Any:
    """Four bars of 7/8 in eighth notes (14 quarters)."""
    return _score([(0, 7, 8)], [(i * 240, 240, 60 + i % 7) for i in range(28)])


def some_out_of_range() -> Any:
    """120 quarter notes in 4/4, 3 of them outside the shipped pitch range (24-96)."""
    pitches = [60 + i % 12 for i in range(117)] + [10, 100, 127]
    return _score([(0, 4, 4)], [(i * 480, 480, p) for i, p in enumerate(pitches)])


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# -- the analysis ------------------------------------------------------------------------------
def test_a_7_8_piece_is_tokenized_in_4_4() -> None:
    [loss] = tokenizing_losses(load_tokenizer(), seven_eight())
    assert (loss.kind, loss.count, loss.total) == ("time-signature", 3, 4)
    assert loss.message == (
        "3 of 4 bar lines moved: time signatures outside the tokenizer's vocabulary (7/8) were dropped"
    )


def test_notes_outside_the_pitch_range() -> None:
    [loss] = tokenizing_losses(load_tokenizer(), some_out_of_range())
    assert (loss.kind, loss.count, loss.total) == ("pitch-range", 3, 120)
    assert loss.message == (
        f"3 of 120 notes are outside the tokenizer's pitch range {SHIPPED_RANGE} and were dropped"
    )


def test_only_notes_outside_the_range_leave_nothing() -> None:
    losses = tokenizing_losses(load_tokenizer(), _score([(0, 4, 4)], [(0, 480, 10), (480, 480, 120)]))
    assert [loss.kind for loss in losses] == ["pitch-range", "no-notes"]
    assert losses[1].message == "nothing musical remains: all 2 notes were dropped"


def test_programs_not_in_the_config() -> None:
    from miditok import REMI, TokenizerConfig
    from symusic import Note, Track

    tok = REMI(TokenizerConfig(use_programs=True, programs=[-1, 0]))
    score = _score([(0, 4, 4)], [(0, 480, 60), (480, 480, 62)])
    strings: Any = Track(program=40)
    strings.notes.append(Note(0, 960, 55, 90))
    score.tracks.append(strings)
    [loss] = tokenizing_losses(tok, score)
    assert (loss.kind, loss.count, loss.total) == ("program", 1, 3)
    assert "(40)" in loss.message and "dropped" in loss.message


def test_tempos_beyond_the_range_and_notes_beyond_the_longest_duration() -> None:
    from miditok import REMI, TokenizerConfig

    tok = REMI(TokenizerConfig(use_tempos=True))  # tempos 40-250, durations up to 12 beats
    score = _score([(0, 4, 4)], [(0, 480, 60), (480, 480 * 20, 62)], tempos=((0, 300.0), (480, 90.0)))
    losses = {loss.kind: loss for loss in tokenizing_losses(tok, score)}
    assert set(losses) == {"tempo-range", "duration"}
    assert (losses["tempo-range"].count, losses["tempo-range"].total) == (1, 2)
    assert "300 bpm" in losses["tempo-range"].message and "40-250" in losses["tempo-range"].message
    assert (losses["duration"].count, losses["duration"].total) == (1, 2)
    assert "12 beats" in losses["duration"].message


def test_quantization_is_not_a_loss() -> None:
    """Onsets and durations off the grid, odd velocities and an odd tempo inside the range,
    an odd resolution, 3/4 and 6/8 (in the vocabulary), a note just past the longest
    Duration (closer to it than half a step): nothing is reported."""
    from miditok import REMI, TokenizerConfig

    tok = REMI(TokenizerConfig(use_tempos=True))
    tpq = 1000
    notes = [(i * 1000 + 7 * (i % 3), 333 + 17 * i, 40 + i) for i in range(12)]
    notes.append((3000, 12 * tpq + 40, 70))  # 12.04 beats of 3/4: the longest Duration is 12
    score = _score([(0, 3, 4), (6000, 6, 8)], notes, tpq=tpq, tempos=((0, 121.37), (3000, 66.6)))
    assert tokenizing_losses(tok, score) == []


def test_a_time_signature_off_a_bar_line_moves() -> None:
    """miditok delays a change of meter to the next bar line."""
    score = _score([(0, 4, 4), (480, 3, 4)], [(i * 480, 480, 60) for i in range(12)])
    [loss] = tokenizing_losses(load_tokenizer(), score)
    assert loss.kind == "time-signature" and "moved to the next one" in loss.message


# -- gramophone check ---------------------------------------------------------------------------
def test_check_warns_once_per_kind_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seven = _write(seven_eight(), tmp_path / "seven.mid")
    wide = _write(some_out_of_range(), tmp_path / "wide.mid")
    code, out, err = run(["check", str(seven), str(wide)], capsys)
    assert code == 0
    assert err.splitlines() == [
        f"gramophone: warning: {seven}: 3 of 4 bar lines moved: time signatures outside the "
        "tokenizer's vocabulary (7/8) were dropped",
        f"gramophone: warning: {wide}: 3 of 120 notes are outside the tokenizer's pitch range "
        f"{SHIPPED_RANGE} and were dropped",
    ]
    assert out.count(": valid (") == 2


def test_check_strict_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seven = _write(seven_eight(), tmp_path / "seven.mid")
    clean = _write(_score([(0, 4, 4)], [(0, 480, 60), (480, 480, 64)]), tmp_path / "clean.mid")
    code, out, err = run(["check", "--strict", str(seven), str(clean)], capsys)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"gramophone: error: {seven}: tokenizing loses content (--strict): 3 of 4 bar")
    assert out.splitlines() == [f"{clean}: valid (10 tokens)"]


def test_check_of_a_file_with_nothing_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = _write(_score([(0, 4, 4)], [(0, 480, 10)]), tmp_path / "low.mid")
    code, out, err = run(["check", str(empty)], capsys)
    assert code == 0
    assert out.strip() == f"{empty}: nothing musical remains after tokenizing (2 tokens, no note)"
    assert "valid" not in out
    assert f"gramophone: warning: {empty}: nothing musical remains: its only note was dropped" in err
    code, _, err = run(["check", "--strict", str(empty)], capsys)
    assert code == 2 and "nothing musical remains" in err and len(err.splitlines()) == 1


def test_check_json_lists_the_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wide = _write(some_out_of_range(), tmp_path / "wide.mid")
    code, out, err = run(["check", "--json", str(wide)], capsys)
    assert code == 0 and err == ""
    record = json.loads(out)
    assert record["valid"] is True
    assert record["warnings"] == [
        f"3 of 120 notes are outside the tokenizer's pitch range {SHIPPED_RANGE} and were dropped"
    ]


def test_check_of_a_program_the_config_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from miditok import REMI, TokenizerConfig

    config = tmp_path / "tokenizer.json"
    REMI(TokenizerConfig(use_programs=True, programs=[0])).save(config)
    horn = _write(_score([(0, 4, 4)], [(0, 480, 60)], program=60), tmp_path / "horn.mid")
    code, out, err = run(["check", "--tokenizer", str(config), str(horn)], capsys)
    assert code == 0
    assert f"{horn}: 1 of 1 note is in 1 track of programs not among the tokenizer's (60)" in err
    assert "nothing musical remains" in out


def test_a_clean_chorale_has_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gramophone.data import chorale_midis

    [path] = chorale_midis(progress=False, names=["bach/bwv269"])
    code, out, err = run(["check", "--strict", str(path)], capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: valid (")


def test_token_files_are_not_analysed(tmp_path: Path) -> None:
    text = tmp_path / "piece.txt"
    text.write_text("Bar_None TimeSig_4/4")
    assert file_losses(load_tokenizer(), text, strict=True) == []


# -- decode --prompt ---------------------------------------------------------------------------
def test_a_midi_prompt_warns_and_strict_refuses(tmp_path: Path) -> None:
    from gramophone.decoding.driver import read_prompt

    tok = load_tokenizer()
    seven = _write(seven_eight(), tmp_path / "seven.mid")
    warnings: list[str] = []
    ids = read_prompt(seven, tok, warn=warnings.append)
    assert ids and warnings == [
        f"{seven}: 3 of 4 bar lines moved: time signatures outside the tokenizer's vocabulary (7/8) "
        "were dropped"
    ]
    with pytest.raises(TokenFileError, match=r"seven\.mid: tokenizing loses content \(--strict\)"):
        read_prompt(seven, tok, strict=True)


def test_decode_strict_exits_2_before_decoding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    seven = _write(seven_eight(), tmp_path / "seven.mid")
    out_dir = tmp_path / "out"
    args = ["decode", "--backend", "torch", "--prompt", str(seven), "--strict", "--num", "1"]
    code, _, err = run([*args, "--out", str(out_dir)], capsys)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"gramophone: error: {seven}: tokenizing loses content (--strict)")
    assert not list(out_dir.glob("piece-*"))
