"""Fast lowerings of stock modules (--impl), each taken only once checked
(docs/design.md's Kernels). A kernel (KERNELS) subclasses one stock module
class with the same attributes and parameter tree; where none computes the
module as it is now, `lowered.Lowered` runs it as written with its library
layers (nn.Conv, nn.RNN) lowered. Either runs only after one jitted check on
a random batch, in training and evaluation (float32 tolerance); else the run
keeps the stock module and says why in one line.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.errors import first_line
from mnist_jax.models import cnn
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import lowered as lowered_lib

# The backends the kernels and lowerings were measured faster on (auto).
FASTER_ON = ("cpu",)
# Stock module class -> its kernel.
KERNELS: Dict[type, type] = {cnn.CNN: conv_pool.CNN}
RTOL, ATOL = 1e-4, 1e-5  # float32 agreement, relative to each array's scale.
CHECK_BATCH = 4


def _name(module_type: type) -> str:
  path = module_type.__module__.replace(".", "/")
  return f"{path}.py's {module_type.__name__}"


def _worst_gap(stock: nn.Module, fast: nn.Module, images, variables
               ) -> jax.Array:
  """The largest gap between the modules, relative to each array's scale (at
  least 1), NaN if any: in training (one dropout key, a loss weighing every
  logit differently) their outputs, gradients and updated state (such as
  batch_stats); in evaluation their outputs. Traced whole, for one jit."""
  key = jax.random.key(0)
  mutable = sorted(set(variables) - {"params"})

  def run(module):
    def loss(params):
      y, state = module.apply({**variables, "params": params}, images,
                              train=True, rngs={"dropout": key},
                              mutable=mutable)
      w = jnp.linspace(-1.0, 2.0, y.size).reshape(y.shape)
      return jnp.sum(jnp.sin(y) * w), (y, state)
    grads, trained = jax.grad(loss, has_aux=True)(variables["params"])
    return grads, trained, module.apply(variables, images, train=False,
                                        rngs={"dropout": key})

  return jnp.max(jnp.stack([
      jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(a)), 1.0)
      for a, b in zip(jax.tree.leaves(run(stock)), jax.tree.leaves(run(fast)))
  ]))


def draw_variables(shapes, seed: int = 0):
  """Values for variables `shapes` (a module's init under jax.eval_shape),
  drawn on the host (no initializer to compile): parameters normal at
  1 / sqrt(fan-in), other state (a variance, say) in [0.5, 1.5]."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf) -> np.ndarray:
    if not np.issubdtype(leaf.dtype, np.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    if path[0].key != "params":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)
            ).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _difference(stock: nn.Module, fast: nn.Module, images) -> Optional[str]:
  """Why `fast` does not compute `stock` on `images` (_worst_gap), or None.
  Its variables come from draw_variables (no initializer to compile), and the
  one jit compiles without LLVM's optimizations (about half the time; the
  same numbers to float rounding)."""
  ours, theirs = (jax.eval_shape(lambda x, m=m: m.init(jax.random.key(0), x),
                                 images) for m in (stock, fast))
  if set(ours) - set(theirs):
    return f"it keeps no {', '.join(sorted(set(ours) - set(theirs)))}"
  if jax.tree.map(np.shape, theirs) != jax.tree.map(np.shape, ours):
    return "its parameters are not the stock module's"
  variables = draw_variables(ours)
  gap = jax.jit(functools.partial(_worst_gap, stock, fast)).lower(
      images, variables).compile({"xla_backend_optimization_level": 0})
  # A NaN fails: it compares false with everything.
  worst = float(gap(images, variables))
  if not worst <= RTOL + ATOL:
    return f"its outputs or gradients differ by up to {worst:.2g}"
  return None


def _check(stock: nn.Module, fast: nn.Module, what: str, images,
           status: Callable[[str], None]) -> Tuple[Optional[str], dict]:
  """(why `fast` does not compute `stock`, or None; the check's config.json
  record). Any exception in it fails the check. status: told that a check
  of `what` runs."""
  start = time.perf_counter()
  status(f"checking {what} against {_name(type(stock))} on one batch")
  try:
    why = _difference(stock, fast, images)
  except Exception as e:  # pylint: disable=broad-except
    why = f"its check raised {type(e).__name__}: {first_line(e, 160)}"
  return why, {"check_s": round(time.perf_counter() - start, 3),
               "passed": why is None}


def swap(stock: nn.Module, impl: str, image_shape,
         backend: Optional[str] = None,
         status: Callable[[str], None] = lambda text: None
         ) -> Tuple[nn.Module, Optional[str], dict]:
  """(the module a run trains, a line to say or None, its config.json record).

  impl: stock; fast (the kernel, else the lowered layers, where any exists);
  auto (where they were also measured faster on this backend). Each must
  pass the check. status: told what is being checked while a check runs.
  """
  backend = backend or jax.default_backend()
  module, line = stock, None
  record: Dict[str, Any] = {"impl": impl, "module": _name(type(stock))}
  if impl == "stock" or (impl == "auto" and backend not in FASTER_ON):
    return stock, None, record
  images = np.random.default_rng(0).integers(
      0, 256, (CHECK_BATCH, *image_shape), dtype=np.uint8)
  kernel = KERNELS.get(type(stock))
  if kernel:
    fast: nn.Module = kernel(**{f.name: getattr(stock, f.name)
                     for f in dataclasses.fields(stock)
                     if f.init and f.name not in ("parent", "name")})
    why, checked = _check(stock, fast, _name(kernel), images, status)
    record.update(kernel=_name(kernel), **checked)
    if why is None:
      return fast, None, {**record, "module": _name(kernel),
                          "paths": fast.paths(image_shape)}
    line = (f"the fast kernel {_name(kernel)} does not compute "
            f"{_name(type(stock))} ({why}): training the stock module")
  lowered, uncovered, layers = lowered_lib.survey(stock, images)
  if lowered:
    files = ", ".join(sorted(set(lowered.values())))
    fast = lowered_lib.Lowered(stock)
    why, record["layers"] = _check(stock, fast, f"the lowerings of {files}",
                                   images, status)
    record["layers"]["lowered"] = lowered
    if why is None:
      module, line = fast, line and f"{line}, its layers lowered by {files}"
      record["paths"] = {layer: next(
          (f"lowered by {file}" for path, file in lowered.items()
           if path.split("/")[0] == layer), "XLA's") for layer in layers}
    else:
      line = (f"{line or 'training ' + _name(type(stock))} with flax's own "
              f"layers: the lowerings of {files} do not compute them ({why})")
  lines = [line] if line else []
  if uncovered:
    record["uncovered"] = uncovered
    if backend in FASTER_ON:
      lines.append("; ".join(f"{kind} ({', '.join(names)})" for kind, names
                             in uncovered.items())
                   + f": XLA's, slow on {backend.upper()}")
  return module, "; ".join(lines) or None, record


def paths_line(record: dict) -> Optional[str]:
  """The start-up line of the path each layer with parameters takes (swap's
  record), where a fast one is: "layers: conv_0: pool-phase conv, ReLU,
  pool; conv_1, conv_2: Winograd ...; dense, out: XLA's matmul"."""
  if "paths" not in record:
    return None
  layers: Dict[str, list] = {}
  for layer, how in record["paths"].items():
    layers.setdefault(how, []).append(layer)
  return "layers: " + "; ".join(f"{', '.join(names)}: {how}"
                                for how, names in layers.items())
