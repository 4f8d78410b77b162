"""`gramophone check` and `gramophone tokenize`: outputs, JSON Lines, exit status, bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gramophone.cli import main
from tests.conftest import automaton_for

GOOD = (
    "Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_63 Duration_1.0.4 "
    "Position_8 Pitch_62 Velocity_63 Duration_1.0.4"
)
BACK = (
    "Bar_None TimeSig_4/4 Position_12 Pitch_60 Velocity_63 Duration_1.0.4 "
    "Position_4 Pitch_62 Velocity_63 Duration_1.0.4"
)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    auto = automaton_for("shipped")
    ix = auto.token_index
    good_ids = [ix[t] for t in GOOD.split()]
    paths = {
        "good_txt": tmp_path / "good.txt",
        "good_json": tmp_path / "good.json",
        "list_json": tmp_path / "list.json",
        "back_txt": tmp_path / "back.txt",
        "empty": tmp_path / "empty.txt",
        "binary": tmp_path / "binary.bin",
        "broken": tmp_path / "broken.json",
        "wrong_keys": tmp_path / "wrong.json",
        "out_of_range": tmp_path / "range.json",
        "unknown": tmp_path / "unknown.txt",
        "truncated": tmp_path / "truncated.txt",
        "bad_midi": tmp_path / "bad.mid",
    }
    paths["good_txt"].write_text(GOOD + "\n")
    paths["good_json"].write_text(json.dumps({"ids": good_ids}))
    paths["list_json"].write_text(json.dumps([good_ids, good_ids]))
    paths["back_txt"].write_text(BACK)
    paths["empty"].write_text("")
    paths["binary"].write_bytes(bytes(range(256)))
    paths["broken"].write_text('{"ids": [1, 2')
    paths["wrong_keys"].write_text('{"tokens": [1, 2]}')
    paths["out_of_range"].write_text(json.dumps({"ids": [4, 99999]}))
    paths["unknown"].write_text("Bar_None Flute_3")
    paths["truncated"].write_text(GOOD.rsplit(" ", 1)[0])
    paths["bad_midi"].write_bytes(b"MThd\x00\x00garbage")
    return paths


def test_valid_files_exit_0(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["check", str(files["good_txt"]), str(files["good_json"]), str(files["list_json"])], capsys
    )
    assert code == 0
    assert out.count(": valid") == 3


def test_invalid_file_reports_first_violation(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", str(files["back_txt"])], capsys)
    assert code == 1
    assert "token 6 (Position_4)" in out
    assert "Position_4 goes back within the bar after Position_12" in out
    assert "Position_13..15" in out  # expected, summarized


def test_json_lines(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["check", "--json", str(files["good_txt"]), str(files["back_txt"]), str(files["empty"])], capsys
    )
    assert code == 2  # an unreadable file wins over an invalid one
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in records] == [str(files[k]) for k in ("good_txt", "back_txt", "empty")]
    assert records[0]["valid"] is True
    bad = records[1]
    assert bad["valid"] is False and bad["index"] == 6 and bad["token"] == "Position_4"
    assert bad["reason"] and bad["expected"]
    assert "error" in records[2] and "valid" not in records[2]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("empty", "empty file"),
        ("binary", "binary file"),
        ("broken", "broken JSON"),
        ("wrong_keys", "no 'ids' key"),
        ("out_of_range", "outside the vocabulary"),
        ("unknown", "unknown token name 'Flute_3'"),
        ("bad_midi", "not a readable MIDI file"),
    ],
)
def test_bad_files_get_one_clear_line(
    files: dict[str, Path], key: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["check", str(files[key]), str(files["good_txt"])], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(files[key]) in lines[0] and message in lines[0]
    assert "Traceback" not in err
    assert ": valid" in out  # the other file is still checked


def test_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", str(tmp_path / "nope.txt"), str(tmp_path)], capsys)
    assert code == 2
    assert (
        "no such file" in err
        and f"{tmp_path}: no token files (.json, .txt) or MIDI files in this folder" in err
    )


def test_truncated_stream_is_invalid(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(files["truncated"])], capsys)
    assert code == 1 and "ends incomplete" in out


def test_stdin_and_usage_errors() -> None:
    exe = [sys.executable, "-m", "gramophone"]
    proc = subprocess.run([*exe, "check", "-"], input=GOOD, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*exe, "check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [*exe, "check", "--tokenizer", "/nonexistent.json", "x"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "tokenizer file not found" in proc.stderr


def test_tokenize_then_check_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from symusic import Note, Score, Track

    score = Score(480)
    track = Track(program=0)
    for i, pitch in enumerate([60, 64, 67, 72]):
        track.notes.append(Note(i * 480, 480, pitch, 80))
    track.notes.append(Note(0, 960, 48, 80))
    score.tracks.append(track)
    midi = tmp_path / "piece.v1.mid"
    score.dump_midi(str(midi))
    code, out, _ = run(["tokenize", str(midi), "--out", str(tmp_path / "tok")], capsys)
    assert code == 0
    assert (tmp_path / "tok" / "piece.v1.json").exists() and (tmp_path / "tok" / "tokenizer.json").exists()
    code, out, _ = run(
        [
            "check",
            "--tokenizer",
            str(tmp_path / "tok" / "tokenizer.json"),
            str(tmp_path / "tok" / "piece.v1.json"),
            str(tmp_path / "tok" / "piece.v1.txt"),
            str(midi),
        ],
        capsys,
    )
    assert code == 0, out
    assert out.count(": valid") == 3
    # a folder is checked file by file; the tokenizer file beside the tokens is skipped
    code, out, err = run(["check", str(tmp_path / "tok")], capsys)
    assert code == 0 and out.count(": valid") == 2, out
    assert "tokenizer.json: skipped" in err
    code, out, err = run(["check", *map(str, sorted((tmp_path / "tok").glob("*.json")))], capsys)
    assert code == 0 and out.count(": valid") == 1 and "skipped" in err
    # a folder to tokenize: its MIDI files, recursively, named relative to it
    (tmp_path / "midi" / "sub").mkdir(parents=True)
    shutil.copy(midi, tmp_path / "midi" / "a.mid")
    shutil.copy(midi, tmp_path / "midi" / "sub" / "b.MIDI")
    (tmp_path / "midi" / "notes.txt").write_text("not a MIDI file")
    code, out, err = run(["tokenize", str(tmp_path / "midi"), "--out", str(tmp_path / "tok2")], capsys)
    assert code == 0, err
    assert sorted(
        p.relative_to(tmp_path / "tok2").as_posix() for p in (tmp_path / "tok2").rglob("*.json")
    ) == [
        "a.json",
        "sub/b.json",
        "tokenizer.json",
    ]
    assert (tmp_path / "tok2" / "a.json").read_text() == (tmp_path / "tok" / "piece.v1.json").read_text()


def test_large_text_input_is_streamed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A long text stream (several MB, over the reader's chunk size) is checked in one pass."""
    bar = "Bar_None TimeSig_4/4 " + " ".join(
        f"Position_{p} Pitch_{60 + p} Velocity_63 Duration_1.0.4" for p in range(16)
    )
    path = tmp_path / "long.txt"
    with path.open("w") as fh:
        for _ in range(6000):
            fh.write(bar + "\n")
    assert path.stat().st_size > 2 << 20
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 0 and "valid (396000 tokens)" in out


def test_closed_pipe_stops_quietly(files: dict[str, Path]) -> None:
    """`gramophone check MANY | head -1`: no BrokenPipeError traceback."""
    exe = [sys.executable, "-m", "gramophone"]
    many = [str(files["good_txt"])] * 5000
    proc = subprocess.Popen([*exe, "check", *many], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err
