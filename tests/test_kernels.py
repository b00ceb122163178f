"""--impl: kernels.swap gives a run a kernel only after a start-up check that
it computes the stock module as it is now (edits included), else the stock
module and one line; either module reads the other's checkpoints."""

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

import launch_helpers as lh
from conftest import synthetic_digits
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.models import cnn
from mnist_jax.models import kernels
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_matmul
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import fused_rnn
from mnist_jax.results import run as run_lib
from mnist_jax import modes as rundir_run
from mnist_jax.training import loop

SHAPE = (28, 28, 1)
# Each model small, so that a check compiles in a second or two.
SMALL = {"cnn": dict(cnn_features=(4, 8), cnn_dense=16), "rnn": dict(hidden=8),
         "lstm": dict(hidden=8), "gru": dict(hidden=8)}
NAMES = {cnn.CNN: "mnist_jax/models/cnn.py's CNN",
         conv_pool.CNN: "mnist_jax/models/kernels/conv_pool.py's CNN",
         recurrent.Recurrent: "mnist_jax/models/recurrent.py's Recurrent",
         fused_rnn.Recurrent: "mnist_jax/models/kernels/fused_rnn.py's Recurrent"}


def _config(name, **overrides):
  return models.get_config(name, "seed", **{**SMALL.get(name, {}), **overrides})


def _stock(name, **overrides):
  return models.get(name).stock(_config(name, **overrides))


FAST_MODELS = tuple(name for name in models.MODELS
                    if kernels.kernel_for(_stock(name)) is not None)


_SWAPPED = {}


def _swap(name, impl, backend, **overrides):
  """kernels.swap of the model's stock module, once per test session."""
  key = (name, impl, backend, tuple(sorted(overrides.items())))
  if key not in _SWAPPED:
    _SWAPPED[key] = kernels.swap(_stock(name, **overrides), impl, SHAPE,
                                 backend)
  return _SWAPPED[key]


def test_a_cell_the_kernel_does_not_know_keeps_the_stock_module(monkeypatch):
  """A new cell: the fused kernel declares the cells it computes, so the run
  keeps the stock module in one line; without that declaration its check
  raises, and that too keeps the stock module in one line."""
  monkeypatch.setitem(recurrent.CELLS, "mgu", nn.MGUCell)
  stock = recurrent.Recurrent(cell="mgu", hidden=4)
  assert kernels.kernel_for(stock) is None
  line = (f"the fast kernel {NAMES[fused_rnn.Recurrent]} does not compute "
          f"{NAMES[recurrent.Recurrent]} (it{{}}): training the stock module")
  module, note, record = kernels.swap(stock, "fast", SHAPE, "cpu")
  assert module is stock and record["passed"] is False
  assert note == line.format(" has no cell=mgu")
  monkeypatch.setattr(fused_rnn.Recurrent, "ACCEPTS", {})
  assert kernels.kernel_for(stock) is fused_rnn.Recurrent  # As it claims.
  module, note, record = kernels.swap(stock, "fast", SHAPE, "cpu")
  assert module is stock and record["passed"] is False
  assert note == line.format("s check raised KeyError: 'mgu'")


@pytest.mark.parametrize("name", FAST_MODELS)
def test_auto_on_cpu_runs_the_kernel_once_checked(name):
  module, note, record = _swap(name, "auto", "cpu")
  kernel = kernels.kernel_for(_stock(name))
  assert type(module) is kernel and note is None
  assert {k: v for k, v in record.items() if k not in ("check_s", "cached")
         } == {"impl": "auto", "module": NAMES[kernel],
               "kernel": NAMES[kernel], "passed": True}
  assert record["check_s"] > 0
  # The kernel keeps the stock module's settings.
  for field in dataclasses.fields(kernel):
    if field.name not in ("parent", "name"):
      assert getattr(module, field.name) == getattr(_stock(name), field.name)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_auto_elsewhere_runs_stock_unchecked(name, backend):
  stock = models.get(name).stock(_config(name))
  module, note, record = kernels.swap(stock, "auto", SHAPE, backend)
  assert module is stock and note is None
  assert record == {"impl": "auto", "module": NAMES.get(
      type(stock), record["module"])}
  assert "check_s" not in record


