"""Mask step and compile time: gramophone against the peer engines, on one REMI language.

Two questions, one record each (see :mod:`gramophone.bench`):

- ``mask_step`` (``us_per_step``, at ``batch`` 1 and 64): the cost, per decoding step and
  for the whole batch, of computing the next-token mask, applying it to a ``float32[B, V]``
  logits array, choosing the token (argmax of the masked logits) and advancing the state.
- ``compile`` (``ms``): from grammar text to a first mask; ``cache`` says whether a cache
  was cold or warm.

Systems:

- ``gramophone-numpy`` / ``-torch`` / ``-jax`` / ``-numba``: gramophone's own step kernels
  (:mod:`gramophone.kernels`, what decoding runs) on the decoding tables: ``path="cheap"``
  (far from the budget's end: AND of the groups' rows), ``path="exact"`` (the distance table
  read at every step, as in a budget's last steps) and ``path="floor"`` (the same gather,
  where and argmax on a ``bool[16, V]`` table that stays in cache: what no row-table mask can
  beat). JAX runs the steps in one jitted ``lax.scan`` (``loop="lax.scan"``) and one jitted
  step per Python call (``loop="python"``); numba runs :func:`gramophone.kernels.numba.step`
  (each row's argmax, then mask, choice and advance in one compiled call, the state advanced
  in place with ``out=`` as the README's loop does; its floor is the same call on the
  ``bool[16, V]`` table packed as one group);
- ``xgrammar`` (EBNF), ``llguidance`` (lark), ``outlines-core`` (regex): their documented
  matcher APIs, the bitmask filled per stream and applied with the peer's own kernel.

Every system walks the same real chorale streams (the first tokens of ``batch`` streams of
the shipped config): the logits of each step are noise with the stream's next token on
top, so the argmax of the masked logits *is* the real token and every system visits the
same states; a system whose mask rejects a real token is recorded with ``status: "error"``.
Timing: one untimed warm-up pass (JIT, caches), then the median of ``repeats`` passes, each
from fresh matchers/states, divided by the number of steps. Each step is timed on its own,
from the moment the model's logits are in their array to the next state: before it, untimed,
the model writes its logits into the array the system masks (numpy, or a torch tensor for
torch and xgrammar; a fresh array for JAX), so the step finds them where a real one does,
just written and in the caches; the peers mask that array in place, as their kernels are
meant to be used. JAX's ``lax.scan`` loop is the exception: its logits are on the device
before the pass, which is timed whole. Frameworks and peers are imported inside the
functions that use them; a peer that is not installed gives records with ``value: null``
and ``status: "missing"``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer_grammars import (
    DELIMITER,
    LEVELS,
    RemiTokens,
    peer_tokens,
    remi_grammar,
    render,
)
from gramophone.bench.common import markdown_table, record, timed

__all__ = [
    "BATCHES",
    "CANNOT_EXPRESS",
    "COMPARED_LEVEL",
    "DIALECT",
    "OURS",
    "PEERS",
    "PeerEngine",
    "compile_records",
    "grammar_text",
    "markdown",
    "mask_step_records",
    "missing_records",
    "peer_available",
    "peer_engine",
    "run",
]

#: Peer engines and the modules each needs (the ``bench`` extra installs them): xgrammar
#: masks torch tensors, outlines-core's numpy kernels are numba functions.
PEERS: dict[str, tuple[str, ...]] = {
    "xgrammar": ("xgrammar", "torch"),
    "outlines-core": ("outlines_core", "numba"),
    "llguidance": ("llguidance",),
}
#: gramophone's steppers and the framework each needs (none: numpy only).
OURS: dict[str, tuple[str, ...]] = {
    "gramophone-numpy": (),
    "gramophone-torch": ("torch",),
    "gramophone-jax": ("jax",),
    "gramophone-numba": ("numba",),
}
BATCHES = (1, 64)
#: The grammar text each peer reads.
DIALECT = {"xgrammar": "ebnf", "llguidance": "lark", "outlines-core": "regex"}
#: How each peer's grammar writes ascending pitches (the faster form for it, measured:
#: xgrammar's step is ~20% faster with the automaton's rules, llguidance's ~35% faster with
#: divide and conquer; a regex can only inline divide and conquer).
NOTE_ORDER_FORM = {"xgrammar": "automaton", "llguidance": "divide", "outlines-core": "divide"}
#: The level each peer is compared on: the whole language (syntax, time, note order).
COMPARED_LEVEL = {"xgrammar": "full", "llguidance": "full", "outlines-core": "full"}
#: With ``quick``, outlines-core is compared on a smaller level (the full regex takes ~40 s).
QUICK_LEVEL = {"outlines-core": "syntax+time"}

#: What each peer's grammar cannot express, or what it costs to express it (for the report).
CANNOT_EXPRESS: dict[str, str] = {
    "xgrammar": (
        "Nothing, for the shipped config: EBNF has rules, so the time constraint is one chain "
        "of optional (Position_i notes) per time signature, positions in increasing order and "
        "below the bar's length, and the note order is the note-order automaton written as "
        "one rule per last pitch; the full grammar accepts exactly gramophone's language. "
        "Not written for any peer: rests (time carried across bar lines by note ends), "
        "tempos, chords, programs, pedals and pitch bends; such configs raise "
        "UnsupportedConfigError in benchmarks.peer_grammars."
    ),
    "llguidance": (
        "Nothing, for the shipped config: the same language in llguidance's lark, each group "
        "of tokens one terminal (one lexeme), the note order by divide and conquer (faster "
        "for its Earley parser than one rule per last pitch). Its byte forcing must be off "
        '(%llguidance {"no_forcing": true}): forced bytes such as "Velocity_" cannot be '
        "spelled by our tokens (there are no byte tokens), and with forcing on the mask keeps "
        "a single token. Same config limits as xgrammar."
    ),
    "outlines-core": (
        "Nothing, for the shipped config, but at a price: a regex has no rules, so what a "
        "grammar shares by name is copied. The notes expression is copied into each of the "
        "184 (time signature, position) slots of the time chain, and ascending pitches are "
        "written by divide and conquer (n log n pitch units); with both constraints the "
        "regex is 4.6 MB and outlines-core compiles it into a 160,821-state index in tens of "
        "seconds (see the compile table). `--quick` compares it on syntax+time. Same config "
        "limits as xgrammar."
    ),
}


def _missing_module(system: str) -> str | None:
    """The first module ``system`` needs that cannot be imported (None: all can)."""
    for module in PEERS.get(system) or OURS[system]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):  # e.g. sys.modules[module] is None
            return module
    return None


def peer_available(system: str) -> bool:
    """Whether every module a peer (or one of our framework steppers) needs is installed."""
    return _missing_module(system) is None


def missing_records(system: str) -> list[dict[str, Any]]:
    """The records of a system that is not installed: ``value`` null, ``status`` missing."""
    module = _missing_module(system) or (PEERS.get(system) or OURS[system] or ("?",))[0]
    extra = "bench" if system in PEERS else module
    notes = f"{module} is not installed (pip install 'gramophone[{extra}]')"
    out = [
        record("mask_step", system, "us_per_step", None, "us", batch=b, status="missing", notes=notes)
        for b in BATCHES
    ]
    if system in PEERS:
        out.append(record("compile", system, "ms", None, "ms", cache="cold", status="missing", notes=notes))
    return out


def grammar_text(system: str, tokens: RemiTokens, level: str) -> str:
    """The grammar ``system`` reads for the REMI language at ``level``."""
    return render(remi_grammar(tokens, level, note_order=NOTE_ORDER_FORM[system]), DIALECT[system])


# -- systems -----------------------------------------------------------------------------------
class _Stepper(ABC):
    """One system's decoding loop: ``prepare`` and ``write`` untimed, ``step`` timed.

    Each step the model writes its logits into ``buffer`` (``write``, untimed: the output
    of its last layer, in the caches as a real step finds it), then ``step`` masks them,
    takes the argmax and advances."""

    #: How a step is done (the records' ``notes``).
    how = ""
    #: True: the system runs every step in one call (``whole_pass``), not ``step``.
    fused = False

    def buffer(self, batch: int, width: int) -> Any:
        """The array the model writes each step's logits into."""
        return np.empty((batch, width), dtype=np.float32)

    def write(self, buffer: Any, logits: np.ndarray) -> Any:
        """One step's logits ``float32[B, W]`` written into ``buffer`` (a numpy array, or a
        torch tensor: ``np.asarray`` is a view of its memory); what ``step`` reads."""
        np.asarray(buffer)[:] = logits
        return buffer

    @abstractmethod
    def prepare(self, batch: int) -> Any:
        """Fresh states (or matchers) for ``batch`` streams."""

    @abstractmethod
    def step(self, state: Any, logits: Any) -> tuple[Any, Any]:
        """One step: the state after it and the chosen tokens (the system's own array)."""

    def whole_pass(self, state: Any, logits: np.ndarray) -> tuple[float, np.ndarray]:
        """Seconds and tokens ``int[B, T]`` of every step in one call: only for ``fused``
        systems (:func:`_time_steps` calls ``step`` for the others)."""
        raise NotImplementedError(f"{type(self).__name__} runs step by step (fused is False)")


