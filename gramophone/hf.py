"""HuggingFace transformers under the grammar: a ``LogitsProcessor`` for ``generate``, and
the ``hf`` backend of ``gramophone decode --backend hf``.

**The processor.** :class:`GrammarLogitsProcessor` masks a transformers model's scores with
gramophone's decoding tables (:func:`~gramophone.decoding.tables.decoding_tables`: the
grammar, BOS/EOS framing, one note at least, ``bars``) through the torch kernels
(:mod:`gramophone.kernels.torch`), for any miditok tokenizer, trained vocabularies included::

    grammar = GrammarLogitsProcessor(tokenizer, max_length=256)
    out = model.generate(prompt, logits_processor=LogitsProcessorList([grammar]),
                         do_sample=True, top_p=0.95, **grammar.generate_kwargs())

Greedy search, sampling (temperature, top-k, top-p: transformers applies its warpers after
the custom processors, so they see masked scores), beam search and left-padded batches all
work. What it relies on, per call (one ``generate`` step):

- **State from content, not row index.** Each row's automaton state is derived from the row
  itself: the processor keeps, for the rows of its previous call only (bounded by the
  batch), a dict from the bytes of the row to its state, and a row of this call is its
  previous row plus one token: look up ``row[:-1]``, advance by ``row[-1]``. Beam search
  reorders and duplicates rows between steps; matching on content makes that irrelevant.
  A row that matches nothing (the first call, a new ``generate``) is read from scratch
  and checked as a prompt.
- **Left padding.** Leading pad ids (the tokenizer's PAD, and ``pad_token_id`` when given)
  are skipped; the row then starts at its BOS, or is read as if BOS came first
  (:func:`~gramophone.decoding.prompt.prepare_prompt`'s rules). A pad after the first real
  token is an error (pad on the left). A prompt that is not a valid beginning of a piece
  is a one-line :class:`~gramophone.errors.DecodingError` in the checker's words, at the
  first call.
- **Length.** ``max_length`` is ``generate``'s: the total length, padding and prompt
  included; at each step a row has ``max_length - input_ids.shape[1]`` tokens left, this one
  included, and the length-aware mask (``remaining`` of ``allowed``) keeps a complete piece
  reachable in them, so every row ends with EOS, valid, within ``max_length``. Without
  ``max_length`` the mask is the grammar's alone and a row that ``generate`` cuts off at its
  own limit is a valid beginning, not a complete piece.
- **After EOS** (and on a row that holds a forbidden token, which only beam search's
  ``-inf`` fill-in candidates can) exactly the tokenizer's PAD id is allowed (EOS's id when
  the tokenizer has no PAD), so no row is ever all ``-inf`` and sampling never sees NaN.

``generate`` must stop and pad with the tokenizer's ids: pass ``eos_token_id`` and
``pad_token_id`` (and ``max_length``), e.g. ``**grammar.generate_kwargs()``. A model whose
vocabulary is padded beyond the tokenizer's (a multiple of 64 ...) gets its extra ids
masked.

**The backend.** ``--backend hf --checkpoint DIR`` decodes a folder written by
``save_pretrained`` (a ``config.json`` with a ``model_type``, ``model.safetensors``) that
holds the miditok ``tokenizer.json`` beside it, with any ``AutoModelForCausalLM`` (GPT-2,
Llama, ...), never running code from the folder (no ``trust_remote_code``; safetensors
only). :class:`HFBackend` implements the :class:`~gramophone.backends.Backend` interface as
far as decoding needs; its decoding loop (:func:`backend_sampler`) is the torch backend's
:func:`~gramophone.decoding.torch_loop.sample_torch` over the model's KV cache, so the
sampling rules and seeds are those of ``--backend torch``.

**Training** (``gramophone train --backend hf --model gpt2|llama``). The run's
:class:`~gramophone.backends.ModelConfig` (a preset's, or a ``--config`` model section) is
mapped onto the architecture's transformers config (:func:`transformers_config`: GPT-2's
``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, ``n_positions``, ``dropout`` as its three
``*_pdrop``; Llama's ``hidden_size`` ...), the model is built from it (never downloaded)
and trained by :func:`gramophone.training.train`, gramophone's own loop (same data,
batches, losses, schedule, evaluation, checkpoints, resume): :class:`HFBackend` takes the
torch backend's training half (:class:`~gramophone.backends.torch_backend.TorchTraining`:
AdamW, ``compute_losses``, clipping, the schedule, seeded dropout, optimizer files) and
only says how to run the model. ``--init DIR`` starts from a ``save_pretrained`` folder;
``--lora r=8,alpha=16,dropout=0.05`` then trains LoRA adapters only (:class:`LoraSpec`,
peft; GPT-2's ``c_attn``/``c_proj``, Llama's attention projections).

A training checkpoint of the hf backend is gramophone's checkpoint folder (``config.json``
with the run's configs, meta, file records; atomic, verified, resumable) whose weights are
the transformers model's own state dict, ``hf-model.safetensors`` (the peft model's, LoRA
included, during a LoRA run), with the transformers config in ``meta["hf"]``; the run's
final ``model/`` is a ``save_pretrained`` folder (:meth:`HFBackend.export_native`; a LoRA
run's is merged with ``merge_and_unload``, its adapter kept in ``model/adapter/``) with
``tokenizer.json`` and ``gramophone.json`` (the run's meta: vocabulary and grammar hashes,
evaluation) beside it, which ``decode --backend hf`` reads without peft.

Importing this module imports PyTorch and transformers (``import gramophone`` does not).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import torch
    from transformers import LogitsProcessor
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"gramophone.hf needs transformers and PyTorch ({exc}): pip install 'gramophone[hf]'"
    ) from None
import numpy as np
from torch import Tensor

from gramophone.backends import checkpoint as ckpt
from gramophone.backends.base import Backend, Checkpoint, check_ids
from gramophone.backends.config import ModelConfig, TrainConfig
from gramophone.backends.torch_backend.backend import TorchTraining, TorchTrainState
from gramophone.decoding.prompt import prepare_prompt
from gramophone.decoding.tables import DecodingTables, decoding_tables
from gramophone.errors import CheckpointError, DecodingError, GramophoneError
from gramophone.grammar.composer import ComposerConstraints, with_constraints
from gramophone.kernels import numpy as np_kernels
from gramophone.kernels import torch as torch_kernels

if TYPE_CHECKING:
    from miditok import MusicTokenizer

    from gramophone.decoding.loop import DecodeRequest, DecodeResult
    from gramophone.decoding.torch_loop import TorchModel
    from gramophone.grammar import Automaton

__all__ = [
    "ARCHITECTURES",
    "GrammarLogitsProcessor",
    "HFBackend",
    "LoraSpec",
    "backend_sampler",
    "hf_model",
    "transformers_config",
]

_FAR = 1 << 30  # "remaining" without a length limit: the grammar's mask alone
TOKENIZER_FILE = "tokenizer.json"
#: Architectures ``train --backend hf --model NAME`` builds from a :class:`ModelConfig`.
ARCHITECTURES = ("gpt2", "llama")
#: LoRA's target modules by model type: GPT-2's attention and MLP projections (``c_proj``
#: names both) and fused QKV; Llama's attention projections.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
WEIGHTS_FILE = "hf-model.safetensors"  # a training checkpoint's transformers weights
OPTIMIZER_FILE = "optimizer-hf.pt"
META_FILE = "gramophone.json"  # beside an exported model: the run's meta (hashes, evaluation)
ADAPTER_DIR = "adapter"  # in an exported LoRA model: peft's adapter folder


# ----------------------------------------------------------------------------- the processor

_TABLES: OrderedDict[tuple[int, int | None, Any], tuple[Any, Automaton, DecodingTables]] = OrderedDict()


def _grammar_tables(
    tokenizer: MusicTokenizer, bars: int | None, constraints: ComposerConstraints | None = None
) -> tuple[Automaton, DecodingTables]:
    """The grammar and decoding tables of ``tokenizer``, kept for the last few tokenizers, so
    that a processor per ``generate`` call costs nothing (keyed on the tokenizer's model
    vocabulary object, which :func:`~gramophone.tokenizers.model_vocab` keeps per tokenizer;
    the entry holds it, so its id is not reused while cached)."""
    from gramophone.grammar import compile_tokenizer
    from gramophone.tokenizers import model_vocab

    learned = model_vocab(tokenizer)
    key = (id(learned), bars, constraints)
    hit = _TABLES.get(key)
    if hit is None:
        grammar = with_constraints(compile_tokenizer(tokenizer), constraints)
        hit = _TABLES[key] = (learned, grammar, decoding_tables(grammar, bars, learned=learned))
        while len(_TABLES) > 8:
            _TABLES.popitem(last=False)
    _TABLES.move_to_end(key)
    return hit[1], hit[2]


class GrammarLogitsProcessor(LogitsProcessor):
    """Hard-mask ``generate``'s scores with the grammar of ``tokenizer`` (see the module notes).

    ``tokenizer``: a miditok tokenizer (any supported scheme, trained or not) or the path of
    its ``tokenizer.json``; ``max_length``: ``generate``'s total length (prompt and padding
    included), within which every row ends complete and valid (None: the grammar's mask
    alone); ``bars``: exactly that many Bar tokens per piece; ``constraints``: composer
    constraints (:class:`~gramophone.grammar.ComposerConstraints`, e.g.
    ``ComposerConstraints.parse(key="D:minor")``) composed with the grammar;
    ``pad_token_id``: one more id read as left padding (the tokenizer's PAD always is).

    One instance may serve several ``generate`` calls (states are derived from the rows).
    """

    def __init__(
        self,
        tokenizer: MusicTokenizer | str | os.PathLike[str],
        max_length: int | None = None,
        *,
        bars: int | None = None,
        constraints: ComposerConstraints | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        from gramophone.tokenizers import load_tokenizer

        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise DecodingError(f"max_length must be an int, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.grammar, self.tables = _grammar_tables(tokenizer, bars, constraints)
        t = self.tables
        self._pads = np.array(sorted({t.pad} | ({int(pad_token_id)} if pad_token_id is not None else set())))
        # a second id of a special token (Unigram has two) reads as the one the tables use
        learned = t.learned
        special = {learned.pieces[i] for i in (t.bos, t.eos, t.pad)}
        self._canon = np.arange(t.vocab_size, dtype=np.int64)
        for v, piece in enumerate(learned.pieces):
            if piece in special:
                self._canon[v] = int(learned.single[piece[0]])
        self._eos_ids = np.nonzero(self._canon == t.eos)[0]
        # the rows of the previous call: bytes of the row -> index into _states / _done
        self._index: dict[bytes, int] = {}
        self._states = np.zeros((0, t.num_groups), np.int32)
        self._done = np.zeros(0, bool)
        self._length = -1  # input_ids.shape[1] at the previous call

    @property
    def bos_token_id(self) -> int:
        return self.tables.bos

    @property
    def eos_token_id(self) -> int:
        return self.tables.eos

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's PAD id (its EOS id when it has no PAD token)."""
        return self.tables.pad

    def generate_kwargs(self) -> dict[str, int]:
        """``generate``'s ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (the
        tokenizer's: ``generate`` must stop at its EOS and pad with its PAD) and
        ``max_length`` (when this processor has one)."""
        out = {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id}
        out["pad_token_id"] = self.pad_token_id
        if self.max_length is not None:
            out["max_length"] = self.max_length
        return out

    def pieces(self, sequences: Tensor | np.ndarray) -> list[list[int]]:
        """The pieces in ``generate``'s output ``int[B, L]``: each row without its left
        padding, up to and including its first EOS (a row without EOS, cut by ``generate``'s
        own limit, whole). What follows EOS is padding: PAD, or EOS again where transformers'
        beam search fills finished rows with EOS (it does when the PAD id is 0)."""
        rows = sequences.detach().cpu().numpy() if isinstance(sequences, Tensor) else np.asarray(sequences)
        out = []
        for row in rows:
            is_pad = np.isin(row, self._pads)
            start = int(np.argmin(is_pad)) if not is_pad.all() else len(row)
            body = row[start:]
            eos_at = np.nonzero(np.isin(body, self._eos_ids))[0]
            out.append(body[: int(eos_at[0]) + 1 if eos_at.size else len(body)].tolist())
        return out

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores`` ``float[B, V']`` with every token the grammar forbids (for each row of
        ``input_ids`` ``int[B, L]``, within ``max_length``) at ``-inf``; ``V' >= V`` (ids
        past the tokenizer's vocabulary are forbidden)."""
        t = self.tables
        V = t.vocab_size
        if scores.shape[-1] < V:
            raise DecodingError(
                f"the model scores {scores.shape[-1]} tokens, fewer than the tokenizer's {V}: "
                "it was built for another vocabulary"
            )
        ids = input_ids.detach().to("cpu").numpy()  # (B, L): the one host copy per step
        B, L = ids.shape
        remaining = _FAR if self.max_length is None else self.max_length - L
        states, done = self._row_states(ids, remaining)
        device = scores.device
        tab = torch_kernels.device_tables(t, device)
        state = torch.from_numpy(states.astype(np.int64)).to(device)  # (B, G)
        mask = torch_kernels.allowed(tab, state, max(1, remaining))  # (B, V)
        if done.any():  # after EOS (or on a dead beam): exactly PAD, never an all -inf row
            pad_row = torch.zeros(V, dtype=torch.bool, device=device)
            pad_row[t.pad] = True
            mask[torch.from_numpy(done).to(device)] = pad_row
        if scores.shape[-1] > V:
            extra = torch.zeros((B, scores.shape[-1] - V), dtype=torch.bool, device=device)
            mask = torch.cat([mask, extra], dim=1)
        return torch_kernels.apply(scores, mask)  # type: ignore[return-value]

    # -- states ---------------------------------------------------------------------------

    def _row_states(self, ids: np.ndarray, remaining: int) -> tuple[np.ndarray, np.ndarray]:
        """``(states int32[B, G], done bool[B])`` after each row of ``ids`` (B, L), from the
        previous call's rows (a row = one of them + one token) or read from scratch."""
        t = self.tables
        B, length = ids.shape
        if length != self._length + 1:  # not the next step of the previous call: a new generate
            self._index = {}
        prev = np.full(B, -1, np.int64)
        if self._index and length > 1:
            for i in range(B):
                prev[i] = self._index.get(ids[i, :-1].tobytes(), -1)
        states = np.zeros((B, t.num_groups), np.int32)
        done = np.zeros(B, bool)
        found = prev >= 0
        if found.any():
            tok = ids[found, -1]
            inside = (tok >= 0) & (tok < t.vocab_size)
            tok = np.where(inside, self._canon[np.where(inside, tok, 0)], t.eos)
            before = self._states[prev[found]]
            was_done = self._done[prev[found]]
            after = np_kernels.advance(t, before, tok)
            dead = (after == t.dead).any(axis=1) | ~inside
            states[found] = np.where(was_done[:, None], before, after)
            done[found] = was_done | dead | (tok == t.eos)
        index: dict[bytes, int] = {}
        fresh: dict[bytes, tuple[np.ndarray, bool]] = {}  # rows read from scratch in this call
        for i in range(B):
            key = ids[i].tobytes()
            if not found[i]:
                got = fresh.get(key)
                if got is None:
                    got = fresh[key] = self._read_row(ids[i], i, remaining)
                states[i], done[i] = got
            index.setdefault(key, i)
        self._index, self._states, self._done, self._length = index, states, done, length
        return states, done

    def _read_row(self, row: np.ndarray, i: int, remaining: int) -> tuple[np.ndarray, bool]:
        """The state after one row read from scratch, checked as a prompt: leading pads
        skipped, BOS implied when missing, a complete piece (EOS, then pads) is done.
        :class:`DecodingError` for a row that is not a valid beginning, or that cannot end
        within ``max_length``."""
        t = self.tables
        V = t.vocab_size
        is_pad = np.isin(row, self._pads)
        outside = ~is_pad & ((row < 0) | (row >= V))
        if outside.any():
            bad = int(row[outside][0])
            raise DecodingError(f"input_ids row {i} holds id {bad}, outside the tokenizer's {V} tokens")
        seq = self._canon[np.where(is_pad, t.pad, row)]
        start = int(np.argmin(is_pad)) if not is_pad.all() else len(seq)
        content = seq[start:]
        name = f"input_ids row {i}" + (f" (after {start} pad tokens)" if start else "")
        eos_at = np.nonzero(content == t.eos)[0]
        end = int(eos_at[0]) if eos_at.size else len(content)
        inner = np.nonzero(np.isin(content[:end], self._pads))[0]
        if inner.size:
            raise DecodingError(
                f"{name} has a pad token at token {int(inner[0])} after its first real token: "
                "pad batches on the left (tokenizer padding_side='left')"
            )
        prompt = prepare_prompt(t, self.grammar, content[:end].tolist(), name=name)
        if eos_at.size:
            tail = content[end + 1 :]
            if not np.isin(tail, self._pads).all():
                raise DecodingError(f"{name} goes on after its EOS (token {end}) with other tokens than pads")
            after = t.step(prompt.state, t.eos)
            if (after == t.dead).any():
                raise DecodingError(f"{name} ends (EOS at token {end}) before it is a complete piece")
            return after, True
        need = t.distance(prompt.state)
        if need > remaining:
            raise DecodingError(
                f"{name} needs {need} more tokens to end as a valid piece, but max_length "
                f"{self.max_length} leaves {max(0, remaining)} after its {len(row)} tokens"
            )
        return prompt.state, False


# ----------------------------------------------------------------------------- the model seam


@dataclass
class HFCache:
    """A transformers KV cache (``DynamicCache`` ...) and the attention mask of the rows
    (``None`` when no row is padded)."""

    past: Any
    mask: Tensor | None


def _cache_keyword(model: Any) -> str:
    """transformers 5 calls the KV cache ``cache``, 4.x ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    got = out.get("cache") if hasattr(out, "get") else None
    return got if got is not None else out.past_key_values


def hf_model(model: Any) -> TorchModel:
    """A transformers causal LM as the torch loop's
    :class:`~gramophone.decoding.torch_loop.TorchModel` (eval mode): ``prefill`` runs the
    prompts (right-padded rows of ``lengths`` tokens: an attention mask hides the rest) and
    ``step`` feeds one token per row at its ``position`` through the KV cache."""
    from gramophone.decoding.torch_loop import TorchModel

    model.eval()
    device = next(model.parameters()).device
    keyword = _cache_keyword(model)

    def prefill(ids: Tensor, lengths: Tensor, cache_len: int) -> tuple[Tensor, HFCache]:
        B, P = ids.shape
        padded = bool((lengths != P).any())  # one host sync per batch
        mask = (torch.arange(P, device=ids.device)[None, :] < lengths[:, None]).long() if padded else None
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        logits = out.logits[torch.arange(B, device=ids.device), lengths - 1]  # (B, V)
        return logits.float(), HFCache(_out_cache(out), mask)

    def step(token: Tensor, cache: HFCache, positions: Tensor) -> tuple[Tensor, HFCache]:
        mask = cache.mask
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            use_cache=True,
            **{keyword: cache.past},
        )
        return out.logits[:, -1].float(), HFCache(_out_cache(out), mask)

    return TorchModel(prefill=prefill, step=step, device=device)


def backend_sampler(backend: Any, params: Any) -> Callable[[DecodingTables, DecodeRequest], DecodeResult]:
    """The decoding loop for the ``hf`` backend (see :func:`gramophone.backends.register_backend`):
    :func:`~gramophone.decoding.torch_loop.sample_torch` over :func:`hf_model`."""
    from gramophone.decoding.torch_loop import sample_torch

    model = hf_model(params)
    return lambda tables, request: sample_torch(model, tables, request)


# ----------------------------------------------------------------------------- the backend


def context_length(config: Any) -> int | None:
    """The number of positions a transformers config allows (``max_position_embeddings``,
    GPT-2's ``n_positions`` ...), or None."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_config(config: Any) -> ModelConfig:
    """A transformers config as gramophone's :class:`ModelConfig` (what the decode driver
    reads: ``vocab_size``, ``max_len``); the shape fields (and dropout) are the model's when
    they fit ``ModelConfig``'s rules, else its defaults. The inverse of
    :func:`transformers_config` on the configs it writes."""
    vocab, max_len = int(config.vocab_size), context_length(config) or 1024

    def first(*names: str) -> Any:
        return next((v for v in (getattr(config, n, None) for n in names) if v is not None), None)

    d = first("hidden_size", "n_embd")
    shape = {
        "d_model": d,
        "n_layers": first("num_hidden_layers", "n_layer"),
        "n_heads": first("num_attention_heads", "n_head"),
        "d_ff": first("intermediate_size", "n_inner") or 4 * (d or 1),
    }
    dropout = first("resid_pdrop", "attention_dropout", "dropout")
    try:
        return ModelConfig(vocab_size=vocab, max_len=max_len, dropout=float(dropout or 0.0), **shape)
    except (TypeError, ValueError):
        return ModelConfig(vocab_size=vocab, max_len=max_len, dropout=0.0)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars from transformers while loading (the CLI has its own output)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class HFBackend(TorchTraining, Backend):
    """HuggingFace transformers causal LMs (``params`` is the model), decoded and trained.

    ``device`` defaults to CUDA when available, else CPU. Checkpoints to decode are
    ``save_pretrained`` folders with the miditok ``tokenizer.json`` beside the model
    (:meth:`load_native`), or the hf backend's training checkpoints. Training (see the
    module notes) builds ``model`` (an :data:`ARCHITECTURES` name) from the run's
    :class:`ModelConfig`, or starts from the ``save_pretrained`` folder ``init``; with
    ``lora`` (a :class:`LoraSpec` or its text, ``r=8,alpha=16,dropout=0.05``) only LoRA
    adapters train. A resumed run is rebuilt from its checkpoint, whatever these say.
    """

    name = "hf"
    optimizer_files = (OPTIMIZER_FILE,)

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        model: str = "gpt2",
        init: str | os.PathLike[str] | None = None,
        lora: LoraSpec | str | None = None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if model not in ARCHITECTURES:
            raise GramophoneError(
                f"--model {model!r}: the hf backend builds {' or '.join(ARCHITECTURES)} from their configs"
            )
        self.architecture = model
        self.init_from = None if init is None else Path(init)
        self.lora = LoraSpec.parse(lora) if isinstance(lora, str) else lora
        if self.lora is not None and self.init_from is None:
            raise GramophoneError("--lora fine-tunes a trained model: give it with --init DIR")

    def _forward(self, model: Any, inputs: Tensor) -> Tensor:
        # Every position is attended (causally): windows are padded only past EOS, at weight
        # 0. The explicit mask says so; without it transformers warns when PAD appears.
        mask = torch.ones_like(inputs)
        out: Tensor = model(input_ids=inputs, attention_mask=mask, use_cache=False).logits
        return out

    # ----------------------------------------------------------------- checkpoints

    def load(self, path: str | os.PathLike[str]) -> Checkpoint:
        """A ``save_pretrained`` folder (config.json with a ``model_type``, safetensors
        weights), or a training checkpoint of this backend (a LoRA one merged);
        :class:`CheckpointError` otherwise. Nothing in the folder runs as code."""
        from transformers import AutoModelForCausalLM

        p = Path(path)
        config = p / "config.json"
        if not p.is_dir():
            raise CheckpointError(f"{p}: checkpoint directory does not exist")
        try:
            data = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{p}: no readable config.json ({_first_line(exc)})") from None
        if isinstance(data, dict) and data.get("format") == ckpt.FORMAT and data.get("backend") == self.name:
            info = ckpt.read_info(p)
            trained = _merged(self._model_of(info)).eval()
            return Checkpoint(trained, model_config(trained.config), info.train, info.step, info.meta, p)
        if not isinstance(data, dict) or "model_type" not in data:
            raise CheckpointError(
                f"{p}: not a transformers model folder (config.json has no model_type); --backend hf "
                "decodes a folder written by save_pretrained, with the miditok tokenizer.json beside it"
            )
        try:
            with _quiet_transformers():
                model: Any = AutoModelForCausalLM.from_pretrained(
                    p, trust_remote_code=False, use_safetensors=True, local_files_only=True
                )
        except Exception as exc:  # transformers raises many kinds on a bad folder
            raise CheckpointError(f"{p}: transformers cannot load this model ({_first_line(exc)})") from None
        model = model.to(self.device).eval()
        meta = {"model_type": data["model_type"], "architectures": data.get("architectures")}
        with contextlib.suppress(OSError, ValueError):  # the run's meta, when gramophone trained it
            extra = json.loads((p / META_FILE).read_text(encoding="utf-8"))
            meta |= extra if isinstance(extra, dict) else {}
        return Checkpoint(model, model_config(model.config), None, 0, meta, p)

    def load_native(
        self,
        path: str | os.PathLike[str],
        tokenizer: MusicTokenizer,
        automaton: Automaton | None = None,
    ) -> Checkpoint:
        """The model of a ``save_pretrained`` folder, after checking that the folder holds
        ``tokenizer.json`` and that the model's vocabulary is ``tokenizer``'s (one-line
        :class:`CheckpointError` otherwise)."""
        from gramophone.models import check_compatible

        p = Path(path)
        if p.is_dir() and not (p / TOKENIZER_FILE).is_file():
            raise CheckpointError(
                f"{p}: no {TOKENIZER_FILE} beside the model: save the miditok tokenizer the model "
                f"was trained with there (tokenizer.save('{p / TOKENIZER_FILE}'))"
            )
        loaded = self.load(p)
        check_compatible(loaded.meta, loaded.model.vocab_size, tokenizer, automaton, where=p)
        if context_length(loaded.params.config) is None:
            raise CheckpointError(f"{p}: the model's config has no context length (max_position_embeddings)")
        return loaded

    def save(
        self,
        path: str | os.PathLike[str],
        params: Any,
        *,
        train: TrainConfig | None = None,
        step: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """``save_pretrained`` (safetensors; a LoRA model merged, on a copy); put the
        tokenizer's ``tokenizer.json`` beside it."""
        del train, step, meta
        p = Path(path)
        model = _merged(copy.deepcopy(params)) if _is_peft(params) else params
        model.save_pretrained(p, safe_serialization=True)
        return p

    # ----------------------------------------------------------------- parameters

    def config_of(self, params: Any) -> ModelConfig:
        return model_config(params.config)

    def to_numpy(self, params: Any) -> dict[str, np.ndarray]:
        return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in params.state_dict().items()}

    def init(self, config: ModelConfig, seed: int = 0) -> Any:
        """A model to train: the ``init`` folder's (its shape must be ``config``'s), else
        the architecture built from ``config`` (:func:`transformers_config`) with torch's
        generator seeded by ``seed``, so one seed is one model; LoRA adapters on it with
        ``lora`` (their initialisation seeded too)."""
        if self.init_from is not None:
            model = self.load(self.init_from).params
            got = model_config(model.config)
            if got != config:
                raise GramophoneError(
                    f"{self.init_from}: the model of --init is {_shape(got)}, the run config's is "
                    f"{_shape(config)}: give the run the model's own shape"
                )
        else:
            model = self._build(transformers_config(config, self.architecture), seed)
        if self.lora is None:
            return model
        with self._seeded(seed):
            return _with_lora(model, self.lora, self.init_from)

    def from_numpy(self, weights: Mapping[str, np.ndarray], config: ModelConfig) -> Any:
        """The ``model`` architecture built from ``config``, with ``weights`` (its own
        state-dict names, as :meth:`to_numpy` gives them)."""
        model = self._build(transformers_config(config, self.architecture), 0)
        try:
            model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()})
        except RuntimeError as exc:
            raise CheckpointError(
                f"weights do not fit the {self.architecture} model of this config ({_first_line(exc)})"
            ) from None
        return model

    def _build(self, config: Any, seed: int) -> Any:
        """A transformers causal LM from its config (never downloaded), initialised by
        transformers under torch's generator seeded by ``seed``."""
        from transformers import AutoModelForCausalLM

        with self._seeded(seed), _quiet_transformers():
            model = AutoModelForCausalLM.from_config(config)
        return model.to(self.device)

    # ----------------------------------------------------------------- inference

    def _ids(self, ids: np.ndarray, params: Any) -> Tensor:
        arr = check_ids(ids, int(params.config.vocab_size))
        return torch.as_tensor(np.array(arr, np.int64), device=self.device)

    @torch.inference_mode()
    def logits(self, params: Any, ids: np.ndarray) -> np.ndarray:
        params.eval()
        out: np.ndarray = self._forward(params, self._ids(ids, params)).float().cpu().numpy()
        return out

    @torch.inference_mode()
    def prefill(
        self, params: Any, ids: np.ndarray, cache_len: int | None = None, lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, HFCache]:
        """See :meth:`Backend.prefill`; ``cache_len`` is not needed (transformers' cache grows)."""
        ids_t = self._ids(ids, params)
        B, n = ids_t.shape
        if cache_len is not None and cache_len < n:
            raise ValueError(f"the prompt ({n} tokens) is longer than the cache ({cache_len})")
        lengths_t = torch.as_tensor(
            np.full(B, n) if lengths is None else np.asarray(lengths), device=self.device
        )
        logits, cache = hf_model(params).prefill(ids_t, lengths_t.long(), cache_len or n)
        return logits.cpu().numpy(), cache

    @torch.inference_mode()
    def decode_step(
        self, params: Any, token: np.ndarray, cache: HFCache, position: int | np.ndarray
    ) -> tuple[np.ndarray, HFCache]:
        token_t = self._ids(token, params)
        pos = torch.as_tensor(np.broadcast_to(np.asarray(position, np.int64), token_t.shape).copy())
        logits, cache = hf_model(params).step(token_t, cache, pos.to(self.device))
        return logits.cpu().numpy(), cache

    # ----------------------------------------------------------------- training
    # evaluate, init_state, train_step, state_* and the optimizer file: TorchTraining's

    def save_state(
        self, path: str | os.PathLike[str], state: TorchTrainState, *, meta: Mapping[str, Any] | None = None
    ) -> Path:
        """A gramophone checkpoint folder whose weights are the model's own state dict
        (:data:`WEIGHTS_FILE`, the peft model's during a LoRA run), its transformers config
        in ``meta["hf"]``, and the optimizer state."""
        model = state.model
        return ckpt.save_checkpoint(
            path,
            None,
            self.config_of(model),
            train=state.train,
            step=state.step,
            meta={**(meta or {}), "hf": _hf_meta(model)},
            backend=self.name,
            extra_files={
                WEIGHTS_FILE: lambda tmp: _save_weights(model, tmp),
                **self._optimizer_writers(state),
            },
        )

    def load_state(self, path: str | os.PathLike[str], train: TrainConfig | None = None) -> TorchTrainState:
        """The training state of a checkpoint of :meth:`save_state` (the model rebuilt from
        the checkpoint's config, LoRA adapters included; the optimizer state restored)."""
        info = ckpt.read_info(path)
        model = self._model_of(info)
        state = self.init_state(model, train or info.train or TrainConfig(), step=info.step)
        if all(n in info.files for n in self.optimizer_files):
            state = self._restore_optimizer(state, info)
        return state

    def export_native(self, info: ckpt.CheckpointInfo, dest: Path, meta: Mapping[str, Any]) -> None:
        """``dest``: the model of a training checkpoint as a ``save_pretrained`` folder
        (``generate``'s BOS/EOS/PAD ids set from the checkpoint's ``tokenizer.json``: in
        ``generation_config.json``, BOS/EOS also in ``config.json``), the
        run's ``meta`` in :data:`META_FILE`; a LoRA model merged (``merge_and_unload``), its
        adapter kept in ``dest/adapter`` (peft's ``adapter_model.safetensors``)."""
        from gramophone.tokenizers import load_tokenizer

        model = self._model_of(info)
        if _is_peft(model):
            with _quiet_transformers():
                model.save_pretrained(dest / ADAPTER_DIR, safe_serialization=True)
            (dest / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # peft's empty model card
            model = _merged(model)
        if (info.path / TOKENIZER_FILE).is_file():
            ids = _special_ids(load_tokenizer(info.path / TOKENIZER_FILE))
            for key, value in ids.items():
                setattr(model.generation_config, key, value)
                # PAD only in generate's config: with it in the model's, transformers warns on
                # every forward that holds PAD without an attention mask (finished decode rows)
                setattr(model.config, key, None if key == "pad_token_id" else value)
        with _quiet_transformers():
            model.save_pretrained(dest, safe_serialization=True)
        (dest / META_FILE).write_text(json.dumps(dict(meta), indent=2) + "\n", encoding="utf-8")

    def _model_of(self, info: ckpt.CheckpointInfo) -> Any:
        """The model of a training checkpoint of this backend (the peft model of a LoRA
        run), on the device; :class:`CheckpointError` for anything else."""
        hf = info.meta.get("hf")
        where = info.path / ckpt.CONFIG_FILE
        if not isinstance(hf, dict) or WEIGHTS_FILE not in info.files:
            raise CheckpointError(
                f"{where}: not a checkpoint of the hf backend (no transformers model in it)"
            )
        try:
            config = _config_from_dict(hf["config"])
            lora = None if hf.get("lora") is None else LoraSpec.from_dict(hf["lora"])
        except (KeyError, TypeError, ValueError, GramophoneError) as exc:
            raise CheckpointError(f"{where}: malformed hf section ({_first_line(exc)})") from None
        model = self._build(config, 0)
        if lora is not None:
            model = _with_lora(model, lora, hf.get("init"))
        file = ckpt.file_path(info, WEIGHTS_FILE)
        assert file is not None
        _load_weights(model, file)
        return model.to(self.device)


# ----------------------------------------------------------------------------- training helpers


def transformers_config(config: ModelConfig, architecture: str = "gpt2") -> Any:
    """The transformers config of ``architecture`` with ``config``'s shape: GPT-2's
    ``n_embd = d_model``, ``n_layer``, ``n_head``, ``n_inner = d_ff``, ``n_positions =
    max_len`` and ``dropout`` as ``resid_pdrop``, ``embd_pdrop`` and ``attn_pdrop``; Llama's
    ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` (as many KV heads),
    ``intermediate_size``, ``max_position_embeddings`` and ``attention_dropout``. Special
    token ids are left unset (a model's export sets the tokenizer's)."""
    ids: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if architecture == "gpt2":
        from transformers import GPT2Config

        p = config.dropout
        return GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.max_len,
            n_embd=config.d_model,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            n_inner=config.d_ff,
            resid_pdrop=p,
            embd_pdrop=p,
            attn_pdrop=p,
            **ids,
        )
    if architecture == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            intermediate_size=config.d_ff,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_heads,
            max_position_embeddings=config.max_len,
            attention_dropout=config.dropout,
            **ids,
        )
    raise GramophoneError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")


