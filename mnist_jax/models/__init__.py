"""Flax linen models and the registry that maps `--model` names to them.

  registry.py                     --model names, input views, presets, and a
                                  one-line description of each architecture
  dense.py, cnn.py, recurrent.py  the stock Flax modules
  precision.py                    bfloat16 compute, float32 parameters (--dtype)
  kernels/                        fast drop-in lowerings of some layers, and
                                  the rule that picks them (--impl)
"""

from mnist_jax.models.registry import (MODELS, ModelSpec, build, get, get_config,
                                       implementation, input_view)

__all__ = ["MODELS", "ModelSpec", "build", "get", "get_config", "implementation",
           "input_view"]
