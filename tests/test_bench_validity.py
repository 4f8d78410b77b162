"""The suite's validity judge and musical statistics (gramophone.bench), against miditok."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gramophone.bench.music_stats import STATS, mean_stats, piece_stats
from gramophone.bench.validity import error_counts, is_valid, strip_specials
from tests.conftest import tokenizer_for


def _miditok_count(tok, names: list[str]) -> int:  # type: ignore[no-untyped-def]
    """miditok's raw error count (``_tokens_errors``) after its own ``complete_sequence``."""
    from miditok import TokSequence

    body = strip_specials(tok, names)
    if not body:
        return 0
    seq = TokSequence(tokens=copy.copy(body))
    tok.complete_sequence(seq)
    return int(tok._tokens_errors(seq.tokens))


@pytest.mark.parametrize("name", ["shipped", "default", "programs"])
@given(data=st.data())
def test_kinds_sum_to_miditok_count(name: str, data: st.DataObject) -> None:
    tok = tokenizer_for(name)
    vocab = list(tok.vocab)
    names = data.draw(st.lists(st.sampled_from(vocab), max_size=60))
    counts = error_counts(tok, names)
    assert counts["type"] + counts["time"] + counts["note"] == _miditok_count(tok, names)


def test_real_chorales_are_valid_and_corruptions_are_not(chorale_midis: list) -> None:  # type: ignore[type-arg]
    from symusic import Score

    from gramophone.tokenizers import encode_score

    tok = tokenizer_for("shipped")
    for path in chorale_midis[:20]:
        (ids,) = encode_score(tok, Score(str(path)))
        assert is_valid(tok, ids), path
        names = [tok[i] for i in ids]
        pos = [i for i, t in enumerate(names) if t.startswith("Position_") and t != "Position_0"]
        # a position beyond the bar: not a miditok error, but invalid here
        beyond = [*names[: pos[0]], "Position_47", *names[pos[0] + 1 :]]
        assert error_counts(tok, beyond)["bar"] == 1
        assert not is_valid(tok, [tok.vocab[t] for t in beyond])
        # a duplicated note
        p = names.index("Pitch_" + names[pos[0] + 1].split("_")[1], pos[0])
        dup = [*names[: p + 3], *names[p : p + 3], *names[p + 3 :]]
        assert error_counts(tok, dup)["note"] >= 1
        assert not is_valid(tok, [tok.vocab[t] for t in dup])


def test_music_stats_on_chorales(chorale_midis: list) -> None:  # type: ignore[type-arg]
    from symusic import Score

    stats = mean_stats(piece_stats(Score(str(p))) for p in chorale_midis[:30])
    assert set(stats) == set(STATS)
    # four-part chorales: about four voices, tonal, few silent beats
    assert 3.0 < stats["polyphony"] < 4.5
    assert stats["scale_consistency"] > 0.85
    assert 2.0 < stats["pitch_class_entropy"] < 3.585
    assert 0.0 <= stats["empty_beat_rate"] < 0.2


@pytest.mark.slow
def test_validity_table_quick_run() -> None:
    """The whole validity pipeline at its quick size: three tiny models trained with the
    three losses, sampled freely and masked, judged without the automaton. Masked
    sampling must be valid for every piece, whatever the model learned."""
    from gramophone.bench import validity_table

    records = validity_table.run(quick=True)
    rows = [r for r in records if r["benchmark"] == "validity"]
    assert {(r["training"], r["sampling"]) for r in rows} == {
        (loss, mode) for loss in validity_table.LOSSES for mode in ("free", "masked")
    }
    for r in rows:
        assert r["n"] == validity_table.QUICK["n"]
        assert 0.0 <= r["value"] <= 1.0
        if r["sampling"] == "masked":
            assert r["value"] == 1.0, r
            assert all(r[f"{k}_errors_per_token"] == 0 for k in ("type", "time", "note", "bar"))
            assert 0.0 <= r["mask_removed_mass"] <= 1.0
    held_out = [r for r in records if r["benchmark"] == "music_stats" and r["system"] == "held-out chorales"]
    assert len(held_out) == 4
    assert "## Valid pieces" in "\n".join(validity_table.markdown(records))


def test_full_table_reuses_the_bundled_model_only_for_its_own_recipe() -> None:
    """The full table's ``ce+structural`` row is the bundled model when (and only when) the
    package's model was trained with the table's recipe and that loss; other losses, or
    another recipe, are trained."""
    import dataclasses

    from gramophone.backends.checkpoint import read_info
    from gramophone.bench import validity_table
    from gramophone.models import bundled_checkpoint_path

    info = read_info(bundled_checkpoint_path())
    assert info.train is not None
    own = {
        "model": {k: v for k, v in dataclasses.asdict(info.model).items() if k != "vocab_size"},
        "train": {k: v for k, v in dataclasses.asdict(info.train).items() if k not in ("loss", "seed")},
    }
    got = validity_table._bundled_if_same(own, "torch", info.train.loss)
    assert got is not None and got[0] == bundled_checkpoint_path()
    assert got[1]["nll"] == info.meta["evaluation"]["validation"]["nll"]
    other = "ce" if info.train.loss != "ce" else "masked"
    assert validity_table._bundled_if_same(own, "torch", other) is None
    longer = {**own, "train": {**own["train"], "total_steps": own["train"]["total_steps"] + 1}}
    assert validity_table._bundled_if_same(longer, "torch", info.train.loss) is None


def test_rows_of_an_exported_model_carry_its_validation_figures() -> None:
    """An exported model (the bundled one) has no run's eval.json beside it: its rows take
    the validation figures from the checkpoint's meta; masked sampling is valid."""
    from gramophone.backends.checkpoint import read_info
    from gramophone.bench import validity_table
    from gramophone.models import bundled_checkpoint_path

    records, streams = validity_table.run_models(
        {"bundled": ("torch", bundled_checkpoint_path())}, n=2, budget=48
    )
    want = read_info(bundled_checkpoint_path()).meta["evaluation"]["validation"]
    rows = {r["sampling"]: r for r in records if r["benchmark"] == "validity"}
    assert set(rows) == {"free", "masked"} and len(streams["bundled"]["masked"]) == 2
    assert all(r["validation_nll"] == round(want["nll"], 4) for r in rows.values())
    assert rows["masked"]["value"] == 1.0
