"""Never a traceback: every path a user can reach through ``gramophone`` ends in one line on
stderr (``gramophone: error: ...``, naming the file and the problem) and a non-zero exit, or
in a silent rebuild (caches) or a note (optional outputs); nothing half-written is left.

Run through the real command line: ``main([...])`` in this process (fast), or a subprocess
where the process itself is the subject (missing packages, Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gramophone import cli
from gramophone.cli import main
from tests.conftest import automaton_for, tokenizer_for

#: A tiny model and a corpus without transpositions: a run of one step takes seconds.
TINY = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 32, "dropout": 0.0},
    "train": {"warmup_steps": 1, "total_steps": 100000, "batch_size": 2, "seq_len": 32},
    "data": {"transpose": [0, 0]},
}
_PROGRESS = re.compile(r"\d+%\|")  # a tqdm progress bar
#: A folder no process may create (sysfs is read-only, for root too).
UNWRITABLE = "/sys/gramophone-test/out"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """One OpenMP thread: small torch ops on a busy two-core machine are far faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def messages(err: str) -> list[str]:
    """The lines of stderr that are not progress bars."""
    lines = re.split(r"[\r\n]+", err)
    return [line for line in lines if line.strip() and not _PROGRESS.search(line)]


def assert_one_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2, no traceback, and exactly one line on stderr: the error, holding
    every needle."""
    assert "Traceback" not in err, err
    lines = messages(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("gramophone: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert code == 2, (code, lines)
    return lines[0]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    """Temporary files (``.NAME.*``) under ``folder``: what an interrupted write leaves."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != ".gramophone-files")


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint for the shipped tokenizer."""
    from gramophone.backends import ModelConfig, get_backend
    from gramophone.models import checkpoint_meta

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    backend = get_backend("torch")
    model = ModelConfig(vocab_size=len(automaton_for("shipped").vocab), **TINY["model"])  # type: ignore[arg-type]
    backend.save(
        path, backend.init(model, 0), meta=checkpoint_meta(tokenizer_for("shipped"), automaton_for("shipped"))
    )
    return path


@pytest.fixture(scope="module")
def midi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from symusic import Note, Score, Track

    score = Score(480)
    track = Track(program=0)
    for i, pitch in enumerate([60, 64, 67, 72]):
        track.notes.append(Note(i * 480, 480, pitch, 80))
    score.tracks.append(track)
    path = tmp_path_factory.mktemp("midi") / "piece.mid"
    score.dump_midi(str(path))
    return path


@pytest.fixture(scope="module")
def inputs(tiny_config: Path, checkpoint: Path, midi: Path) -> dict[str, Path]:
    return {"config": tiny_config, "checkpoint": checkpoint, "midi": midi}


def command(name: str, out: str | Path, inputs: dict[str, Path]) -> list[str]:
    """A quick run of a subcommand into ``out`` (train: one step; decode: one piece)."""
    args = {
        "train": ["train", "--backend", "torch", "--config", str(inputs["config"]), "--steps", "1"],
        "tokenize": ["tokenize", str(inputs["midi"])],
        "bench": ["bench", "--quick", "--only", "grammar"],
        "decode": ["decode", "--backend", "torch", "--checkpoint", str(inputs["checkpoint"]), "--num", "1"],
    }[name]
    return [*args, *(["--no-audio"] if name == "decode" else []), "--out", str(out)]


# -- output paths -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train", "tokenize", "bench", "decode"])
@pytest.mark.parametrize("where", ["unwritable", "a file"])
def test_an_output_folder_that_cannot_be_one(
    name: str, where: str, tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    if where == "a file":
        out = tmp_path / "taken"
        out.write_text("mine\n")
    else:
        out = Path(UNWRITABLE)
    code, _, err = run(command(name, out, inputs), capsys)
    line = assert_one_error(code, err)
    assert str(out) in line or str(out.parent) in line
    if where == "a file":
        assert out.read_text() == "mine\n"  # left as it was
        assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_tokenize_a_folder_where_a_token_file_goes(
    tmp_path: Path, midi: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tok"
    (out / "piece.json").mkdir(parents=True)
    code, _, err = run(["tokenize", str(midi), "--out", str(out)], capsys)
    assert_one_error(code, err, str(out / "piece.json"), "Is a directory")
    assert not (out / "piece.txt").exists()  # both files of a piece, or neither
    assert leftovers(out) == []


def test_decode_a_folder_where_a_piece_goes(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dec"
    (out / "piece-000.json").mkdir(parents=True)
    code, _, err = run(command("decode", out, inputs), capsys)
    assert code != 0 and "Traceback" not in err
    (line,) = messages(err)
    assert line.startswith("gramophone: error: ") and str(out) in line
    assert leftovers(out) == []


def test_train_a_folder_where_the_metrics_go(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    code, _, err = run(command("train", out, inputs), capsys)
    assert_one_error(code, err, str(out / "metrics.jsonl"), "Is a directory")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


# -- tokenize ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["BPE", "Unigram", "WordPiece"])
def test_tokenize_with_a_trained_tokenizer(
    model: str, tmp_path: Path, midi: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.learned_fixtures import chorales, trained_tokenizer_path

    tokenizer = trained_tokenizer_path("REMI", model, "bar")
    out = tmp_path / "tok"
    code, stdout, err = run(
        ["tokenize", "--tokenizer", str(tokenizer), str(midi), str(chorales()[0]), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "Traceback" not in err and stdout.count("learned tokens") == 2
    code, stdout, err = run(["check", "--tokenizer", str(out / "tokenizer.json"), str(out)], capsys)
    assert code == 0, (stdout, err)
    assert stdout.count(": valid") == 4  # two JSON (learned ids) and two text (base tokens) files


def test_tokenize_wraps_a_tokenizing_error(
    tmp_path: Path, midi: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import miditok

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an unusual file")

    monkeypatch.setattr(miditok.REMI, "encode", fail)
    out = tmp_path / "tok"
    code, _, err = run(["tokenize", str(midi), "--out", str(out)], capsys)
    assert_one_error(code, err, str(midi), "RuntimeError: an unusual file")
    assert not (out / "piece.json").exists() and not (out / "piece.txt").exists()


def test_tokenize_interrupted_while_writing_leaves_no_partial_piece(
    tmp_path: Path, midi: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between the renames of a piece's two files: neither is left, nor a temp file."""
    from gramophone import tokenizers

    real = os.replace
    calls: list[str] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(str(dst))
        if str(dst).endswith(".txt"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(tokenizers.os, "replace", replace)
    out = tmp_path / "tok"
    code, _, err = run(["tokenize", str(midi), "--out", str(out)], capsys)
    assert code == 130 and messages(err) == ["gramophone: error: interrupted"], err
    assert any(c.endswith("piece.json") for c in calls)  # the first file was renamed ...
    assert not (out / "piece.json").exists() and not (out / "piece.txt").exists()  # ... and removed
    assert leftovers(out) == []


# -- unreadable inputs --------------------------------------------------------------------------
@pytest.fixture
def unreadable(tmp_path: Path) -> Path:
    """A file this process cannot read (permission denied)."""
    path = tmp_path / "secret.mid"
    path.write_bytes(b"MThd")
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return path
    # root reads any file; a process's memory map is refused to it too
    proc = Path("/proc/1/mem")
    try:
        proc.read_bytes()
    except PermissionError:
        return proc
    except OSError:
        pass
    pytest.skip("no file here is unreadable to this process")


_D = ["decode", "--backend", "torch"]
_T = ["train", "--backend", "torch"]


@pytest.mark.parametrize(
    ("args", "named", "needle"),
    [
        (["check", "DIR"], "DIR", "no token files (.json, .txt) or MIDI files in this folder"),
        (["check", "MISSING"], "MISSING", "no such file"),
        (["check", "UNREADABLE"], "UNREADABLE", "Permission denied"),
        (["check", "--tokenizer", "DIR", "MIDI"], "DIR", "tokenizer file not found"),
        (["check", "--tokenizer", "GARBAGE", "MIDI"], "GARBAGE", "not a miditok tokenizer file"),
        (["check", "--tokenizer", "FOREIGN", "MIDI"], "FOREIGN", "not a miditok tokenizer file"),
        (["tokenize", "DIR", "--out", "OUT"], "DIR", "no MIDI files (.mid, .midi, .smf) in this folder"),
        (["tokenize", "MISSING", "--out", "OUT"], "MISSING", "no such file"),
        (["tokenize", "UNREADABLE", "--out", "OUT"], "UNREADABLE", "Permission denied"),
        (["tokenize", "--tokenizer", "GARBAGE", "MIDI", "--out", "OUT"], "GARBAGE", "not a miditok"),
        ([*_D, "--checkpoint", "CKPT", "--prompt", "DIR", "--out", "OUT"], "DIR", "is a directory"),
        ([*_D, "--checkpoint", "CKPT", "--prompt", "UNREADABLE", "--out", "OUT"], "UNREADABLE", "denied"),
        ([*_D, "--checkpoint", "CKPT", "--prompt", "GARBAGE", "--out", "OUT"], "GARBAGE", "binary file"),
        ([*_D, "--checkpoint", "DIR", "--out", "OUT"], "DIR", "config.json"),
        ([*_D, "--checkpoint", "MIDI", "--out", "OUT"], "MIDI", "does not exist"),
        ([*_D, "--checkpoint", "MISSING", "--out", "OUT"], "MISSING", "does not exist"),
        ([*_D, "--checkpoint", "BROKEN_CKPT", "--out", "OUT"], "BROKEN_CKPT", "not valid JSON"),
        ([*_T, "--tokenizer", "DIR", "--out", "OUT"], "DIR", "tokenizer file not found"),
        ([*_T, "--tokenizer", "FOREIGN", "--out", "OUT"], "FOREIGN", "not a miditok tokenizer file"),
        ([*_T, "--config", "GARBAGE", "--out", "OUT"], "GARBAGE", "not valid JSON"),
        ([*_T, "--config", "DIR", "--out", "OUT"], "DIR", "cannot read the config file"),
        ([*_T, "--config", "FOREIGN", "--out", "OUT"], "FOREIGN", "unknown section"),
    ],
)
def test_an_unreadable_input_is_one_line(
    args: list[str], named: str, needle: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``named`` is the input the error line must name; ``needle`` what it must say."""
    inputs = request.getfixturevalue("inputs")
    (tmp_path / "dir").mkdir()
    (tmp_path / "garbage.json").write_bytes(b"\x00\x01 not json {")
    (tmp_path / "foreign.json").write_text('{"foo": 1}')
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    paths = {
        "DIR": tmp_path / "dir",
        "MISSING": tmp_path / "nope.mid",
        "GARBAGE": tmp_path / "garbage.json",
        "FOREIGN": tmp_path / "foreign.json",
        "MIDI": inputs["midi"],
        "CKPT": inputs["checkpoint"],
        "BROKEN_CKPT": tmp_path / "ckpt",
        "OUT": tmp_path / "out",
    }
    if "UNREADABLE" in args:
        paths["UNREADABLE"] = request.getfixturevalue("unreadable")
    capsys = request.getfixturevalue("capsys")
    code, _, err = run([str(paths[a]) if a in paths else a for a in args], capsys)
    assert_one_error(code, err, str(paths[named]), needle)
    if args[0] != "tokenize":  # nothing written (tokenize writes the files it can)
        assert not (tmp_path / "out").exists()


# -- missing packages ----------------------------------------------------------------------------
_BLOCKED_RUN = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None  # import NAME raises ImportError: as if not installed\n"
    "from gramophone.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def run_without(packages: list[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    """``gramophone ARGS`` in a fresh process in which ``packages`` cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, ",".join(packages), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def block(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """In this process, ``import NAME`` (and of its submodules) fails until the test ends.

    pretty_midi remembers at its import whether fluidsynth was there: it is imported first,
    unblocked, or it would stay without FluidSynth for the rest of the test session."""
    if "fluidsynth" in packages and "pretty_midi" not in packages:
        import pretty_midi.fluidsynth  # noqa: F401
    for name in [m for m in sys.modules if m.split(".")[0] in packages] + list(packages):
        monkeypatch.setitem(sys.modules, name, None)


def _decoded(out: Path) -> set[str]:
    written = {p.suffix for p in out.iterdir()}
    assert {".json", ".txt", ".mid"} <= written and ".wav" not in written
    return written


def test_decode_no_audio_without_matplotlib(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """A fresh process without matplotlib: every piece but its piano roll, and a note."""
    out = tmp_path / "dec"
    proc = run_without(["matplotlib"], [*command("decode", out, inputs), "--max-tokens", "24"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    said = proc.stdout + proc.stderr
    assert "matplotlib" in said and "pip install 'gramophone[audio]'" in said, said
    assert ".png" not in _decoded(out)


@pytest.mark.parametrize(
    ("blocked", "notes"),
    [
        (["fluidsynth"], ["FluidSynth", "pyfluidsynth"]),
        (["pretty_midi"], ["pretty_midi", "gramophone[audio]"]),
        (["matplotlib", "fluidsynth"], ["matplotlib", "FluidSynth"]),
    ],
)
def test_decode_without_the_audio_extra_skips_those_outputs(
    blocked: list[str],
    notes: list[str],
    tmp_path: Path,
    inputs: dict[str, Path],
    request: pytest.FixtureRequest,
) -> None:
    block(request.getfixturevalue("monkeypatch"), *blocked)
    out = tmp_path / "dec"
    args = [a for a in command("decode", out, inputs) if a != "--no-audio"]
    code, stdout, err = run([*args, "--max-tokens", "24"], request.getfixturevalue("capsys"))
    assert code == 0, err
    assert "Traceback" not in err
    for note in notes:
        assert note in stdout + err, stdout + err
    assert (".png" in _decoded(out)) == ("matplotlib" not in blocked)


@pytest.mark.parametrize("how", ["not installed", "fails to import"])
def test_train_without_music21_and_no_corpus_cache(
    how: str,
    tmp_path: Path,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """music21 missing (or broken) and no converted corpus: one line saying what to install,
    and no run folder left behind."""
    from gramophone.data import chorales

    monkeypatch.setenv("GRAMOPHONE_CACHE", str(tmp_path / "empty-cache"))
    if how == "not installed":
        monkeypatch.setattr(chorales, "_music21_version", lambda: None)
    else:
        block(monkeypatch, "music21")
    out = tmp_path / "run"
    code, _, err = run(command("train", out, inputs), capsys)
    assert_one_error(code, err, "music21", "pip install 'gramophone[data]'")
    assert not out.exists()


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"),
            "matplotlib is not installed or cannot be imported (No module named 'matplotlib'): "
            "pip install 'gramophone[audio]'",
        ),
        (OSError(28, "No space left on device", "/run/model.bin"), "/run/model.bin: No space left on device"),
    ],
)
def test_what_a_library_call_raises_unexpectedly_is_still_one_line(
    error: Exception, line: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_check", fail)
    code, _, err = run(["check", "x.txt"], capsys)
    assert assert_one_error(code, err) == f"gramophone: error: {line}"


# -- caches --------------------------------------------------------------------------------------
def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:  # a valid .npz of something else
        with path.open("wb") as fh:
            np.savez(fh, something=np.arange(3))


def test_broken_cache_entries_are_rebuilt_silently(
    tmp_path: Path,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every ``.npz`` of the cache (automata, datasets, decoding tables) truncated, then
    foreign: the same commands succeed again, say nothing (no warning either: a logged one
    reaches stderr), and rewrite the entries."""
    from gramophone.data import chorale_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / chorale_dir().name).symlink_to(chorale_dir())  # the corpus as MIDI (slow to convert)
    monkeypatch.setenv("GRAMOPHONE_CACHE", str(cache))
    good = tmp_path / "good.txt"
    good.write_text(
        "Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_63 Duration_1.0.4 Position_8 Pitch_62 "
        "Velocity_63 Duration_1.0.4\n"
    )
    model = {**inputs, "checkpoint": tmp_path / "run" / "model"}

    def commands(i: int, *, train: bool = True) -> list[str]:
        """check, train, decode; what they said on stderr (progress bars aside) and logged."""
        code, _, err = run(["check", str(good)], capsys)
        assert code == 0, err
        said = messages(err)
        if train:
            code, _, err = run(command("train", tmp_path / "run", inputs), capsys)
            assert code == 0, err
            said += messages(err)
        code, _, err = run([*command("decode", tmp_path / f"dec{i}", model), "--max-tokens", "24"], capsys)
        assert code == 0, err
        said += messages(err)
        said += [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        return said

    with caplog.at_level(logging.WARNING):
        assert commands(0) == []
        entries = sorted(p for d in ("automata", "datasets", "decoding") for p in (cache / d).glob("*.npz"))
        assert {p.parent.name for p in entries} == {"automata", "datasets", "decoding"}, entries
        for path in entries:
            _corrupt(path, "truncated")
        shutil.rmtree(tmp_path / "run")
        assert commands(1) == []  # no traceback, no warning
        for path in entries:
            with np.load(path, allow_pickle=False) as data:
                assert data.files  # rebuilt
        entries = [p for p in entries if p.parent.name != "datasets"]  # rebuilt by train only
        for path in entries:
            _corrupt(path, "foreign")
        assert commands(2, train=False) == []
    for path in entries:
        with np.load(path, allow_pickle=False) as data:
            assert "something" not in data.files  # rebuilt


def test_a_broken_jax_compilation_cache_entry_is_dropped(tmp_path: Path) -> None:
    """JAX never replaces an entry and warns on every read of a broken one (``decode
    --backend jax`` would recompile in every run, with a warning): gramophone drops it."""
    from jax._src.compilation_cache import compress_executable

    from gramophone.decoding.jax_loop import drop_unreadable_entries

    good = tmp_path / "jit_f-1-cache"
    good.write_bytes(compress_executable(bytes(8) + b"an executable" * 100))
    cut = tmp_path / "jit_g-2-cache"
    cut.write_bytes(good.read_bytes()[:20])
    foreign = tmp_path / "jit_h-3-cache"
    foreign.write_bytes(b"something else")
    assert drop_unreadable_entries(tmp_path) == 2
    assert good.exists() and not cut.exists() and not foreign.exists()
    assert drop_unreadable_entries(tmp_path) == 0
    cut.write_bytes(b"written since the last check")
    assert drop_unreadable_entries(tmp_path) == 1 and good.exists()


def test_the_dataset_cache_is_keyed_on_the_code_that_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from gramophone import _files
    from gramophone.data import dataset

    hashed: list[list[str]] = []
    real = _files.code_hash

    def spy(files: object) -> str:
        names = [str(f) for f in files]  # type: ignore[attr-defined]
        hashed.append(names)
        return real(names)

    monkeypatch.setattr(dataset, "code_hash", spy)
    args = (tokenizer_for("shipped"), automaton_for("shipped"), dataset.DataConfig(), ["bach/bwv1.6"])
    before = dataset.dataset_cache_path(*args)
    (files,) = hashed
    assert {Path(f).name for f in files} >= {"dataset.py", "chorales.py", "__init__.py", "learned.py"}
    monkeypatch.setattr(dataset, "code_hash", lambda files: "another version of the code")
    assert dataset.dataset_cache_path(*args) != before


def test_code_hash_follows_names_and_contents_not_the_folder(tmp_path: Path) -> None:
    """Two clones of the same code share cache entries; a change to a file does not."""
    from gramophone._files import code_hash

    def clone(name: str, text: str) -> list[Path]:
        (tmp_path / name).mkdir()
        files = [tmp_path / name / "a.py", tmp_path / name / "b.py"]
        files[0].write_text(text)
        files[1].write_text("y = 2\n")
        return files

    first = code_hash(clone("one", "x = 1\n"))
    assert code_hash(clone("two", "x = 1\n")) == first
    assert code_hash(reversed(clone("three", "x = 1\n"))) == first  # the order given does not matter
    assert code_hash(clone("four", "x = 10\n")) != first


# -- Ctrl-C ----------------------------------------------------------------------------------------
def test_ctrl_c_during_training(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """SIGINT while a run checkpoints every step: one line, exit 130, and every checkpoint
    left is whole (no temporary folder, ``LATEST`` names a readable one)."""
    from gramophone.backends import checkpoint as ckpt
    from gramophone.training import latest_checkpoint

    out = tmp_path / "run"
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
        "from gramophone.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [*command("train", out, inputs), "--checkpoint-every", "1"]
    args[args.index("--steps") + 1] = "100000"
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args, "--eval-every", "100000"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "LATEST").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no checkpoint written: {log.read_text()}")
            time.sleep(0.05)
        time.sleep(0.3)  # a few more checkpoints: the signal lands in one of them
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and messages(err) == ["gramophone: error: interrupted"], err
    checkpoints = out / "checkpoints"
    # no temporary folder of a write (one of a pruned checkpoint being deleted, hidden, may be:
    # the next save removes it)
    assert [p for p in leftovers(checkpoints) if ".old-" not in p.split("/")[0]] == []
    last = latest_checkpoint(out)
    assert last is not None and (checkpoints / "LATEST").read_text().strip() == last.name
    steps = sorted(checkpoints.glob("step-*"))
    assert steps and last in steps
    for step in steps:  # every checkpoint in sight is whole
        info = ckpt.read_info(step)
        for name in info.files:
            assert ckpt.file_path(info, name) is not None


def test_train_help_names_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from gramophone.backends.config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in PRESETS)
