"""The compiled thing: frozen numpy tables, saved as ``.npz``, named by a content hash.

An :class:`Automaton` is a product of :class:`Component` automata over one vocabulary,
kept as components stepped in lockstep: a token is allowed iff every component allows it,
and each component moves by its own gather. The syntax grammar is one component; the
constraints built in code (time, note order, bar count, ...) are others. Stepping costs
``K`` lookups whatever the size of the full product, which may be far too large to
tabulate (see ``benchmarks/``).

Frameworks never see this class: decoding and training receive ``transitions`` arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from gramophone._files import atomic_write
from gramophone.errors import GramophoneError
from gramophone.grammar import fsa
from gramophone.grammar.fsa import REJECT

__all__ = ["REJECT", "Automaton", "Component"]

_FORMAT = 2  # 2: the header keeps the language hash and a content digest


def _freeze(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _language_digest(c: Component) -> bytes | None:
    """sha256 of ``c``'s minimal automaton in canonical numbering; None when ``c`` accepts
    every stream (it does not change the language)."""
    try:
        T, acc, s0 = fsa.trim(c.transitions, c.accepting, c.start)
    except ValueError:  # the empty language
        return hashlib.sha256(b"empty").digest()
    T, acc, s0 = fsa.minimize(T, acc, s0)
    if T.shape[0] == 1 and acc[0] and (T == 0).all():
        return None
    return hashlib.sha256(np.int64(T.shape[1]).tobytes() + T.tobytes() + acc.tobytes()).digest()


#: Cells (rows x vocabulary) per block of :meth:`Automaton.allowed_batch`: 16 Mi cells keep
#: its int32 temporaries near 64 MiB (a 30k BPE vocabulary: 559 rows a block).
_ALLOWED_BLOCK = 1 << 24


@dataclass(frozen=True, eq=False)
class Component:
    """One deterministic automaton over the vocabulary.

    ``transitions``: ``int32[S, V]``, next state or :data:`REJECT`; ``accepting``:
    ``bool[S]``; ``start``; ``info``: per-state facts for diagnostics (arrays of length
    ``S``, or small lookup arrays), never needed to step.

    ``neutral``: the builder's claim that this constraint never lengthens the shortest
    valid ending (every state accepting, and wherever it forbids a token an ending just as
    short remains: note order at one onset is such a constraint, time within the bar is
    not). Decoding may then leave it out of its distance table and stay exact; the claim
    is held by the decoding property tests (tight budgets always end valid). It is not
    part of the language, so not of the hash.
    """

    name: str
    transitions: np.ndarray
    accepting: np.ndarray
    start: int
    info: Mapping[str, np.ndarray] = field(default_factory=dict)
    neutral: bool = False

    def __post_init__(self) -> None:
        T = np.asarray(self.transitions)
        if T.ndim != 2 or T.dtype != np.int32:
            object.__setattr__(self, "transitions", T.astype(np.int32))
        object.__setattr__(self, "transitions", _freeze(np.asarray(self.transitions, dtype=np.int32)))
        object.__setattr__(self, "accepting", _freeze(np.asarray(self.accepting, dtype=bool)))
        object.__setattr__(self, "info", {k: _freeze(np.asarray(v)) for k, v in self.info.items()})
        S = self.transitions.shape[0]
        if self.accepting.shape != (S,) or not 0 <= self.start < S:
            raise ValueError(f"component {self.name}: inconsistent shapes")

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    @cached_property
    def distance(self) -> np.ndarray:
        """``int32[S]``: fewest tokens from each state to acceptance (-1: never)."""
        return fsa.distance_to_accept(self.transitions, self.accepting)


@dataclass(frozen=True, eq=False)
class Automaton:
    """A grammar compiled for one tokenizer: components in lockstep plus provenance.

    ``grammar_text`` is the derived grammar (shipped file + config overrides) that lark can
    read as an independent reference parser; ``meta`` holds provenance strings (tokenizer
    config, gramophone version).
    """

    vocab: tuple[str, ...]
    components: tuple[Component, ...]
    grammar_text: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        V = len(self.vocab)
        for c in self.components:
            if c.transitions.shape[1] != V:
                raise ValueError(f"component {c.name} has {c.transitions.shape[1]} columns for {V} tokens")

    # -- identity ----------------------------------------------------------------------
    @cached_property
    def hash(self) -> str:
        """sha256 (16 hex) of the language: the vocabulary and each component's minimal
        automaton in canonical numbering (:func:`fsa.minimize`), sorted; components that
        accept every stream are left out. Two spellings of a constraint, the same components
        in another order or under other names: one hash. Moving a constraint from one
        component into another still changes it (the minimal product over the whole
        language would not, but it is too large to build for most configs). An automaton
        lifted to a trained vocabulary carries ``meta["language_hash"]`` (its base's hash and
        the learned pieces), set by :func:`gramophone.tokenizers.learned.lift_automaton`.
        """
        if "language_hash" in self.meta:
            return str(self.meta["language_hash"])
        digests = sorted(d for c in self.components if (d := _language_digest(c)) is not None)
        h = hashlib.sha256(json.dumps(list(self.vocab)).encode())
        for d in digests:
            h.update(d)
        return h.hexdigest()[:16]

    @cached_property
    def digest(self) -> str:
        """sha256 (16 hex) of the tables as stored (names, numbering, order): what a saved
        file is checked against; :attr:`hash` names the language."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.vocab)).encode())
        for c in self.components:
            h.update(c.name.encode())
            h.update(np.int64(c.start).tobytes())
            h.update(c.transitions.tobytes())
            h.update(c.accepting.tobytes())
        return h.hexdigest()[:16]

    @property
    def num_components(self) -> int:
        return len(self.components)

    @cached_property
    def token_index(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(self.vocab)}

    @cached_property
    def start_states(self) -> np.ndarray:
        """``int32[K]``: the start state of each component."""
        return _freeze(np.array([c.start for c in self.components], dtype=np.int32))

    @cached_property
    def flat_tables(self) -> list[Any]:
        """Each component's table flattened (index ``state * V + token``): plain Python lists
        for small tables (fast scalar lookups in the checker), numpy arrays for large ones."""
        return [
            c.transitions.ravel().tolist() if c.transitions.size <= 4_000_000 else c.transitions.ravel()
            for c in self.components
        ]

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- stepping (single stream, numpy) ------------------------------------------------
    def allowed(self, states: Sequence[int] | np.ndarray) -> np.ndarray:
        """``bool[V]``: tokens allowed in the product state ``states`` (one per component)."""
        mask = np.ones(len(self.vocab), dtype=bool)
        for c, s in zip(self.components, states, strict=True):
            mask &= c.transitions[int(s)] != REJECT
        return mask

    def step(self, states: Sequence[int] | np.ndarray, token: int) -> np.ndarray | None:
        """Next product state, or ``None`` if some component rejects ``token``."""
        out = np.empty(len(self.components), dtype=np.int32)
        for k, (c, s) in enumerate(zip(self.components, states, strict=True)):
            nxt = c.transitions[int(s), token]
            if nxt == REJECT:
                return None
            out[k] = nxt
        return out

    def is_accepting(self, states: Sequence[int] | np.ndarray) -> bool:
        return all(bool(c.accepting[int(s)]) for c, s in zip(self.components, states, strict=True))

    def first_violation(self, ids: Iterable[int]) -> tuple[int, np.ndarray, int | None]:
        """Run ``ids``. Returns ``(index, states, rejecting component)``.

        ``index`` is the position of the first rejected token, ``len(ids)`` when the
        stream ends in a non-accepting state (component ``None``), or -1 when accepted.
        """
        flats = self.flat_tables
        V = len(self.vocab)
        states = [int(c.start) for c in self.components]
        n = 0
        for tok in ids:
            t = int(tok)
            for k, flat in enumerate(flats):
                nxt = int(flat[states[k] * V + t])
                if nxt == REJECT:
                    return n, np.array(states, dtype=np.int32), k
                states[k] = nxt
            n += 1
        arr = np.array(states, dtype=np.int32)
        return (-1 if self.is_accepting(arr) else n), arr, None

    def accepts(self, ids: Iterable[int]) -> bool:
        """True iff the whole stream is in the language."""
        return self.first_violation(ids)[0] == -1

    def run_batch(self, ids: np.ndarray) -> np.ndarray:
        """Product states along a batch: ``int32[B, T+1, K]`` (row 0 is the start).

        Rejected tokens leave every component of that stream at :data:`REJECT` from then
        on. Used to compute, once per dataset, the states along every target stream.
        """
        ids = np.asarray(ids)
        B, Tn = ids.shape
        K = len(self.components)
        out = np.full((B, Tn + 1, K), REJECT, dtype=np.int32)
        cur = np.tile(self.start_states, (B, 1))
        out[:, 0] = cur
        for t in range(Tn):
            ok = (cur != REJECT).all(axis=1)
            nxt = np.full_like(cur, REJECT)
            for k, c in enumerate(self.components):
                s = np.where(ok, cur[:, k], 0)
                nxt[:, k] = np.where(ok, c.transitions[s, ids[:, t]], REJECT)
            bad = (nxt == REJECT).any(axis=1)
            nxt[bad] = REJECT
            out[:, t + 1] = nxt
            cur = nxt
        return out

    def allowed_batch(self, states: np.ndarray) -> np.ndarray:
        """``bool[..., V]`` for product states ``int32[..., K]`` (REJECT rows: none).

        Built a block of rows at a time, so that the gathered transition rows (int32, four
        times the result) stay small next to the result whatever the vocabulary."""
        states = np.asarray(states)
        V = len(self.vocab)
        flat = states.reshape(-1, states.shape[-1])
        mask = np.ones((len(flat), V), dtype=bool)
        dead = (flat == REJECT).any(axis=-1)
        rows = max(1, _ALLOWED_BLOCK // max(V, 1))
        for i in range(0, len(flat), rows):
            block, live = mask[i : i + rows], ~dead[i : i + rows]
            for k, c in enumerate(self.components):
                block &= c.transitions[np.where(live, flat[i : i + rows, k], 0)] != REJECT
        mask[dead] = False
        return mask.reshape(*states.shape[:-1], V)

    # -- composition ---------------------------------------------------------------------
    def with_component(self, component: Component) -> Automaton:
        """The intersection with one more constraint (e.g. a bar count)."""
        return Automaton(self.vocab, (*self.components, component), self.grammar_text, dict(self.meta))

    def product_tables(self, max_states: int = 2_000_000) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """The reachable dense product: ``(T int32[S, V], accepting bool[S], start, tuples
        int32[S, K])``, ``tuples`` holding each product state's component states."""
        return fsa.product(
            [c.transitions for c in self.components],
            [c.accepting for c in self.components],
            [c.start for c in self.components],
            max_states=max_states,
        )

    def product(self, max_states: int = 2_000_000) -> Component:
        """The reachable dense product as one component (small automata only)."""
        T, acc, s0, _ = self.product_tables(max_states)
        return Component(name="product", transitions=T, accepting=acc, start=s0)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a compressed ``.npz`` atomically; returns the path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        comp_headers: list[dict[str, Any]] = []
        header: dict[str, Any] = {
            "format": _FORMAT,
            "vocab": list(self.vocab),
            "grammar_text": self.grammar_text,
            "meta": dict(self.meta),
            "hash": self.hash,
            "digest": self.digest,
            "components": comp_headers,
        }
        for k, c in enumerate(self.components):
            comp_headers.append(
                {"name": c.name, "start": c.start, "info": sorted(c.info), "neutral": c.neutral}
            )
            arrays[f"c{k}_transitions"] = c.transitions
            arrays[f"c{k}_accepting"] = c.accepting
            for key, value in c.info.items():
                arrays[f"c{k}_info_{key}"] = value
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        return atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Automaton:
        """Read an automaton written by :meth:`save`; checks its hash."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                if header.get("format") != _FORMAT:
                    raise GramophoneError(f"{path}: automaton format {header.get('format')} not supported")
                comps = []
                for k, ch in enumerate(header["components"]):
                    info = {key: data[f"c{k}_info_{key}"] for key in ch["info"]}
                    comps.append(
                        Component(
                            name=ch["name"],
                            transitions=data[f"c{k}_transitions"],
                            accepting=data[f"c{k}_accepting"],
                            start=int(ch["start"]),
                            info=info,
                            neutral=bool(ch.get("neutral", False)),
                        )
                    )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise GramophoneError(f"{path}: not a readable automaton file ({exc})") from exc
        auto = cls(tuple(header["vocab"]), tuple(comps), header["grammar_text"], header["meta"])
        if auto.digest != header.get("digest"):
            raise GramophoneError(f"{path}: content digest mismatch (corrupted automaton file)")
        auto.__dict__["hash"] = str(header["hash"])  # the tables are the ones it was computed on
        return auto
