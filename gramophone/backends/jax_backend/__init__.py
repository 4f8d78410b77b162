"""JAX/Flax backend (imports jax, flax and optax)."""

from gramophone.backends.jax_backend.backend import (
    JaxBackend,
    JaxKVCache,
    JaxParams,
    JaxTrainState,
)
from gramophone.backends.jax_backend.model import GPT

__all__ = ["GPT", "JaxBackend", "JaxKVCache", "JaxParams", "JaxTrainState"]