class _Kernels(_Stepper):
    """gramophone's own step kernels (:mod:`gramophone.kernels`, the code decoding runs):
    ``allowed``, ``apply``, argmax, ``advance``, on the decoding tables, from the state
    after BOS. ``path``: ``cheap`` (far from the budget's end: the AND of the groups' rows),
    ``exact`` (the distance table read at every step, as in the last steps of a budget), or
    ``floor`` (one gather of a ``bool[16, V]`` table small enough to stay in cache, where,
    argmax, one gather for the next state: the least any row-table mask can cost)."""

    def __init__(self, framework: str, tables: Any, path: str = "cheap", scan: bool = False) -> None:
        import dataclasses

        from gramophone.decoding.rules import INF

        self.framework, self.path, self.scan = framework, path, scan
        self.fused = scan  # JAX: all steps in one jitted lax.scan
        if path == "exact":
            tables = dataclasses.replace(tables, max_distance=INF)  # the exact mask at every step
        self.tables = tables
        self.remaining = 1 << 20
        self.state0 = tables.step(tables.start, tables.bos)
        V = tables.vocab_size
        rng = np.random.default_rng(0)
        self.floor = np.ones((16, V), dtype=bool)  # allows the real token: same work as any row
        self.floor_next = rng.integers(0, 16, (16, V))
        loop = "all steps in one jitted lax.scan" if scan else "a Python loop"
        self.how = (
            f"gramophone.kernels.{framework} ({path} mask: "
            + ("bool[16, V] table" if path == "floor" else f"{tables.num_groups} groups")
            + f"), {loop}"
        )
        if framework == "torch":
            import torch

            from gramophone.kernels import torch as torch_kernels

            self.K: Any = torch_kernels
            self.tab: Any = torch_kernels.device_tables(tables)
            self.floor_t, self.next_t = torch.from_numpy(self.floor), torch.from_numpy(self.floor_next)
        elif framework == "jax":
            self._setup_jax()
        elif framework == "numba":
            pass  # _NumbaKernels.__init__
        else:
            from gramophone.kernels import numpy as numpy_kernels

            self.K, self.tab = numpy_kernels, tables

    def _setup_jax(self) -> None:
        import jax
        import jax.numpy as jnp

        from gramophone.kernels import jax as jax_kernels

        K: Any = jax_kernels
        self.jax, self.K, self.tab = jax, K, K.device_tables(self.tables)
        floor, floor_next = jnp.asarray(self.floor), jnp.asarray(self.floor_next, jnp.int32)
        remaining = self.remaining

        def step(tab: Any, state: Any, logits: Any) -> tuple[Any, Any]:
            if self.path == "floor":
                tok = jnp.argmax(jnp.where(floor[state], logits, -jnp.inf), axis=1)
                return floor_next[state, tok], tok
            tok = jnp.argmax(K.apply(logits, K.allowed(tab, state, remaining)), axis=1).astype(jnp.int32)
            return K.advance(tab, state, tok), tok

        def walk(tab: Any, state: Any, logits: Any) -> Any:
            return jax.lax.scan(lambda s, x: step(tab, s, x), state, logits)[1]

        self.step_fn, self.walk_fn = jax.jit(step), jax.jit(walk)

    def buffer(self, batch: int, width: int) -> Any:
        if self.framework == "torch":
            import torch

            return torch.empty((batch, width), dtype=torch.float32)
        return super().buffer(batch, width)

    def write(self, buffer: Any, logits: np.ndarray) -> Any:
        if self.framework == "jax":
            return self.jax.numpy.array(logits).block_until_ready()  # a fresh device array
        return super().write(buffer, logits)

    def prepare(self, batch: int) -> Any:
        floor = self.path == "floor"
        state = np.zeros(batch, dtype=np.int64) if floor else np.tile(self.state0, (batch, 1))
        if self.framework == "torch":
            import torch

            return torch.from_numpy(state.astype(np.int64))
        if self.framework == "jax":
            return self.jax.numpy.asarray(state, self.jax.numpy.int32)
        return state

    def step(self, state: Any, logits: Any) -> tuple[Any, Any]:
        K, tab = self.K, self.tab
        floor = self.path == "floor"
        if self.framework == "jax":
            state, tok = self.step_fn(tab, state, logits)
            return state, tok.block_until_ready()
        if self.framework == "torch":
            import torch

            with torch.inference_mode():
                if floor:
                    tok = logits.masked_fill(~self.floor_t.index_select(0, state), -torch.inf).argmax(dim=1)
                    return self.next_t[state, tok], tok
                tok = K.apply(logits, K.allowed(tab, state, self.remaining)).argmax(dim=1)
                return K.advance(tab, state, tok), tok
        if floor:
            tok = np.where(self.floor[state], logits, -np.inf).argmax(axis=1)
            return self.floor_next[state, tok], tok
        tok = K.apply(logits, K.allowed(tab, state, self.remaining)).argmax(axis=1)
        return K.advance(tab, state, tok), tok

    def whole_pass(self, state: Any, logits: np.ndarray) -> tuple[float, np.ndarray]:
        inputs = self.jax.device_put(logits).block_until_ready()  # on the device before the pass
        t0 = time.perf_counter()
        tokens = self.walk_fn(self.tab, state, inputs).block_until_ready()
        return time.perf_counter() - t0, np.asarray(tokens).T


