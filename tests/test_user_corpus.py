"""Training on your own MIDI files (issue 9, "Your data"): a folder becomes shards, bad files
are skipped by name, the cache is reused and grows by the new files only, splits stay put,
any number of workers writes the same shards, and `gramophone train --data DIR` trains a
model that `gramophone decode --checkpoint RUN` reads from its run folder.

Every test builds into its own cache folder (GRAMOPHONE_CACHE under tmp_path) from tiny
MIDI files written with symusic; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from symusic.core import NoteTick, ScoreTick, TimeSignatureTick, TrackTick

from gramophone.cli import main
from gramophone.data import corpus
from gramophone.data.corpus import _display, build_corpus, find_midi_files, resolve_data_paths
from gramophone.data.dataset import SPLITS, DataConfig, DataError, Dataset, train_batch
from gramophone.grammar import Component
from gramophone.models import resolve_checkpoint
from gramophone.training import resolve_config

from .conftest import automaton_for, tokenizer_for
from .test_training import TINY

BAD = {"corrupt.mid": "not a readable MIDI file", "x.mid": "not a MIDI file", "empty.mid": "no notes"}


def _piece(i: int, tracks: int = 1, drums: bool = False, bars: int = 2) -> bytes:
    """A small piece: ``tracks`` pitched tracks (and a drum track), ``bars`` bars of 4/4."""
    rng = random.Random(i)
    score = ScoreTick(480)
    score.time_signatures.append(TimeSignatureTick(0, 4, 4))
    for t in range(tracks):
        track = TrackTick(f"voice {t}", [0, 40, 73][t % 3], False)
        for n in range(4 * bars):
            track.notes.append(NoteTick(n * 480, 480, 48 + 12 * t + rng.randrange(12), 80))
        score.tracks.append(track)
    if drums:
        drum = TrackTick("drums", 0, True)
        for n in range(4 * bars):
            drum.notes.append(NoteTick(n * 480, 120, 36, 100))
        score.tracks.append(drum)
    return bytes(score.dumps_midi())


def make_corpus(root: Path, n: int = 30, start: int = 0, bad: bool = True) -> list[Path]:
    """``n`` pieces (every fifth with three tracks and drums) in ``root`` and subfolders
    (suffixes in any case), plus the bad files of :data:`BAD` and a symbolic-link loop."""
    paths = []
    for i in range(start, start + n):
        folder = root / ("" if i % 3 == 0 else f"set{i % 3}")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = [".mid", ".MID", ".midi"][i % 3]
        path = folder / f"piece{i:03d}{suffix}"
        path.write_bytes(_piece(i, tracks=3 if i % 5 == 0 else 1, drums=i % 5 == 0, bars=2 + i % 3))
        paths.append(path)
    if bad:
        good = _piece(999)
        (root / "corrupt.mid").write_bytes(good[: len(good) // 2])
        (root / "x.mid").write_text("this is not music\n")
        empty = ScoreTick(480)
        empty.tracks.append(TrackTick("silence", 0, False))
        (root / "empty.mid").write_bytes(bytes(empty.dumps_midi()))
        (root / "notes.txt").write_text("not a MIDI name: never read\n")
        loop = root / "set1" / "loop"
        if not loop.exists():
            loop.symlink_to(root, target_is_directory=True)
    return paths


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own (the shipped tokenizer's automaton is computed first,
    from the shared cache)."""
    automaton_for("shipped")
    path = tmp_path / "cache"
    monkeypatch.setenv("GRAMOPHONE_CACHE", str(path))
    return path


def build(root: Path, workers: int = 1, notes: list[str] | None = None, **config: object):  # type: ignore[no-untyped-def]
    """build_corpus over ``root`` with the shipped tokenizer."""
    cfg = DataConfig(paths=(str(root),), **config)  # type: ignore[arg-type]
    sink = notes if notes is not None else []
    return build_corpus(
        tokenizer_for("shipped"),
        automaton_for("shipped"),
        cfg,
        workers=workers,
        progress=False,
        on_note=sink.append,
    )


def split_of(dataset: Dataset) -> dict[str, str]:
    return {name: s for s in SPLITS for name in dataset[s].pieces}


# ---------------------------------------------------------------------------------------
# Finding files, paths in configs