def _config_from_dict(data: Mapping[str, Any]) -> Any:
    """A transformers config from its ``to_dict()`` (the class named by ``model_type``)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[data["model_type"]].from_dict(dict(data))


def _shape(config: ModelConfig) -> str:
    c = config
    return (
        f"d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, d_ff {c.d_ff}, "
        f"max_len {c.max_len}, vocabulary {c.vocab_size}, dropout {c.dropout:g}"
    )


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA fine-tune (peft): rank ``r``, scale ``alpha`` (the update is
    ``alpha / r * B @ A``), ``dropout`` on the adapters' input, and the ``target_modules``
    (None: :data:`LORA_TARGETS` of the model type).

    >>> LoraSpec.parse("r=4,alpha=8")
    LoraSpec(r=4, alpha=8.0, dropout=0.05, target_modules=None)
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise GramophoneError(f"--lora: r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise GramophoneError(f"--lora: alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise GramophoneError(f"--lora: dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(str(m) for m in self.target_modules))

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``r=8,alpha=16,dropout=0.05,targets=c_attn+c_proj`` (every key optional)."""
        fields: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = part.partition("=")
            try:
                if not eq:
                    raise ValueError
                if key == "r":
                    fields["r"] = int(value)
                elif key in ("alpha", "dropout"):
                    fields[key] = float(value)
                elif key == "targets":
                    fields["target_modules"] = tuple(v for v in value.split("+") if v)
                else:
                    raise GramophoneError(
                        f"--lora {text!r}: unknown key {key!r} (keys: r, alpha, dropout, targets)"
                    )
            except ValueError:
                raise GramophoneError(
                    f"--lora {text!r}: expected key=value pairs such as r=8,alpha=16,dropout=0.05, "
                    f"got {part!r}"
                ) from None
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        targets = None if self.target_modules is None else list(self.target_modules)
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target_modules": targets}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSpec:
        targets = data.get("target_modules")
        return cls(
            int(data["r"]),
            float(data["alpha"]),
            float(data["dropout"]),
            None if targets is None else tuple(targets),
        )