class _NumbaKernels(_Kernels):
    """gramophone.kernels.numba: mask, apply, argmax and advance in one compiled call
    (``step``), the state advanced in place and the tokens written into one array
    (``out=``), as a decoding loop that keeps its arrays does (see the README)."""

    def __init__(self, tables: Any, path: str = "cheap") -> None:
        import dataclasses

        from gramophone.kernels import numba as numba_kernels

        super().__init__("numba", tables, path)
        self.how += ", the state advanced in place (out=)"
        self.K = numba_kernels
        self.tab = numba_kernels.device_tables(self.tables)
        if path == "floor":  # the same call on the bool[16, V] table, packed as one group
            self.tab = dataclasses.replace(
                self.tab, bits=numba_kernels.pack_rows(self.floor),
                next=self.floor_next.astype(self.tab.next.dtype), layout=np.zeros((2, 1), np.int64),
                max_distance=0, start=np.zeros(1, np.int32),
            )  # fmt: skip
        self.token = np.empty(0, dtype=np.int32)

    def prepare(self, batch: int) -> Any:
        self.token = np.empty(batch, dtype=np.int32)
        return np.ascontiguousarray(np.reshape(super().prepare(batch), (batch, -1)), dtype=np.int32)

    def step(self, state: Any, logits: Any) -> tuple[Any, Any]:
        tok, state = self.K.step(self.tab, state, logits, self.remaining, out=(self.token, state))
        return state, tok


class PeerEngine(_Stepper):
    """A peer engine over the delimited vocabulary (:func:`peer_tokens`), one grammar text.

    ``compile`` is from text to a compiled grammar; ``accepts`` runs one whole stream (and
    the stop token); ``prepare``/``step`` are the batched decoding loop.
    """

    system = ""
    #: What :meth:`cached` measures.
    cache_note = ""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.tokens = peer_tokens(vocab)
        self.stop = len(vocab)  # the peers' stop token
        self.width = len(self.tokens)  # logits columns: the vocabulary and the stop token
        self.compiled: Any = None

    @abstractmethod
    def compile(self, text: str) -> Any:
        """Compile ``text``; the result is kept for ``accepts``/``prepare``."""

    @abstractmethod
    def first_mask(self) -> None:
        """Build one matcher and fill its first mask (the end of a compile measurement)."""

    @abstractmethod
    def accepts(self, ids: Sequence[int]) -> bool:
        """Whether the compiled grammar accepts the whole stream ``ids``."""

    @abstractmethod
    def masks(self, ids: Sequence[int]) -> np.ndarray:
        """``bool[len(ids) + 1, width]``: the tokens allowed before each token of ``ids``
        and after the last (``ids`` must be allowed)."""

    def cached(self, text: str) -> Callable[[], object] | None:
        """After :meth:`compile`: a function that gets ``text`` compiled again from the
        peer's cache and fills a first mask (None: the peer has no cache)."""
        return None


