"""Fast lowerings of stock modules (--impl), each taken only once checked.

A kernel is a subclass of one stock module class that computes it faster:
same attributes and parameter tree, so either reads the other's checkpoints;
its ACCEPTS maps an attribute to the values it computes. `swap` gives a run the
kernel only where it takes the module's attributes (kernel_for), after a check
on one batch that its outputs and gradients equal the stock module's as it is
now, edits included (float32 tolerance); else (an exception in the check too)
the run keeps the stock module and says why in one line.
"""

import collections
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import time
from typing import Callable, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import files
from mnist_jax.models import cnn
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_matmul
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import fused_rnn

# module: the drop-in nn.Module class; faster_on: backends measured faster.
Kernel = collections.namedtuple("Kernel", "module faster_on")
KERNELS = {cnn.CNN: Kernel(conv_pool.CNN, ("cpu",)),
           recurrent.Recurrent: Kernel(fused_rnn.Recurrent, ("cpu",))}
# Where no kernel computes a module, its convolutions as matmuls (any module).
CONVS = Kernel(conv_matmul.Convs, ("cpu",))
RTOL, ATOL = 1e-4, 1e-5  # float32 agreement, relative to each array's scale.
CHECK_BATCH = 4
# The check's verdicts by `_key`: a program checked before is not again.
_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"), "mnist_jax", "kernel_checks.json")


def _attributes(module: nn.Module) -> dict:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.init and f.name not in ("parent", "name")}


def _name(module_type: type) -> str:
  path = module_type.__module__.replace(".", "/")
  return f"{path}.py's {module_type.__name__}"


def _difference(stock: nn.Module, fast: nn.Module,
                image_shape) -> Optional[str]:
  """Why `fast` is not `stock` on a random batch (training mode, one dropout
  key, a loss weighing every logit differently), or None."""
  key = jax.random.key(0)
  images = jax.random.randint(key, (CHECK_BATCH, *image_shape), 0, 256
                              ).astype(jnp.uint8)
  variables = stock.init(key, images)
  theirs = jax.eval_shape(fast.init, key, images)
  if set(variables) - set(theirs):
    return f"it keeps no {', '.join(sorted(set(variables) - set(theirs)))}"
  if jax.tree.map(np.shape, theirs) != jax.tree.map(np.shape, variables):
    return "its parameters are not the stock module's"
  mutable = sorted(set(variables) - {"params"})  # e.g. batch_stats.

  def outputs(params):
    def loss(module, params):
      y, state = module.apply({**variables, "params": params}, images,
                              train=True, rngs={"dropout": key},
                              mutable=mutable)
      w = jnp.linspace(-1.0, 2.0, y.size).reshape(y.shape)
      return jnp.sum(jnp.sin(y) * w), (y, state)
    return [jax.grad(loss, argnums=1, has_aux=True)(m, params)
            for m in (stock, fast)]

  (g_stock, y_stock), (g_fast, y_fast) = jax.jit(outputs)(variables["params"])
  worst = 0.0
  for a, b in zip(jax.tree.leaves((y_stock, g_stock)),
                  jax.tree.leaves((y_fast, g_fast))):
    scale = float(jnp.max(jnp.abs(a))) + 1e-12
    # np.max keeps a NaN (the builtin max would drop it): NaN fails.
    gap = float(jnp.max(jnp.abs(a - b))) / max(scale, 1.0)
    worst = float(np.max([worst, gap]))
  if not worst <= RTOL + ATOL:
    return f"its outputs or gradients differ by up to {worst:.2g}"
  return None


def _key(stock: nn.Module, kernel: type, image_shape, backend: str) -> str:
  """What the check's verdict depends on: the stock module's traced program
  (constants included, so any edit shows), its attributes, the kernel's
  source, the backend and the libraries."""
  key = jax.random.key(0)
  images = jnp.zeros((CHECK_BATCH, *image_shape), jnp.uint8)
  variables = jax.eval_shape(stock.init, key, images)
  program = jax.make_jaxpr(lambda v, x, k: stock.apply(
      v, x, train=True, rngs={"dropout": k}, mutable=True))(
          variables, images, key)
  h = hashlib.sha256(repr((str(program), _attributes(stock), backend,
                           jax.__version__, flax.__version__)).encode())
  for const in program.consts:
    h.update(np.asarray(const).tobytes())
  with open(inspect.getsourcefile(kernel), "rb") as f:
    h.update(f.read())
  return h.hexdigest()


def _digest(key: str, verdict) -> str:
  return hashlib.sha256(json.dumps([key, verdict]).encode()).hexdigest()


