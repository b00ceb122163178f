"""Shared fixtures: small synthetic IDX datasets, never the real MNIST."""

import atexit
import gzip
import io
import os
import shutil
import struct
import tempfile
import types
import typing

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw
import pytest

from mnist_jax.data import datasets

# Each session's own compilation cache (a tiny model compiles once), shared
# with its children, removed at exit; JAX_COMPILATION_CACHE_DIR="": none.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="mnist_jax_tests_jit_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
if os.environ["JAX_COMPILATION_CACHE_DIR"]:
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# XLA:CPU's backend optimizations off: a third less CPU time, numbers equal to
# float rounding (bit-for-bit checks compare programs compiled alike); child
# processes too (xla_flags). MNIST_JAX_TEST_XLA_FLAGS="" compiles as a run does.
TEST_XLA_FLAGS = os.environ.setdefault("MNIST_JAX_TEST_XLA_FLAGS",
                                       "--xla_backend_optimization_level=0")


# pytest-xdist hands out whole files (--dist loadfile, --no-loadscope-reorder)
# in collection order: the longest first, so that short ones end a suite.
LONGEST_FIRST = ("test_parallel", "test_refusals", "test_kernels",
                 "test_resume", "test_models", "test_analysis",
                 "test_run_folder_safety", "test_experiments", "test_sweep")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda i: (*LONGEST_FIRST, i.path.stem).index(i.path.stem))


def xla_flags(devices: int = 0) -> str:
  """XLA_FLAGS for a test's child process: the tests' flags and, if
  `devices`, that many simulated CPU devices."""
  count = devices and f"--xla_force_host_platform_device_count={devices}"
  return " ".join(f for f in (TEST_XLA_FLAGS, count) if f)


if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):  # Before JAX starts.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}"


def extra(module: str):
  """`module`, of one of setup.py's extras: skipped where not installed, unless
  MNIST_JAX_EXTRAS lists it (comma-separated, as .ci/run sets it)."""
  required = os.environ.get("MNIST_JAX_EXTRAS", "").split(",")
  if module in required:
    return __import__(module)
  return pytest.importorskip(module, reason=f"{module} is an extra's "
                             "(pip install '.[analysis,notebook]')")


def one_per_module_class() -> list:
  """The first registered model of each module class: the models whose
  modules differ (the recurrent cells share one), in registry order."""
  from mnist_jax.models import registry  # pylint: disable=g-import-not-at-top
  first = {}
  for name, spec in registry.MODELS.items():
    first.setdefault(spec.module, name)
  return list(first.values())


def random_images(n: int, seed: int = 0):
  """n images [n, 28, 28, 1] of random uint8 pixels, a JAX array."""
  return jax.numpy.asarray(np.random.default_rng(seed).integers(
      0, 256, (n, 28, 28, 1)).astype(np.uint8))


def synthetic_digits(n: int, seed: int = 0, num_classes: int = 10):
  """Learnable fake images [n, 28, 28, 1] and labels [n] uint8 of K <= 49
  classes: class k lights a block (10: 5x5 blocks 6 apart, in rows of 4;
  else cell k of a 7x7 grid of 4x4 cells)."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % num_classes).astype(np.uint8)
  rng.shuffle(labels)
  images = rng.integers(0, 40, size=(n, 28, 28, 1)).astype(np.uint8)
  cols, at, step, size = (4, 2, 6, 5) if num_classes == 10 else (7, 0, 4, 4)
  for k in range(num_classes):
    r, c = (at + step * i for i in divmod(k, cols))
    images[labels == k, r:r + size, c:c + size] = 230
  return images, labels


def digits(n: int):
  """A batch of n synthetic digits: image [n, 28, 28, 1] uint8, label [n]."""
  images, labels = synthetic_digits(n)
  return {"image": jax.numpy.asarray(images),
          "label": jax.numpy.asarray(labels, jax.numpy.int32)}


def drawn_run(model, variables=None, **settings):
  """A results.run.Run of a seed-preset model of `settings`: `variables`, else
  kernels.draw_variables' (XLA compiles no initializer)."""
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax.models import kernels  # pylint: disable=g-import-not-at-top
  from mnist_jax.results import run  # pylint: disable=g-import-not-at-top
  config = models.get_config(model, "seed", **settings)
  module = models.get(model).stock(config)
  if variables is None:
    variables = kernels.draw_variables(jax.eval_shape(
        module.init, jax.random.key(0),
        np.zeros((1, *datasets.get(config.dataset).image_shape))))
  stacked = jax.tree.map(lambda v: np.asarray(v)[None], variables)
  return run.Run(config, module, variables, 0, seed_variables=stacked)


def write_idx(path, array, compress=False):
  """uint8 images [N, H, W(, C)] or labels [N] as an IDX file: a big-endian
  magic (0x08, the number of axes), the axes' sizes, the bytes."""
  array = np.asarray(array, np.uint8)
  data = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim,
                     *array.shape) + array.tobytes()
  with open(path, "wb") as f:
    f.write(gzip.compress(data) if compress else data)


