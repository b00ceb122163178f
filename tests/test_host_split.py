"""--parallel=auto on a CPU-only host: one XLA device per core, same training.

devices.split_host must act before JAX starts its backends, so the runs that
use it are launch.py subprocesses (JAX_PLATFORMS=cpu, no XLA_FLAGS).
"""

import json
import os
import subprocess
import sys

import pytest

from mnist_jax.training import devices as devices_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


@pytest.mark.parametrize("model,batch,devices,expected", [
    ("gru", 128, 2, ("sharded", 2)),
    ("lstm", 128, 8, ("sharded", 4)),  # 8 x 16 and 128 / 32 = 4 x 32.
    ("cnn", 128, 2, ("pmap", 2)),
    ("cnn", 100, 8, ("pmap", 2)),  # 100 splits into 2 x 50, not 4 x 25.
    ("rnn", 63, 2, ("none", 1)),  # Odd: no even split.
    ("gru", 62, 2, ("none", 1)),  # 2 x 31 is below MIN_DEVICE_BATCH.
    ("mlp", 128, 2, ("none", 1)),  # Measured to gain nothing (docs/performance.md).
    ("linear", 32, 2, ("none", 1)),
    ("gru", 128, 1, ("none", 1)),
])
def test_split_host_devices(model, batch, devices, expected):
  assert devices_lib.split_host_devices(model, batch, devices) == expected


def test_split_host_leaves_explicit_choices_alone(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert devices_lib.split_host("none") == 0
  assert devices_lib.split_host("pmap") == 0
  assert devices_lib.split_host("auto", multi_process=True) == 0
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  assert devices_lib.split_host("auto") == 0
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert devices_lib.split_host("auto") == 0
  assert devices_lib.host_split() == 0


def test_split_host_after_jax_started_leaves_the_devices(monkeypatch):
  """Once JAX has started its backends the CPU device count is fixed: no split,
  and no error (JAX refuses the setting; split_host reports 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()  # Starts the backends, if no test has yet.
  for name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
  assert devices_lib.split_host("auto") == 0
  assert devices_lib.host_split() == 0
  assert jax.devices() == devices


def test_accelerator_detection(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert devices_lib._accelerator_possible()  # pylint: disable=protected-access
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not devices_lib._accelerator_possible()  # pylint: disable=protected-access


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _launch(prepared, workdir, model, *extra):
  mnist_dir, data_dir = prepared
  shapes = {"gru": ["--hidden=16"],
            "cnn": ["--cnn_features=4,8", "--cnn_dense=16"]}[model]
  proc = subprocess.run(
      [sys.executable, "launch.py", f"--model={model}", "--preset=seed",
       "--epochs=2", "--batch_size=64", "--eval_batch_size=100",
       "--val_fraction=0.1", "--dropout=0", f"--mnist_dir={mnist_dir}",
       f"--data_dir={data_dir}", f"--workdir={workdir}", *shapes, *extra],
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
@pytest.mark.parametrize("model,mode", [("gru", "sharded"), ("cnn", "pmap")])
def test_auto_splits_the_host_and_trains_the_same(prepared, tmp_path, model,
                                                   mode):
  """The default run uses every core as a device and matches one device."""
  out, rows, env = _launch(prepared, tmp_path / "auto", model)
  devices = min(CORES, devices_lib.MAX_HOST_DEVICES, 2)  # Batch 64: 2 x 32.
  assert f"data parallel ({mode}) over {devices} CPU devices" in out
  assert env["parallel"] == {"mode": mode, "devices": devices}
  assert len(env["devices"]) == min(CORES, devices_lib.MAX_HOST_DEVICES)

  out1, ref, env1 = _launch(prepared, tmp_path / "one", model, "--parallel=none")
  assert "data parallel" not in out1
  assert env1["parallel"] == {"mode": "none", "devices": 1}
  assert len(env1["devices"]) == 1  # none: the host is not split at all.
  assert len(rows) == len(ref) == 3
  for a, b in zip(rows[:2], ref[:2]):
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      assert a[key] == pytest.approx(b[key], abs=1e-5), key
  assert rows[2]["test_loss"] == pytest.approx(ref[2]["test_loss"], abs=1e-5)
  assert rows[2]["test_accuracy"] == ref[2]["test_accuracy"]
  assert rows[0]["train_loss"] != pytest.approx(rows[1]["train_loss"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(CORES < 2, reason="needs at least 2 CPU cores")
@pytest.mark.parametrize("extra", [["--batch_size=63"], ["--num_seeds=2"]])
def test_auto_falls_back_to_one_device(prepared, tmp_path, extra):
  """A batch that does not split, or several seeds: one device, no error."""
  out, rows, env = _launch(prepared, tmp_path / "run", "gru", *extra)
  assert "data parallel" not in out
  assert env["parallel"] == {"mode": "none", "devices": 1}
  assert len(rows) == 3 and rows[2]["test_examples"] == 200
