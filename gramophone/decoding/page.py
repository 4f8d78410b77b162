"""``index.html``: a page to listen to and look at what ``gramophone decode`` wrote.

:func:`write_index` reads the folder's ``summary.json`` (the run's settings and, per piece,
its tokens, notes, bars and validity) and writes one static HTML5 page beside it: a header
with the run's settings, then per piece its piano roll (``.png``), an ``<audio>`` player on
its ``.wav``, links to its ``.mid`` and token files, its counts and the grammar checker's
verdict. The page is self-contained: no script, no stylesheet or font from elsewhere, only
relative links to files that exist in the folder; every text is escaped. A format that was
not written leaves a note in its place (no WAV: no player, and the page says why).

>>> from pathlib import Path; import json, tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "summary.json").write_text(json.dumps({"backend": "torch", "formats": ["tokens"],
...     "pieces": [{"piece": "piece-000", "tokens": 8, "notes": 1, "bars": 1, "valid": True}]}))
>>> page = write_index(folder).read_text()
>>> page.startswith("<!DOCTYPE html>") and 'href="piece-000.json"' not in page  # no such file
True
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import struct
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gramophone._files import atomic_write

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.decoding.driver import DecodeSummary

__all__ = ["INDEX", "count_bars", "write_index"]

INDEX = "index.html"

#: Settings shown first in the header, in this order (summary.json key, label); any other
#: top-level value of the summary (options added later) follows under its own key.
_SETTINGS: tuple[tuple[str, str], ...] = (
    ("backend", "backend"),
    ("checkpoint", "checkpoint"),
    ("sampling", "sampling"),
    ("seed", "seed"),
    ("max_tokens", "tokens per piece at most"),
    ("prompt", "prompt"),
    ("bars", "bars asked for"),
    ("formats", "formats written"),
)
_HIDDEN = {"format", "pieces", "num", "prompt_tokens", "seconds", "compile_seconds"}

_CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --ok: #17703a;
  --bad: #b3261e; --card: #ffffff; --page: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; background: var(--page); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main { max-width: 1100px; margin: 0 auto; }
header { margin-bottom: 1rem; }
h1 { font-size: 1.45rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.verdict { margin: 0 0 1rem; font-weight: 600; }
.verdict.ok { color: var(--ok); } .verdict.bad { color: var(--bad); }
table.settings { border-collapse: collapse; margin-bottom: 1rem; }
table.settings th { text-align: left; font-weight: 500; color: var(--muted); padding: .1rem 1rem .1rem 0;
  vertical-align: top; }
table.settings td { padding: .1rem 0; word-break: break-all; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .92em; }
.note { color: var(--muted); margin: .25rem 0; }
article { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 1rem 1.1rem; margin: 0 0 1rem; }
.head { display: flex; flex-wrap: wrap; align-items: baseline; gap: .4rem 1rem; margin-bottom: .6rem; }
.badge { font-size: .82rem; font-weight: 600; padding: .1rem .55rem; border-radius: 999px; }
.badge.ok { background: #e3f4e8; color: var(--ok); } .badge.bad { background: #fbe4e2; color: var(--bad); }
.counts { color: var(--muted); }
.why { color: var(--bad); margin: 0 0 .6rem; font-size: .92rem; }
figure { margin: 0 0 .6rem; overflow-x: auto; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
.listen { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1.2rem; }
audio { width: min(100%, 420px); }
.links a { margin-right: .8rem; }
a { color: #1f4fa8; }
footer { max-width: 1100px; margin: 1.5rem auto 0; color: var(--muted); font-size: .85rem; }
"""