@pytest.mark.parametrize("name,overrides,missing", [
    ("lstm", dict(remat=True), "remat=True"),
    ("gru", dict(remat=True, bidirectional=True), "remat=True"),
    ("cnn", dict(cnn_batch_norm=True), "batch_norm=True"),
    ("mlp", {}, None), ("linear", {}, None)])
def test_what_no_kernel_computes_runs_stock(name, overrides, missing):
  """An attribute the kernel lacks, set: the stock module and one line that
  names both files and why (without a check); no kernel at all: silent."""
  for impl, backend in (("auto", "cpu"), ("fast", "cpu"), ("fast", "gpu")):
    stock = models.get(name).stock(_config(name, impl=impl, **overrides))
    module, note, record = kernels.swap(stock, impl, SHAPE, backend)
    if name == "cnn":  # The stock CNN, its convolutions as matmuls.
      assert type(module) is conv_matmul.Convs and module.stock is stock
      assert record["convs"]["passed"] is True
      note = note.removesuffix(", its convolutions as matmuls")
    else:
      assert module is stock
    if missing is None:
      assert note is None and record == {
          "impl": impl, "module": f"mnist_jax/models/dense.py's {type(stock).__name__}"}
      continue
    assert kernels.kernel_for(stock) is None
    kernel = kernels.kernel_for(_stock(name))  # Its settings' defaults'.
    assert note == (f"the fast kernel {NAMES[kernel]} does not compute "
                    f"{NAMES[type(stock)]} (it has no {missing}): training "
                    "the stock module")
    assert record["passed"] is False and record["module"] == NAMES[type(stock)]
  # --impl=auto on a GPU does not ask for a kernel there: nothing to say.
  stock = models.get(name).stock(_config(name, **overrides))
  assert kernels.swap(stock, "auto", SHAPE, "gpu")[1] is None


@pytest.mark.parametrize("k", [pytest.param(5, marks=pytest.mark.slow),
                               pytest.param(1, marks=pytest.mark.slow),
                               pytest.param(2, marks=pytest.mark.slow),
                               pytest.param(7, marks=pytest.mark.slow)])
def test_any_cnn_kernel_size_runs_the_kernel_on_cpu(k):
  """The im2col lowering covers k x k convolutions Winograd does not."""
  module, note, _ = _swap("cnn", "auto", "cpu", cnn_kernel=k)
  assert type(module) is conv_pool.CNN and note is None
  assert module.kernel_size == k
  assert type(_swap("cnn", "auto", "gpu", cnn_kernel=k)[0]) is cnn.CNN


@pytest.mark.parametrize("name", FAST_MODELS)
def test_fast_runs_the_kernel_on_any_backend_and_stock_never(name):
  for backend in ("cpu", "gpu", "tpu"):
    module, note, record = _swap(name, "fast", backend)
    assert type(module) is kernels.kernel_for(_stock(name))
    assert note is None and record["passed"] is True
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
  """A kernel subclasses its stock module (its attributes and defaults); the
  attributes whose values it limits are the ones swap refuses when set
  otherwise (listed here, so that a new one is a decision)."""
  stock, kernel = type(_stock(name)), kernels.kernel_for(_stock(name))
  assert issubclass(kernel, stock)
  assert set(kernel.ACCEPTS) == {cnn.CNN: {"batch_norm"},
                                 recurrent.Recurrent: {"cell", "remat"}}[stock]


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


# The module a researcher edits is the module that runs.

EDIT = ("    last = x[:, -1]\n",
        "    last = x.mean(axis=1)  # Edited: the mean of the rows' states.\n")


def _edited_recurrent():
  """models/recurrent.py with EDIT made, loaded as a module of the same
  name: what `import mnist_jax.models.recurrent` gives once a researcher has
  edited the file."""
  with open(recurrent.__file__, encoding="utf-8") as f:
    source = f.read()
  assert source.count(EDIT[0]) == 1
  module = types.ModuleType(recurrent.__name__)
  module.__file__ = recurrent.__file__
  exec(compile(source.replace(*EDIT), recurrent.__file__, "exec"),  # pylint: disable=exec-used
       module.__dict__)
  return module


def _edit(monkeypatch):
  """The package as it runs with recurrent.py edited: its registry's rnn is
  the edited class, and kernels.KERNELS keys that class (the stock class of
  the edited package) to the fused kernel, as the package's import would."""
  edited = _edited_recurrent().Recurrent
  monkeypatch.setitem(models.MODELS, "rnn", dataclasses.replace(
      models.MODELS["rnn"], module=edited))
  monkeypatch.setitem(kernels.KERNELS, edited,
                      kernels.KERNELS[recurrent.Recurrent])
  return edited