def write_idx_dir(folder, n_train=600, n_test=200, compress=True, seed=0,
                  dataset="mnist"):
  """Writes the four IDX files of a synthetic `dataset` into folder, named and
  stored as its real files are (EMNIST's transposed, letters labelled 1..26)."""
  info = datasets.get(dataset)
  os.makedirs(folder, exist_ok=True)
  suffix = ".gz" if compress else ""
  arrays = {}
  for part, n, part_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
    images, labels = synthetic_digits(n, part_seed, info.num_classes)
    images = images[..., 0]  # Grey [n, H, W], as the real files hold them.
    arrays[f"{part}_images"] = (images.transpose(0, 2, 1) if info.transposed
                                else images)
    arrays[f"{part}_labels"] = labels + info.first_label
  for key, name in info.file_names.items():
    write_idx(os.path.join(folder, name + suffix), arrays[key], compress)
  return str(folder)


class Prepared(typing.NamedTuple):
  """A synthetic 600/200-example dataset in gzipped IDX files (mnist_dir),
  prepared in data_dir; as settings or as launch.py's flags."""
  mnist_dir: str
  data_dir: str
  settings = property(lambda self: self._asdict())
  flags = property(lambda s: [f"--{k}={v}" for k, v in s.settings.items()])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Prepared:
  from mnist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  idx_dir = write_idx_dir(tmp_path_factory.mktemp("idx"))
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.prepare("mnist", data_dir, idx_dir)
  return Prepared(idx_dir, data_dir)


@pytest.fixture(scope="session")
def tiny_run(prepared, tmp_path_factory):
  """A finished one-epoch MLP run folder on the synthetic data (with its report,
  the analyses aside: the tests that read analyses make their own)."""
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax import modes  # pylint: disable=g-import-not-at-top
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path_factory.mktemp("runs") / "mlp")
  config = models.get_config("mlp", "seed", epochs=1, mlp_hidden=(16,),
                             batch_size=32, analyses=False, mnist_dir=mnist_dir,
                             data_dir=data_dir, workdir=workdir)
  modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  return workdir


@pytest.fixture
def drawn(monkeypatch):
  """The figures plots.py saves (and would close), each kept to be read."""
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  figures, close = [], plots.plt.close
  monkeypatch.setattr(plots.plt, "close", figures.append)
  yield figures
  for fig in figures:
    close(fig)


def steps_only(steps: int):
  """What a run's hooks are started with (population.Population) where only
  its steps matter: `steps`, an empty record, a state read as it is."""
  return types.SimpleNamespace(steps=steps, record=lambda: {},
                               get=lambda state: state)


def train_core(config, data, hooks=None):
  """The core's loop (loop.train_and_evaluate) on the module a run of
  `config` trains (models.build's choice, its notes unsaid)."""
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax.training import loop  # pylint: disable=g-import-not-at-top
  model, _ = models.build(config, say=lambda _: None)
  return loop.train_and_evaluate(config, data, model, hooks)


def fresh_state(config, steps_per_epoch=10, seed=0):
  """A train.TrainState of `config`'s model and optimizer (epochs of
  `steps_per_epoch`) for MNIST's images, from key `seed`."""
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax import optim  # pylint: disable=g-import-not-at-top
  from mnist_jax.training import train  # pylint: disable=g-import-not-at-top
  model, _ = models.build(config, say=lambda _: None)
  tx = optim.make_optimizer(config, steps_per_epoch)
  return train.create_train_state(jax.random.key(seed), model, tx,
                                  (28, 28, 1), config.dtype)


def initial_state(config, steps: int):
  """population.initial_state of `config`'s model (epochs of `steps`) for
  MNIST's images: what a run starts from and restores into."""
  # pylint: disable=g-import-not-at-top
  from mnist_jax import models
  from mnist_jax.training import population
  # pylint: enable=g-import-not-at-top
  model, _ = models.build(config, say=lambda _: None)
  return population.initial_state(config, model, steps, (28, 28, 1))


def jaxpr_equations(jaxpr, inside=False):
  """(equation, inside a loop?) of a jaxpr and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn, inside
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else [value]:
        item = getattr(item, "jaxpr", item)  # A ClosedJaxpr's Jaxpr.
        if hasattr(item, "eqns"):
          yield from jaxpr_equations(item, inside or eqn.primitive.name in (
              "scan", "while"))


def assert_trees_equal(a, b, **kwargs):
  """Every leaf of `a` and `b` equal, PRNG keys by their data."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), **kwargs)


def seven(size=200, ink=0, paper=255, width=14, mode="L"):
  """A PIL image: a '7' off-centre (top left) on a `size` px square canvas."""
  image = Image.new(mode, (size, size), paper)
  ImageDraw.Draw(image).line([(f * size, g * size) for f, g in (
      (0.1, 0.1), (0.5, 0.1), (0.25, 0.6))], fill=ink, width=width)
  return image


def dot():
  """A PIL image: a dot on the page's pad (280 px square, white on black)."""
  image = Image.new("L", (280, 280))
  ImageDraw.Draw(image).ellipse((130, 130, 150, 150), fill=255)
  return image


def declared_png(width: int, height: int) -> bytes:
  """An RGBA PNG that declares width x height pixels and holds a row of them:
  decoded, it would take 4 * width * height bytes."""
  import zlib  # pylint: disable=g-import-not-at-top
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data)))
  header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(bytes(9))) + chunk(b"IEND", b""))


@pytest.fixture
def checkout(tmp_path):
  """A copy of the docs experiments/tables.py rewrites (and an empty docs/img)."""
  from experiments import tables  # pylint: disable=g-import-not-at-top
  root = tmp_path / "checkout"
  os.makedirs(root / "docs" / "img")
  for name in (tables.README, tables.PERFORMANCE, tables.MEASUREMENTS):
    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), name), root / name)
  return root
