"""--parallel=auto: a rule (backend, devices, batch, the stock module's class)
on the host split_host makes; what each layout computes: test_parallel.py."""

import dataclasses
import os

import jax
import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.models import dense
from mnist_jax.models import registry
from mnist_jax.rundir import process
from mnist_jax.training import devices as devices_lib


@pytest.fixture
def host(monkeypatch):
  """fn(devices, backend="cpu", processes=1, local=None): JAX reports such a
  host to the rule."""
  def make(count, backend="cpu", processes=1, local=None):
    monkeypatch.setattr(jax, "device_count", lambda: count)
    monkeypatch.setattr(jax, "local_device_count",
                        lambda: count if local is None else local)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
  return make


def resolve(model="gru", members=1, **overrides):
  config = models.get_config(model, "seed", **overrides)
  return devices_lib.resolve(config, members,
                             models.get(config.model).stock(config))


@pytest.mark.parametrize("host_is,model,members,settings,expected", [
    # A CPU: the recurrent models sharded over devices of at least
    # MIN_DEVICE_BATCH examples each, the others one device.
    ((8,), "gru", 1, dict(batch_size=128), ("sharded", 4)),
    ((8,), "rnn", 1, dict(batch_size=100), ("sharded", 2)),  # Not 4 x 25.
    ((2,), "gru", 1, dict(batch_size=63), ("none", 1)),  # No even split.
    ((2,), "gru", 1, dict(batch_size=62), ("none", 1)),  # 31 is too few.
    ((1,), "gru", 1, dict(batch_size=128), ("none", 1)),
    ((8,), "mlp", 1, dict(batch_size=128), ("none", 1)),
    # A GPU (or TPU): every model sharded over as many devices as split it.
    ((8, "gpu"), "mlp", 1, dict(batch_size=100), ("sharded", 5)),
    # Members split over the devices, evenly.
    ((8,), "mlp", 16, {}, ("members", 8)),
    ((4, "gpu"), "gru", 6, {}, ("members", 3)),
    # Members that split over no devices: each as its single run.
    ((2,), "gru", 3, dict(batch_size=128), ("sharded", 2)),
    ((2,), "mlp", 3, dict(batch_size=128), ("none", 1)),
    ((2,), "gru", 3, dict(batch_size=128, parallel="sharded"), ("none", 1)),
    ((2, "gpu"), "gru", 3, dict(batch_size=128), ("none", 1)),  # Vmapped.
    ((8,), "mlp", 4, dict(parallel="none"), ("none", 1)),
    ((4, "cpu", 2), "mlp", 4, {}, ("none", 1)),  # Each process all of them.
    # Asked for: pmap maps each process's local devices, the batch split
    # over all of them.
    ((8, "cpu", 1, 4), "mlp", 1, dict(parallel="sharded", batch_size=128),
     ("sharded", 8)),
    ((8, "cpu", 1, 4), "mlp", 1, dict(parallel="pmap", batch_size=128),
     ("pmap", 8)),
    ((8,), "gru", 1, dict(parallel="none", batch_size=128), ("none", 1)),
    # Refused, in one line.
    ((8,), "mlp", 1, dict(parallel="sharded", batch_size=100), "--batch_size="
     "100 does not split over 8 devices; pass a multiple of 8 (e.g. 96 or "
     "104), or --parallel=none"),
    ((3,), "mlp", 1, dict(parallel="sharded", batch_size=2), "(e.g. 3)"),
    ((4, "cpu", 2), "mlp", 1, dict(parallel="none"),
     "2 processes were started; pass --parallel=sharded"),
])
def test_the_layout_auto_and_each_mode_take(host, host_is, model, members,
                                            settings, expected):
  host(*host_is)
  if isinstance(expected, tuple):
    assert resolve(model, members, **settings) == expected
  else:
    with pytest.raises(UserError) as e:
      resolve(model, members, **settings)
    assert "\n" not in str(e.value) and expected in str(e.value)


