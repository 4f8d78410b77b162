"""``gramophone bench``: run every benchmark, write ``results.json``, a report and plots.

Each section is a module of :mod:`gramophone.bench` with ``run(quick) -> records`` and
``markdown(records) -> lines`` (and optionally ``plots(records, out) -> paths``). A
section that fails is recorded as such (``status: "error"``) and the others still run;
a peer engine that is not installed is recorded as ``missing``, never faked.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gramophone._files import atomic_write
from gramophone.bench.common import import_section, machine, markdown_table

__all__ = ["SECTIONS", "run_all", "write_report"]

#: (name, module, title) in the order they run and appear in the report
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("grammar", "gramophone.bench.grammar", "Grammar core"),
    ("peers", "benchmarks.peers", "Mask step and compile time against the peer engines"),
    ("vocab", "gramophone.bench.vocab", "Trained vocabularies (BPE 10k and 30k): tables and mask step"),
    ("sampling", "gramophone.bench.sampling", "Sampling rules: the cost of a decoding step"),
    ("corpus", "gramophone.bench.corpus", "Corpus building: MIDI files to shards, against miditok's loop"),
    ("train", "gramophone.bench.train", "Training throughput, one process and data-parallel"),
    ("decode", "gramophone.bench.decode", "Decoding throughput and the cost of the mask"),
    ("validity", "gramophone.bench.validity_table", "Validity of sampled pieces"),
    ("music", "gramophone.bench.music", "Sampled pieces next to the chorales: musical statistics"),
    ("context", "gramophone.bench.context", "How much of its context the model uses: Pitch NLL by context"),
    ("infill", "gramophone.bench.infill", "Infilling bars: NLL given the bars before, or both sides"),
)


def _log(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def run_all(
    quick: bool,
    out: Path,
    sections: Sequence[str] | None = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Run the sections (all by default) and write ``out/results.json``, ``report.md`` and
    plots; returns the results. ``results["failed"]`` lists the sections that raised.
    ``out`` follows :mod:`gramophone._outdir`: the files of an earlier ``bench`` there are
    removed first (no stale plot or error file), a folder holding other files is refused."""
    from gramophone._outdir import claim_output_folder

    folder = claim_output_folder(out, "bench")
    records: list[dict[str, Any]] = []
    failed: list[str] = []
    chosen = [s for s in SECTIONS if sections is None or s[0] in sections]
    try:
        for name, module, _title in chosen:
            log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                mod = import_section(module)
                got = mod.run(quick=quick)
            except Exception as exc:
                failed.append(name)
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                log(f"{name} failed: {detail}")
                (out / f"{name}-error.txt").write_text(traceback.format_exc())
                records.append({"benchmark": name, "status": "error", "error": detail})
                continue
            for r in got:
                r.setdefault("section", name)
            records.extend(got)
            log(f"{name} done in {time.perf_counter() - t0:.0f} s ({len(got)} records)")
            # write as we go: an interrupted full run keeps what it measured
            write_report({"machine": machine(), "quick": quick, "records": records, "failed": failed}, out)
        results = {"machine": machine(), "quick": quick, "records": records, "failed": failed}
        write_report(results, out)
    finally:  # even an interrupted run's files are known to the next
        folder.finish()
    return results


def _machine_lines(m: dict[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items() if v)
    return [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, no GPU; "
        f"{m.get('platform')}, Python {m.get('python')}.",
        "",
        f"Libraries: {libs}.",
    ]


def write_report(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``report.md`` and each section's plots under ``out``."""
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    records = results["records"]
    lines = ["# gramophone benchmarks", ""]
    if results.get("quick"):
        lines += ["*Quick run: reduced repeats and sizes; figures are indicative only.*", ""]
    lines += [*_machine_lines(results["machine"]), ""]
    for name, module, title in SECTIONS:
        mine = [r for r in records if r.get("section") == name]
        errors = [r for r in records if r.get("benchmark") == name and r.get("status") == "error"]
        if not mine and not errors:
            continue
        lines += [f"# {title}", ""]
        if errors:
            lines += [f"**This section failed**: {errors[0]['error']}", ""]
        if mine:
            mod = import_section(module)
            lines += [*mod.markdown(mine), ""]
            plot = getattr(mod, "plots", None)
            if plot is not None:
                for path in plot(mine, out):
                    lines += [f"![{Path(path).stem}]({Path(path).name})", ""]
    atomic_write(out / "report.md", "\n".join(lines))


def summary_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every record as one flat table (for sections without their own markdown)."""
    keys = ["benchmark", "system", "metric", "value", "unit"]
    return markdown_table(records, keys)
