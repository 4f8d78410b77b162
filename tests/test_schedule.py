"""The learning-rate schedule is fixed when a run starts: ``--resume`` continues it unchanged
on both backends, a different ``--steps`` on resume is refused unless ``--reschedule``, and a
warmup shortened to fit ``--steps`` says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gramophone.backends import TrainConfig, learning_rate
from gramophone.cli import main
from gramophone.training import latest_checkpoint, read_metrics

from .test_training import TINY


def _lrs(run: Path) -> list[float]:
    rows = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["lr"] for r in rows]


def _config(tmp_path: Path, **train: object) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY, "train": {**TINY["train"], **train}}))
    return path


def _train(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["train", "--eval-every", "100", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_resume_continues_the_schedule(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """N steps in one go, and N/2 + --resume to N: the same learning rate at every step."""
    config = _config(tmp_path, warmup_steps=3, total_steps=12)
    common = ["--backend", backend, "--config", str(config), "--steps", "8", "--checkpoint-every", "4"]
    code, err = _train([*common, "--out", str(tmp_path / "full")], capsys)
    assert code == 0, err
    code, err = _train([*common, "--stop-after", "4", "--out", str(tmp_path / "part")], capsys)
    assert code == 0, err
    assert latest_checkpoint(tmp_path / "part") == tmp_path / "part" / "checkpoints" / "step-000004"
    code, err = _train(["--backend", backend, "--resume", "--out", str(tmp_path / "part")], capsys)
    assert code == 0, err
    full, part = _lrs(tmp_path / "full"), _lrs(tmp_path / "part")
    schedule = TrainConfig(lr=3e-3, warmup_steps=3, total_steps=8)
    assert len(full) == 8 and full == pytest.approx([learning_rate(s, schedule) for s in range(8)], rel=1e-6)
    assert part == pytest.approx(full, rel=1e-6)
    run = json.loads((tmp_path / "part" / "run.json").read_text())
    assert run["schedule"] == {
        "kind": "linear warmup, cosine decay",
        "peak_lr": 3e-3,
        "warmup_steps": 3,
        "total_steps": 8,
        "final_lr": pytest.approx(3e-4),
    }


def test_other_steps_on_resume_are_refused_or_rescheduled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gramophone.backends import get_backend

    out = tmp_path / "run"
    config = _config(tmp_path, warmup_steps=5, total_steps=12)
    args = ["--backend", "torch", "--config", str(config), "--steps", "4", "--checkpoint-every", "2"]
    code, err = _train([*args, "--out", str(out)], capsys)
    assert code == 0, err
    assert "warmup of 5 steps: warmup shortened to 4 steps" in err  # said, not silent
    first = _lrs(out)
    assert first[-1] == pytest.approx(3e-3)  # the peak reached at the end of the shortened warmup

    code, err = _train(["--backend", "torch", "--resume", "--steps", "6", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "schedule was fixed when the run started" in err, err
    assert "--reschedule" in err and _lrs(out) == first  # nothing trained

    code, err = _train(
        ["--backend", "torch", "--resume", "--steps", "6", "--reschedule", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "schedule changed at step 4" in err
    now = TrainConfig(lr=3e-3, warmup_steps=4, total_steps=6)
    assert _lrs(out) == pytest.approx([*first, learning_rate(4, now), learning_rate(5, now)], rel=1e-6)
    notes = json.loads((out / "run.json").read_text())["notes"]
    assert len(notes) == 2 and "warmup shortened" in notes[0] and "schedule changed" in notes[1]

    # the optimizer restored from the step-4 checkpoint steps with the new schedule's rate
    ckpt = out / "checkpoints" / "step-000004"
    state = get_backend("torch").load_state(ckpt, now)
    assert [g["lr"] for g in state.optimizer.param_groups] == pytest.approx([learning_rate(4, now)] * 2)

    code, err = _train(
        ["--backend", "torch", "--reschedule", "--steps", "8", "--out", str(tmp_path / "b")], capsys
    )
    assert code == 2 and "use it with --resume" in err
