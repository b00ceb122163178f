"""Data parallelism: pmap and sharded training match one device, on 8 simulated
devices and over 2 processes; evaluation counts every example once; bfloat16.

Simulated devices need XLA_FLAGS before JAX starts, so those runs happen in
subprocesses (tests/parallel_worker.py, launch.py).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.data import batches
from mnist_jax.errors import UserError
from mnist_jax.training import devices as devices_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """The worker's results: every model trained in every mode on 8 devices."""
  out = tmp_path_factory.mktemp("parallel") / "results.npz"
  proc = subprocess.run([sys.executable, "tests/parallel_worker.py", str(out)],
                        cwd=ROOT, env=_env(8), capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as z:
    return dict(z)


@pytest.mark.slow
def test_worker_ran_on_eight_devices(results):
  assert int(results["device_count"]) == 8


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "sharded"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "gru"])
def test_training_matches_one_device(results, name, mode):
  single = {k: results[f"{name}/none/{k}"] for k in ("losses", "params", "step")}
  assert int(results[f"{name}/{mode}/step"]) == int(single["step"]) == 8
  np.testing.assert_allclose(results[f"{name}/{mode}/losses"], single["losses"],
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(results[f"{name}/{mode}/params"], single["params"],
                             rtol=0, atol=1e-5)
  # Training moved the parameters: the match is not two untouched inits.
  assert not np.allclose(results[f"{name}/{mode}/losses"][0],
                         results[f"{name}/{mode}/losses"][-3])


@pytest.mark.slow
def test_sharded_dropout_matches_one_device(results):
  """jit over a mesh draws the same global dropout mask as one device."""
  np.testing.assert_allclose(results["mlp_drop/sharded/params"],
                             results["mlp_drop/none/params"], rtol=0, atol=1e-5)
  assert not np.allclose(results["mlp_drop/none/params"],
                         results["mlp/none/params"], atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("mlp", 10_000), ("cnn", 203), ("gru", 203)])
@pytest.mark.parametrize("mode", ["none", "pmap", "sharded"])
def test_evaluation_counts_every_example_once(results, name, mode, n):
  loss, correct, count = results[f"{name}/{mode}/eval"]
  batch = int(results[f"{name}/{mode}/eval_batch"])
  assert count == n
  assert n % batch != 0  # The last batch was partial and padded.
  if mode != "none":
    assert batch % 8 == 0
  ref = results[f"{name}/none/eval"]
  assert correct == ref[1]
  np.testing.assert_allclose(loss, ref[0], rtol=1e-6)


@pytest.mark.parametrize("n,batch,multiple", [(10_000, 300, 8), (10_000, 1000, 3),
                                              (203, 50, 8), (5, 1000, 8),
                                              (1, 7, 2)])
def test_eval_batches_pad_and_mask(n, batch, multiple):
  idx, mask = batches.eval_batches(n, batch, multiple)
  assert idx.shape == mask.shape and idx.shape[1] % multiple == 0
  assert idx.shape[1] <= max(batch, multiple) + multiple
  assert sorted(idx[mask > 0].tolist()) == list(range(n))
  assert idx.max() < n  # Padding reads a real example, masked out.


def test_batch_that_does_not_split_names_the_sizes_that_do():
  with pytest.raises(UserError) as e:
    devices_lib.check_batch(100, 8)
  message = str(e.value)
  assert "\n" not in message
  assert "--batch_size=100" in message and "96 or 104" in message
  devices_lib.check_batch(96, 8)
  with pytest.raises(UserError, match="e.g. 3\\)"):
    devices_lib.check_batch(2, 3)


def test_resolve_mode():
  assert devices_lib.resolve_mode("auto", 1, 1) == "none"
  assert devices_lib.resolve_mode("auto", 8, 1) == "pmap"
  assert devices_lib.resolve_mode("sharded", 1, 1) == "sharded"
  with pytest.raises(UserError, match="--parallel=pmap or sharded"):
    devices_lib.resolve_mode("none", 8, 2)
  with pytest.raises(UserError, match="--parallel must be one of"):
    devices_lib.resolve_mode("dp", 8, 1)


