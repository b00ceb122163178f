"""Flax linen models and the registry that maps `--model` names to them."""

from mnist_jax.models.registry import (MODELS, ModelSpec, build, get, get_config,
                                       implementation, input_view)

__all__ = ["MODELS", "ModelSpec", "build", "get", "get_config", "implementation",
           "input_view"]
