"""Fast lowerings of the stock models, and the rule that picks one (`--impl`).

A kernel is a drop-in for one stock module of `mnist_jax/models/`: it takes
the same attributes and creates the same parameter tree (names, shapes,
initialisers), so a checkpoint written with one restores into the other, and
tests/test_equivalence.py holds their outputs and gradients equal.
`models.build` asks `resolve` which of the two a run gets.
"""

import dataclasses
from typing import Callable, Tuple

import flax.linen as nn

from mnist_jax.config import IMPLS, Config
from mnist_jax.errors import UserError
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import fused_rnn


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A fast drop-in for one stock module, and where it applies."""
  module: type  # The drop-in nn.Module class.
  supports: Callable[[Config], bool]  # Whether it can run this config's shapes.
  faster_on: Tuple[str, ...]  # Backends where it was measured faster than stock.


def _any(config: Config) -> bool:
  del config
  return True


def _no_remat(config: Config) -> bool:
  return not config.remat


# --model name -> its kernel. A model without one always runs stock.
# conv_pool covers every CNN models.cnn builds (k x k stride-1 convs, 2x2
# pools): Winograd or pool-phase for 3x3, im2col for other sizes.
KERNELS = {
    "cnn": Kernel(conv_pool.CNN, _any, ("cpu",)),
    "rnn": Kernel(fused_rnn.Recurrent, _no_remat, ("cpu",)),
    "lstm": Kernel(fused_rnn.Recurrent, _no_remat, ("cpu",)),
    "gru": Kernel(fused_rnn.Recurrent, _no_remat, ("cpu",)),
}


def resolve(config: Config, backend: str) -> str:
  """Which module `config.impl` asks for on `backend`: "fast" or "stock".

  stock: always the stock module. fast: the kernel wherever it supports the
  shapes. auto: the kernel only where it also was measured faster on this
  backend. Shapes no kernel supports run stock, never an error.
  """
  if config.impl not in IMPLS:
    raise UserError(f"--impl must be one of {', '.join(IMPLS)}, got {config.impl!r}")
  kernel = KERNELS.get(config.model)
  if config.impl == "stock" or kernel is None or not kernel.supports(config):
    return "stock"
  if config.impl == "fast" or backend in kernel.faster_on:
    return "fast"
  return "stock"


def drop_in(model: str, stock: nn.Module) -> nn.Module:
  """The kernel of `model` with the attributes of its stock module `stock`."""
  fields = [f.name for f in dataclasses.fields(stock)
            if f.init and f.name not in ("parent", "name")]
  return KERNELS[model].module(**{name: getattr(stock, name) for name in fields})
