"""Flax models: the stock modules (dense.py, cnn.py, recurrent.py; images
[B, H, W], 255 = ink), the `--model` registry and faster kernels for them."""

from mnist_jax.models.registry import (MODELS, ModelSpec, build, from_dict,
                                       get, get_config, models_with, validate)

__all__ = ["MODELS", "ModelSpec", "build", "from_dict", "get", "get_config",
           "models_with", "validate"]
