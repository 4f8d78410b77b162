"""Real music beyond the chorales: what miditok writes from string quartets, madrigals, a
mass, folk songs, an aria and a rag (``composer_midis``, conftest) is accepted, under every
scheme.

The same oracle as test_random_scores (its narrow filters of miditok bugs and of
gramophone's documented MIDILike bounds included), on works whose meters change, start with
a pickup, or are missing from the vocabulary, and whose parts cross bar lines and meter
changes with long notes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import COMPOSER_WORKS
from tests.test_random_scores import config_names, false_rejection

pytestmark = pytest.mark.slow

#: Configs the works are tokenized with (each costs 1-3 s for all works; every config of
#: every scheme runs on random scores in test_random_scores): per scheme, those that change
#: the time model (time signatures or not, rests, tempos), programs, and the richest combos.
CONFIGS: dict[str, list[str]] = {
    "remi": ["shipped", "no-time-signatures", "rests", "programs", "combo-rests-programs", "combo-bare"],
    "tsd": ["default", "rests", "coarse-rests", "combo-rests-programs", "combo-bare", "combo-everything"],
    "midilike": ["default", "rests", "combo", "combo-programs", "combo-bare"],
    "structured": ["default", "programs-dedup", "bare"],
}
CASES = [(scheme, name) for scheme, names in CONFIGS.items() for name in names]


def test_the_configs_exist() -> None:
    for scheme, names in CONFIGS.items():
        assert set(names) <= set(config_names(scheme)), scheme


@cache
def _score(path: Path) -> Any:
    from symusic import Score

    return Score(str(path))


@pytest.mark.parametrize(("scheme", "name"), CASES)
def test_every_work_is_accepted(scheme: str, name: str, composer_midis: list[Path]) -> None:
    assert len(composer_midis) == len(COMPOSER_WORKS)
    problems = []
    for (work, number), path in zip(COMPOSER_WORKS, composer_midis, strict=True):
        problem = false_rejection(scheme, name, _score(path))
        if problem is not None:
            problems.append(f"{work}{f' #{number}' if number else ''}: {problem[:600]}")
    assert not problems, f"{len(problems)} works falsely rejected; first: {problems[0]}"


def test_midilike_bound_admits_every_work_unfiltered(composer_midis: list[Path]) -> None:
    """MIDILike's bound on the notes of one key sounding at once (4) is not hit by these
    works: no stream needs the overlap filter (with a bound of 1, most multi-voice parts
    would: a held note struck again by another voice)."""
    from tests import test_midilike as midilike_tests
    from tests.test_random_scores import check_ids, encode

    tok, auto = midilike_tests.tokenizer_for("default"), midilike_tests.automaton_for("default")
    rejected = [
        f"{work} #{number}: {violation.reason}"
        for (work, number), path in zip(COMPOSER_WORKS, composer_midis, strict=True)
        for ids in encode(tok, _score(path))
        if ids and (violation := check_ids(auto, ids)) is not None
    ]
    assert not rejected, rejected[:3]
    overlap_1 = midilike_tests.automaton_for("overlap-1")  # the bound this test guards against
    assert any(
        check_ids(overlap_1, ids) is not None
        for path in composer_midis
        for ids in encode(tok, _score(path))
        if ids
    )
