"""``gramophone bench``'s runner: schema of results.json, failures kept apart, report."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gramophone.bench import runner


def _section(name: str, records: list[dict[str, Any]] | None) -> types.ModuleType:
    mod = types.ModuleType(name)

    def run(quick: bool = False) -> list[dict[str, Any]]:
        if records is None:
            raise RuntimeError("broken on purpose")
        return [dict(r, quick=quick) for r in records]

    mod.run = run  # type: ignore[attr-defined]
    mod.markdown = lambda recs: [f"{len(recs)} records of {name}", ""]  # type: ignore[attr-defined]
    return mod


def test_run_all_keeps_going_and_writes_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = [{"benchmark": "b", "system": "s", "metric": "m", "value": 1.5, "unit": "u", "batch": 1}]
    monkeypatch.setitem(sys.modules, "fake_good", _section("fake_good", good))
    monkeypatch.setitem(sys.modules, "fake_bad", _section("fake_bad", None))
    monkeypatch.setattr(runner, "SECTIONS", (("bad", "fake_bad", "Bad"), ("good", "fake_good", "Good")))
    results = runner.run_all(True, tmp_path, log=lambda _m: None)
    assert results["failed"] == ["bad"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) >= {"machine", "records"}
    assert saved["machine"]["cores"] >= 1
    (rec,) = [r for r in saved["records"] if r.get("section") == "good"]
    assert {k: rec[k] for k in ("benchmark", "system", "metric", "value", "unit", "batch")} == good[0]
    assert rec["quick"] is True
    report = (tmp_path / "report.md").read_text()
    assert "**This section failed**: RuntimeError: broken on purpose" in report
    assert "1 records of fake_good" in report
    assert "RuntimeError" in (tmp_path / "bad-error.txt").read_text()
