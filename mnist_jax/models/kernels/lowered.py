"""Any module as written, its library layers computed by this package's
lowerings (nn.Conv: conv_matmul; nn.RNN: fused_rnn) through
nn.intercept_methods. Every line of the module runs; a layer no lowering
takes runs as flax computes it, and `survey` names it."""

from typing import Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from mnist_jax.models.kernels import conv_matmul
from mnist_jax.models.kernels import fused_rnn

# Layer class -> its lowering: uncovered(layer, args, kwargs) says why it does
# not compute a call (else None), lower(layer, *args, **kwargs) computes it.
LOWERINGS = {nn.Conv: conv_matmul, nn.RNN: fused_rnn}


def _lowering(module: nn.Module, args, kwargs
              ) -> Tuple[Optional[object], Optional[str]]:
  """(the lowering that computes this call of `module`, None), (None, why not:
  a kind of layer) or, for a layer of no class above, (None, None)."""
  for layer, lowering in LOWERINGS.items():
    if isinstance(module, layer):
      why = (lowering.uncovered(module, args, kwargs) if type(module) is layer
             else f"{type(module).__name__} layers")  # A subclass.
      return (None, why) if why else (lowering, None)
  return None, None


def _intercept(next_fun, args, kwargs, context):
  module = context.module
  if context.method_name == "__call__" and not module.is_initializing():
    lowering, _ = _lowering(module, args, kwargs)
    if lowering:  # At init flax's own layer makes the parameters.
      return lowering.lower(module, *args, **kwargs)
  return next_fun(*args, **kwargs)


class Lowered(nn.Module):
  """`stock`, its scope shared (the same variables), its layers lowered."""
  stock: nn.Module

  def setup(self):
    nn.share_scope(self, self.stock)

  def __call__(self, *args, **kwargs):
    with nn.intercept_methods(_intercept):
      return self.stock(*args, **kwargs)

  def __getattr__(self, name: str):
    """The stock module's declarations (OUTPUT, DATA_PARALLEL_ON_CPU, ...)
    and fields (sequence, hidden, ...)."""
    stock = self.__dict__.get("stock")
    if name.isupper() or name in getattr(stock, "__dataclass_fields__", ()):
      return getattr(stock, name)
    return super().__getattr__(name)


def _path(module: nn.Module) -> str:
  """A layer's name as its parameters are kept (an nn.RNN's: its cell's)."""
  layer = module.cell if isinstance(module, nn.RNN) else module
  return "/".join(layer.path) or type(layer).__name__


def survey(stock: nn.Module, images: np.ndarray
           ) -> Tuple[Dict[str, str], Dict[str, List[str]], List[str]]:
  """({layer: the file lowering it}, {kind of layer no lowering takes: its
  layers}, the layers with parameters) of `stock` on `images`, in training
  and evaluation (traced only)."""
  lowered: Dict[str, str] = {}
  uncovered: Dict[str, List[str]] = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      lowering, why = _lowering(context.module, args, kwargs)
      if lowering:
        lowered[_path(context.module)] = (
            lowering.__name__.replace(".", "/") + ".py")
      elif why and _path(context.module) not in uncovered.setdefault(why, []):
        uncovered[why].append(_path(context.module))
    return next_fun(*args, **kwargs)

  def init(images):
    key = jax.random.key(0)
    return [stock.init({"params": key, "dropout": key}, images, train=train)
            for train in (True, False)]

  with nn.intercept_methods(record):
    variables = jax.eval_shape(init, images)[0]
  return lowered, uncovered, list(variables["params"])