class _Quiet(loop.Hooks):
  """The loop's hooks, keeping its messages."""

  def __init__(self):
    self.said = []

  def message(self, text):
    self.said.append(text)


def _tiny_data():
  x, y = synthetic_digits(256, 0)
  tx, ty = synthetic_digits(100, 1)
  return pipeline.Dataset(
      pipeline.Split(x, y.astype(np.int32)),
      pipeline.Split(x[:0], y[:0].astype(np.int32)),
      pipeline.Split(tx, ty.astype(np.int32)), tuple("0123456789"))


def _train(config):
  """(the run's final numbers without its timings, its messages)."""
  hooks = _Quiet()
  model, _ = models.build(config, hooks.message)
  _, final = loop.train_and_evaluate(config, _tiny_data(), model, hooks)
  numbers = {k: v for k, v in final.items()
             if not k.endswith("_s") and k != "examples_per_s"}
  return numbers, hooks.said


TRAIN = dict(hidden=8, epochs=1, batch_size=32, learning_rate=1e-2,
             val_fraction=0.0)


def test_an_edited_module_runs_as_edited_and_the_stock_one_gets_the_kernel(
    monkeypatch, tmp_path):
  """A Recurrent that reads the mean of the rows' states, not the last: the
  kernel fails its check (a verdict kept for the unedited module does not
  stand for it), the run trains the edited module and says so in one line,
  its numbers are an --impl=stock run's of the edited module and not the
  unedited module's; the unedited module passes and gets the kernel."""
  config = _config("rnn", impl="auto", **TRAIN)
  said = []
  module, record = models.build(config, said.append)  # The verdict is kept.
  assert type(module) is fused_rnn.Recurrent and not said
  assert record["passed"] is True

  edited = _edit(monkeypatch)
  module, record = models.build(config, said.append)
  assert type(module) is edited
  assert len(said) == 1 and "\n" not in said[0]
  assert said[0].startswith(
      "the fast kernel mnist_jax/models/kernels/fused_rnn.py's Recurrent does "
      "not compute mnist_jax/models/recurrent.py's Recurrent (its outputs or "
      "gradients differ by up to ")
  assert said[0].endswith("): training the stock module")
  assert record["passed"] is False and "cached" not in record
  assert record["module"] == NAMES[recurrent.Recurrent]
  auto, auto_said = _train(config)
  assert auto_said == said
  stock, stock_said = _train(config.replace(impl="stock"))
  assert stock_said == [] and auto == stock

  monkeypatch.undo()  # The package as shipped.
  said.clear()
  module, record = models.build(config, said.append)
  assert type(module) is fused_rnn.Recurrent and not said
  assert record["passed"] is True and record["cached"] is True
  unedited, unedited_said = _train(config)
  assert unedited_said == []
  assert unedited["test_loss"] != pytest.approx(auto["test_loss"], rel=1e-3)

  # The check once compiled (JAX's caches; no verdict kept), then a kept
  # verdict: their times, reported, not asserted.
  monkeypatch.setattr(kernels, "_CACHE", str(tmp_path / "verdicts.json"))
  stock_module = models.get("rnn").stock(config)
  _, _, checked = kernels.swap(stock_module, "auto", SHAPE, "cpu")
  _, _, kept = kernels.swap(stock_module, "auto", SHAPE, "cpu")
  assert "cached" not in checked and kept["cached"] is True
  print(f"\nstart-up check of {checked['kernel']} once compiled: "
        f"{checked['check_s']:.3f}s; its kept verdict: {kept['check_s']:.3f}s")


def _package_copy(root, edit: bool):
  """launch.py and mnist_jax/ copied into `root`, recurrent.py edited."""
  os.makedirs(root)
  shutil.copy(os.path.join(lh.ROOT, "launch.py"), root)
  shutil.copytree(os.path.join(lh.ROOT, "mnist_jax"),
                  os.path.join(root, "mnist_jax"),
                  ignore=shutil.ignore_patterns("__pycache__"))
  path = os.path.join(root, "mnist_jax", "models", "recurrent.py")
  with open(path, encoding="utf-8") as f:
    source = f.read()
  if edit:
    with open(path, "w", encoding="utf-8") as f:
      f.write(source.replace(*EDIT))
  return os.path.join(root, "launch.py")


