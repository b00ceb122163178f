"""Per-model XLA compiler options, passed to each compile, with a fallback.

Some models run faster on XLA:CPU with a non-default compiler setting (the
registry's `ModelSpec.cpu_compiler_options`, measured in docs/rnnfast.md).
They go to `Lowered.compile(compiler_options=...)` of the jitted train chunk
and evaluation, not to XLA_FLAGS: a jaxlib that does not know an option (or
one of its values) then raises a catchable error, and the chunk is compiled
without the options instead. Options a jaxlib refused are not tried again in
this process.
"""

import logging
from typing import Any, Callable, Dict, Mapping

import jax

_refused = set()  # Option sets this jaxlib rejected, as frozensets of items.


def for_model(model: str, backend: str) -> Dict[str, Any]:
  """The options `model` compiles with on `backend` (only CPU has any)."""
  if backend != "cpu":
    return {}
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  options = dict(models.get(model).cpu_compiler_options)
  return {} if frozenset(options.items()) in _refused else options


def _is_option_error(error: Exception) -> bool:
  text = str(error)
  return ("compile option" in text or "While setting option" in text or
          "not a valid enum value" in text)


def compile_lowered(lowered, options: Mapping[str, Any]):
  """`lowered.compile()` with `options`; without them if this jaxlib refuses them."""
  key = frozenset(options.items())
  if options and key not in _refused:
    try:
      return lowered.compile(compiler_options=dict(options))
    except jax.errors.JaxRuntimeError as e:
      if not _is_option_error(e):
        raise
      _refused.add(key)
      logging.info("compiling without %s: this jaxlib refused them (%s)",
                   dict(options), str(e).splitlines()[0])
  return lowered.compile()


def _signature(args):
  leaves, tree = jax.tree.flatten(args)
  return tree, tuple((getattr(x, "shape", None), getattr(x, "dtype", type(x)),
                      getattr(x, "sharding", None)) for x in leaves)


def with_options(fn: Callable, options: Mapping[str, Any]) -> Callable:
  """A jitted or pmapped `fn` compiled with `options` on its first call for
  each argument signature (shapes, dtypes, shardings)."""
  if not options:
    return fn
  compiled = {}

  def call(*args):
    key = _signature(args)
    if key not in compiled:
      compiled[key] = compile_lowered(fn.lower(*args), options)
    return compiled[key](*args)

  return call
