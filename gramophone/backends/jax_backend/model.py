"""The gramophone Transformer in JAX/Flax (linen). Read top to bottom; the PyTorch twin is
``gramophone/backends/torch_backend/model.py``, with the same names and the same math.

Decoder-only: token embedding * sqrt(d_model) + fixed sinusoidal positions, dropout,
``n_layers`` pre-LayerNorm blocks (LN -> causal self-attention -> residual,
LN -> MLP with tanh-GELU -> residual), a final LayerNorm and an untied output projection
with bias.

Flax names its parameters ``tok_emb/embedding``, ``blocks_0/attn/qkv/kernel`` (kernel
``[in, out]``) ...; :func:`to_checkpoint_names` / :func:`from_checkpoint_names` map them to
and from the checkpoint's PyTorch names and layout (``blocks.0.attn.qkv.weight``, ``[out, in]``).

Initial values come from :func:`gramophone.backends.base.init_weights` (shared by both
backends), not from Flax's initialisers. Everything is a pure function of explicit arrays:
the KV cache goes in and comes out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gramophone.backends.base import LN_EPS, sinusoidal_positions
from gramophone.backends.config import ModelConfig

__all__ = ["GPT", "from_checkpoint_names", "to_checkpoint_names"]

Array = jax.Array
KV = tuple[Array, Array]


def _layer_norm() -> nn.LayerNorm:
    # torch's epsilon and its two-pass variance, so both frameworks agree to ~1e-6
    return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False)


class CausalSelfAttention(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.qkv = nn.Dense(3 * cfg.d_model)
        self.proj = nn.Dense(cfg.d_model)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def __call__(
        self,
        x: Array,
        mask: Array,
        *,
        deterministic: bool,
        cache: Any = None,
        positions: Array | None = None,
    ) -> tuple[Array, KV]:
        """``x`` (B, T, C); ``mask`` broadcastable to (B, nh, T, S), true where a key is
        visible. With ``cache`` (K, V, layer) and T == 1: a decode step, see
        :meth:`_attend_cached`.
        Returns the output (B, T, C) and the keys/values attended to."""
        B, T, C = x.shape
        nh = self.config.n_heads
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)  # 3 x (B, T, C)
        q = q.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        k = k.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        v = v.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        if cache is not None:
            return self._attend_cached(q, k, v, mask=mask, cache=cache, positions=positions)
        att = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(C // nh)  # (B, nh, T, S)
        att = jnp.where(mask, att, jnp.finfo(att.dtype).min)
        att = jax.nn.softmax(att, axis=-1)
        att = self.attn_drop(att, deterministic=deterministic)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y), deterministic=deterministic), (k, v)

    def _attend_cached(self, q: Array, k: Array, v: Array, *, mask: Array, cache: Any, positions: Any) -> Any:
        """One decode step (T == 1, no dropout). ``cache`` is ``(K, V, layer)`` with K, V the
        whole stack (L, B, nh, S, hs): only this token's key/value is scattered into it, so
        inside a ``lax.while_loop`` XLA updates the buffers in place instead of rebuilding
        them every step. Returns the output (B, 1, C) and the updated (K, V)."""
        K, V, layer = cache
        B, nh, _, hs = q.shape
        rows = jnp.arange(B)
        K = K.at[layer, rows, :, positions].set(k[:, :, 0])  # (L, B, nh, S, hs)
        V = V.at[layer, rows, :, positions].set(v[:, :, 0])
        att = (q @ K[layer].transpose(0, 1, 3, 2)) / math.sqrt(hs)  # (B, nh, 1, S)
        att = jnp.where(mask, att, jnp.finfo(att.dtype).min)
        att = jax.nn.softmax(att, axis=-1)
        y = (att @ V[layer]).transpose(0, 2, 1, 3).reshape(B, 1, nh * hs)  # (B, 1, C)
        return self.resid_drop(self.proj(y), deterministic=True), (K, V)


class MLP(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.fc = nn.Dense(cfg.d_ff)
        self.proj = nn.Dense(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        h = nn.gelu(self.fc(x), approximate=True)  # (B, T, d_ff)
        return self.drop(self.proj(h), deterministic=deterministic)  # (B, T, C)


class Block(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        self.ln1 = _layer_norm()
        self.attn = CausalSelfAttention(self.config)
        self.ln2 = _layer_norm()
        self.mlp = MLP(self.config)

    def __call__(
        self,
        x: Array,
        mask: Array,
        *,
        deterministic: bool,
        cache: Any = None,
        positions: Array | None = None,
    ) -> tuple[Array, KV]:
        a, kv = self.attn(self.ln1(x), mask, deterministic=deterministic, cache=cache, positions=positions)
        x = x + a
        x = x + self.mlp(self.ln2(x), deterministic=deterministic)
        return x, kv


class GPT(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.tok_emb = nn.Embed(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = [Block(cfg) for _ in range(cfg.n_layers)]  # named blocks_0, blocks_1...
        self.ln_f = _layer_norm()
        self.head = nn.Dense(cfg.vocab_size)

    def embed(self, ids: Array, positions: Array, *, deterministic: bool) -> Array:
        """``ids`` (B, T), ``positions`` (T,) or (B, T) -> (B, T, C)."""
        pos_enc = jnp.asarray(sinusoidal_positions(self.config.max_len, self.config.d_model))
        x = self.tok_emb(ids) * math.sqrt(self.config.d_model) + pos_enc[positions]
        return self.drop(x, deterministic=deterministic)

    def __call__(self, ids: Array, *, deterministic: bool = True) -> Array:
        """``ids`` (B, T) -> logits (B, T, V)."""
        x, _ = self.hidden(ids, deterministic=deterministic)
        return self.head(self.ln_f(x))  # (B, T, V)

    def hidden(self, ids: Array, *, deterministic: bool = True) -> tuple[Array, list[KV]]:
        """Residual stream after the last block (B, T, C), and every layer's keys/values
        (B, nh, T, hs)."""
        T = ids.shape[1]
        x = self.embed(ids, jnp.arange(T), deterministic=deterministic)  # (B, T, C)
        causal = jnp.tril(jnp.ones((T, T), dtype=bool))[None, None]  # (1, 1, T, T)
        kvs = []
        for block in self.blocks:
            x, kv = block(x, causal, deterministic=deterministic)
            kvs.append(kv)
        return x, kvs

    def prefill(self, ids: Array, lengths: Array, cache_len: int) -> tuple[Array, KV]:
        """Run the prompt ``ids`` (B, T); return the logits after position ``lengths - 1``
        (B, V) and the cache (k, v) each (L, B, nh, cache_len, hs), positions [0, T) filled."""
        B, T = ids.shape
        x, kvs = self.hidden(ids)
        pad = ((0, 0), (0, 0), (0, cache_len - T), (0, 0))
        k = jnp.stack([jnp.pad(kv[0], pad) for kv in kvs])  # (L, B, nh, S, hs)
        v = jnp.stack([jnp.pad(kv[1], pad) for kv in kvs])  # (L, B, nh, S, hs)
        x = x[jnp.arange(B), lengths - 1]  # (B, C)
        return self.head(self.ln_f(x)), (k, v)  # (B, V)

    def decode(self, token: Array, cache: KV, positions: Array) -> tuple[Array, KV]:
        """Feed ``token`` (B,) at ``positions`` (B,); return logits (B, V) for the next
        position and the cache with this token's keys/values written."""
        S = cache[0].shape[3]
        x = self.embed(token[:, None], positions[:, None], deterministic=True)  # (B, 1, C)
        # key j is visible to row b iff j <= positions[b]
        mask = (jnp.arange(S)[None, :] <= positions[:, None])[:, None, None, :]  # (B,1,1,S)
        K, V = cache  # (L, B, nh, S, hs) each
        for i, block in enumerate(self.blocks):
            x, (K, V) = block(x, mask, deterministic=True, cache=(K, V, i), positions=positions)
        return self.head(self.ln_f(x[:, 0])), (K, V)  # (B, V)