def _verdict(key: str, check: Callable[[], Optional[str]]
             ) -> Tuple[Optional[str], bool]:
  """(the check's verdict: None or a reason; whether kept in _CACHE from
  before). An unreadable cache, or an entry that is not a verdict under its
  digest, means checking again; an unwritable one, not keeping it."""
  verdicts = {}
  with contextlib.suppress(OSError, ValueError), open(_CACHE) as f:
    verdicts = json.load(f)
  verdicts = verdicts if isinstance(verdicts, dict) else {}
  entry = verdicts.get(key)
  verdict = entry.get("verdict") if isinstance(entry, dict) else 0
  if (verdict is None or isinstance(verdict, str) and verdict) and (
      entry.get("digest") == _digest(key, verdict)):
    return verdict, True
  verdict = check()
  verdicts[key] = {"verdict": verdict, "digest": _digest(key, verdict)}
  with contextlib.suppress(OSError):
    os.makedirs(os.path.dirname(_CACHE), exist_ok=True)
    files.write_json(_CACHE, verdicts)
  return verdict, False


def _missing(stock: nn.Module, kernel: Kernel) -> str:
  """stock's attribute values that `kernel`'s ACCEPTS does not take, or ""."""
  accepts = getattr(kernel.module, "ACCEPTS", {})  # Attribute -> values.
  return ", ".join(f"{k}={v}" for k, v in _attributes(stock).items()
                   if v not in accepts.get(k, (v,)))


def kernel_for(stock: nn.Module) -> Optional[type]:
  """The kernel class covering `stock` (its class's, if ACCEPTS takes its
  attribute values), else None."""
  kernel = KERNELS.get(type(stock))
  return kernel.module if kernel and not _missing(stock, kernel) else None


def _wanted(kernel: Optional[Kernel], impl: str, backend: str) -> bool:
  return kernel is not None and (
      impl == "fast" or (impl == "auto" and backend in kernel.faster_on))


def _check(stock, kernel: type, make: Callable[[], nn.Module], why,
           image_shape, backend, status: Callable[[str], None]
           ) -> Tuple[Optional[nn.Module], Optional[str], dict]:
  """(`make()` where it computes `stock`, else None; why not (`why` where
  known before), or None; the check's config.json record). Any exception in
  it fails the check (its verdict not kept). status: told when a check runs
  (seconds; a kept verdict is instant)."""
  start, kept, fast = time.perf_counter(), False, None

  def difference():
    status(f"checking {_name(kernel)} against {_name(type(stock))} on one "
           "batch (once per edit of the module)")
    return _difference(stock, fast, image_shape)

  try:
    if why is None:
      fast = make()
      why, kept = _verdict(_key(stock, kernel, image_shape, backend),
                           difference)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [""])[0][:160]
    why = f"its check raised {type(e).__name__}" + (
        f": {reason}" if reason else "")
  return fast if why is None else None, why, {
      **({"cached": True} if kept else {}), "kernel": _name(kernel),
      "check_s": round(time.perf_counter() - start, 3), "passed": why is None}


def _has_convs(stock: nn.Module, image_shape) -> bool:
  images = jnp.zeros((CHECK_BATCH, *image_shape), jnp.uint8)
  variables = jax.eval_shape(stock.init, jax.random.key(0), images)
  return "conv_general_dilated" in str(jax.make_jaxpr(
      lambda v: stock.apply(v, images))(variables))


def swap(stock: nn.Module, impl: str, image_shape, backend: Optional[str] = None,
         status: Callable[[str], None] = lambda text: None
         ) -> Tuple[nn.Module, Optional[str], dict]:
  """(the module a run trains, a line to say or None, its config.json record).

  impl: stock; fast (the kernel where one exists); auto (where it was also
  measured faster on this backend). A kernel must pass the check; without
  one, a module with convolutions gets conv_matmul's, also checked. status:
  told what is being checked while a check runs.
  """
  backend = backend or jax.default_backend()
  record = {"impl": impl, "module": _name(type(stock))}
  kernel, line = KERNELS.get(type(stock)), None
  if _wanted(kernel, impl, backend):
    missing = _missing(stock, kernel)  # What kernel_for refuses it for.
    fast, why, checked = _check(
        stock, kernel.module, lambda: kernel.module(**_attributes(stock)),
        missing and f"it has no {missing}" or None, image_shape, backend,
        status)
    record.update(checked)
    if why is None:
      return fast, None, {**record, "module": _name(kernel.module)}
    line = (f"the fast kernel {_name(kernel.module)} does not compute "
            f"{_name(type(stock))} ({why}): training the stock module")
  if _wanted(CONVS, impl, backend) and _has_convs(stock, image_shape):
    convs, why, record["convs"] = _check(
        stock, CONVS.module, lambda: CONVS.module(stock), None, image_shape,
        backend, status)
    if why is None:
      return convs, line and f"{line}, its convolutions as matmuls", record
    line = (f"{line or 'training ' + _name(type(stock))} with XLA's "
            f"convolutions: {_name(CONVS.module)} does not compute them "
            f"({why})")
  return stock, line, record