@pytest.mark.slow
def test_an_edited_package_copy_runs_its_edit_through_launch(prepared,
                                                            tmp_path):
  """A copy of the package with recurrent.py edited, run by its own
  launch.py in a child process on CPU: --impl=auto trains the edited module
  (one line says why), as --impl=stock does; the unedited copy gets the
  kernel and other numbers."""
  mnist_dir, data_dir = prepared

  scripts = {edit: _package_copy(str(tmp_path / f"package-{edit}"), edit)
             for edit in (True, False)}

  def launch(edit, impl):
    script = scripts[edit]
    workdir = tmp_path / f"run-{edit}-{impl}"
    env = dict(lh.child_env(), PYTHONPATH=os.path.dirname(script))
    proc = subprocess.run(
        [sys.executable, script, "--model=rnn", "--preset=seed", "--hidden=8",
         "--epochs=1", "--batch_size=50", "--val_fraction=0",
         "--notensorboard", "--noreport", f"--impl={impl}",
         f"--mnist_dir={mnist_dir}",
         f"--data_dir={data_dir}", f"--workdir={workdir}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=300, check=False)
    assert proc.returncode in (0, 4), proc.stderr[-3000:]
    with open(workdir / "config.json") as f:
      implementation = json.load(f)["environment"]["implementation"]
    return proc.stdout, lh.deterministic(lh.metrics(workdir)), implementation

  out, auto, implementation = launch(True, "auto")
  note = [l for l in out.splitlines() if "does not compute" in l]
  assert len(note) == 1, out
  assert "mnist_jax/models/recurrent.py's Recurrent (its outputs or gradients " \
         "differ by up to " in note[0]
  assert implementation["passed"] is False
  assert implementation["module"] == NAMES[recurrent.Recurrent]
  out, stock, implementation = launch(True, "stock")
  assert "does not compute" not in out
  assert implementation == {"impl": "stock", "module": NAMES[recurrent.Recurrent]}
  assert auto == stock
  out, unedited, implementation = launch(False, "auto")
  assert "does not compute" not in out
  assert implementation["passed"] is True
  assert implementation["module"] == NAMES[fused_rnn.Recurrent]
  assert unedited[-1]["test_loss"] != pytest.approx(auto[-1]["test_loss"],
                                                   rel=1e-3)


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
  assert implementation["passed"] is True
  run = run_lib.load_run(workdir, impl="stock")
  assert type(run.model) is type(models.get(name).stock(config))
  test = pipeline.load(run.config).test
  metrics = run.evaluate(test.images, test.labels)
  assert metrics["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-5)
  assert metrics["loss"] == pytest.approx(final["test_loss"], abs=1e-5)


def test_a_kernel_whose_numbers_are_nan_fails_the_check():
  """NaN compares false with everything: the check must still fail it."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  class Stock(nn.Module):
    nan: bool = False

    @nn.compact
    def __call__(self, images, train=False):
      y = nn.Dense(3)(images.reshape(images.shape[0], -1) / 255.0)
      return y * jnp.nan if self.nan else y

  assert kernels._difference(Stock(), Stock(), SHAPE) is None
  why = kernels._difference(Stock(), Stock(nan=True), SHAPE)
  assert why and why.startswith("its outputs or gradients differ by up to nan")


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
    monkeypatch, tmp_path):
  """A module no kernel computes, with convolutions: on a CPU it runs as
  itself with its convolutions as matmuls, once checked equal (outputs,
  gradients, batch statistics), silently; a lowering that is wrong fails
  the check and the run keeps XLA's convolutions, saying so."""
  stock = _Convs()
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  assert type(module) is conv_matmul.Convs and note is None
  assert record["convs"]["passed"] is True
  assert kernels._difference(stock, module, SHAPE) is None
  images = synthetic_digits(6, seed=1)[0]
  variables = stock.init(jax.random.key(0), images)
  assert jax.tree.map(np.shape, module.init(jax.random.key(0), images)) == (
      jax.tree.map(np.shape, variables))
  lowered = str(jax.make_jaxpr(lambda v: module.apply(v, images))(variables))
  assert lowered.count("conv_general_dilated") == 1  # Only the strided one.
  assert kernels.swap(stock, "auto", SHAPE, "gpu")[0] is stock
  assert kernels.swap(stock, "stock", SHAPE, "cpu")[0] is stock
  # A lowering off by 1%: the check fails it.
  monkeypatch.setattr(kernels, "_CACHE", str(tmp_path / "verdicts.json"))
  conv = conv_matmul._conv
  monkeypatch.setattr(conv_matmul, "_conv", lambda c, x: conv(c, x) * 1.01)
  module, note, record = kernels.swap(stock, "auto", SHAPE, "cpu")
  assert module is stock and record["convs"]["passed"] is False
  assert note.startswith(
      f"training {kernels._name(_Convs)} with XLA's convolutions: "
      "mnist_jax/models/kernels/conv_matmul.py's Convs does not compute them "
      "(its outputs or gradients differ by up to "), note


class _Dense(nn.Module):
  """A stock module that checks in a second."""

  @nn.compact
  def __call__(self, images, train=False):
    return nn.Dense(3)(images.reshape(images.shape[0], -1) / 255.0)


class _OffDense(_Dense):
  """A kernel for it off by 1%: it fails the check."""

  def __call__(self, images, train=False):
    return super().__call__(images, train) * 1.01


class _RaisingDense(_Dense):
  """A kernel for it that raises while checked."""

  def __call__(self, images, train=False):
    raise ValueError("the kernel broke\nat its second line")


def _swap_dense(monkeypatch, kernel):
  monkeypatch.setitem(kernels.KERNELS, _Dense, kernels.Kernel(kernel, ("cpu",)))
  return kernels.swap(_Dense(), "auto", SHAPE, "cpu")


def test_a_kept_verdict_stands_only_with_its_digest(monkeypatch, tmp_path):
  """A verdict edited in the cache (to null: 'passed'), or not a verdict, is
  no verdict: the kernel is checked again and fails, and the entry is
  written anew; the entry as written stands."""
  cache = tmp_path / "verdicts.json"
  monkeypatch.setattr(kernels, "_CACHE", str(cache))
  module, _, record = _swap_dense(monkeypatch, _OffDense)
  assert type(module) is _Dense and record["passed"] is False
  written = json.loads(cache.read_text())
  [(key, entry)] = written.items()

  def forge(entry):
    cache.write_text(json.dumps({key: entry}))
    module, note, record = _swap_dense(monkeypatch, _OffDense)
    assert type(module) is _Dense and note, entry
    assert record["passed"] is False and "cached" not in record, entry
    assert json.loads(cache.read_text()) == written

  forge(None)  # As the tracker's: the verdict edited to null.
  digest = lambda verdict: kernels._digest(key, verdict)
  for forged in ({"verdict": None}, {**entry, "verdict": None},
                 {"verdict": None, "digest": digest(None) + "0"},
                 {"verdict": 0, "digest": digest(0)},
                 {"verdict": "", "digest": digest("")}, [None]):
    forge(forged)
  module, _, record = _swap_dense(monkeypatch, _OffDense)
  assert type(module) is _Dense and record["cached"] is True


def test_a_check_that_raises_keeps_the_stock_module_in_one_line(
    monkeypatch, tmp_path):
  """Not a traceback: the kernel is not taken, the run says why in one line,
  and no verdict is kept (the next run checks again)."""
  monkeypatch.setattr(kernels, "_CACHE", str(tmp_path / "verdicts.json"))
  module, note, record = _swap_dense(monkeypatch, _RaisingDense)
  assert type(module) is _Dense and record["passed"] is False
  assert note == (f"the fast kernel {kernels._name(_RaisingDense)} does not "
                  f"compute {kernels._name(_Dense)} (its check raised "
                  "ValueError: the kernel broke): training the stock module")
  assert not os.path.exists(kernels._CACHE)

  def broken(conv, x):
    raise RuntimeError("no lowering")
  monkeypatch.setattr(conv_matmul, "_conv", broken)
  module, note, record = kernels.swap(_Convs(), "auto", SHAPE, "cpu")
  assert type(module) is _Convs and record["convs"]["passed"] is False
  assert note == (
      f"training {kernels._name(_Convs)} with XLA's convolutions: "
      "mnist_jax/models/kernels/conv_matmul.py's Convs does not compute them "
      "(its check raised RuntimeError: no lowering)")
