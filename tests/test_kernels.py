"""--impl: the CPU fast path (a kernel, or nn.Conv and nn.RNN lowered) is taken
once its start-up check passes, else the module as written runs and says why;
either module reads the other's checkpoints."""

import io
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import pipeline
from mnist_jax.models import cnn
from mnist_jax.models import kernels
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_matmul
from mnist_jax.models.kernels import lowered
from mnist_jax.results import run as run_lib
from mnist_jax.rundir.record import read_record
from parallel_worker import TINY  # Each model small: a check compiles fast.

SHAPE = (28, 28, 1)
SLOW = pytest.mark.slow
CONV_MATMUL = "mnist_jax/models/kernels/conv_matmul.py"


def _stock(name, **overrides):
  return models.get(name).stock(models.get_config(
      name, "seed", **{**TINY.get(name, {}), **overrides}))


def _images(shape):
  """Raw images with an MNIST-like empty border: exact ties in the pools."""
  x = np.random.default_rng(0).integers(0, 256, (4, *shape), np.uint8)
  x[:, :5] = 0
  x[:, :, -6:] = 0
  return x


class _Convs(nn.Module):
  """Convolutions conv_matmul lowers (SAME, VALID, square and oblong, with
  and without bias, before BatchNorm) and one it leaves to XLA (stride 2)."""

  @nn.compact
  def __call__(self, images, train=False):
    x = images / 255.0
    x = nn.Conv(3, (3, 3), padding="SAME")(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Conv(4, (5, 2), padding="VALID", use_bias=False)(nn.relu(x))
    x = nn.Conv(2, (3, 3), strides=2)(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _Carried(nn.Module):
  """nn.RNN layers given a learned initial carry, and reversed without
  keep_order."""
  cell: str

  @nn.compact
  def __call__(self, images, train=False):
    x = images[..., 0] / 255.0
    cell = recurrent.CELLS[self.cell](6)
    learned = self.param("carry", nn.initializers.normal(1.0), (6,))
    carry = jax.tree.map(lambda c: c + learned, cell.initialize_carry(
        jax.random.key(0), x[:, 0].shape))
    x = nn.RNN(cell)(x, initial_carry=carry)
    x = nn.RNN(recurrent.CELLS[self.cell](6), reverse=True)(x)
    return nn.Dense(10)(x[:, -1])


def _fast_cases():
  """(module, image shape): each model with a fast path, in settings taking
  each branch of its kernel or lowering, and two modules written here."""
  cases = [("cnn", lambda: _stock("cnn", dropout=0.25), SHAPE, []),
           ("cnn-winograd", lambda: _stock("cnn", cnn_features=(8, 8)),
            (31, 29, 1), []),
           ("cnn-same", lambda: _stock("cnn", cnn_padding="SAME",
                                       cnn_features=(4, 8, 16)), SHAPE, [SLOW]),
           ("convs", _Convs, SHAPE, []), ("carried", lambda: _Carried("lstm"),
                                          (8, 5, 1), [])]
  for name, spec in models.MODELS.items():
    if spec.module is recurrent.Recurrent:
      cases += [(name, lambda n=name: _stock(n), SHAPE, [SLOW] * (
          name == "lstm")),  # Its cell: "carried"'s.
                (f"{name}-bidirectional", lambda n=name: _stock(
                    n, num_layers=2, bidirectional=True, dropout=0.3,
                    sequence="permuted"), (6, 5, 1), [SLOW])]
  assert {c[0] for c in cases} >= {n for n in models.MODELS if n not in (
      "linear", "mlp")}, "a model with a fast path has no case"
  return [pytest.param(make, shape, id=name, marks=marks)
          for name, make, shape, marks in cases]


@pytest.mark.parametrize("make,shape", _fast_cases())
def test_the_fast_path_computes_the_stock_layers(monkeypatch, make, shape):
  """What --impl=fast trains on a CPU passes the start-up check (its failures:
  the planted kernels below), checked on MNIST-like images (ties in the pools;
  the check's own batch: the swap test), one compilation a case."""
  check = kernels._difference  # pylint: disable=protected-access
  monkeypatch.setattr(kernels, "_difference", lambda stock, fast, _: check(
      stock, fast, _images(shape)))
  stock = make()
  fast, note, record = kernels.swap(stock, "fast", shape, "cpu")
  assert fast is not stock and record.get("passed") is not False, note


class _Dense(nn.Module):
  """A stock module in training with dropout and a running mean of its
  logits (state that training updates); the subclasses are kernels for it."""

  @nn.compact
  def __call__(self, images, train=False):
    y = nn.Dense(3)(images.reshape(images.shape[0], -1) / 255.0)
    y = nn.Dropout(0.5, deterministic=not train)(y)
    mean = self.variable("batch_stats", "mean", jnp.zeros, (3,))
    if train:
      mean.value = 0.9 * mean.value + 0.1 * y.mean(axis=0)
    return y


class _Planted(_Dense):
  """A kernel for _Dense, wrong as HOW says."""
  HOW = ""

  def __call__(self, images, train=False):
    if self.HOW == "raising":
      raise ValueError("the kernel broke\nat its second line")
    y = super().__call__(images, train)
    if self.HOW == "state" and train:  # Outputs right, the state wrong.
      self.put_variable("batch_stats", "mean", y.mean(axis=0))
    return y * {"nan": jnp.nan, "training": 1.01 if train else 1.0,
                "evaluation": 1.0 if train else 1.01}.get(self.HOW, 1.0)


class _Uncovered(nn.Module):
  """A layer of each kind of _UNCOVERED, named for it: none lowered."""

  @nn.compact
  def __call__(self, images, train=False):
    x = images[..., 0] / 255.0
    two = jnp.stack([x, x], axis=-1)
    ys = [nn.Conv(4, (3, 3), **kw, name=name)(two) for name, kw in (
        ("grouped", dict(feature_group_count=2)),
        ("dilated", dict(kernel_dilation=2)), ("padded", dict(padding=1)))]
    ys.append(nn.Conv(4, (3,), name="one_d")(x))
    for name, kw in (("time_major", dict(time_major=True)),
                     ("unroll", dict(unroll=2)),
                     ("return_carry", dict(return_carry=True))):
      ys.append(nn.RNN(nn.GRUCell(4, name=name), **kw)(x))
    ys[-1] = ys[-1][1]  # return_carry's (carry, outputs).
    ys.append(nn.RNN(nn.MGUCell(4, name="mgu"))(x))
    ys.append(nn.RNN(nn.GRUCell(4, activation_fn=nn.relu, name="functions"))(x))
    return nn.Dense(10)(jnp.concatenate(
        [y.reshape(y.shape[0], -1) for y in ys], axis=-1))


def _kernel_for_dense(how):
  kernel = type(f"_{how}", (_Planted,), {"HOW": how})

  def setup(monkeypatch):
    monkeypatch.setitem(kernels.KERNELS, _Dense, kernel)
    return _Dense()
  return setup


def _edited_cnn(monkeypatch):
  """The stock CNN as a researcher edits cnn.py (its pooling scaled)."""
  pool = cnn.max_pool_2x2
  monkeypatch.setattr(cnn, "max_pool_2x2", lambda x: 1.01 * pool(x))
  return _stock("cnn")


def _lowering(how):
  def setup(monkeypatch):
    conv = conv_matmul.lower
    monkeypatch.setattr(conv_matmul, "lower", {
        "off": lambda c, x: conv(c, x) * 1.01,
        "raising": lambda c, x: 1 / 0}[how])
    return _Convs()
  return setup


_DENSE = kernels._name(_Dense)  # pylint: disable=protected-access
# The CNN's kernel failing its check, for `why`: the lowered stock module.
_CNN_LOWERED = ("the fast kernel mnist_jax/models/kernels/conv_pool.py's CNN "
                "does not compute mnist_jax/models/cnn.py's CNN ({}): "
                f"training the stock module, its layers lowered by {CONV_MATMUL}")
_UNCOVERED = [
    ("grouped", "grouped convolutions"), ("dilated", "dilated convolutions"),
    ("padded", "convolutions padded other than SAME or VALID"),
    ("one_d", "1-D convolutions"), ("time_major", "nn.RNN with time_major"),
    ("unroll", "nn.RNN with unroll"),
    ("return_carry", "nn.RNN with return_carry"),
    ("mgu", "nn.RNN over MGUCell"),
    ("functions", "nn.RNN over GRUCell with other functions")]


@pytest.mark.parametrize("setup,impl,backend,runs,note", [
    (lambda _: _stock("cnn"), "auto", "cpu", "kernel", None),
    (lambda _: _stock("gru"), "auto", "cpu", "lowered", None),
    (lambda _: _stock("cnn"), "auto", "gpu", "stock", None),
    (lambda _: _stock("gru"), "stock", "cpu", "stock", None),
    (lambda _: _stock("mlp"), "auto", "cpu", "stock", None),
    (lambda _: _stock("cnn", cnn_batch_norm=True), "fast", "gpu", "lowered",
     _CNN_LOWERED.format("it keeps no batch_stats")),
    pytest.param(lambda _: _stock("cnn", cnn_kernel=5), "auto", "cpu",
                 "lowered", _CNN_LOWERED.format(
                     "its parameters are not the stock module's"), marks=SLOW),
    (lambda _: _stock("lstm", remat=True), "auto", "cpu", "stock",
     f"nn.RNN over {type(nn.remat(recurrent.CELLS['lstm'])(4)).__name__} "
     "(lstm_0): XLA's, slow on CPU"),
    (lambda _: _Uncovered(), "auto", "cpu", "stock", "; ".join(
        f"{why} ({name})" for name, why in _UNCOVERED)
     + ": XLA's, slow on CPU"),
    (_edited_cnn, "auto", "cpu", "lowered", _CNN_LOWERED.format(
        "its outputs or gradients differ by up to *")),
    *[(_kernel_for_dense(how), "auto", "cpu", "stock", "the fast kernel "
       f"test_kernels.py's _{how} does not compute {_DENSE} ({why}): "
       "training the stock module") for how, why in (
           ("nan", "its outputs or gradients differ by up to nan"),
           ("training", "its outputs or gradients differ by *"),
           ("evaluation", "its outputs or gradients differ *"),
           ("state", "its outputs or gradients differ by up to *"),
           ("raising", "its check raised ValueError: the kernel broke"))],
    *[(_lowering(how), "auto", "cpu", "stock", f"training "
       f"{kernels._name(_Convs)} with flax's own layers: the lowerings of "  # pylint: disable=protected-access
       f"{CONV_MATMUL} do not compute them ({why}); strided convolutions "
       "(Conv_2): XLA's, slow on CPU")
      for how, why in (("off", "its outputs or gradients differ by up to *"),
                       ("raising", "its check raised ZeroDivisionError: "
                        "division by zero"))],
])
def test_swap_takes_the_fast_path_once_checked_else_says_why(
    monkeypatch, setup, impl, backend, runs, note):
  """--impl=auto: the fast path on a CPU only; fast: anywhere; stock: never.
  A failed check (training, evaluation, state, NaN, raising, an edited cnn.py)
  or a layer no lowering takes is said in one line and recorded; where a fast
  path runs, the start-up line names each layer's."""
  stock = setup(monkeypatch)
  module, said, record = kernels.swap(stock, impl, SHAPE, backend)
  kind = ("stock" if module is stock else "lowered"
          if type(module) is lowered.Lowered else "kernel")
  assert kind == runs
  if kind == "lowered":
    assert module.stock is stock and record["layers"]["passed"] is True
  if kind == "kernel":
    assert isinstance(module, type(stock)) and record["passed"] is True
    assert record["module"] == record["kernel"] != kernels._name(type(stock))  # pylint: disable=protected-access
  if note is None:
    assert said is None
  else:
    assert re.fullmatch(re.escape(note).replace(r"\*", ".+"), said), said
  assert record["impl"] == impl
  line = kernels.paths_line(record)
  if kind == "stock":
    assert line is None
  else:  # Each layer with parameters, once, with the path it takes.
    named = [layer for group in line.removeprefix("layers: ").split("; ")
             for layer in group.split(": ")[0].split(", ")]
    params = jax.eval_shape(stock.init, jax.random.key(0),
                            jnp.zeros((1, *SHAPE), jnp.uint8))["params"]
    assert sorted(named) == sorted(params), line
  if said and "XLA's" in said:  # The kinds said are those recorded.
    assert said.endswith("; ".join(f"{k} ({', '.join(v)})" for k, v in record[
        "uncovered"].items()) + ": XLA's, slow on CPU")


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [
    ("cnn", dict(dropout=0.25)), ("cnn", dict(cnn_batch_norm=True)),
    ("gru", dict(num_layers=2, bidirectional=True, dropout=0.2))])
def test_a_fast_run_restores_into_stock(prepared, tmp_path, name, overrides):
  """Trained by the kernel or lowered layers, evaluated from its checkpoint
  (BatchNorm's statistics too) by the stock module: the run's test metrics."""
  workdir = str(tmp_path / name)
  config = models.get_config(
      name, "seed", impl="fast", epochs=1, batch_size=50, val_fraction=0.0,
      tensorboard=False, report=False, **prepared.settings,
      **{**TINY[name], **overrides})
  final = modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  implementation = read_record(workdir)["environment"]["implementation"]
  assert implementation.get("layers", implementation)["passed"] is True
  run = run_lib.load_run(workdir, impl="stock")
  assert type(run.model) is models.get(name).module
  test = pipeline.load(run.config).test
  metrics = run.evaluate(test.images, test.labels)
  assert metrics["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-5)
  assert metrics["loss"] == pytest.approx(final["test_loss"], abs=1e-5)