def _unpack(words: np.ndarray, width: int) -> np.ndarray:
    """``bool[width]`` from a bitmask row ``int32[ceil(width / 32)]`` (bit j of word k: token
    32 k + j, as every peer writes it)."""
    bits = np.unpackbits(np.ascontiguousarray(words, dtype=np.int32).view(np.uint8), bitorder="little")
    return bits[:width].astype(bool)


class _Xgrammar(PeerEngine):
    system = "xgrammar"
    cache_note = "GrammarCompiler's cache hit, then the first mask"
    how = (
        "BatchGrammarMatcher(max_threads=1).batch_fill_next_token_bitmask, "
        "apply_token_bitmask_inplace on torch CPU tensors, batch_accept_token"
    )

    def __init__(self, vocab: Sequence[str]) -> None:
        super().__init__(vocab)
        import torch
        import xgrammar as xgr

        self.xgr = xgr
        self.torch = torch
        self.info = xgr.TokenizerInfo(
            self.tokens, xgr.VocabType.RAW, vocab_size=self.width, stop_token_ids=[self.stop]
        )
        self.compiler: Any = None

    def compile(self, text: str) -> Any:
        # One thread (the default is 8): the machine is shared, and gramophone uses one.
        self.compiler = self.xgr.GrammarCompiler(self.info, max_threads=1)
        self.compiled = self.compiler.compile_grammar(text)
        return self.compiled

    def cached(self, text: str) -> Callable[[], object] | None:
        compiler = self.compiler

        def again() -> None:
            self.compiled = compiler.compile_grammar(text)  # a cache hit
            self.first_mask()

        return again

    def first_mask(self) -> None:
        bitmask = self.xgr.allocate_token_bitmask(1, self.width)
        self.xgr.GrammarMatcher(self.compiled).fill_next_token_bitmask(bitmask)

    def accepts(self, ids: Sequence[int]) -> bool:
        m = self.xgr.GrammarMatcher(self.compiled)
        return all(m.accept_token(int(i)) for i in ids) and bool(m.accept_token(self.stop))

    def masks(self, ids: Sequence[int]) -> np.ndarray:
        m = self.xgr.GrammarMatcher(self.compiled)
        bitmask = self.xgr.allocate_token_bitmask(1, self.width)
        out = []
        for i in [*ids, None]:
            m.fill_next_token_bitmask(bitmask)
            out.append(_unpack(bitmask.numpy()[0], self.width))
            if i is not None and not m.accept_token(int(i)):
                raise ValueError(f"token {i} is not allowed")
        return np.array(out)

    def buffer(self, batch: int, width: int) -> Any:
        return self.torch.empty((batch, width), dtype=self.torch.float32)

    def prepare(self, batch: int) -> Any:
        matchers = [self.xgr.GrammarMatcher(self.compiled) for _ in range(batch)]
        bitmask = self.xgr.allocate_token_bitmask(batch, self.width)
        return matchers, self.xgr.BatchGrammarMatcher(max_threads=1), bitmask

    def step(self, state: Any, logits: Any) -> tuple[Any, Any]:
        xgr = self.xgr
        matchers, batch_matcher, bitmask = state
        batch_matcher.batch_fill_next_token_bitmask(matchers, bitmask)
        xgr.apply_token_bitmask_inplace(logits, bitmask)  # the model's logits, in place
        toks = logits.argmax(dim=1).tolist()
        xgr.BatchGrammarMatcher.batch_accept_token(matchers, toks)
        return state, toks


class _VocabWrapper:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, eos, and an encoder."""

    def __init__(self, tokens: Sequence[str], stop: int) -> None:
        self.tokens = [t.encode() for t in tokens]
        self.eos_token_id = stop
        self.bos_token_id = None
        self.special_token_ids = [stop]
        self._index = {t: i for i, t in enumerate(tokens)}

    def __call__(self, text: str | bytes) -> list[int]:
        """Whole delimited tokens of ``text`` (a partial last name is left out)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        out = []
        for word in text.split(" ")[:-1]:
            i = self._index.get(word + " ")
            if i is None:
                break
            out.append(i)
        return out