def count_bars(tokenizer: MusicTokenizer, ids: Sequence[int], base_ids: Sequence[int]) -> int:
    """The bars of one decoded piece: its ``Bar`` tokens (in ``base_ids``, the stream over
    the base vocabulary) when the vocabulary has them, as ``--bars N`` counts them, empty
    bars included; otherwise (TSD, MIDILike without time signatures, Structured) the bars
    of the decoded score up to its end, from its time signatures (miditok's
    ``get_bars_ticks``)."""
    from gramophone.grammar.schemes import base_vocab

    bar_ids = {i for i, name in enumerate(base_vocab(tokenizer)) if name.startswith("Bar_")}
    if bar_ids:
        return sum(1 for i in base_ids if i in bar_ids)
    from miditok.utils import get_bars_ticks

    from gramophone.tokenizers import decode_ids

    score = decode_ids(tokenizer, ids)
    return len(get_bars_ticks(score)) if score.note_num() else 0


def write_index(folder: str | Path, summary: DecodeSummary | None = None) -> Path:
    """Write ``folder/index.html`` for the ``decode`` run whose ``summary.json`` is there;
    returns its path. ``summary`` (what :func:`~gramophone.decoding.decode_to_folder`
    returned) adds why a format is missing and the checker's reason for an invalid piece;
    without it the page says what it can from the folder alone."""
    root = Path(folder)
    summary_path = root / "summary.json"
    data: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    written = _dt.datetime.fromtimestamp(summary_path.stat().st_mtime).astimezone()
    page = _page(root, data, summary, written)
    return atomic_write(root / INDEX, page)


