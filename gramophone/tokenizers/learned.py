"""A trained vocabulary (BPE, Unigram, WordPiece) as what it is: base tokens, several at a time.

miditok trains its vocabularies with HuggingFace ``tokenizers`` over one unicode character
per base token; each *learned* (model) id stands for a fixed sequence of base tokens
(``tokenizer._vocab_learned_bytes_to_tokens``), after miditok strips WordPiece's ``##``
continuation prefix and Unigram's ``▁`` word prefix. So a trained vocabulary speaks the same
language as its base vocabulary: a stream of learned ids is valid iff the concatenation of
their base sequences is. :class:`LearnedVocab` holds that mapping as plain arrays, for the
checker (:meth:`LearnedVocab.expand`), the decoding tables (each component's rows lifted over
learned ids) and training.

Details of miditok that matter here:

- Unigram numbers its pieces in its own order: learned ids are *not* base ids, even for
  single-token pieces; BPE and WordPiece keep the base ids first.
- Unigram cannot hold a special token as a single character: miditok stores PAD, BOS and
  EOS as three-character pieces (``"!#!"`` for EOS) and adds ``EOS_None-unigram`` to the base
  vocabulary, while its own byte-by-byte decoding turns that id into ``PAD EOS PAD``. Here
  such an id *is* the special token (EOS), which is what a user who writes
  ``tokenizer["EOS_None"]`` into a stream means.
- A learned piece may be empty (Unigram's bare ``▁``): it moves no automaton.
- Special tokens (PAD, BOS, EOS) may appear inside learned pieces (Unigram learns
  ``PAD BOS PAD``); they are base tokens like any other and the grammar judges them.
- An untrained tokenizer has the identity mapping (:func:`learned_vocab` returns it), so
  every consumer handles both the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from gramophone.errors import TokenFileError

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.grammar import Automaton

REJECT = -1  # gramophone.grammar.fsa.REJECT

__all__ = ["LearnedVocab", "learned_vocab", "lift", "lift_automaton"]

_UNIGRAM_SUFFIX = "-unigram"  # miditok.constants.UNIGRAM_SPECIAL_TOKEN_SUFFIX


@dataclass(frozen=True, eq=False)
class LearnedVocab:
    """The model vocabulary of a tokenizer as sequences of base token ids.

    ``base``: base token names by base id; ``pieces``: for each model id, its base ids;
    ``trained``: False for the identity mapping of an untrained tokenizer.
    """

    base: tuple[str, ...]
    pieces: tuple[tuple[int, ...], ...]
    trained: bool

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def size(self) -> int:
        return len(self.pieces)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """A display name per model id: base names joined by ``+`` (``<empty>`` for none)."""
        return tuple("+".join(self.base[b] for b in p) or "<empty>" for p in self.pieces)

    @cached_property
    def lengths(self) -> np.ndarray:
        """``int32[V]``: base tokens per model id."""
        return np.array([len(p) for p in self.pieces], dtype=np.int32)

    @cached_property
    def padded(self) -> np.ndarray:
        """``int32[V, L]``: base ids per model id, padded with -1 (``L`` the longest piece)."""
        L = max(1, int(self.lengths.max(initial=0)))
        out = np.full((len(self.pieces), L), -1, dtype=np.int32)
        for i, p in enumerate(self.pieces):
            out[i, : len(p)] = p
        return out

    @cached_property
    def single(self) -> np.ndarray:
        """``int32[B]``: for each base id, a model id whose piece is exactly that token
        (-1 if the trained vocabulary has none)."""
        out = np.full(len(self.base), -1, dtype=np.int32)
        for i, p in enumerate(self.pieces):
            if len(p) == 1 and out[p[0]] < 0:
                out[p[0]] = i
        return out

    def model_id(self, base_token: str) -> int:
        """The model id of a single base token by name (``KeyError`` if none)."""
        b = self.base.index(base_token)
        i = int(self.single[b])
        if i < 0:
            raise KeyError(base_token)
        return i

    def expand(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Model ids -> ``(base ids, owner)`` where ``owner[j]`` is the index in ``ids`` of
        the learned token that base token ``j`` comes from."""
        base: list[int] = []
        owner: list[int] = []
        for k, i in enumerate(ids):
            piece = self.pieces[int(i)]
            base.extend(piece)
            owner.extend([k] * len(piece))
        return base, owner


