"""The public per-step API (README, "Your own sampling loop"): a user's loop around their
own model with :mod:`gramophone.kernels` ends every piece valid within the budget, on any
tokenizer (the shipped REMI config and a trained BPE vocabulary), in numpy, torch and JAX."""

from __future__ import annotations

import numpy as np
import pytest

from gramophone.decoding import tables_for
from gramophone.grammar import compile_tokenizer
from gramophone.grammar.checker import check_stream
from gramophone.tokenizers import load_tokenizer, model_vocab
from tests.learned_fixtures import trained_tokenizer_path


def _readme_loop(tokenizer, budget: int, batch: int, seed: int):  # type: ignore[no-untyped-def]
    """The README's loop, verbatim but for the model (random logits here)."""
    from gramophone.kernels import numpy as K  # noqa: N812 - the README's spelling

    rng = np.random.default_rng(seed)
    tables = tables_for(tokenizer)
    state = K.start(tables, batch)
    tokens = np.full((batch, budget), tables.pad)
    done = np.zeros(batch, dtype=bool)
    for t in range(budget):
        logits = rng.normal(size=(batch, tables.vocab_size)).astype(np.float32) * 4  # your model here
        mask = K.allowed(tables, state, budget - t)
        token = np.where(done, tables.pad, K.apply(logits, mask).argmax(-1))
        state = np.where(done[:, None], state, K.advance(tables, state, token))
        tokens[:, t] = token
        done |= token == tables.eos
    return tables, tokens


@pytest.mark.parametrize("which", ["shipped", "bpe"])
def test_a_users_loop_ends_every_piece_valid(which: str) -> None:
    tok = load_tokenizer(trained_tokenizer_path("REMI", "BPE", "bar") if which == "bpe" else None)
    automaton = compile_tokenizer(tok)
    learned = model_vocab(tok)
    for budget in (8, 9, 12, 30):
        tables, tokens = _readme_loop(tok, budget, batch=20, seed=budget)
        for row in tokens:
            ids = row.tolist()
            end = ids.index(tables.eos) + 1
            assert all(i == tables.pad for i in ids[end:])
            assert check_stream(tables.automaton, learned.expand(ids[:end])[0]).violation is None
            assert check_stream(automaton, learned.expand(ids[1 : end - 1])[0]).violation is None


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_same_loop_on_device_kernels(framework: str) -> None:
    tok = load_tokenizer(trained_tokenizer_path("REMI", "BPE", "bar"))
    tables = tables_for(tok)
    learned = model_vocab(tok)
    rng = np.random.default_rng(0)
    budget, batch = 16, 8
    if framework == "torch":
        import torch

        from gramophone.kernels import torch as K  # noqa: N812

        tab = K.device_tables(tables)
        state = K.start(tab, batch)
        done = torch.zeros(batch, dtype=torch.bool)
        rows = []
        for t in range(budget):
            logits = torch.from_numpy(rng.normal(size=(batch, tables.vocab_size)).astype(np.float32))
            token = K.apply(logits, K.allowed(tab, state, budget - t)).argmax(-1)
            token = torch.where(done, tables.pad, token)
            state = torch.where(done[:, None], state, K.advance(tab, state, token))
            done |= token == tables.eos
            rows.append(token.numpy())
    else:
        import jax.numpy as jnp

        from gramophone.kernels import jax as K  # noqa: N812

        jtab = K.device_tables(tables)
        state = K.start(jtab, batch)
        done = jnp.zeros(batch, dtype=bool)
        rows = []
        for t in range(budget):
            logits = jnp.asarray(rng.normal(size=(batch, tables.vocab_size)), jnp.float32)
            token = K.apply(logits, K.allowed(jtab, state, budget - t)).argmax(-1).astype(jnp.int32)
            token = jnp.where(done, tables.pad, token)
            state = jnp.where(done[:, None], state, K.advance(jtab, state, token))
            done = done | (token == tables.eos)
            rows.append(np.asarray(token))
    tokens = np.stack(rows, axis=1)
    for row in tokens.tolist():
        end = row.index(tables.eos) + 1
        assert check_stream(tables.automaton, learned.expand(row[:end])[0]).violation is None