def test_cloud_tpu_vm_is_libtpu_on_google_compute_engine(monkeypatch, tmp_path):
  product = tmp_path / "product_name"
  monkeypatch.setattr(devices_lib, "GCE_PRODUCT_FILE", str(product))
  find_spec = importlib.util.find_spec
  libtpu = {"libtpu": True}
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      object() if libtpu.get(name) else find_spec(name, *a)))
  product.write_text("Google Compute Engine\n")
  assert devices_lib._cloud_tpu_vm()  # pylint: disable=protected-access
  product.write_text("Standard PC (Q35 + ICH9, 2009)\n")
  assert not devices_lib._cloud_tpu_vm()  # pylint: disable=protected-access
  product.unlink()
  assert not devices_lib._cloud_tpu_vm()  # pylint: disable=protected-access
  product.write_text("Google Compute Engine\n")
  libtpu["libtpu"] = False
  assert not devices_lib._cloud_tpu_vm()  # pylint: disable=protected-access


def test_a_tpu_hint_without_a_cluster_runs_one_process(monkeypatch):
  """jax.distributed.initialize() decides; finding no cluster is no error,
  but a SLURM job's failure to start is."""
  calls = []

  def no_cluster(*args):
    calls.append(args)
    raise ValueError("coordinator_address should be defined.")

  monkeypatch.setattr(devices_lib.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(devices_lib.jax.distributed, "initialize", no_cluster)
  monkeypatch.setattr(devices_lib, "_cloud_tpu_vm", lambda: True)
  monkeypatch.delenv("SLURM_JOB_ID", raising=False)
  config = models.get_config("mlp")
  devices_lib.initialize(config)
  assert calls == [()]
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "2")
  with pytest.raises(ValueError):
    devices_lib.initialize(config)


def test_cli_rejects_a_batch_that_does_not_split(tmp_path):
  work = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "launch.py", "--model=mlp", "--batch_size=100",
       "--parallel=pmap", f"--workdir={work}"],
      cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=TIMEOUT_S,
      check=False)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines == [lines[0]] and lines[0].startswith(
      "error: --batch_size=100 does not split over 8 devices"), proc.stderr
  assert not work.exists()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_args(prepared, workdir, *extra):
  mnist_dir, data_dir = prepared
  return [sys.executable, "launch.py", "--model=mlp", "--preset=seed",
          "--mlp_hidden=32", "--dropout=0", "--epochs=2", "--batch_size=32",
          "--eval_batch_size=64", f"--mnist_dir={mnist_dir}",
          f"--data_dir={data_dir}", f"--workdir={workdir}", *extra]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def single_process_rows(prepared, tmp_path_factory):
  """metrics.jsonl of the reference run: one process, one device."""
  single = tmp_path_factory.mktemp("single") / "run"
  proc = subprocess.run(_launch_args(prepared, single, "--parallel=none"),
                        cwd=ROOT, env=_env(1), capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _rows(single)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "sharded"])
def test_two_processes_match_one(prepared, single_process_rows, tmp_path, mode):
  """2 processes x 2 CPU devices over jax.distributed on loopback."""

  port = _free_port()
  procs = [subprocess.Popen(
      _launch_args(prepared, tmp_path / f"process{i}", f"--parallel={mode}",
                   f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "[process 1/2] epoch 2/2" in outputs[1][0]
  assert not (tmp_path / "process1").exists()  # Process 1 writes no files.

  multi, ref = _rows(tmp_path / "process0"), single_process_rows
  assert len(multi) == len(ref) == 3
  for a, b in zip(multi[:2], ref[:2]):
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      assert a[key] == pytest.approx(b[key], abs=1e-5), key
  assert multi[2]["test_examples"] == ref[2]["test_examples"] == 200
  assert multi[2]["test_loss"] == pytest.approx(ref[2]["test_loss"], abs=1e-5)
  assert multi[2]["test_accuracy"] == ref[2]["test_accuracy"]
  with open(tmp_path / "process0" / "config.json") as f:
    assert json.load(f)["environment"]["process_count"] == 2
  assert (tmp_path / "process0" / "learning_curves.png").exists()
  assert (tmp_path / "process0" / "checkpoints").exists()
