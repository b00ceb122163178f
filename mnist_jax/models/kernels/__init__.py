"""Fast lowerings of stock modules, taken only where they compute what the
stock module computes now (--impl).

A kernel is a drop-in for one stock module class: it takes the same
attributes and creates the same parameter tree, so either reads the other's
checkpoints. `swap` gives a run the kernel only after a check on one batch
that its outputs and gradients equal the stock module's as it is now, with
the researcher's edits (float32 tolerance); otherwise the run keeps the
stock module and says so in one line. tests/test_equivalence.py holds each
kernel to its stock module on many shapes.
"""

import dataclasses
import hashlib
import inspect
import json
import os
import time
from typing import Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.models import cnn
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import fused_rnn


@dataclasses.dataclass(frozen=True)
class Kernel:
  module: type  # The drop-in nn.Module class.
  faster_on: Tuple[str, ...]  # Backends where it was measured faster.


KERNELS = {cnn.CNN: Kernel(conv_pool.CNN, ("cpu",)),
           recurrent.Recurrent: Kernel(fused_rnn.Recurrent, ("cpu",))}
IMPLS = ("auto", "stock", "fast")
RTOL, ATOL = 1e-4, 1e-5  # float32 agreement, relative to each array's scale.
CHECK_BATCH = 4


def _attributes(module: nn.Module) -> dict:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.init and f.name not in ("parent", "name")}


def _name(module_type: type) -> str:
  return f"{module_type.__module__.replace('.', '/')}.py's {module_type.__name__}"


def _difference(stock: nn.Module, fast: nn.Module, image_shape) -> Optional[str]:
  """Why `fast` is not `stock` on a random batch (training mode, one dropout
  key, a loss weighing every logit differently), or None."""
  key = jax.random.key(0)
  images = jax.random.randint(key, (CHECK_BATCH, *image_shape), 0, 256
                              ).astype(jnp.uint8)
  variables = stock.init(key, images)
  if set(variables) != {"params"}:
    return f"it keeps no {', '.join(sorted(set(variables) - {'params'}))}"
  theirs = jax.eval_shape(fast.init, key, images)
  if jax.tree.map(np.shape, theirs) != jax.tree.map(np.shape, variables):
    return "its parameters are not the stock module's"

  def outputs(params):
    def loss(module, params):
      y = module.apply(params, images, train=True, rngs={"dropout": key})
      w = jnp.linspace(-1.0, 2.0, y.size).reshape(y.shape)
      return jnp.sum(jnp.sin(y) * w), y
    return [jax.grad(loss, argnums=1, has_aux=True)(m, params)
            for m in (stock, fast)]

  (g_stock, y_stock), (g_fast, y_fast) = jax.jit(outputs)(variables)
  worst = 0.0
  for a, b in zip(jax.tree.leaves((y_stock, g_stock)),
                  jax.tree.leaves((y_fast, g_fast))):
    scale = float(jnp.max(jnp.abs(a))) + 1e-12
    worst = max(worst, float(jnp.max(jnp.abs(a - b))) / max(scale, 1.0))
  if not worst <= RTOL + ATOL:
    return f"its outputs or gradients differ by up to {worst:.2g}"
  return None


# Verdicts of the check by `_key`: a module whose program was checked
# before needs no check again.
_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"), "mnist_jax", "kernel_checks.json")


def _key(stock: nn.Module, kernel: type, image_shape, backend: str) -> str:
  """What the check's answer depends on: the program the stock module runs
  now (its traced forward pass, constants included, so any edit shows),
  its attributes, the kernel's source, the backend and the libraries."""
  key = jax.random.key(0)
  images = jnp.zeros((CHECK_BATCH, *image_shape), jnp.uint8)
  variables = jax.eval_shape(stock.init, key, images)
  program = jax.make_jaxpr(lambda v, x, k: stock.apply(
      v, x, train=True, rngs={"dropout": k}, mutable=True))(
          variables, images, key)
  h = hashlib.sha256(repr((str(program), _attributes(stock),
                           backend, jax.__version__, flax.__version__)).encode())
  for const in program.consts:
    h.update(np.asarray(const).tobytes())
  with open(inspect.getsourcefile(kernel), "rb") as f:
    h.update(f.read())
  return h.hexdigest()


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
    return data if isinstance(data, dict) else {}
  except (OSError, ValueError):
    return {}


def _write(path: str, data: dict) -> None:
  try:  # An unwritable cache only means checking again next time.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(data, f)
    os.replace(tmp, path)
  except OSError:
    pass


def swap(stock: nn.Module, impl: str, image_shape,
         backend: Optional[str] = None) -> Tuple[nn.Module, Optional[str], dict]:
  """(the module a run trains, a line to say or None, what config.json records).

  impl: stock, fast (the kernel wherever one exists) or auto (where it was
  also measured faster on this backend). Either way the kernel must pass
  the check against `stock`.
  """
  kernel = KERNELS.get(type(stock))
  backend = backend or jax.default_backend()
  record = {"impl": impl, "module": _name(type(stock))}
  if impl == "stock" or kernel is None or (
      impl == "auto" and backend not in kernel.faster_on):
    return stock, None, record
  given = _attributes(stock)
  defaults = {f.name: f.default for f in dataclasses.fields(type(stock))}
  accepted = {f.name for f in dataclasses.fields(kernel.module)}
  missing = [f"{k}={v}" for k, v in given.items()
             if k not in accepted and v != defaults.get(k)]
  why = f"it has no {', '.join(missing)}" if missing else None
  start = time.perf_counter()
  fast = kernel.module(**{k: v for k, v in given.items() if k in accepted})
  if why is None:
    key = _key(stock, kernel.module, image_shape, backend)
    verdicts = _read(_CACHE)
    if key in verdicts:  # Checked before, with these sources.
      why = verdicts[key]
      record["cached"] = True
    else:
      why = verdicts[key] = _difference(stock, fast, image_shape)
      _write(_CACHE, verdicts)
  record.update(check_s=round(time.perf_counter() - start, 3),
                kernel=_name(kernel.module), passed=why is None)
  if why is None:
    return fast, None, {**record, "module": _name(kernel.module)}
  return stock, (f"the fast kernel {_name(kernel.module)} does not compute "
                 f"{_name(type(stock))} ({why}): training the stock module"), record