# ------------------------------------------------------------------ checkpoint names

_LEAF_TO_TORCH = {"embedding": "weight", "scale": "weight", "kernel": "weight", "bias": "bias"}
_LEAF_FROM_TORCH = {  # (module name suffix, torch leaf) -> flax leaf
    "tok_emb": {"weight": "embedding"},
    "ln1": {"weight": "scale", "bias": "bias"},
    "ln2": {"weight": "scale", "bias": "bias"},
    "ln_f": {"weight": "scale", "bias": "bias"},
}


def to_checkpoint_names(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax ``params`` tree -> {torch name: float32 array in torch layout}."""
    out: dict[str, np.ndarray] = {}

    def walk(node: Mapping[str, Any], prefix: list[str]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, [*prefix, re.sub(r"^blocks_(\d+)$", r"blocks.\1", key)])
                continue
            arr = np.asarray(value, dtype=np.float32)
            if key == "kernel":
                arr = arr.T  # Dense kernel [in, out] -> Linear weight [out, in]
            out[".".join([*prefix, _LEAF_TO_TORCH[key]])] = np.ascontiguousarray(arr)

    walk(tree, [])
    return out


def from_checkpoint_names(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """{torch name: array} -> Flax ``params`` tree (nested dicts of jnp arrays)."""
    tree: dict[str, Any] = {}
    for name, value in weights.items():
        *modules, leaf = name.split(".")
        modules = [f"blocks_{modules[1]}", *modules[2:]] if modules[0] == "blocks" else modules
        flax_leaf = _LEAF_FROM_TORCH.get(modules[-1], {"weight": "kernel", "bias": "bias"})[leaf]
        arr = np.asarray(value, dtype=np.float32)
        node = tree
        for m in modules:
            node = node.setdefault(m, {})
        node[flax_leaf] = jnp.asarray(arr.T if flax_leaf == "kernel" else arr)
    return tree
