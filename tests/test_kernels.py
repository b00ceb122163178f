"""--impl: kernels.swap gives a run a kernel only after a start-up check that
it computes the stock module as it is now (edits included), in training and
evaluation; else the module as written with its layers lowered (after the
same check), else the stock module and one line; a line names the layers no
lowering takes; either module reads the other's checkpoints.
(Planted edits of the model files: tests/test_module_as_written.py.)"""

import dataclasses
import io
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_digits
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.models import cnn
from mnist_jax.models import kernels
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_matmul
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import lowered
from mnist_jax.results import run as run_lib
from mnist_jax import modes as rundir_run

SHAPE = (28, 28, 1)
# Each model small, so that a check compiles in a second or two.
SMALL = {"cnn": dict(cnn_features=(4, 8), cnn_dense=16), "rnn": dict(hidden=8),
         "lstm": dict(hidden=8), "gru": dict(hidden=8)}
NAMES = {cnn.CNN: "mnist_jax/models/cnn.py's CNN",
         conv_pool.CNN: "mnist_jax/models/kernels/conv_pool.py's CNN",
         recurrent.Recurrent: "mnist_jax/models/recurrent.py's Recurrent"}
CONV_MATMUL = "mnist_jax/models/kernels/conv_matmul.py"
FUSED_RNN = "mnist_jax/models/kernels/fused_rnn.py"


def _config(name, **overrides):
  return models.get_config(name, "seed", **{**SMALL.get(name, {}), **overrides})


def _stock(name, **overrides):
  return models.get(name).stock(_config(name, **overrides))


def _images():
  return np.zeros((2, *SHAPE), np.uint8)


def _random_images():
  return np.random.default_rng(0).integers(0, 256, (4, *SHAPE), np.uint8)


FAST_MODELS = tuple(name for name in models.MODELS
                    if type(_stock(name)) in kernels.KERNELS)
# The models no kernel computes whose layers some lowering takes.
LOWERED_MODELS = tuple(
    name for name in models.MODELS if name not in FAST_MODELS
    and lowered.survey(_stock(name), _images())[0])
RECURRENT = tuple(name for name, spec in models.MODELS.items()
                  if spec.module is recurrent.Recurrent)


_SWAPPED = {}


def _swap(name, impl, backend, **overrides):
  """kernels.swap of the model's stock module, once per test session."""
  key = (name, impl, backend, tuple(sorted(overrides.items())))
  if key not in _SWAPPED:
    _SWAPPED[key] = kernels.swap(_stock(name, **overrides), impl, SHAPE,
                                 backend)
  return _SWAPPED[key]


def test_the_registry_has_kernels_and_lowered_models():
  assert FAST_MODELS == ("cnn",)
  assert set(LOWERED_MODELS) == {"rnn", "lstm", "gru"}


@pytest.mark.parametrize("name", FAST_MODELS)
def test_auto_on_cpu_runs_the_kernel_once_checked(name):
  module, note, record = _swap(name, "auto", "cpu")
  kernel = kernels.KERNELS.get(type(_stock(name)))
  assert type(module) is kernel and note is None
  assert {k: v for k, v in record.items() if k != "check_s"} == {
      "impl": "auto", "module": NAMES[kernel], "kernel": NAMES[kernel],
      "passed": True}
  assert record["check_s"] > 0
  # The kernel keeps the stock module's settings.
  for field in dataclasses.fields(kernel):
    if field.name not in ("parent", "name"):
      assert getattr(module, field.name) == getattr(_stock(name), field.name)


