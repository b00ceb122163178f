"""Process-wide JAX settings: the persistent compilation cache and quiet logs."""

import logging
import os

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mnist_jax", "jax")


def setup(cache_dir: str = DEFAULT_CACHE) -> None:
  """Turns on JAX's persistent compilation cache (unless cache_dir is empty).

  A second run of the same model and shapes then loads its compiled epoch
  from disk instead of compiling it again (several seconds on CPU).
  """
  import jax  # pylint: disable=g-import-not-at-top
  cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR", cache_dir)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # tfds warns once about decoding PNGs with PIL instead of OpenCV: that is
  # the intended path here, and it runs once per dataset.
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").setLevel(logging.ERROR)