class _LLGuidance(PeerEngine):
    system = "llguidance"
    how = (
        "LLExecutor(num_threads=1): llguidance.numpy fill_next_token_bitmask_par, "
        "apply_token_bitmask_inplace, consume_token_par"
    )

    def __init__(self, vocab: Sequence[str]) -> None:
        super().__init__(vocab)
        import llguidance
        import llguidance.numpy as llnp

        self.llg = llguidance
        self.llnp = llnp
        self.tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(_VocabWrapper(self.tokens, self.stop))
        )

    def compile(self, text: str) -> Any:
        m = self.llg.LLMatcher(self.tokenizer, text, log_level=0)
        if m.is_error():
            raise ValueError(f"llguidance rejected the grammar: {m.get_error()}")
        self.compiled = m
        return m

    def first_mask(self) -> None:
        bitmask = self.llnp.allocate_token_bitmask(1, self.width)
        self.llnp.fill_next_token_bitmask(self.compiled.deep_copy(), bitmask)

    def accepts(self, ids: Sequence[int]) -> bool:
        m = self.compiled.deep_copy()
        return bool(m.consume_tokens([int(i) for i in ids])) and bool(m.is_accepting())

    def masks(self, ids: Sequence[int]) -> np.ndarray:
        m = self.compiled.deep_copy()
        bitmask = self.llnp.allocate_token_bitmask(1, self.width)
        out = []
        for i in [*ids, None]:
            self.llnp.fill_next_token_bitmask(m, bitmask)
            out.append(_unpack(bitmask[0], self.width))
            if i is not None and not m.consume_token(int(i)):
                raise ValueError(f"token {i} is not allowed")
        return np.array(out)

    def prepare(self, batch: int) -> Any:
        matchers = [self.compiled.deep_copy() for _ in range(batch)]
        slots = [(m, i) for i, m in enumerate(matchers)]
        bitmask = self.llnp.allocate_token_bitmask(batch, self.width)
        return matchers, slots, self.llg.LLExecutor(num_threads=1), bitmask

    def step(self, state: Any, logits: np.ndarray) -> tuple[Any, Any]:
        llnp = self.llnp
        matchers, slots, executor, bitmask = state
        llnp.fill_next_token_bitmask_par(executor, slots, bitmask)
        llnp.apply_token_bitmask_inplace(logits, bitmask)  # the model's logits, in place
        toks = logits.argmax(axis=1).tolist()
        llnp.consume_token_par(executor, list(zip(matchers, toks, strict=True)))
        return state, toks


