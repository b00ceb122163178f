"""mnist_jax: classic MNIST architectures in JAX/Flax, trained with one command."""

__version__ = "0.1.0"
