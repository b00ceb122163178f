"""--parallel=auto is a rule, never a timing; split_host makes a CPU-only host
one XLA device per core for it.

process.split_host must act before JAX starts its backends, so the runs that
use it are launch.py child processes (JAX_PLATFORMS=cpu, no XLA_FLAGS).
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import pytest

from conftest import xla_flags
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.models import dense
from mnist_jax.models import recurrent
from mnist_jax.models import registry
from mnist_jax.rundir import process
from mnist_jax.training import devices as devices_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
TINY = {"gru": dict(hidden=16), "lstm": dict(hidden=16), "rnn": dict(hidden=16),
        "mlp": dict(mlp_hidden=(16,)), "linear": {},
        "cnn": dict(cnn_features=(4, 8), cnn_dense=16)}


@pytest.fixture
def host(monkeypatch):
  """fn(devices, backend="cpu", processes=1, local=None): makes JAX report
  such a host to the rule (devices.resolve reads only these)."""
  def make(count, backend="cpu", processes=1, local=None):
    monkeypatch.setattr(jax, "device_count", lambda: count)
    monkeypatch.setattr(jax, "local_device_count",
                        lambda: count if local is None else local)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
  return make


def resolve(model="gru", members=1, **overrides):
  config = models.get_config(model, "seed", **{**TINY[model], **overrides})
  return devices_lib.resolve(config, members, _stock(config))


def _stock(config):
  return models.get(config.model).stock(config)


@pytest.mark.parametrize("model,batch,count,expected", [
    ("gru", 128, 8, ("sharded", 4)),  # 4 x 32: at least MIN_DEVICE_BATCH each.
    ("gru", 128, 2, ("sharded", 2)),
    ("lstm", 64, 8, ("sharded", 2)),
    ("rnn", 100, 8, ("sharded", 2)),  # 2 x 50, not 4 x 25.
    ("gru", 63, 2, ("none", 1)),  # Odd: no even split.
    ("gru", 62, 2, ("none", 1)),  # 2 x 31 is below MIN_DEVICE_BATCH.
    ("gru", 16, 2, ("none", 1)),  # Even one device's 16 is below it.
    ("gru", 128, 1, ("none", 1)),
    ("mlp", 128, 8, ("none", 1)),  # Not DATA_PARALLEL_ON_CPU: one device.
    ("cnn", 128, 8, ("none", 1)),
    ("linear", 128, 8, ("none", 1)),
])
def test_auto_on_a_cpu_host(host, model, batch, count, expected):
  host(count)
  assert resolve(model, batch_size=batch) == expected


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_auto_on_an_accelerator_host_is_sharded_over_every_device(host,
                                                                  backend):
  host(4, backend)
  assert resolve("mlp", batch_size=128) == ("sharded", 4)
  assert resolve("cnn", batch_size=64) == ("sharded", 4)
  host(1, backend)
  assert resolve("mlp", batch_size=128) == ("none", 1)
  host(8, backend)  # The most devices a batch of 100 splits over.
  assert resolve("mlp", batch_size=100) == ("sharded", 5)


def test_several_members_are_split_over_the_devices(host):
  host(8)
  assert resolve("mlp", 4) == ("members", 4)
  assert resolve("mlp", 16) == ("members", 8)
  assert resolve("mlp", 3) == ("members", 3)  # Splits evenly over 3 of 8.
  assert resolve("mlp", 4, parallel="none") == ("none", 1)
  host(4, "gpu")
  assert resolve("gru", 6) == ("members", 3)
  with pytest.raises(UserError) as e:
    resolve("mlp", 2, parallel="pmap")
  assert "\n" not in str(e.value) and "leave out --parallel=pmap" in str(e.value)


def test_explicit_modes_and_their_refusals(host):
  host(8, local=4)
  assert resolve("mlp", parallel="sharded", batch_size=128) == ("sharded", 8)
  # pmap maps each process's local devices; the batch splits over all 8.
  assert resolve("mlp", parallel="pmap", batch_size=128) == ("pmap", 8)
  assert resolve("gru", parallel="none", batch_size=128) == ("none", 1)
  with pytest.raises(UserError) as e:
    resolve("mlp", parallel="sharded", batch_size=100)
  message = str(e.value)
  assert "\n" not in message
  assert "--batch_size=100" in message and "96 or 104" in message
  assert "--parallel=none" in message
  with pytest.raises(UserError, match="e.g. 3\\)"):
    host(3)
    resolve("mlp", parallel="sharded", batch_size=2)
  host(4, processes=2)
  with pytest.raises(UserError, match="pass --parallel=sharded"):
    resolve("mlp", parallel="none")


def test_the_rule_reads_the_stock_module_class_not_the_model_name(
    host, monkeypatch):
  """A model registered outside devices.py gets the rule its stock module's
  class declares: none on a CPU host for a new class, sharded for the
  recurrent one (DATA_PARALLEL_ON_CPU) or a class that declares it, with
  nothing measured and devices.py untouched."""

  class NewNet(dense.MLP):
    pass

  host(8)
  spec = registry.get("mlp")
  monkeypatch.setitem(registry.MODELS, "mlp",
                      dataclasses.replace(spec, module=NewNet))
  assert resolve("mlp", batch_size=128) == ("none", 1)
  config = models.get_config("mlp", "seed", batch_size=128)
  monkeypatch.setitem(registry.MODELS, "mlp", dataclasses.replace(
      spec, module=recurrent.Recurrent, settings={}, fixed={"hidden": 8}))
  assert devices_lib.resolve(config, 1, _stock(config)) == ("sharded", 4)
  NewNet.DATA_PARALLEL_ON_CPU = True
  monkeypatch.setitem(registry.MODELS, "mlp",
                      dataclasses.replace(spec, module=NewNet))
  assert resolve("mlp", batch_size=128) == ("sharded", 4)


def test_split_host_leaves_the_host_whole_for_one_device_or_a_set_count(
    monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert process.split_host("none") == 0
  assert process.split_host("auto", multi_process=True) == 0
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  assert process.split_host("auto") == 0
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")
  assert process.split_host("auto") == 0
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES")
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert process.split_host("auto") == 0
  monkeypatch.delenv("SLURM_NTASKS")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert process.split_host("auto") == 0


def test_split_host_after_jax_started_leaves_the_devices(monkeypatch):
  """Once JAX has started its backends the CPU device count is fixed: no split,
  and no error (JAX refuses the setting; split_host reports 0)."""
  devices = jax.devices()  # Starts the backends, if no test has yet.
  for name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
  assert process.split_host("auto") == 0
  assert jax.devices() == devices


@pytest.mark.parametrize("given, expected", [
    ("", "--xla_gpu_deterministic_ops=true"),
    ("--xla_dump_to=/tmp/d", "--xla_dump_to=/tmp/d "
     "--xla_gpu_deterministic_ops=true"),
    ("--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops=false"),
])
def test_setup_asks_for_deterministic_gpu_kernels_unless_told(monkeypatch,
                                                              given, expected):
  monkeypatch.setenv("XLA_FLAGS", given)
  process.setup_process()
  assert os.environ["XLA_FLAGS"] == expected


def test_accelerator_detection(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert process._accelerator_possible()  # pylint: disable=protected-access
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not process._accelerator_possible()  # pylint: disable=protected-access


def _env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **extra)
  env["XLA_FLAGS"] = xla_flags()
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


@pytest.mark.slow  # Four launch.py processes; the rule itself: above.
@pytest.mark.skipif(CORES < 2, reason="needs at least 2 CPU cores")
def test_dry_run_names_the_layout_auto_takes():
  """The rule needs no measurement, so --dry_run says what the run will
  take: a recurrent model sharded over the split host, a CNN one device; a
  CNN asked to be sharded or pmapped, the split host's devices."""
  lines, split = {}, min(CORES, process.MAX_HOST_DEVICES)
  asked = ("cnn --parallel=sharded", "cnn --parallel=pmap") * (64 % split == 0)
  for args in ("gru", "cnn", *asked):
    proc = subprocess.run(
        [sys.executable, "launch.py", *f"--model={args}".split(),
         "--preset=seed", "--batch_size=64", "--dry_run"], cwd=ROOT,
        env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines[args] = next(l for l in proc.stdout.splitlines()
                       if l.startswith("devices:"))
  devices = min(CORES, process.MAX_HOST_DEVICES, 2)  # Batch 64: 2 x 32.
  assert lines["gru"] == (f"devices:    data parallel over {devices} CPU "
                          "devices (one jit over a mesh)")
  assert lines["cnn"] == "devices:    one CPU device"
  if not asked:  # 64 does not split over this host's devices.
    return
  assert lines["cnn --parallel=sharded"] == (
      f"devices:    data parallel over {split} CPU devices (one jit over a "
      "mesh)")
  assert lines["cnn --parallel=pmap"].startswith(
      f"devices:    data parallel over {split} CPU devices (pmap")


def _launch(prepared, workdir, *extra):
  """Trains a GRU 2 epochs with launch.py; (stdout, rows, environment). (That
  the split host's sharded GRU trains as on one device: test_topology.py.)"""
  mnist_dir, data_dir = prepared
  proc = subprocess.run(
      [sys.executable, "launch.py", "--model=gru", "--preset=seed",
       "--hidden=16", "--learning_rate=3e-2", "--noreport",
       "--epochs=2", "--batch_size=64", "--eval_batch_size=100",
       "--val_fraction=0.1", "--dropout=0", f"--mnist_dir={mnist_dir}",
       f"--data_dir={data_dir}", f"--workdir={workdir}", *extra],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "config.json")) as f:
    environment = json.load(f)["environment"]
  return proc.stdout, rows, environment


@pytest.mark.slow
@pytest.mark.skipif(CORES < 2, reason="needs at least 2 CPU cores")
@pytest.mark.parametrize("extra,expected", [
    (["--batch_size=63"], {"mode": "none", "devices": 1}),
    (["--num_seeds=2"], {"mode": "members", "devices": 2,
                         "members": "in turn"})])
def test_auto_on_a_split_host_without_a_data_split(prepared, tmp_path, extra,
                                                  expected):
  """A batch that does not split: one device, no error; several seeds: the
  members split over the devices."""
  out, rows, env = _launch(prepared, tmp_path / "run", *extra)
  assert "data parallel" not in out
  assert env["parallel"] == expected
  assert len(rows) == 3 and rows[2]["test_examples"] == 200