class _OutlinesCore(PeerEngine):
    system = "outlines-core"
    cache_note = "a pickled Index loaded (it has no cache of its own), then the first mask"
    how = (
        "a Guide per stream: kernels.numpy fill_next_token_bitmask per stream, "
        "apply_token_bitmask_inplace (numba) on the batch, Guide.advance"
    )

    def __init__(self, vocab: Sequence[str]) -> None:
        super().__init__(vocab)
        import outlines_core
        from outlines_core.kernels import numpy as ocnp  # needs numba

        self.oc = outlines_core
        self.ocnp = ocnp
        self.vocabulary = outlines_core.Vocabulary(
            self.stop, {t: [i] for i, t in enumerate(self.tokens[: self.stop])}
        )

    def compile(self, text: str) -> Any:
        self.compiled = self.oc.Index(text, self.vocabulary)
        return self.compiled

    def cached(self, text: str) -> Callable[[], object] | None:
        # outlines-core has no cache of its own: an Index is kept by pickling it.
        blob = pickle.dumps(self.compiled)

        def load() -> None:
            self.compiled = pickle.loads(blob)
            self.first_mask()

        return load

    def first_mask(self) -> None:
        mask = self.ocnp.allocate_token_bitmask(self.width)
        self.ocnp.fill_next_token_bitmask(self.oc.Guide(self.compiled), mask)

    def accepts(self, ids: Sequence[int]) -> bool:
        index = self.compiled
        s = index.get_initial_state()
        for i in ids:
            s = index.get_next_state(s, int(i))
            if s is None:
                return False
        return bool(index.is_final_state(s))

    def masks(self, ids: Sequence[int]) -> np.ndarray:
        guide = self.oc.Guide(self.compiled)
        bitmask = self.ocnp.allocate_token_bitmask(self.width)
        out = []
        for i in [*ids, None]:
            self.ocnp.fill_next_token_bitmask(guide, bitmask)
            out.append(_unpack(bitmask[0], self.width))
            if i is not None:
                guide.advance(int(i), return_tokens=False)
        return np.array(out)

    def prepare(self, batch: int) -> Any:
        guides = [self.oc.Guide(self.compiled) for _ in range(batch)]
        bitmask = np.full((batch, (self.width + 31) // 32), -1, dtype=np.int32)
        rows = [bitmask[i : i + 1] for i in range(batch)]  # (1, words) views: one per guide
        return guides, rows, bitmask

    def step(self, state: Any, logits: np.ndarray) -> tuple[Any, Any]:
        ocnp = self.ocnp
        guides, rows, bitmask = state
        for guide, row in zip(guides, rows, strict=True):
            ocnp.fill_next_token_bitmask(guide, row)
        ocnp.apply_token_bitmask_inplace(logits, bitmask)  # the model's logits, in place
        toks = logits.argmax(axis=1).tolist()
        for guide, tok in zip(guides, toks, strict=True):
            guide.advance(tok, return_tokens=False)
        return state, toks


_ENGINES: dict[str, type[PeerEngine]] = {
    "xgrammar": _Xgrammar,
    "llguidance": _LLGuidance,
    "outlines-core": _OutlinesCore,
}


def peer_engine(system: str, vocab: Sequence[str]) -> PeerEngine:
    """The engine of an installed peer over ``vocab`` (raises ImportError when missing)."""
    return _ENGINES[system](vocab)


# -- measurements --------------------------------------------------------------------------------
def _walk_tokens(streams: Sequence[Sequence[int]], batch: int, steps: int) -> np.ndarray:
    """``int64[batch, steps]``: the first tokens of ``batch`` streams (cycled if too few),
    BOS left out (every system starts after it)."""
    streams = [s[1:] if s and s[0] == 1 else s for s in streams]  # BOS is id 1 (base and BPE ids)
    long_enough = [s for s in streams if len(s) >= steps]
    if not long_enough:
        raise ValueError(f"no stream has {steps} tokens")
    return np.array([long_enough[i % len(long_enough)][:steps] for i in range(batch)], dtype=np.int64)


def _logits(tokens: np.ndarray, width: int, seed: int = 0) -> np.ndarray:
    """``float32[T, B, width]``: noise, with each stream's next token on top."""
    B, T = tokens.shape
    logits = np.random.default_rng(seed).standard_normal((T, B, width), dtype=np.float32)
    logits[np.arange(T)[:, None], np.arange(B)[None, :], tokens.T] = 100.0
    return logits


def _time_steps(stepper: _Stepper, logits: np.ndarray, repeats: int) -> tuple[list[float], np.ndarray]:
    """Microseconds per step (whole batch) of each timed pass, and the tokens chosen in the
    untimed warm-up pass (JIT, caches). Each step is timed on its own: the model's writing
    of its logits (``write``) is left out, the step that reads them is in."""
    steps, batch, width = logits.shape
    passes, chosen = [], np.empty((batch, steps), dtype=np.int64)
    buffer = stepper.buffer(batch, width)
    for i in range(repeats + 1):
        state = stepper.prepare(batch)
        if stepper.fused:
            seconds, tokens = stepper.whole_pass(state, logits)
            chosen[:] = tokens
        else:
            seconds = 0.0
            for t in range(steps):
                x = stepper.write(buffer, logits[t])
                t0 = time.perf_counter()
                state, tok = stepper.step(state, x)
                seconds += time.perf_counter() - t0
                if i == 0:
                    chosen[:, t] = np.asarray(tok)
        if i > 0:
            passes.append(1e6 * seconds / steps)
    return passes, chosen


def _measure(
    system: str,
    stepper: _Stepper,
    tokens: np.ndarray,
    width: int,
    repeats: int,
    **params: Any,
) -> dict[str, Any]:
    logits = _logits(tokens, width)
    passes, chosen = _time_steps(stepper, logits, repeats)
    B, T = tokens.shape
    common = {"batch": B, "steps": T, "repeats": repeats, **params}
    wrong = np.argwhere(chosen != tokens)
    if wrong.size:
        b, t = (int(x) for x in wrong[0])
        return record(
            "mask_step", system, "us_per_step", None, "us", status="error", **common,
            notes=f"stream {b} step {t}: chose {chosen[b, t]}, the real token is {tokens[b, t]} "
            "(the mask rejected a real token)",
        )  # fmt: skip
    us = round(statistics.median(passes), 2)
    common["notes"] = stepper.how
    return record(
        "mask_step", system, "us_per_step", us, "us", status="ok", min_us=round(min(passes), 2), **common
    )


def _our_steppers(system: str, tables: Any) -> list[tuple[_Stepper, dict[str, Any]]]:
    """gramophone's steppers for ``system`` (its kernels), with the parameters of their records."""
    framework = system.removeprefix("gramophone-")
    loops = [("lax.scan", True), ("python", False)] if framework == "jax" else [("python", False)]
    return [
        (
            _NumbaKernels(tables, path) if framework == "numba" else _Kernels(framework, tables, path, scan),
            {"grammar": "full", "loop": loop, "path": path},
        )
        for loop, scan in loops
        for path in ("cheap", "exact", "floor")
    ]


def mask_step_records(
    streams: Sequence[Sequence[int]],
    *,
    batches: Sequence[int] = BATCHES,
    steps: int = 256,
    repeats: int = 5,
    quick: bool = False,
    systems: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda _m: None,
    tokenizer: Any = None,
    tokenizer_name: str = "remi",
    levels: Mapping[str, Sequence[str]] | None = None,
    isolate: bool = False,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """``mask_step`` records of every system (``systems``: a subset) on ``streams`` (model
    ids of ``tokenizer``, default the shipped config), ``steps`` steps at each batch size.

    ``isolate``: each system in a fresh process. In one process a system measured after
    torch or JAX has run is up to 2x slower on a 2-core machine (measured: numba's step 24 us
    at batch 64 after them, 12 us alone; their thread pools and allocations stay), which
    would favour whoever runs first. ``rounds`` (with ``isolate``): every system measured
    that many times in turn, each record the median of its rounds (``round_values``): this
    shared machine's speed drifts over minutes (the same numba step measured 7 to 12 us
    within an hour), and rounds spread every system over the same stretch of time.

    A trained ``tokenizer`` gives the peers its learned vocabulary natively: each learned
    token is the concatenation of its base tokens' delimited names (they handle tokens that
    span several terminals); gramophone decodes with its lifted tables. ``levels``: the
    grammar levels to run per peer (default: ``syntax`` and the compared level)."""
    chosen = list(OURS) + list(PEERS) if systems is None else list(systems)
    if isolate:
        import multiprocessing

        kwargs = {"batches": batches, "steps": steps, "repeats": repeats, "quick": quick,
                  "tokenizer": tokenizer, "tokenizer_name": tokenizer_name, "levels": levels}  # fmt: skip
        by_round: list[list[dict[str, Any]]] = []
        for i in range(rounds):
            out: list[dict[str, Any]] = []
            for system in chosen:
                log(f"mask_step {system} ({tokenizer_name}), round {i + 1} of {rounds}, in a fresh process")
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    out += pool.apply(mask_step_records, (streams,), {**kwargs, "systems": [system]})
            by_round.append(out)
        return _merge_rounds(by_round)

    from gramophone.decoding.tables import decoding_tables
    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer, model_vocab

    tok = tokenizer if tokenizer is not None else load_tokenizer()
    auto = compile_remi(tok)
    learned = model_vocab(tok)
    # the peers' names: base names joined by their delimiter (the last one is added by
    # peer_tokens); an empty learned piece gets a name no grammar matches
    names = [
        DELIMITER.join(auto.vocab[b] for b in piece) if piece else f"<empty-{i}>"
        for i, piece in enumerate(learned.pieces)
    ]
    V = len(names)
    common = {"tokenizer": tokenizer_name, "vocab_size": V}
    records: list[dict[str, Any]] = []
    token_sets = {b: _walk_tokens(streams, b, steps) for b in batches}
    tables = decoding_tables(auto, learned=learned)
    remi_tokens = RemiTokens.from_tokenizer(tok)

    for system in chosen:
        if not peer_available(system):
            records += [{**r, **common} for r in missing_records(system) if r["benchmark"] == "mask_step"]
            continue
        log(f"mask_step {system} ({tokenizer_name})")
        if system in OURS:
            with _one_torch_thread():
                for stepper, params in _our_steppers(system, tables):
                    for b in batches:
                        rec = _measure(system, stepper, token_sets[b], V, repeats, **params, **common)
                        records.append(rec)
            continue
        compared = (QUICK_LEVEL if quick else {}).get(system, COMPARED_LEVEL[system])
        todo = list((levels or {}).get(system, dict.fromkeys(("syntax", compared))))
        try:
            engine = peer_engine(system, names)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic (pyo3) is a BaseException
            why = f"the engine refuses this vocabulary: {type(exc).__name__}: {str(exc)[:200]}"
            records += [
                record("mask_step", system, "us_per_step", None, "us", status="error", batch=b,
                       grammar=level, notes=why, **common)
                for level in todo for b in batches
            ]  # fmt: skip
            continue
        for level in todo:
            engine.compile(grammar_text(system, remi_tokens, level))
            with _one_torch_thread():
                for b in batches:
                    params = {"grammar": level, "loop": "python", **common}
                    rec = _measure(system, engine, token_sets[b], engine.width, repeats, **params)
                    records.append(rec)
    return records


def _merge_rounds(by_round: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per measurement: the median value of its rounds (records of one round
    come in the same order in every round); a round that failed gives its record as is."""
    merged = []
    for same in zip(*by_round, strict=True):
        failed = [r for r in same if r.get("status") != "ok" or r["value"] is None]
        if failed or len(same) == 1:
            merged.append(dict(failed[0] if failed else same[0]))
            continue
        values = [r["value"] for r in same]
        fastest = min(r["min_us"] for r in same)
        median = round(statistics.median(values), 2)
        rounds = {"rounds": len(same), "round_values": values}
        merged.append({**same[0], "value": median, "min_us": fastest, **rounds})
    return merged


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread while measuring (restored after), like the peers."""
    if not peer_available("gramophone-torch"):
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def compile_records(*, repeats: int = 3, quick: bool = False) -> list[dict[str, Any]]:
    """``compile`` records: gramophone (cold, cached, dense product) and every peer at
    every level, from grammar text to a first mask."""
    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer

    tok = load_tokenizer()
    records: list[dict[str, Any]] = []

    def ms(samples: list[float]) -> float:
        return round(1000 * statistics.median(samples), 2)

    def ours(use_cache: bool) -> None:
        auto = compile_remi(tok, use_cache=use_cache)
        auto.allowed(auto.start_states)

    old = os.environ.get("GRAMOPHONE_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAMOPHONE_CACHE"] = cache
        try:
            cold = timed(lambda: ours(False), repeats)
            ours(True)  # fill the cache
            warm = timed(lambda: ours(True), max(repeats, 5))
        finally:
            if old is None:
                del os.environ["GRAMOPHONE_CACHE"]
            else:
                os.environ["GRAMOPHONE_CACHE"] = old
    note = "compile_remi: syntax DFA + time + note-order components, then the first mask"
    records.append(
        record("compile", "gramophone", "ms", ms(cold), "ms", cache="cold", grammar="full", notes=note)
    )
    note = "compile_remi from its .npz cache, then the first mask"
    records.append(
        record("compile", "gramophone", "ms", ms(warm), "ms", cache="cached", grammar="full", notes=note)
    )
    auto = compile_remi(tok)
    dense = timed(auto.product, 1 if quick else repeats)
    size = f"int32[{auto.product().num_states:,} x {len(auto.vocab)}]"
    note = f"Automaton.product(): the dense table {size} that gramophone-torch/jax step on"
    records.append(
        record("compile", "gramophone-dense", "ms", ms(dense), "ms", cache="cold", grammar="full", notes=note)
    )

    tokens = RemiTokens.from_tokenizer(tok)
    for system in PEERS:
        if not peer_available(system):
            records += [r for r in missing_records(system) if r["benchmark"] == "compile"]
            continue
        engine = peer_engine(system, auto.vocab)
        for level in LEVELS:
            if quick and system == "outlines-core" and level == "full":
                continue  # about 40 s
            text = grammar_text(system, tokens, level)

            def cold_compile(engine: PeerEngine = engine, text: str = text) -> None:
                engine.compile(text)
                engine.first_mask()

            samples = timed(cold_compile, 1)
            if samples[0] < 5 and repeats > 1:  # a slow compile is timed once
                samples += timed(cold_compile, repeats - 1)
            params = {"grammar": level, "grammar_bytes": len(text.encode())}
            records.append(record("compile", system, "ms", ms(samples), "ms", cache="cold", **params))
            again = engine.cached(text)
            if again is not None:
                warm = timed(again, 5)
                how = engine.cache_note
                records.append(
                    record("compile", system, "ms", ms(warm), "ms", cache="cached", notes=how, **params)
                )
    return records


# -- the section -----------------------------------------------------------------------------------
def run(quick: bool = False) -> list[dict[str, Any]]:
    """Both benchmarks (the ``peers`` section of ``gramophone bench``)."""
    from gramophone.bench.grammar import corpus_streams

    streams = corpus_streams(40 if quick else 120)
    records = mask_step_records(
        streams, steps=64 if quick else 256, repeats=3 if quick else 7, quick=quick, isolate=not quick,
        rounds=1 if quick else 3,
    )  # fmt: skip
    records += compile_records(repeats=2 if quick else 5, quick=quick)
    return records


def _cell(r: dict[str, Any]) -> str:
    if r.get("status", "ok") != "ok":
        return str(r.get("status"))
    low = r.get("min_us")
    return f"{r['value']:,.1f}" + (f" ({low:,.1f})" if low is not None else "")


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    """The section's tables, and what each peer's grammar cannot express."""
    lines = [
        "Per decoding step for the whole batch: compute the next-token mask, apply it to "
        "float32[B, V] logits, take the argmax, advance the state (V = 229; the peers get one "
        "more column, their stop token). Real chorale streams, the same states for every "
        "system. Median (and fastest) pass of the repeats after a warm-up pass, in "
        "microseconds; torch, xgrammar and llguidance on one thread (numpy and XLA as they "
        "are). `grammar`: the level the system enforces (`full` = gramophone's language). "
        "`path` (gramophone's kernels): `cheap` = the AND of the groups' rows (most steps), "
        "`exact` = the distance table read at every step (the last steps of a budget), "
        "`floor` = the same gather, where and argmax on a bool[16, V] table that stays in "
        "cache: what no row-table mask can beat. gramophone-numba: one compiled call that "
        "takes each row's argmax, checks that token against the stream's mask (building the "
        "mask and scanning the allowed logits only for a stream whose best token is refused) "
        "and advances the state in place (`out=`, as the README's loop does; the peers' "
        "matchers advance in place too); its floor is the same call on the bool[16, V] "
        "table. Each step is timed "
        "on its own, the model's writing of its logits into the array the step reads left out "
        "(the logits are in the caches, as in decoding; the peers mask that array in place). "
        "Every system runs in a fresh process, in turn, three times (rounds): each figure is "
        "the median of its rounds.",
        "",
    ]
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in records:
        if r.get("benchmark") != "mask_step":
            continue
        key = (r["system"], r.get("grammar", "—"), r.get("path", "—"), r.get("loop", "—"))
        row = rows.setdefault(key, {"system": key[0], "grammar": key[1], "path": key[2], "loop": key[3]})
        row[f"batch {r['batch']}"] = _cell(r)
        if r["value"] and r.get("status", "ok") == "ok":
            row[f"batch {r['batch']} per stream"] = round(r["value"] / r["batch"], 2)
    cols = ["system", "grammar", "path", "loop", *(f"batch {b}" for b in BATCHES)]
    cols.append(f"batch {BATCHES[-1]} per stream")
    lines += ["## Mask step (us per step, whole batch)", "", *markdown_table(rows.values(), cols), ""]

    lines += [
        "## Compile time (grammar text to a first mask, ms)",
        "",
        "Median of repeats (one run when it takes over 5 s); a peer's TokenizerInfo / "
        "tokenizer / Vocabulary is built once beforehand and not counted.",
        "",
    ]
    crow: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r.get("benchmark") != "compile":
            continue
        ckey = (r["system"], r.get("grammar", "—"))
        row = crow.setdefault(ckey, {"system": ckey[0], "grammar": ckey[1]})
        row[str(r.get("cache", "cold"))] = r["value"] if r.get("status", "ok") == "ok" else r["status"]
        if r.get("grammar_bytes"):
            row["grammar bytes"] = r["grammar_bytes"]
    lines += [*markdown_table(crow.values(), ["system", "grammar", "grammar bytes", "cold", "cached"]), ""]
    notes = sorted({f"- {r['system']}: {r['notes']}" for r in records if r.get("notes")})
    if notes:
        lines += ["Notes:", "", *notes, ""]
    lines += ["## What each peer's grammar cannot express", ""]
    lines += [f"- **{k}**: {v}" for k, v in CANNOT_EXPRESS.items()]
    lines += [
        "",
        "Levels: `syntax` is remi.lark narrowed to the config; `syntax+time` adds the time "
        "constraint (positions increase inside a bar and stay below its length), "
        "`syntax+note-order` the note order (pitches ascend at an onset), `full` both: "
        "exactly gramophone's language, checked in tests/test_bench_peers.py against the "
        "automaton on real chorales, random walks and corruptions.",
        "",
    ]
    return lines


def plots(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """``mask_step.png``: microseconds per step (log scale) of each system on the full
    grammar (gramophone's kernels on their cheap path), at batch 1 and 64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [  # gramophone's kernels on their cheap path (most steps), the peers on the full grammar
        r
        for r in records
        if r["benchmark"] == "mask_step"
        and r.get("status") == "ok"
        and r.get("grammar") == "full"
        and r.get("path", "cheap") == "cheap"
    ]
    if not rows:
        return []
    labels = list(dict.fromkeys(f"{r['system']} ({r['loop']})" for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.4
    for j, batch in enumerate((1, 64)):
        values = {f"{r['system']} ({r['loop']})": r["value"] for r in rows if r["batch"] == batch}
        ys = [values.get(label, np.nan) for label in labels]
        ax.bar(np.arange(len(labels)) + (j - 0.5) * width, ys, width, label=f"batch {batch}")
    ax.set_yscale("log")
    ax.set_ylabel("us per step (whole batch)")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=25, ha="right", fontsize=8)
    ax.set_title("Mask step on the full REMI grammar (lower is better)")
    ax.legend()
    fig.tight_layout()
    path = out / "mask_step.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