@pytest.mark.parametrize("name", RECURRENT)
def test_auto_on_cpu_runs_the_module_as_written_its_layers_lowered(name):
  """The recurrent models: the stock module itself, its nn.RNN layers
  computed by the fused recurrence, once checked; silently."""
  stock = _stock(name, num_layers=2, bidirectional=True)
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  assert type(module) is lowered.Lowered and module.stock is stock
  assert note is None
  # What the stock module declares (here, how --parallel=auto lays it out).
  assert module.DATA_PARALLEL_ON_CPU is stock.DATA_PARALLEL_ON_CPU is True
  assert module.OUTPUT == stock.OUTPUT
  cells = [f"{name}_{i}{side}" for i in range(2) for side in ("", "_backward")]
  assert record == {"impl": "auto", "module": NAMES[recurrent.Recurrent],
                    "layers": {"lowered": dict.fromkeys(cells, FUSED_RNN),
                               "passed": True,
                               "check_s": record["layers"]["check_s"]}}


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_auto_elsewhere_runs_stock_unchecked(name, backend):
  stock = models.get(name).stock(_config(name))
  module, note, record = kernels.swap(stock, "auto", SHAPE, backend)
  assert module is stock and note is None
  assert record == {"impl": "auto", "module": NAMES.get(
      type(stock), record["module"])}


@pytest.mark.parametrize("name,overrides,why", [
    ("cnn", dict(cnn_batch_norm=True), "it keeps no batch_stats"),
    ("cnn", dict(cnn_kernel=5), "its parameters are not the stock module's"),
    pytest.param("cnn", dict(cnn_kernel=2, cnn_padding="SAME"),
                 "its parameters are not the stock module's",
                 marks=pytest.mark.slow)])
def test_a_cnn_the_kernel_does_not_compute_runs_as_written_its_convs_lowered(
    name, overrides, why):
  """Attributes the kernel does not compute fail its check: the stock module
  itself with its convolutions as matmuls (checked), and one line naming
  both files, why, and the lowering; under --impl=fast on a GPU too."""
  for impl, backend in (("auto", "cpu"), ("fast", "cpu"), ("fast", "gpu")):
    stock = _stock(name, impl=impl, **overrides)
    module, note, record = kernels.swap(stock, impl, SHAPE, backend)
    assert type(module) is lowered.Lowered and module.stock is stock
    assert note == (f"the fast kernel {NAMES[conv_pool.CNN]} does not compute "
                    f"{NAMES[cnn.CNN]} ({why}): training the stock module, "
                    f"its layers lowered by {CONV_MATMUL}")
    assert record["passed"] is False and record["module"] == NAMES[cnn.CNN]
    assert record["layers"]["passed"] is True
    assert record["layers"]["lowered"] == {"conv_0": CONV_MATMUL,
                                           "conv_1": CONV_MATMUL}
  # --impl=auto on a GPU does not ask for a kernel there: nothing to say.
  assert kernels.swap(stock, "auto", SHAPE, "gpu")[1] is None


@pytest.mark.parametrize("name,overrides,layers", [
    ("lstm", dict(remat=True), ["lstm_0"]),
    ("gru", dict(remat=True, bidirectional=True), ["gru_0", "gru_0_backward"]),
])
def test_a_layer_no_lowering_takes_is_named_in_one_line(name, overrides,
                                                        layers):
  """A remat cell: the stock module, and one line naming the layers and what
  computes them; recorded in config.json."""
  stock = _stock(name, **overrides)
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  cell = type(nn.remat(recurrent.CELLS[name])(4)).__name__
  kind = f"nn.RNN over {cell}"
  assert module is stock
  assert note == f"{kind} ({', '.join(layers)}): XLA's, slow on CPU"
  assert record["uncovered"] == {kind: layers} and "layers" not in record
  assert kernels.swap(stock, "auto", SHAPE, "gpu")[1] is None


def test_a_cell_no_lowering_knows_runs_as_flax_computes_it(monkeypatch):
  monkeypatch.setitem(recurrent.CELLS, "mgu", nn.MGUCell)
  stock = recurrent.Recurrent(cell="mgu", hidden=4)
  module, note, record = kernels.swap(stock, "fast", SHAPE, "cpu")
  assert module is stock
  assert note == "nn.RNN over MGUCell (mgu_0): XLA's, slow on CPU"
  assert record == {"impl": "fast", "module": NAMES[recurrent.Recurrent],
                    "uncovered": {"nn.RNN over MGUCell": ["mgu_0"]}}


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_a_model_with_no_layer_to_lower_runs_stock_silently(name):
  for impl, backend in (("auto", "cpu"), ("fast", "gpu")):
    stock = _stock(name)
    assert kernels.swap(stock, impl, SHAPE, backend) == (
        stock, None, {"impl": impl, "module": kernels._name(type(stock))})


