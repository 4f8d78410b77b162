"""The sampling section (:mod:`gramophone.bench.sampling`), quick: a record per rule and
system, the numba step choosing the numpy rules' tokens under each rule, and the noise's
cost."""

from __future__ import annotations

from gramophone.bench import sampling


def test_quick_sampling_section_times_every_rule_on_both_systems() -> None:
    records = sampling.run(quick=True)
    steps = [r for r in records if r["benchmark"] == "sample_step"]
    assert {(r["sampling"], r["system"]) for r in steps} == {
        (rule, system) for rule in sampling.RULES for system in ("gramophone-numba", "gramophone-numpy")
    }
    assert all(r["status"] == "ok" and r["value"] > 0 for r in steps), [
        r for r in steps if r["status"] != "ok"
    ]
    assert all(r["tokenizer"] == "remi" and r["vocab_size"] == 229 and r["batch"] == 64 for r in steps)
    (noise,) = [r for r in records if r["benchmark"] == "gumbel_noise"]
    assert noise["value"] > 0
    text = "\n".join(sampling.markdown(records))
    assert "top-p 0.95" in text and "Gumbel noise" in text