def test_find_midi_files_recurses_any_case_and_survives_link_loops(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    paths = make_corpus(root, n=6)
    found = find_midi_files([str(root)])
    got = {f.path.resolve() for f in found}
    assert got == {p.resolve() for p in paths} | {(root / b).resolve() for b in BAD}
    assert len(found) == len(got)  # each once, though the loop leads back into root
    single = find_midi_files([str(paths[0]), str(root / "notes.txt")])  # files: taken as given
    assert [f.path for f in single] == [paths[0], root / "notes.txt"]
    with pytest.raises(DataError, match="nope: no such file or folder"):
        find_midi_files([str(tmp_path / "nope")])


def test_data_paths_in_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_data_paths(["chorales", "midi", "./chorales"]) == (
        "chorales",
        str(tmp_path / "midi"),
        str(tmp_path / "chorales"),
    )
    assert DataConfig().transpose == (-5, 6) and DataConfig().paths == ("chorales",)
    assert DataConfig(paths=("x",)).transpose == (0, 0)  # off by default for your corpora
    assert DataConfig.from_dict(DataConfig(paths=("x",)).to_dict()) == DataConfig(paths=("x",))
    assert DataConfig.from_dict({"transpose": [-5, 6], "split_seed": 0}) == DataConfig()  # older runs
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = sub / "run.json"
    cfg.write_text(json.dumps({"data": {"paths": ["../midi"], "transpose": [-1, 1]}}))
    run = resolve_config(229, config_file=cfg)
    assert run.data.paths == (str(tmp_path / "midi"),) and run.data.transpose == (-1, 1)
    run = resolve_config(229, config_file=cfg, data_paths=["other"])  # --data replaces the file's
    assert run.data.paths == (str(tmp_path / "other"),) and run.data.transpose == (-1, 1)
    assert resolve_config(229, data_paths=["midi"]).data == DataConfig(paths=(str(tmp_path / "midi"),))


# ---------------------------------------------------------------------------------------
# Building


def test_bad_files_are_skipped_by_name_and_counted(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "corpus"
    make_corpus(root)
    notes: list[str] = []
    dataset, report = build(root, notes=notes)
    skips = {Path(line.split(": skipped: ")[0]).name: line for line in notes if ": skipped: " in line}
    assert set(skips) == set(BAD)
    for name, reason in BAD.items():
        assert reason in skips[name], skips[name]
    assert report.found == 33 and report.num_used == 30 and not report.duplicates
    assert sorted(s.kind for s in report.skipped) == ["corrupt", "no-notes", "not-midi"]
    summary = notes[-1]
    assert summary.startswith("corpus: 33 MIDI files: 30 used (train ")
    assert "3 skipped (" in summary and "1 corrupt MIDI" in summary and "1 not a MIDI file" in summary
    assert f"{sum(report.tokens.values()):,} tokens" in summary
    assert report.tokenized == 33 and report.cached == 0

    # Splits by file, framed BOS ... EOS, every target allowed, memory-mapped.
    vocab = dataset.vocab
    bos, eos, bar = vocab.index("BOS_None"), vocab.index("EOS_None"), vocab.index("Bar_None")
    assert sum(len(dataset[s].pieces) for s in SPLITS) == 30 == len(split_of(dataset))
    assert min(len(dataset[s].pieces) for s in SPLITS) >= 1
    for split in dataset.splits.values():
        assert isinstance(split.ids, np.memmap) and isinstance(split.states, np.memmap)
        starts, ends = split.stream_starts[:-1], split.stream_starts[1:]
        assert (split.ids[starts] == bos).all() and (split.ids[ends - 1] == eos).all()
        assert (split.stream_offset == 0).all()  # no transposition by default
        mask = np.ones(len(split.ids), dtype=bool)
        mask[starts] = False
        pos = np.flatnonzero(mask)
        assert split.allowed[split.states[pos - 1], split.ids[pos]].all()
    train = dataset["train"]
    windows = train.windows(16)
    assert (np.isin(windows, train.stream_starts[:-1]) | (train.ids[windows] == bar)).all()
    assert len(windows) > train.num_streams  # windows at bars too
    batch = train_batch(train, 16, 8, seed=0, step=1)
    auto = automaton_for("shipped")
    expect = auto.allowed_batch(auto.run_batch(batch["inputs"])[:, 1:])  # the window's own prefix
    w = batch["weights"] > 0
    assert (expect[w] == batch["allowed"][w]).all()


def test_multi_track_files_are_merged_into_one_stream(tmp_path: Path, cache: Path) -> None:
    """Without programs, the pitched tracks of a file become one stream (drums left out):
    each distinct (onset, pitch) of the pitched tracks is one Pitch token."""
    from symusic import Score

    root = tmp_path / "corpus"
    paths = make_corpus(root, n=11, bad=False)
    dataset, _ = build(root)
    split = split_of(dataset)
    pitch = np.array([t.startswith("Pitch_") for t in dataset.vocab])
    multi = [p for p in paths if len(Score(str(p)).tracks) == 4]
    assert multi
    for path in multi:
        score = Score(str(path))
        notes = {(n.time, n.pitch) for t in score.tracks if not t.is_drum for n in t.notes}
        name = _display(path)
        s = dataset[split[name]]
        stream = s.stream(s.pieces.index(name))
        assert pitch[stream].sum() == len(notes)


def test_programs_give_one_stream_with_program_tokens(tmp_path: Path, cache: Path) -> None:
    tok, auto = tokenizer_for("programs"), automaton_for("programs")
    assert tok.config.use_programs and tok.config.one_token_stream_for_programs
    root = tmp_path / "corpus"
    (root).mkdir()
    (root / "trio.mid").write_bytes(_piece(5, tracks=3, drums=True))
    dataset, report = build_corpus(tok, auto, DataConfig(paths=(str(root),)), workers=1, progress=False)
    assert report.num_used == 1 and dataset["train"].num_streams == 1  # < 10 files: all training data
    names = [dataset.vocab[i] for i in dataset["train"].stream(0)]
    assert {"Program_0", "Program_40", "Program_73", "Program_-1"} <= set(names)


def test_a_stream_the_grammar_rejects_is_a_grammar_bug_line(tmp_path: Path, cache: Path) -> None:
    """An automaton that (wrongly) forbids Pitch_60: the files that use it are skipped with a
    line saying GRAMMAR BUG?, the others train."""
    from symusic import Score

    tok, auto = tokenizer_for("shipped"), automaton_for("shipped")
    table = np.zeros((1, len(auto.vocab)), dtype=np.int32)
    table[0, auto.vocab.index("Pitch_60")] = -1
    broken = auto.with_component(Component("no-middle-c", table, np.ones(1, dtype=bool), 0))
    root = tmp_path / "corpus"
    paths = make_corpus(root, n=12, bad=False)
    middle_c = [p for p in paths if any(n.pitch == 60 for t in Score(str(p)).tracks for n in t.notes)]
    assert 0 < len(middle_c) < len(paths)
    clean = next(p for p in paths if p not in middle_c)
    (root / "zz-copy.mid").write_bytes(clean.read_bytes())  # the same piece twice
    notes: list[str] = []
    config = DataConfig(paths=(str(root),))
    dataset, report = build_corpus(tok, broken, config, workers=1, progress=False, on_note=notes.append)
    rejected = [line for line in notes if "GRAMMAR BUG?" in line]
    assert {line.split(": skipped: ")[0] for line in rejected} == {_display(p) for p in middle_c}
    assert all("Pitch_60" in line and "please report" in line for line in rejected)
    assert report.num_used == len(paths) - len(middle_c) == len(split_of(dataset))
    assert report.duplicates == 1 and "1 duplicate" in notes[-1]
    assert f"{len(middle_c)} rejected by the grammar (a bug)" in notes[-1]


def test_music_beyond_a_documented_bound_is_named_not_called_a_bug(tmp_path: Path, cache: Path) -> None:
    """MIDILike holds at most 4 notes of one key sounding at once: a file with five voices
    on one pitch is skipped with the checker's words for that bound, not as a grammar bug."""
    import miditok

    from gramophone.grammar import compile_tokenizer

    tok = miditok.MIDILike(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS"]))
    root = tmp_path / "corpus"
    paths = make_corpus(root, n=10, bad=False)
    score = ScoreTick(480)
    score.time_signatures.append(TimeSignatureTick(0, 4, 4))
    track = TrackTick("voices", 0, False)
    for k in range(5):  # C4 held to the bar's end, struck again every half beat
        track.notes.append(NoteTick(k * 240, 1920 - k * 240, 60, 80))
    score.tracks.append(track)
    (root / "unison.mid").write_bytes(bytes(score.dumps_midi()))
    notes: list[str] = []
    config = DataConfig(paths=(str(root),))
    _, report = build_corpus(
        tok, compile_tokenizer(tok), config, workers=1, progress=False, on_note=notes.append
    )
    [line] = [line for line in notes if ": skipped: " in line]
    assert line.startswith(f"{_display(root / 'unison.mid')}: skipped: token ")
    assert "strikes pitch 60 again while 4 notes of it are still sounding" in line and "BUG" not in line
    assert report.num_used == len(paths) and "1 beyond a documented bound of the grammar" in notes[-1]


def test_windows_that_cannot_start_at_bars_are_a_grammar_bug_line(tmp_path: Path, cache: Path) -> None:
    """A grammar whose state at a bar depends on the bars before it (here: odd bars forbid
    Pitch_96) breaks windows that start at bars: those files are skipped with a GRAMMAR BUG?
    line; pieces of one bar have no such window and are used."""
    tok, auto = tokenizer_for("shipped"), automaton_for("shipped")
    table = np.zeros((2, len(auto.vocab)), dtype=np.int32)
    table[1] = 1
    bar = auto.vocab.index("Bar_None")
    table[0, bar], table[1, bar] = 1, 0
    table[1, auto.vocab.index("Pitch_96")] = -1  # the highest, never played here
    broken = auto.with_component(Component("bar-parity", table, np.ones(2, dtype=bool), 0))
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(4):
        (root / f"bars{1 + i % 2}-{i}.mid").write_bytes(_piece(i, bars=1 + i % 2))
    notes: list[str] = []
    config = DataConfig(paths=(str(root),))
    dataset, report = build_corpus(tok, broken, config, workers=1, progress=False, on_note=notes.append)
    bugs = sorted(Path(line.split(": skipped: ")[0]).name for line in notes if "GRAMMAR BUG?" in line)
    assert bugs == ["bars2-1.mid", "bars2-3.mid"]
    assert all("would see other allowed tokens" in line for line in notes if "GRAMMAR BUG?" in line)
    assert report.num_used == 2 and sorted(Path(p).name for p in dataset["train"].pieces) == [
        "bars1-0.mid",
        "bars1-2.mid",
    ]


def test_nothing_usable_is_one_clear_error(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.mid").write_text("no")
    (root / "y.midi").write_bytes(b"MThd\x00\x00")
    notes: list[str] = []
    with pytest.raises(DataError, match=r"no usable MIDI file in .*bad: 2 found, 2 skipped \(1 "):
        build(root, notes=notes)
    assert len(notes) == 2  # each file named once
    (root / "x.mid").unlink()
    (root / "y.midi").unlink()
    with pytest.raises(DataError, match=r"no MIDI file \(.mid, .midi\) in"):
        build(root)


# ---------------------------------------------------------------------------------------
# The cache


def test_the_cache_is_reused_and_grows_by_new_files_only(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "corpus"
    make_corpus(root)
    first, report = build(root)
    assert report.tokenized == 33
    arrays = {s: (np.array(first[s].ids), np.array(first[s].states)) for s in SPLITS}  # copies

    def no_tokenizing(*args: object) -> None:
        raise AssertionError("tokenized again")

    with monkeypatch.context() as m:
        m.setattr(corpus, "_tokenize_chunk", no_tokenizing)
        again, report = build(root)
        assert report.tokenized == 0 and report.cached == 33  # the bad files' verdicts too
        (root / "set1" / "piece001.MID").rename(root / "renamed.mid")  # same bytes: same piece
        renamed, report = build(root)
        assert report.tokenized == 0
        view = report.view
        assert view is not None
        damaged = view / "train.ids.npy"
        damaged.write_bytes(damaged.read_bytes()[:-2])  # a damaged view is assembled again
        again, report = build(root)
        assert report.tokenized == 0 and report.view == view
    for s, (ids, states) in arrays.items():
        assert np.array_equal(ids, again[s].ids) and np.array_equal(states, again[s].states)
    assert (
        split_of(renamed)[_display(root / "renamed.mid")]
        == split_of(first)[_display(root / "set1" / "piece001.MID")]
    )

    make_corpus(root, n=3, start=100, bad=False)
    grown, report = build(root)
    assert report.tokenized == 3 and report.cached == 33 and report.num_used == 33
    before, after = split_of(renamed), split_of(grown)
    assert all(after[name] == split for name, split in before.items())  # nothing moved
    assert len(after) == len(before) + 3
    assert len(list((cache / "corpora").glob("*/views/*"))) == 2  # the old view is kept too


def test_transpositions_are_tokenized_for_training_pieces_only(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "corpus"
    make_corpus(root, n=12, bad=False)
    plain, _ = build(root)
    dataset, report = build(root, transpose=(-1, 1))
    train = dataset["train"]
    assert report.tokenized == len(train.pieces)  # only their new offsets
    assert sorted(set(train.stream_offset.tolist())) == [-1, 0, 1]
    assert train.num_streams == 3 * len(train.pieces)
    assert all((dataset[s].stream_offset == 0).all() for s in ("validation", "test"))
    assert split_of(dataset) == split_of(plain)


def test_one_or_two_workers_write_the_same_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    automaton_for("shipped")
    root = tmp_path / "corpus"
    make_corpus(root)
    trees = []
    for workers in (1, 2):
        monkeypatch.setenv("GRAMOPHONE_CACHE", str(tmp_path / f"cache{workers}"))
        _, report = build(root, workers=workers)
        assert report.num_used == 30
        (folder,) = (tmp_path / f"cache{workers}" / "corpora").iterdir()
        trees.append(
            {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for sub in ("shards", "views")
                for p in sorted((folder / sub).rglob("*"))
                if p.is_file()
            }
        )
    assert len(trees[0]) > 20 and trees[0] == trees[1]


def test_a_file_that_kills_its_worker_is_skipped_and_tried_again_later(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dying (here: simulated for one file) loses its chunk; the chunk's files are
    tried again one by one, the one that kills its worker again is skipped (not cached: the
    next build tries it again), the others are used."""
    from concurrent.futures import Future, ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    root = tmp_path / "corpus"
    paths = make_corpus(root, n=40, bad=False)
    killer = corpus._content_hash(paths[7].read_bytes())

    class Pool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            if any(h == killer for _, h, _ in args[0].files):
                future: Future[object] = Future()
                future.set_exception(BrokenProcessPool("a worker died"))
                return future
            return super().submit(fn, *args, **kwargs)

    ctx = corpus._Context.create(tokenizer_for("shipped"), automaton_for("shipped"))
    shards = corpus.corpus_cache_dir(ctx.tokenizer, ctx.automaton) / "shards"
    notes: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(corpus, "_make_pool", lambda workers, folder: Pool(workers))
        m.setitem(corpus._WORKER, "ctx", ctx)
        m.setitem(corpus._WORKER, "shards", shards)
        _, report = build(root, workers=2, notes=notes)
    assert [s.name for s in report.skipped] == [_display(paths[7])] and report.skipped[0].kind == "crash"
    assert any("crashed the worker" in line for line in notes) and report.num_used == 39
    _, report = build(root)
    assert report.tokenized == 1 and report.num_used == 40


# ---------------------------------------------------------------------------------------
# From the command line


def test_train_on_a_folder_then_decode_the_run(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "corpus"
    make_corpus(root)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    args = ["train", "--backend", "torch", "--data", str(root), "--config", str(config), "--steps", "2"]
    code = main([*args, "--workers", "1", "--checkpoint-every", "1", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert sum(": skipped: " in line for line in err.splitlines()) == 3
    assert "corpus: 33 MIDI files: 30 used" in err
    stored = json.loads((run / "run.json").read_text())["data"]
    assert stored["paths"] == [str(root)] and stored["transpose"] == [0, 0]
    assert (run / "model" / "tokenizer.json").is_file()
    assert (run / "checkpoints" / "step-000002" / "tokenizer.json").is_file()

    # --resume with other data is refused; with the same, it is the run's own (from the cache)
    resume = ["train", "--backend", "torch", "--resume", "--out", str(run)]
    code = main([*resume, "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "leave out --data to resume it" in err and err.count("\n") == 1
    code = main([*resume, "--data", str(root), "--steps", "3", "--reschedule", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "0 files tokenized now, 33 from the cache" in err
    assert json.loads((run / "model" / "config.json").read_text())["step"] == 3

    out = tmp_path / "decoded"
    decode = ["decode", "--backend", "torch", "--num", "1", "--max-tokens", "40", "--formats", "tokens"]
    assert main([*decode, "--checkpoint", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == str(run / "model")
    assert resolve_checkpoint(run) == run / "model"
    shutil.rmtree(run / "model")  # a run stopped before the end: its latest checkpoint
    assert resolve_checkpoint(run) == run / "checkpoints" / "step-000003"
    capsys.readouterr()
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert main([*decode, "--checkpoint", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "neither a checkpoint" in err and err.count("\n") == 1


def test_train_on_nothing_usable_exits_2(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.mid").write_text("not midi")
    run = tmp_path / "run"
    code = main(["train", "--backend", "torch", "--data", str(root), "--workers", "1", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("gramophone: error:")]
    assert len(errors) == 1 and "no usable MIDI file in" in errors[0]
    assert not run.exists()  # nothing left behind
    code = main(["train", "--backend", "torch", "--data", str(tmp_path / "nope"), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no such file or folder" in err
