"""``gramophone decode`` writes ``index.html``: every piece with its roll, player and links,
counts and validity as in ``summary.json``; static (no URL out, no script), escaped,
well-formed; a missing format leaves a note instead of a broken link."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gramophone._outdir import MANIFEST
from gramophone.cli import main
from gramophone.decoding.driver import DecodeSummary
from gramophone.decoding.page import count_bars, write_index

from .conftest import tokenizer_for

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Tags, links and text of a page; fails on a misnested or unclosed element."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.doctype = ""
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed: {self.stack}"

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def links(self) -> list[str]:
        return [a[k] or "" for _, a in self.tags for k in ("href", "src") if k in a]

    def article(self, name: str) -> str:
        """The text of piece ``name``'s card."""
        body = " ".join(self.text)
        start = body.index(f" {name} ")
        end = body.find(" piece-", start + len(name) + 2)
        return body[start : end if end >= 0 else None]


def decode(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Path:
    out = tmp_path / "out"
    code = main(
        ["decode", "--backend", "torch", "--max-tokens", "40", "--seed", "3", *args, "--out", str(out)]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_page_lists_every_piece_with_links_that_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = decode(tmp_path, capsys, "--num", "3", "--bars", "2", "--temperature", "0.9", "--top-k", "20")
    summary = json.loads((out / "summary.json").read_text())
    text = (out / "index.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.doctype.lower() == "doctype html"
    assert "index.html" in json.loads((out / MANIFEST).read_text())["files"]
    assert "http://" not in text and "https://" not in text and "//" not in "".join(page.links())
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]

    links = page.links()
    for link in links:
        assert (out / link).is_file(), link
    ids = [a["id"] for t, a in page.tags if t == "article"]
    assert ids == [p["piece"] for p in summary["pieces"]] == ["piece-000", "piece-001", "piece-002"]
    formats = summary["formats"]
    for record in summary["pieces"]:
        name = record["piece"]
        assert f"{name}.mid" in links and f"{name}.json" in links and f"{name}.txt" in links
        assert (f"{name}.png" in links) == ("roll" in formats)
        assert (f"{name}.wav" in links) == ("wav" in formats)
        names = (out / f"{name}.txt").read_text().split()
        assert record["bars"] == names.count("Bar_None") == 2
        card = page.article(name)
        assert f"{record['tokens']} tokens" in card and f"{record['notes']} notes" in card
        assert "2 bars" in card and ("valid" in card) and ("invalid" not in card) == record["valid"]
    body = " ".join(page.text)
    assert "All 3 valid" in body and "temperature 0.9, top-k 20" in body and "torch" in body
    if "wav" in formats:
        audio = [a for t, a in page.tags if t == "audio"]
        assert [a["src"] for a in audio] == [f"piece-00{i}.wav" for i in range(3)]


def test_tokens_only_still_writes_a_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = decode(tmp_path, capsys, "--num", "2", "--formats", "tokens")
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    assert not [t for t, _ in page.tags if t in ("img", "audio")]
    assert sorted(set(page.links())) == sorted(
        ["summary.json", "tokenizer.json", *(f"piece-00{i}{s}" for i in range(2) for s in (".json", ".txt"))]
    )
    body = " ".join(page.text)
    assert "No audio players: WAV files were not written" in body and "No piano rolls" in body
    assert json.loads((out / "summary.json").read_text())["pieces"][0]["bars"] >= 1


def test_page_escapes_text_and_shows_why_a_piece_is_invalid(tmp_path: Path) -> None:
    name = "piece-000"
    (tmp_path / f"{name}.mid").write_bytes(b"MThd")
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "backend": "torch",
                "prompt": 'a <b>&"c".mid',
                "prompt_tokens": 9,
                "formats": ["midi", "wav"],
                "composer": "<script>alert(1)</script>",  # an option added later: shown, escaped
                "pieces": [{"piece": name, "tokens": 9, "notes": 0, "bars": 1, "valid": False}],
            }
        )
    )
    summary = DecodeSummary("torch", tmp_path, 1, 9, 0, 0.0, 0.0, invalid=[f"{name}: Position_0 <back>"])
    text = write_index(tmp_path, summary).read_text(encoding="utf-8")
    page = Page(text)
    assert "<script" not in text and "<b>" not in text and "&lt;script&gt;" in text
    body = " ".join(page.text)
    assert 'a <b>&"c".mid (9 tokens with BOS)' in body and "<script>alert(1)</script>" in body
    assert "Position_0 <back>" in body and "1 of 1 invalid, 1 without notes" in body
    # the WAV the summary names is not there: no player, no link
    assert page.links() == [f"{name}.mid", "summary.json"]


def test_bars_without_bar_tokens_come_from_the_score() -> None:
    from miditok import TSD, TokenizerConfig
    from symusic import Note, Score, Track

    from gramophone.tokenizers import encode_score

    tok = TSD(TokenizerConfig())
    assert not [t for t in tok.vocab if t.startswith("Bar_")]
    score = Score(8)
    track = Track()
    track.notes.extend([Note(0, 8, 60, 64), Note(4 * 8 + 8, 8, 64, 64)])  # beat 1 of bar 1, beat 2 of bar 2
    score.tracks.append(track)
    (ids,) = encode_score(tok, score)
    assert count_bars(tok, ids, ids) == 2
    shipped = tokenizer_for("shipped")
    bar = shipped.vocab["Bar_None"]
    assert count_bars(shipped, [], [bar, bar, bar]) == 3
