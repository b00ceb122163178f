"""Flax models: the stock modules (dense.py, cnn.py, recurrent.py; images
[B, H, W], 255 = ink), the `--model` registry and faster kernels for them."""

from mnist_jax.models.registry import MODELS, ModelSpec, build, get, get_config

__all__ = ["MODELS", "ModelSpec", "build", "get", "get_config"]