def _is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (only possible once peft was imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _merged(model: Any) -> Any:
    """A peft model's base with the adapters merged into its weights (in place), or ``model``."""
    return model.merge_and_unload() if _is_peft(model) else model


def _with_lora(model: Any, spec: LoraSpec, init: str | os.PathLike[str] | None = None) -> Any:
    """``model`` wrapped by peft with LoRA adapters of ``spec`` (only they train); ``init``,
    the base model's folder, is recorded as the adapter's base."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GramophoneError(f"--lora needs peft ({exc}): pip install 'gramophone[hf]'") from None
    model_type = model.config.model_type
    targets = spec.target_modules or LORA_TARGETS.get(model_type)
    if targets is None:
        raise GramophoneError(
            f"--lora: no default target modules for model type {model_type!r}: name them (targets=a+b)"
        )
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft says int; alpha / r takes any number
        lora_dropout=spec.dropout,
        target_modules=sorted(targets),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft's deprecation notes about transformers' names
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(model, config)
    if init is not None:
        wrapped.peft_config["default"].base_model_name_or_path = str(init)
    return wrapped


def _hf_meta(model: Any) -> dict[str, Any]:
    """``meta["hf"]`` of a training checkpoint: the (base) model's transformers config and
    the LoRA spec and base folder of a peft model."""
    base = model.get_base_model() if _is_peft(model) else model
    out: dict[str, Any] = {"model_type": base.config.model_type, "config": base.config.to_dict()}
    out |= {"lora": None, "init": None}
    if _is_peft(model):
        cfg = model.peft_config["default"]
        spec = LoraSpec(
            cfg.r, float(cfg.lora_alpha), float(cfg.lora_dropout), tuple(sorted(cfg.target_modules))
        )
        out |= {"lora": spec.to_dict(), "init": cfg.base_model_name_or_path}
    return out


def _save_weights(model: Any, path: Path) -> None:
    """The model's state dict as safetensors (tied tensors once: safetensors' ``save_model``)."""
    from safetensors.torch import save_model

    save_model(model, str(path))


def _load_weights(model: Any, path: Path) -> None:
    """Read :func:`_save_weights`' file into ``model`` (every tensor, strictly)."""
    from safetensors.torch import load_model

    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except Exception as exc:  # safetensors and torch raise many kinds on a bad file
        raise CheckpointError(f"{path}: does not fit the model of its config ({_first_line(exc)})") from None


def _special_ids(tokenizer: MusicTokenizer) -> dict[str, int]:
    """``generate``'s ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id``: the
    tokenizer's BOS, EOS and PAD model ids (those it has)."""
    from gramophone.tokenizers import model_vocab

    learned = model_vocab(tokenizer)
    base = {t: i for i, t in enumerate(learned.base)}
    out = {}
    for key, name in (
        ("bos_token_id", "BOS_None"),
        ("eos_token_id", "EOS_None"),
        ("pad_token_id", "PAD_None"),
    ):
        if name in base and int(learned.single[base[name]]) >= 0:
            out[key] = int(learned.single[base[name]])
    return out
