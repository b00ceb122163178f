"""mnist_jax: classic MNIST architectures in JAX/Flax, trained with one command.

The Python API (mnist_jax/api.py) loads on first use of one of its names, so
`import mnist_jax` stays instant: `mnist_jax.load_run("runs/cnn-...")`."""

__version__ = "0.1.0"

__all__ = ["Config", "Run", "as_images", "get_config", "load_data",
           "load_image", "load_run", "read_metrics", "train_and_evaluate"]


def __getattr__(name):
  if name in __all__:
    from mnist_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'mnist_jax' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *__all__])
