"""Flax linen models and the registry that maps `--model` names to them.

A model is a stock Flax module (dense.py, cnn.py, recurrent.py) taking
images [B, H, W] (uint8, 255 = ink), registered in registry.py with its
presets and own settings. kernels/ holds faster lowerings for XLA:CPU, which
a run takes only after checking them against the stock module as it is.
"""

from mnist_jax.models.registry import MODELS, ModelSpec, build, get, get_config

__all__ = ["MODELS", "ModelSpec", "build", "get", "get_config"]