@pytest.mark.parametrize("name", FAST_MODELS + LOWERED_MODELS)
def test_fast_runs_the_kernel_on_any_backend_and_stock_never(name):
  for backend in ("cpu", "gpu", "tpu"):
    module, note, record = _swap(name, "fast", backend)
    if name in FAST_MODELS:
      assert type(module) is kernels.KERNELS.get(type(_stock(name)))
      assert record["passed"] is True
    else:
      assert type(module) is lowered.Lowered
      assert record["layers"]["passed"] is True
    assert note is None
    module, note, record = kernels.swap(_stock(name), "stock", SHAPE, backend)
    assert type(module) is type(_stock(name)) and note is None
    assert record == {"impl": "stock", "module": NAMES[type(module)]}


def test_unknown_impl_is_a_one_line_error():
  with pytest.raises(UserError, match=re.escape(
      "flag --impl=turbo: value should be one of <auto|stock|fast>")) as error:
    _config("cnn", impl="turbo")
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", FAST_MODELS)
def test_kernels_take_their_stock_modules_attributes(name):
  """A kernel subclasses its stock module (its attributes and defaults)."""
  assert issubclass(kernels.KERNELS[type(_stock(name))], type(_stock(name)))


@pytest.mark.parametrize("overrides,hint", [
    (dict(cnn_kernel=7, cnn_features=(4, 4, 4)), "--cnn_padding=SAME"),
    (dict(cnn_padding="SAME", cnn_features=(4,) * 5), "fewer --cnn_features"),
])
def test_a_cnn_that_leaves_no_pixels_is_a_one_line_error(overrides, hint):
  with pytest.raises(UserError, match="leave no pixels") as error:
    _config("cnn", **overrides)
  assert hint in str(error.value) and "\n" not in str(error.value)
  _config("cnn", **dict(overrides, cnn_features=overrides["cnn_features"][1:]))