def test_the_rule_reads_the_stock_module_class_not_the_model_name(
    host, monkeypatch):
  """A new model's stock module class declares its rule on a CPU host
  (DATA_PARALLEL_ON_CPU: sharded, else none), devices.py untouched."""

  class NewNet(dense.MLP):
    pass

  host(8)
  spec = registry.get("mlp")
  monkeypatch.setitem(registry.MODELS, "mlp",
                      dataclasses.replace(spec, module=NewNet))
  assert resolve("mlp", batch_size=128) == ("none", 1)
  NewNet.DATA_PARALLEL_ON_CPU = True
  monkeypatch.setitem(registry.MODELS, "mlp",
                      dataclasses.replace(spec, module=NewNet))
  assert resolve("mlp", batch_size=128) == ("sharded", 4)


@pytest.mark.parametrize("env", [
    dict(JAX_PLATFORMS="cpu", parallel="none"),
    dict(JAX_PLATFORMS="cpu", multi_process=True),
    dict(JAX_PLATFORMS="cpu",
         XLA_FLAGS="--xla_force_host_platform_device_count=3"),
    dict(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2"),
    dict(JAX_PLATFORMS="cpu", SLURM_NTASKS="2"),
    dict(JAX_PLATFORMS="cuda"),
    dict(JAX_PLATFORMS="cpu", started=True),
], ids=["none", "processes", "xla_flags", "num_cpu_devices", "slurm", "cuda",
        "jax_started"])
def test_split_host_leaves_the_host_whole_where_it_must(monkeypatch, env):
  """One device asked for, several processes, a count already set, SLURM, an
  accelerator, or JAX started (no error, the devices unchanged)."""
  env = dict(env)
  started = env.pop("started", False) and jax.devices()
  args = {k: env.pop(k) for k in ("parallel", "multi_process") if k in env}
  for name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  if started:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1},
                        raising=False)
  assert process.split_host(args.pop("parallel", "auto"), **args) == 0
  assert not started or jax.devices() == started


@pytest.mark.parametrize("given, expected", [
    ("", "--xla_gpu_deterministic_ops=true"),
    ("--xla_dump_to=/tmp/d", "--xla_dump_to=/tmp/d "
     "--xla_gpu_deterministic_ops=true"),
    ("--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops=false"),
])
def test_setup_asks_for_deterministic_gpu_kernels_unless_told(monkeypatch,
                                                              given, expected):
  """A GPU run repeats its numbers (README's promise), unless XLA_FLAGS say
  otherwise."""
  monkeypatch.setenv("XLA_FLAGS", given)
  process.setup_process()
  assert os.environ["XLA_FLAGS"] == expected


@pytest.mark.slow
@pytest.mark.skipif(process.cores() < 2, reason="needs at least 2 CPU cores")
@pytest.mark.parametrize("args,says", [
    ("--model=gru", "data parallel over {two} CPU devices (one jit over a "
     "mesh)"),
    ("--model=cnn", "one CPU device"),
    ("--model=cnn --parallel=sharded", "data parallel over {split} CPU "
     "devices (one jit over a mesh)"),
    ("--model=mlp --num_seeds=2", "2 members split over 2 CPU devices"),
])
def test_dry_run_names_the_layout_auto_takes_on_a_split_host(args, says):
  """--dry_run names the layout on the host split_host makes."""
  split = min(process.cores(), process.MAX_HOST_DEVICES)
  if "sharded" in args and 64 % split:
    pytest.skip(f"a batch of 64 does not split over {split} devices")
  rc, out, err = lh.run([*args.split(), "--preset=seed", "--batch_size=64",
                         "--dry_run"], timeout=300)
  assert rc == 0, err[-3000:]
  line = next(l for l in out.splitlines() if l.startswith("devices:"))
  assert line == "devices:    " + says.format(two=min(split, 2), split=split)