# ----------------------------------------------------------------------------- the page


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(name: str) -> str:
    """An attribute-safe relative link to ``name`` (a file in the folder)."""
    return _e(urllib.parse.quote(name))


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or ``None`` when it is not one."""
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _sampling_text(sampling: Any) -> str:
    if not isinstance(sampling, Mapping):
        return str(sampling)
    if sampling.get("greedy"):
        return "greedy (argmax)"
    parts = [f"temperature {sampling.get('temperature', 1.0)}"]
    if sampling.get("top_k") is not None:
        parts.append(f"top-k {sampling['top_k']}")
    if sampling.get("top_p") is not None:
        parts.append(f"top-p {sampling['top_p']}")
    return ", ".join(parts)


def _setting_text(key: str, value: Any, data: Mapping[str, Any]) -> str:
    if key == "sampling":
        return _sampling_text(value)
    if key == "prompt":
        if value is None:
            return "none (from BOS)"
        return f"{value} ({data.get('prompt_tokens', '?')} tokens with BOS)"
    if key == "formats" and isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    if key == "bars" and value is None:
        return "any"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "—" if value is None else str(value)


def _header(data: Mapping[str, Any], summary: DecodeSummary | None, written: _dt.datetime) -> list[str]:
    pieces = data.get("pieces", [])
    invalid = [p for p in pieces if not p.get("valid", False)]
    empty = [p for p in pieces if p.get("notes") == 0]
    n = len(pieces)
    if not invalid and not empty:
        verdict = f'<p class="verdict ok">All {n} valid (grammar checker).</p>'
    else:
        bad = f"{len(invalid)} of {n} invalid" if invalid else ""
        none = f"{len(empty)} without notes" if empty else ""
        verdict = f'<p class="verdict bad">{_e(", ".join(x for x in (bad, none) if x))}.</p>'
    rows = []
    shown = set()
    for key, label in _SETTINGS:
        if key in data:
            shown.add(key)
            rows.append((label, _setting_text(key, data[key], data)))
    for key, value in data.items():
        if key not in shown and key not in _HIDDEN and value is not None:  # an option left unset
            rows.append((key.replace("_", " "), _setting_text(key, value, data)))
    seconds = data.get("seconds")
    if isinstance(seconds, (int, float)):
        compiled = data.get("compile_seconds") or 0
        extra = f" (+{compiled:.1f} s compiling)" if compiled else ""
        rows.append(("decoding time", f"{seconds:.2f} s{extra}"))
    rows.append(("written", written.strftime("%Y-%m-%d %H:%M:%S %Z").strip()))
    out = [
        "<header>",
        f"<h1>gramophone decode: {n} piece{'s' if n != 1 else ''}</h1>",
        verdict,
        '<table class="settings">',
        *(f"<tr><th>{_e(label)}</th><td>{_e(text)}</td></tr>" for label, text in rows),
        "</table>",
    ]
    formats = data.get("formats") or []
    if "wav" not in formats:
        why = summary.audio_note if summary is not None and summary.audio_note else None
        text = (
            f"No audio players: WAV files were not written: {why}."
            if why
            else (
                "No audio players: WAV files were not written (--no-audio, --formats without wav, "
                "or FluidSynth missing)."
            )
        )
        out.append(f'<p class="note">{_e(text)}</p>')
    if "roll" not in formats:
        why = summary.roll_note if summary is not None and summary.roll_note else None
        text = (
            f"No piano rolls: they were not drawn: {why}."
            if why
            else ("No piano rolls: they were not drawn (--formats without roll, or matplotlib missing).")
        )
        out.append(f'<p class="note">{_e(text)}</p>')
    out.append("</header>")
    return out


def _count(value: Any, word: str) -> str:
    if not isinstance(value, int):
        return f"? {word}s"
    return f"{value:,} {word}{'' if value == 1 else 's'}"


def _piece(root: Path, record: Mapping[str, Any], reasons: Mapping[str, str]) -> list[str]:
    name = str(record.get("piece", "?"))
    valid = bool(record.get("valid", False))
    notes = record.get("notes")
    badge = '<span class="badge ok">valid</span>' if valid else '<span class="badge bad">invalid</span>'
    counts = " · ".join(
        (_count(record.get("tokens"), "token"), _count(notes, "note"), _count(record.get("bars"), "bar"))
    )
    out = [
        f'<article id="{_e(name)}">',
        f'<div class="head"><h2>{_e(name)}</h2>{badge}<span class="counts">{_e(counts)}</span></div>',
    ]
    if not valid:
        out.append(f'<p class="why">{_e(reasons.get(name, "rejected by the grammar checker"))}</p>')
    if notes == 0:
        out.append('<p class="why">No notes: the MIDI file is empty.</p>')
    roll = root / f"{name}.png"
    if roll.is_file():
        size = _png_size(roll)
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        out.append(
            f'<figure><a href="{_href(roll.name)}" title="full size"><img src="{_href(roll.name)}" '
            f'alt="{_e(f"piano roll of {name}")}"{dims} loading="lazy"></a></figure>'
        )
    listen: list[str] = []
    wav = root / f"{name}.wav"
    if wav.is_file():
        listen.append(
            f'<audio controls preload="metadata" src="{_href(wav.name)}" title="{_e(name)}">'
            f'<a href="{_href(wav.name)}">{_e(wav.name)}</a></audio>'
        )
    links = [
        f'<a href="{_href(path.name)}"{" download" if path.suffix != ".txt" else ""}>{_e(label)}</a>'
        for path, label in (
            (root / f"{name}.wav", "WAV"),
            (root / f"{name}.mid", "MIDI"),
            (root / f"{name}.json", "tokens (.json)"),
            (root / f"{name}.txt", "token names (.txt)"),
        )
        if path.is_file()
    ]
    if links:
        listen.append(f'<span class="links">{" ".join(links)}</span>')
    if listen:
        out.append(f'<div class="listen">{"".join(listen)}</div>')
    out.append("</article>")
    return out


def _page(root: Path, data: Mapping[str, Any], summary: DecodeSummary | None, written: _dt.datetime) -> str:
    pieces = data.get("pieces", [])
    reasons: dict[str, str] = {}
    if summary is not None:
        for line in summary.invalid:
            name, _, why = line.partition(": ")
            reasons[name] = why
    title = f"gramophone decode: {len(pieces)} piece{'s' if len(pieces) != 1 else ''}"
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *_header(data, summary, written),
        "<main>",
    ]
    for record in pieces:
        lines += _piece(root, record, reasons)
    files = [
        f'<a href="{_href(n)}">{_e(n)}</a>'
        for n in ("summary.json", "tokenizer.json")
        if (root / n).is_file()
    ]
    lines += [
        "</main>",
        f"<footer>Written by gramophone decode. Run files: {', '.join(files) or 'none'}.</footer>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(lines)