def test_cnn_kernel_must_be_positive():
  with pytest.raises(UserError, match=re.escape(
      "flag --cnn_kernel=0: 0 is not an integer in the range [1, 28]")):
    _config("cnn", cnn_kernel=0)


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [
    ("cnn", dict(cnn_features=(4, 8), cnn_dense=16, dropout=0.25)),
    ("gru", dict(hidden=8, num_layers=2, bidirectional=True, dropout=0.2)),
])
def test_a_fast_run_restores_into_stock(prepared, tmp_path, name, overrides):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / name)
  config = _config(name, impl="fast", epochs=1, batch_size=50,
                   val_fraction=0.0, tensorboard=False, report=False,
                   mnist_dir=mnist_dir, data_dir=data_dir, **overrides)
  final = rundir_run.train_and_evaluate(config, workdir, stream=io.StringIO())
  with open(os.path.join(workdir, "config.json")) as f:
    implementation = json.load(f)["environment"]["implementation"]
  assert implementation.get("layers", implementation)["passed"] is True
  run = run_lib.load_run(workdir, impl="stock")
  assert type(run.model) is type(models.get(name).stock(config))
  test = pipeline.load(run.config).test
  metrics = run.evaluate(test.images, test.labels)
  assert metrics["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-5)
  assert metrics["loss"] == pytest.approx(final["test_loss"], abs=1e-5)


class _Dense(nn.Module):
  """A stock module that checks in a second: in training, with dropout and a
  running mean of its logits (state that training updates)."""

  @nn.compact
  def __call__(self, images, train=False):
    y = nn.Dense(3)(images.reshape(images.shape[0], -1) / 255.0)
    y = nn.Dropout(0.5, deterministic=not train)(y)
    mean = self.variable("batch_stats", "mean", jnp.zeros, (3,))
    if train:
      mean.value = 0.9 * mean.value + 0.1 * y.mean(axis=0)
    return y


class _NaN(_Dense):
  def __call__(self, images, train=False):
    return super().__call__(images, train) * jnp.nan


class _OffInTraining(_Dense):
  """Off by 1% in training only."""

  def __call__(self, images, train=False):
    return super().__call__(images, train) * (1.01 if train else 1.0)


class _OffInEvaluation(_Dense):
  """Off by 1% in evaluation only (the edit issue 54 found ignored)."""

  def __call__(self, images, train=False):
    return super().__call__(images, train) * (1.0 if train else 1.01)


class _OffInState(_Dense):
  """Its outputs and gradients right, the state it updates wrong."""

  def __call__(self, images, train=False):
    y = super().__call__(images, train)
    if train:
      self.put_variable("batch_stats", "mean", y.mean(axis=0))
    return y


class _NoState(nn.Module):
  @nn.compact
  def __call__(self, images, train=False):
    return nn.Dense(3)(images.reshape(images.shape[0], -1) / 255.0)


class _RaisingDense(_Dense):
  """A kernel for it that raises while checked."""

  def __call__(self, images, train=False):
    raise ValueError("the kernel broke\nat its second line")


def _swap_dense(monkeypatch, kernel):
  monkeypatch.setitem(kernels.KERNELS, _Dense, kernel)
  return kernels.swap(_Dense(), "auto", SHAPE, "cpu")


@pytest.mark.parametrize("kernel,why", [
    (_NaN, "its outputs or gradients differ by up to nan"),
    (_OffInTraining, "its outputs or gradients differ by up to 0.01"),
    (_OffInEvaluation, "its outputs or gradients differ by up to 0.01"),
    (_OffInState, "its outputs or gradients differ by up to "),
    (_NoState, "it keeps no batch_stats")])
def test_the_check_compares_training_evaluation_and_state(monkeypatch, kernel,
                                                          why):
  """A kernel off in training (outputs, gradients), in evaluation, or in the
  state training updates fails the check, NaN included (it compares false
  with everything); the stock module then runs, as one line says; the stock
  module itself passes."""
  assert kernels._difference(_Dense(), _Dense(), _random_images()) is None
  module, note, record = _swap_dense(monkeypatch, kernel)
  assert type(module) is _Dense and record["passed"] is False
  assert note.startswith(
      f"the fast kernel {kernels._name(kernel)} does not compute "
      f"{kernels._name(_Dense)} ({why}"), note
  assert note.endswith("): training the stock module")


def test_a_check_that_raises_keeps_the_stock_module_in_one_line(monkeypatch):
  """Not a traceback: the kernel is not taken, the run says why in one line;
  likewise for a lowering that raises."""
  module, note, record = _swap_dense(monkeypatch, _RaisingDense)
  assert type(module) is _Dense and record["passed"] is False
  assert note == (f"the fast kernel {kernels._name(_RaisingDense)} does not "
                  f"compute {kernels._name(_Dense)} (its check raised "
                  "ValueError: the kernel broke): training the stock module")

  def broken(conv, x):
    raise RuntimeError("no lowering")
  monkeypatch.setattr(conv_matmul, "lower", broken)
  module, note, record = kernels.swap(_Convs(), "auto", SHAPE, "cpu")
  assert type(module) is _Convs and record["layers"]["passed"] is False
  assert note == (
      f"training {kernels._name(_Convs)} with flax's own layers: the "
      f"lowerings of {CONV_MATMUL} do not compute them (its check raised "
      "RuntimeError: no lowering); strided convolutions (Conv_2): XLA's, slow "
      "on CPU")


class _Convs(nn.Module):
  """Convolutions conv_matmul lowers (SAME, VALID, 1 to 5 wide, with and
  without bias and BatchNorm) and one it leaves to XLA (stride 2)."""

  @nn.compact
  def __call__(self, images, train=False):
    x = images / 255.0
    x = nn.Conv(3, (3, 3), padding="SAME")(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Conv(4, (5, 2), padding="VALID", use_bias=False)(nn.relu(x))
    x = nn.Conv(2, (3, 3), strides=2)(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_convs_as_matmuls_compute_the_module_and_keep_its_variables(
    monkeypatch):
  """A module no kernel computes, with convolutions: on a CPU it runs as
  itself with its convolutions as matmuls, once checked equal (outputs,
  gradients, batch statistics), and one line names the convolution left to
  XLA; a lowering that is wrong fails the check and the run keeps XLA's
  convolutions, saying so."""
  stock = _Convs()
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  assert type(module) is lowered.Lowered
  assert note == "strided convolutions (Conv_2): XLA's, slow on CPU"
  assert record["layers"]["passed"] is True
  assert record["layers"]["lowered"] == {"Conv_0": CONV_MATMUL,
                                         "Conv_1": CONV_MATMUL}
  assert record["uncovered"] == {"strided convolutions": ["Conv_2"]}
  assert kernels._difference(stock, module, _random_images()) is None
  images = synthetic_digits(6, seed=1)[0]
  variables = stock.init(jax.random.key(0), images)
  assert jax.tree.map(np.shape, module.init(jax.random.key(0), images)) == (
      jax.tree.map(np.shape, variables))
  computed = str(jax.make_jaxpr(lambda v: module.apply(v, images))(variables))
  assert computed.count("conv_general_dilated") == 1  # Only the strided one.
  assert kernels.swap(stock, "auto", SHAPE, "gpu")[0] is stock
  assert kernels.swap(stock, "stock", SHAPE, "cpu")[0] is stock
  # A lowering off by 1%: the check fails it.
  conv = conv_matmul.lower
  monkeypatch.setattr(conv_matmul, "lower", lambda c, x: conv(c, x) * 1.01)
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  assert module is stock and record["layers"]["passed"] is False
  assert note.startswith(
      f"training {kernels._name(_Convs)} with flax's own layers: the "
      f"lowerings of {CONV_MATMUL} do not compute them (its outputs or "
      "gradients differ by up to "), note


class _Uncovered(nn.Module):
  """Layers no lowering takes, one of each kind (kind: its settings)."""
  kind: str

  @nn.compact
  def __call__(self, images, train=False):
    x = images / 255.0
    conv = {"grouped": dict(feature_group_count=2),
            "dilated": dict(kernel_dilation=2),
            "padded": dict(padding=1)}.get(self.kind)
    if conv is not None:
      x = nn.Conv(2, (3, 3))(jnp.concatenate([x, x], axis=-1))
      x = nn.Conv(4, (3, 3), **conv, name="odd")(x)
    elif self.kind == "1-D":
      x = nn.Conv(4, (3,), name="odd")(x[..., 0, :])
    else:  # nn.RNN with a setting the fused recurrence does not take.
      cell = nn.GRUCell(4, name="odd", **(
          dict(activation_fn=nn.relu) if self.kind == "functions" else {}))
      rnn = {"time_major": dict(time_major=True), "unroll": dict(unroll=2),
             "return_carry": dict(return_carry=True)}.get(self.kind, {})
      x = nn.RNN(cell, **rnn)(x[..., 0])
      x = x[1] if self.kind == "return_carry" else x
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("kind,why", [
    ("grouped", "grouped convolutions"), ("dilated", "dilated convolutions"),
    ("padded", "convolutions padded other than SAME or VALID"),
    ("1-D", "1-D convolutions"),
    ("time_major", "nn.RNN with time_major"), ("unroll", "nn.RNN with unroll"),
    ("return_carry", "nn.RNN with return_carry"),
    ("functions", "nn.RNN over GRUCell with other functions")])
def test_each_layer_no_lowering_takes_is_named_and_runs_as_flax_does(kind,
                                                                     why):
  """The line names each kind of layer the lowerings leave to flax, with its
  layer; the module runs, its other layers lowered, as the stock one."""
  stock = _Uncovered(kind)
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  assert note == f"{why} (odd): XLA's, slow on CPU"
  assert record["uncovered"] == {why: ["odd"]}
  assert "odd" not in record.get("layers", {}).get("lowered", {})
  assert module is stock or record["layers"]["passed"] is True
