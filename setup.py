"""mnist_jax: classic MNIST architectures in JAX/Flax (linen), one command each."""

from setuptools import find_packages, setup

setup(
    name="mnist_jax",
    version="0.1.0",
    description="Train and compare linear, MLP, CNN, SimpleRNN, LSTM and GRU "
                "models on MNIST with JAX, Flax and optax.",
    python_requires=">=3.11",
    packages=find_packages(include=["mnist_jax", "mnist_jax.*"]),
    package_data={"mnist_jax.data": ["checksums.tsv"],
                  # --mode=serve's page: its HTML, script and styles.
                  "mnist_jax.results": ["page/*"]},
    install_requires=[
        "jax>=0.6.1,<0.13",
        # 0.10.4: the first whose nn.scan gives jax 0.6 the debug info it asks
        # for (older ones raise a DeprecationWarning there).
        "flax>=0.10.4,<0.13",
        "optax>=0.2.7,<0.3",
        "orbax-checkpoint>=0.11.15,<0.13",
        "tensorflow-datasets>=4.9.10,<5",
        # tfds 4.9.x on Python 3.11 imports it without declaring it.
        "importlib_resources>=6",
        "numpy>=1.26,<3",
        "matplotlib>=3.8,<4",
        "absl-py>=2.1,<3",
        "Pillow>=10",
        # scipy.ndimage: the pieces of ink in a photo (jax needs scipy too).
        "scipy>=1.11.1",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6.2.2,<3",
    ],
    extras_require={
        # tensorboard: its loaders read the events back in the tests (and it
        # is what users run to view them).
        "test": ["pytest>=8,<10", "pytest-xdist>=3.8,<4", "hypothesis>=6.100,<7",
                 "tensorboard>=2.18,<3"],
        # experiments/tour.ipynb: JupyterLab, Notebook and `jupyter execute`
        # (nbclient) with the Python kernel (ipykernel).
        "notebook": ["jupyter>=1.1.1,<2"],
        # The analyses' t-SNE map of the features (PCA needs nothing).
        "analysis": ["scikit-learn>=1.3,<2"],
        # tests/test_serve_browser.py drives Chromium (Debian's chromium and
        # chromium-driver) through it.
        "browser": ["selenium>=4.11,<5"],
        # The linter and the type checker CI runs (pyproject.toml's settings),
        # one release each (its floor, pinned in .ci/floors.txt too): a new
        # release brings new rules.
        "lint": ["ruff>=0.17.6,<0.17.7", "mypy>=2.4.1,<2.4.2"],
    },
)