def learned_vocab(tokenizer: MusicTokenizer) -> LearnedVocab:
    """The model vocabulary of ``tokenizer`` (identity when it is not trained)."""
    from gramophone.grammar.schemes import base_vocab

    base = base_vocab(tokenizer)
    if not tokenizer.is_trained:
        return LearnedVocab(tuple(base), tuple((i,) for i in range(len(base))), trained=False)
    index = {tok: i for i, tok in enumerate(base)}
    model = tokenizer._model  # miditok keeps its HF model here
    mapping = tokenizer._vocab_learned_bytes_to_tokens
    byte_to_token = tokenizer._vocab_base_byte_to_token
    n = model.get_vocab_size()
    pieces: list[tuple[int, ...]] = []
    for i in range(n):
        key = model.id_to_token(i)
        special = byte_to_token.get(key, "") if key is not None and len(key) > 1 else ""
        if special.endswith(_UNIGRAM_SUFFIX) and special[: -len(_UNIGRAM_SUFFIX)] in index:
            pieces.append((index[special[: -len(_UNIGRAM_SUFFIX)]],))
            continue
        if key is None or key not in mapping:
            raise TokenFileError(f"learned id {i} has no base tokens in this tokenizer ({key!r})")
        try:
            pieces.append(tuple(index[t] for t in mapping[key]))
        except KeyError as exc:
            raise TokenFileError(f"learned id {i} uses {exc.args[0]!r}, not in the base vocabulary") from None
    return LearnedVocab(tuple(base), tuple(pieces), trained=True)


def lift(T: np.ndarray, learned: LearnedVocab | None) -> np.ndarray:
    """``int32[S, V_model]``: a component's transitions ``T`` (``int32[S, V_base]``, REJECT)
    run over each model token's base sequence (REJECT once any step rejects). The identity
    vocabulary returns ``T`` itself; an empty learned piece leaves every state in place."""
    if learned is None or not learned.trained:
        return T
    S = T.shape[0]
    Td = np.vstack([np.where(T == REJECT, S, T), np.full((1, T.shape[1]), S, T.dtype)])  # S: dead
    pieces = learned.padded  # (V, L)
    cur = np.tile(np.arange(S, dtype=np.int32)[:, None], (1, pieces.shape[0]))  # (S, V)
    for j in range(pieces.shape[1]):
        active = np.nonzero(pieces[:, j] >= 0)[0]
        if active.size == 0:
            break
        cur[:, active] = Td[cur[:, active], pieces[active, j]]
    return np.where(cur == S, REJECT, cur).astype(np.int32)


def lift_automaton(automaton: Automaton, learned: LearnedVocab) -> Automaton:
    """``automaton`` over the model vocabulary: each component's rows lifted (:func:`lift`),
    token names :attr:`LearnedVocab.names`. The identity vocabulary returns ``automaton``.

    What training needs (the states along learned streams and the allowed learned tokens
    after each); ``Σ S_c x V`` int32 (33 MiB for the shipped REMI grammar at V = 30,000).
    Checking and decoding keep the base automaton and expand or lift themselves.
    """
    from gramophone.grammar import Automaton, Component

    if not learned.trained:
        return automaton
    if tuple(learned.base) != tuple(automaton.vocab):
        raise ValueError("the learned vocabulary is not over this automaton's base vocabulary")
    comps = tuple(
        Component(c.name, lift(c.transitions, learned), c.accepting, c.start, dict(c.info), c.neutral)
        for c in automaton.components
    )
    pieces = hashlib.sha256(json.dumps([list(p) for p in learned.pieces]).encode()).hexdigest()
    language = hashlib.sha256(f"{automaton.hash} {pieces}".encode()).hexdigest()[:16]
    meta = {**automaton.meta, "base_automaton_hash": automaton.hash, "language_hash": language}
    return Automaton(learned.names, comps, automaton.grammar_text, meta)
