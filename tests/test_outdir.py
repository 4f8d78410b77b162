"""Output folders never mix runs (``decode``, ``tokenize``, ``bench``), and ``decode
--formats`` writes only what it is asked for."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gramophone._outdir import MANIFEST, OutputFolderError, claim_output_folder, output_names
from gramophone.cli import main

from .conftest import tokenizer_for


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------
# The policy


def test_a_second_run_removes_exactly_what_the_first_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = claim_output_folder(out, "decode", ["a.json", "sub/b.json"])
    (out / "a.json").write_text("1")
    (out / "sub").mkdir()
    (out / "sub" / "b.json").write_text("2")
    (out / ".a.x1y2.json").write_text("")  # the temp file of a write killed midway
    first.finish()
    assert json.loads((out / MANIFEST).read_text())["files"] == [".a.x1y2.json", "a.json", "sub/b.json"]

    second = claim_output_folder(out, "decode", ["c.json"])
    assert files(out) == {MANIFEST} and not (out / "sub").exists()
    (out / "c.json").write_text("3")
    second.finish()
    assert files(out) == {MANIFEST, "c.json"}


def test_killed_run_is_still_cleared(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_output_folder(out, "decode", ["piece-000.json", "piece-001.json"])  # never finished
    (out / "piece-000.json").write_text("{}")
    (out / ".piece-001.k2j3.json").write_text("")  # killed while writing piece-001
    claim_output_folder(out, "decode")
    assert files(out) == {MANIFEST}


def test_other_files_are_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"holds files gramophone did not write \(notes.txt\)"):
        claim_output_folder(out, "decode")
    # ... also beside a previous run's files: nothing is removed
    other = tmp_path / "other"
    claimed = claim_output_folder(other, "tokenize", ["x.json"])
    (other / "x.json").write_text("{}")
    claimed.finish()
    (other / "y.json").write_text("{}")
    with pytest.raises(OutputFolderError, match=r"\(y.json\)"):
        claim_output_folder(other, "tokenize")
    assert (out / "notes.txt").read_text() == "mine" and {"x.json", "y.json"} <= files(other)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputFolderError, match="not a folder"):
        claim_output_folder(tmp_path / "file", "bench")


def test_output_names_keep_paths_apart(tmp_path: Path) -> None:
    assert output_names(["d/x.mid", "d/y.midi"]) == ["x", "y"]
    assert output_names(["a/x.mid", "b/x.mid"]) == ["a/x", "b/x"]
    assert output_names(["a/x.mid", "a/deep/x.mid"]) == ["x", "deep/x"]
    assert output_names(["a/x.mid", "./a/x.mid"]) == ["x", "x"]  # one file, given twice
    with pytest.raises(OutputFolderError, match=r"a/x.mid and a/x.midi would both be written as x.json"):
        output_names(["a/x.mid", "a/x.midi"])


# ---------------------------------------------------------------------------------------
# decode


def test_decode_twice_into_one_folder_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    base = ["decode", "--backend", "torch", "--max-tokens", "24", "--seed", "1", "--out", str(out)]
    code, _, err = run([*base, "--num", "3", "--formats", "tokens,midi"], capsys)
    assert code == 0, err
    assert files(out) == {
        MANIFEST,
        "tokenizer.json",
        "summary.json",
        "index.html",
        *(f"piece-00{i}{s}" for i in range(3) for s in (".json", ".txt", ".mid")),
    }
    assert json.loads((out / "summary.json").read_text())["formats"] == ["tokens", "midi"]

    code, _, err = run([*base, "--num", "1", "--formats", "tokens"], capsys)
    assert code == 0, err
    assert files(out) == {
        MANIFEST,
        "tokenizer.json",
        "summary.json",
        "index.html",
        "piece-000.json",
        "piece-000.txt",
    }
    assert main(["check", *(str(p) for p in sorted(out.glob("piece-*.json")))]) == 0
    capsys.readouterr()
    # check DIR/*.json: the tokenizer file and the summary are skipped, each with a note
    assert main(["check", *(str(p) for p in sorted(out.glob("*.json")))]) == 0
    notes = capsys.readouterr().err.splitlines()
    assert sorted(n.split(": skipped")[1] for n in notes) == [
        " (a decode summary, not a token file)",
        " (a tokenizer file, not a token file)",
    ]
    assert main(["check", str(out)]) == 0
    capsys.readouterr()

    (out / "mine.wav").write_text("")
    code, _, err = run([*base, "--num", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "holds files gramophone did not write (mine.wav)" in err
    assert (out / "piece-000.json").is_file()  # refused before anything was removed


@pytest.mark.parametrize(
    ("formats", "message"),
    [
        (["--formats", "tokens,pdf"], "--formats: unknown format 'pdf'; choose from tokens,midi,roll,wav"),
        (["--formats", "wav", "--no-audio"], "--no-audio contradicts --formats wav"),
    ],
)
def test_decode_format_errors_are_one_line(
    formats: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["decode", "--backend", "torch", *formats, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_decode_asked_for_a_format_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gramophone.audio

    def missing() -> Path:
        raise gramophone.audio.AudioUnavailableError("FluidSynth is not available (test)")

    monkeypatch.setattr(gramophone.audio, "check_wav", missing)
    base = ["decode", "--backend", "torch", "--num", "1", "--max-tokens", "24"]
    code, _, err = run([*base, "--formats", "tokens,wav", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--formats wav: FluidSynth is not available (test)" in err and err.count("\n") == 1
    code, out, err = run([*base, "--out", str(tmp_path / "p")], capsys)  # the default: a note
    assert code == 0 and "no WAV files: FluidSynth is not available (test)" in out, err
    assert (tmp_path / "p" / "piece-000.mid").is_file() and not (tmp_path / "p" / "piece-000.wav").exists()


# ---------------------------------------------------------------------------------------
# tokenize and bench


def test_tokenize_keeps_inputs_with_one_stem_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gramophone.tokenizers import decode_ids

    tok = tokenizer_for("shipped")
    for folder, pitch in (("a", 60), ("b", 67)):
        (tmp_path / folder).mkdir()
        body = ["Bar_None", "TimeSig_4/4", "Position_0", f"Pitch_{pitch}", "Velocity_63", "Duration_1.0.4"]
        decode_ids(tok, [tok.vocab[t] for t in body]).dump_midi(str(tmp_path / folder / "x.mid"))
    out = tmp_path / "tokens"
    a, b = str(tmp_path / "a" / "x.mid"), str(tmp_path / "b" / "x.mid")
    code, _, err = run(["tokenize", a, b, "--out", str(out)], capsys)
    assert code == 0, err
    assert files(out) == {MANIFEST, "tokenizer.json", "a/x.json", "a/x.txt", "b/x.json", "b/x.txt"}
    assert "Pitch_60" in (out / "a" / "x.txt").read_text() and "Pitch_67" in (out / "b" / "x.txt").read_text()

    code, _, err = run(["tokenize", b, "--out", str(out)], capsys)  # the same folder again: replaced
    assert code == 0, err
    assert files(out) == {MANIFEST, "tokenizer.json", "x.json", "x.txt"}

    (tmp_path / "a" / "x.midi").write_bytes((tmp_path / "a" / "x.mid").read_bytes())
    code, _, err = run(["tokenize", a, a + "i", "--out", str(tmp_path / "t2")], capsys)
    assert code == 2 and "would both be written as x.json" in err and err.count("\n") == 1
    assert not (tmp_path / "t2").exists()


def _section(name: str, ok: bool) -> types.ModuleType:
    mod = types.ModuleType(name)

    def run_section(quick: bool = False) -> list[dict[str, Any]]:
        if not ok:
            raise RuntimeError("broken on purpose")
        return [{"benchmark": name, "metric": "m", "value": 1.0}]

    mod.run = run_section  # type: ignore[attr-defined]
    mod.markdown = lambda recs: [f"{len(recs)} records", ""]  # type: ignore[attr-defined]
    return mod


def test_bench_leaves_no_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gramophone.bench import runner

    monkeypatch.setitem(sys.modules, "fake_good", _section("good", True))
    monkeypatch.setitem(sys.modules, "fake_bad", _section("bad", False))
    monkeypatch.setattr(runner, "SECTIONS", (("bad", "fake_bad", "Bad"), ("good", "fake_good", "Good")))
    runner.run_all(True, tmp_path / "b", log=lambda _m: None)
    assert (tmp_path / "b" / "bad-error.txt").is_file()
    runner.run_all(True, tmp_path / "b", ["good"], log=lambda _m: None)
    assert files(tmp_path / "b") == {MANIFEST, "results.json", "report.md"}
    (tmp_path / "b" / "old.png").write_text("")
    code, _, err = run(["bench", "--only", "good", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "(old.png)" in err and err.count("\n") == 1
