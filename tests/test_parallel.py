"""Layouts give one device's numbers: every model, with --parallel=none on 1
and 2 devices and sharded on 2, draws the same masks and augmentation and
trains the same model to the same metrics and parameters, to float rounding;
members split over devices (auto) train as on one, bit for bit; pmap matches
one device without dropout and differs with it (documented); 2 processes
match 1.

What is bit for bit: one device's program on a host of no more XLA devices
than cores (as process.split_host makes it) computes what it computes on the
whole host. jaxlib's CPU client gives its intra-op thread pool max(cores,
devices) threads, and XLA:CPU splits some matmuls' sums over that pool, so
more devices than cores (4 simulated on 2 cores) can sum them in another
order (a convolution's weight gradient, as a matmul). Everything else agrees
to float rounding: sharded sums each device's part of the batch first, pmap
averages gradients over devices. Members on a CPU run in turn, each its
single run's program.

Simulated devices need XLA_FLAGS before JAX starts, so those runs happen in
child processes (tests/parallel_worker.py, launch.py).
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import one_per_module_class
from conftest import xla_flags
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import process
from parallel_worker import table_models
from test_train import without_times

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600
LOSS_RTOL = 1e-5  # Test loss: float sums in another order only.
PARAM_ATOL = 2e-5  # Parameters after 16 Adam steps (measured: up to 5e-6).
# The same for every model with dropout and augmentation, one epoch (measured:
# up to 5e-5, the CNN with dropout sharded).
TABLE_PARAM_ATOL = 2e-4
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(devices)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def worker(path, devices: int, runs, epochs: int = 2) -> dict:
  """parallel_worker.py's results of `runs` (MODEL:PARALLEL) on `devices`
  simulated CPU devices: {run: {"params", "model_state", and the record's
  keys}}."""
  proc = subprocess.run(
      [sys.executable, "tests/parallel_worker.py", str(path),
       f"--epochs={epochs}", *runs], cwd=ROOT, env=_env(devices),
      capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(path) as z:
    assert int(z["device_count"]) == devices
    return {run: {"params": z[f"{run}/params"],
                  "model_state": z[f"{run}/model_state"],
                  "params0": z[f"{run}/params0"],
                  "model_state0": z[f"{run}/model_state0"],
                  **json.loads(str(z[f"{run}/record"]))} for run in runs}


def assert_same_numbers(got, ref, atol=PARAM_ATOL):
  """Accuracy exactly, losses to LOSS_RTOL, parameters (and batch
  statistics) to `atol`: one device's numbers, summed in another order."""
  assert got["step"] == ref["step"]
  assert got["final"]["test_examples"] == ref["final"]["test_examples"]
  assert got["final"]["test_accuracy"] == ref["final"]["test_accuracy"]
  assert got["final"]["test_loss"] == pytest.approx(ref["final"]["test_loss"],
                                                    rel=LOSS_RTOL)
  assert len(got["rows"]) == len(ref["rows"])
  for a, b in zip(got["rows"], ref["rows"]):
    assert a["val_accuracy"] == b["val_accuracy"]
    for key in ("train_loss", "val_loss"):
      assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL), key
  np.testing.assert_allclose(got["params"], ref["params"], rtol=0, atol=atol)
  np.testing.assert_allclose(got["model_state"], ref["model_state"], rtol=0,
                             atol=atol)


def assert_bit_equal(got, ref):
  """The same numbers bit for bit: parameters, state, every row (times
  aside)."""
  np.testing.assert_array_equal(got["params"], ref["params"])
  np.testing.assert_array_equal(got["model_state"], ref["model_state"])
  assert got["step"] == ref["step"]
  assert ([without_times(r) for r in got["rows"]] ==
          [without_times(r) for r in ref["rows"]])
  assert without_times(got["final"]) == without_times(ref["final"])


def test_sharded_over_two_devices_is_one_devices_run(tmp_path):
  """The fast check: an MLP with dropout, one epoch, sharded over 2 devices
  (one jit over a mesh, the batch split) against --parallel=none."""
  out = worker(tmp_path / "two.npz", 2, ["mlp:none", "mlp:sharded"], epochs=1)
  one, sharded = out["mlp:none"], out["mlp:sharded"]
  assert one["parallel"] == {"mode": "none", "devices": 1}
  assert sharded["parallel"] == {"mode": "sharded", "devices": 2}
  assert ("data parallel over 2 CPU devices (one jit over a mesh)"
          in sharded["messages"])
  assert_same_numbers(sharded, one)
  assert sharded["final"]["test_examples"] == 203


# Members vmapped as on a GPU or TPU (forced here on the CPU), over 2 devices:
# against the same members in turn, and member 0 against its single run on
# one device, sharded and (without random draws) under pmap.
VMAP_RUNS = {m: [f"{m}+2:auto", f"{m}+2:auto:vmap", f"{m}:none", f"{m}:sharded",
                 f"{m}0+2:auto:vmap", f"{m}0:pmap"] for m in ("mlp", "gru")}
# Vmapped matmuls sum in another order (measured here after one epoch: up to
# 2e-7 in the parameters, 5e-6 against sharded; on MNIST:
# docs/performance.md).
VMAP_ATOL = 2e-5


def _member0(run):
  """Member 0's numbers of a run of members, as a single run's."""
  final = run["final"]["members"][0]
  return {**run, "params": run["params0"], "model_state": run["model_state0"],
          "step": run["step"][0],
          "final": {**final, "test_examples": run["final"]["test_examples"]},
          "rows": [r["members"][0] for r in run["rows"]]}


@pytest.mark.parametrize("model", sorted(VMAP_RUNS))
def test_vmapped_members_agree_with_members_in_turn_and_single_runs(
    tmp_path, model):
  """The accelerator's members, vmapped through the layout: to float
  rounding the members a CPU runs in turn, and member 0 its single run with
  --parallel=none, sharded, and (no dropout or augmentation) pmap."""
  out = worker(tmp_path / "vmap.npz", 2, VMAP_RUNS[model], epochs=1)
  vmapped, in_turn = out[f"{model}+2:auto:vmap"], out[f"{model}+2:auto"]
  assert vmapped["parallel"] == {"mode": "members", "devices": 2,
                                "members": "vmapped"}
  assert in_turn["parallel"] == {**vmapped["parallel"], "members": "in turn"}
  assert_same_numbers(vmapped, in_turn, VMAP_ATOL)
  for single in (f"{model}:none", f"{model}:sharded"):
    assert_same_numbers(_member0(vmapped), out[single], VMAP_ATOL)
  pmap = out[f"{model}0:pmap"]
  assert pmap["parallel"] == {"mode": "pmap", "devices": 2}
  assert_same_numbers(_member0(out[f"{model}0+2:auto:vmap"]), pmap, VMAP_ATOL)


def test_the_accelerators_choices_end_to_end(prepared, tmp_path):
  """launch.py where JAX's backend reports a GPU, on 2 CPU devices
  (tests/accelerator_launch.py): --parallel=auto shards one CNN over the
  devices (one device on a CPU), and a run of 2 seeds trains them vmapped
  over the devices with the stock layers (no CPU kernel), then writes its
  report."""
  mnist_dir, data_dir = prepared
  command = [sys.executable, "tests/accelerator_launch.py", "--model=cnn",
             "--preset=seed", "--cnn_features=4,8", "--cnn_dense=16",
             "--epochs=1", "--batch_size=32", "--val_fraction=0.1",
             f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}"]
  run = lambda *extra: subprocess.run(
      [*command, *extra], cwd=ROOT, env=_env(2), capture_output=True,
      text=True, timeout=TIMEOUT_S, check=False)
  single = run("--dry_run")
  assert single.returncode == 0, single.stderr[-3000:]
  assert ("devices:    data parallel over 2 GPU devices (one jit over a "
          "mesh)") in single.stdout
  work = tmp_path / "run"
  members = run("--num_seeds=2", f"--workdir={work}")
  assert members.returncode == 0, members.stderr[-3000:]
  assert "2 members split over 2 GPU devices" in members.stdout
  with open(work / "config.json") as f:
    record = json.load(f)
  environment = record["environment"]
  assert environment["backend"] == "gpu"
  assert environment["parallel"] == {"mode": "members", "devices": 2,
                                     "members": "vmapped"}
  assert environment["implementation"] == {
      "impl": "auto", "module": "mnist_jax/models/cnn.py's CNN"}
  assert record["finished"] and (work / "report.md").exists()


# The runs of each device count: on one device, --parallel=none of the MLP
# (pmap's reference) and of the members (their reference); the members with
# auto on both; on 2 devices pmap and its references. (auto's rule:
# test_host_split.py; what it picks, sharded, is in the table below.)
RUNS = {1: ["mlp:none", "members:none", "members:auto"],
        2: ["members:auto", "mlp:pmap", "mlp0:none", "mlp0:pmap", "cnn:pmap",
            "cnn:none"]}
# And every registered model (TABLE), one epoch, with none on 1 device and
# sharded on 2; none on 2 for one model of each stock module class (and the
# CNN with BatchNorm), whose ops decide how the host's threads sum. (Members
# and pmap: RUNS; a member against its single run, every model:
# test_equalities.py.)
TABLE = sorted(table_models())
NONE_ON_TWO = sorted(f"table.{m}" for m in one_per_module_class()) + [
    "table.cnn_bn"]
TABLE_RUNS = {1: [f"{m}:none" for m in TABLE],
              2: [f"{m}:none" for m in NONE_ON_TWO] +
                 [f"{m}:sharded" for m in TABLE]}


def _runs_on_devices(tmp_path_factory, runs, epochs=2):
  """fn(n) -> the worker's results of runs[n] on n devices (run once)."""
  cache = {}

  def get(n):
    if n not in cache:
      cache[n] = worker(tmp_path_factory.mktemp(f"devices{n}") / "out.npz", n,
                        runs[n], epochs)
    return cache[n]
  return get


@pytest.fixture(scope="module")
def on_devices(tmp_path_factory):
  return _runs_on_devices(tmp_path_factory, RUNS)


@pytest.fixture(scope="module")
def table_on_devices(tmp_path_factory):
  return _runs_on_devices(tmp_path_factory, TABLE_RUNS, epochs=1)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_members_split_over_devices_train_as_on_one(on_devices, n):
  """8 members (a learning-rate and label-smoothing sweep, 2 seeds): on a
  host of no more devices than cores, one device's numbers bit for bit."""
  ref = on_devices(1)["members:none"]
  got = on_devices(n)["members:auto"]
  assert ref["parallel"] == {"mode": "none", "devices": 1,
                             "members": "in turn"}
  if n == 1:  # On one device the record says "members" (over a mesh of 1).
    assert got["parallel"]["devices"] == 1 and not got["messages"]
  else:
    assert got["parallel"] == {"mode": "members", "devices": n,
                               "members": "in turn"}
    assert f"8 members split over {n} CPU devices" in got["messages"]
  if n <= CORES:  # Each member runs its single run's program, in turn.
    assert_bit_equal(got, ref)
  else:
    assert_same_numbers(got, ref)
  assert got["step"] == ref["step"] == [16] * 8
  for a, b in zip(got["rows"], ref["rows"]):
    assert a["leader"] == b["leader"]
    assert [m["val_accuracy"] for m in a["members"]] == [
        m["val_accuracy"] for m in b["members"]]
    np.testing.assert_allclose([m["train_loss"] for m in a["members"]],
                               [m["train_loss"] for m in b["members"]],
                               rtol=LOSS_RTOL)
  assert got["final"]["chosen"] == ref["final"]["chosen"]
  assert [m["test_accuracy"] for m in got["final"]["members"]] == [
      m["test_accuracy"] for m in ref["final"]["members"]]
  # The members differ from each other: their values and seeds are used.
  assert len({m["test_loss"] for m in got["final"]["members"]}) == 8


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLE)
def test_every_model_on_every_layout_and_device_count(table_on_devices,
                                                      name):
  """Every registered model, with dropout where it has it and augmentation,
  against its run on one device (the table docs/performance.md measures on
  MNIST): bit for bit on one device of a host of no more devices than
  cores; to float rounding sharded."""
  ref = table_on_devices(1)[f"{name}:none"]
  assert ref["parallel"] == {"mode": "none", "devices": 1}
  if table_models()[name][1].get("cnn_batch_norm"):  # Statistics compared.
    assert ref["model_state"].size
  runs = table_on_devices(2)
  if name in NONE_ON_TWO:
    got = runs[f"{name}:none"]
    assert got["parallel"] == {"mode": "none", "devices": 1}
    if 2 <= CORES:
      assert_bit_equal(got, ref)
    else:
      assert_same_numbers(got, ref, TABLE_PARAM_ATOL)
  sharded = runs[f"{name}:sharded"]
  assert sharded["parallel"] == {"mode": "sharded", "devices": 2}
  assert_same_numbers(sharded, ref, TABLE_PARAM_ATOL)


@pytest.mark.slow
def test_pmap_matches_one_device_without_dropout_only(on_devices):
  """pmap averages gradients over 2 devices: one device's numbers for a
  model without dropout; with dropout each device draws its own masks, so
  the numbers differ (devices.py's module doc says so, and the run says
  so as it starts)."""
  two = on_devices(2)
  plain = two["mlp0:pmap"]
  assert plain["parallel"] == {"mode": "pmap", "devices": 2}
  assert_same_numbers(plain, two["mlp0:none"])
  dropout = two["mlp:pmap"]
  assert any("each device draws its own dropout masks" in m
             for m in dropout["messages"])
  assert dropout["final"]["test_examples"] == 203
  assert np.abs(dropout["params"] - on_devices(1)["mlp:none"]["params"]
                ).max() > 100 * PARAM_ATOL
  # BatchNorm under pmap normalizes by each device's batch statistics: the
  # numbers differ too, while sharded keeps the global batch's.
  assert np.abs(two["cnn:pmap"]["params"] - two["cnn:none"]["params"]
                ).max() > 100 * PARAM_ATOL


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_evaluation_counts_every_example_once(on_devices, table_on_devices,
                                              n):
  """203 test and 60 validation examples in batches of 50: the last batch
  partial, padded and masked, never dropped. The test logits the loop hands
  out (for the ensemble and the report) are each member's, in order: their
  accuracies are the final row's."""
  for run, got in on_devices(n).items():
    assert got["final"]["test_examples"] == 203, run
    assert got["final"]["epochs_run"] == 2, run
  for run, got in {**on_devices(n), **table_on_devices(n)}.items():
    members = got["final"].get("members") or [got["final"]]
    shape, accuracies = got["test_logits"]
    assert shape == [len(members), 203, 10], run
    assert accuracies == pytest.approx(
        [m["test_accuracy"] for m in members], abs=1e-9), run


@pytest.fixture
def joins(monkeypatch):
  """process.initialize's calls of jax.distributed.initialize, which raises
  what `raises` holds (as jax does where it detects no cluster: ValueError)."""
  calls, raises = [], []

  def initialize(*args, **kwargs):
    calls.append(args)
    if raises:
      raise raises[0]

  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  return calls, raises


def test_no_cluster_is_one_process_but_named_processes_must_join(joins):
  """jax.distributed.initialize() detects the cluster (SLURM, TPU VMs...);
  finding none is one process, unless the flags name processes: then any
  error of jax's is one line saying what to do."""
  calls, raises = joins
  config = models.get_config("mlp")
  raises.append(ValueError("coordinator_address should be defined."))
  process.initialize(config)
  process.initialize(config, detect=False)  # Not asked to detect: no call.
  assert calls == [(None, None, None)]
  with pytest.raises(UserError, match=(
      r"^cannot join this job's processes \(coordinator_address should be "
      r"defined.\); give every process the same --coordinator_address=")):
    process.initialize(config.replace(num_processes=2, process_id=1),
                       detect=False)
  raises[0] = RuntimeError("Open MPI 5 or newer requires mpi4py\nmore")
  with pytest.raises(UserError, match=r"\(Open MPI 5 or newer requires "
                     r"mpi4py\); give every"):
    process.initialize(config)  # A cluster detected, failing: said.
  raises.clear()
  process.initialize(config.replace(coordinator_address="h:1", num_processes=2,
                                    process_id=1))
  assert calls[-1] == ("h:1", 2, 1)


def test_process_0_on_a_port_in_use_is_one_line(joins):
  """jax's coordinator segfaults on a port it cannot bind: refused before."""
  calls, _ = joins
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = models.get_config("mlp", coordinator_address=f"localhost:{port}",
                               num_processes=2, process_id=0)
    with pytest.raises(UserError, match=(
        f"^process 0 cannot listen on port {port} of this host \\(Address "
        "already in use; another job\\?\\): give every process the same "
        "--coordinator_address")):
      process.initialize(config)
    process.initialize(config.replace(process_id=1))  # Process 1 joins.
  process.initialize(config)  # Free again.
  assert [args[2] for args in calls] == [1, 0]


def test_cli_rejects_a_batch_that_does_not_split(tmp_path):
  """Before the data is prepared (none is, here) or anything written."""
  work, data = tmp_path / "run", tmp_path / "tfds"
  proc = subprocess.run(
      [sys.executable, "launch.py", "--model=mlp", "--batch_size=100",
       "--parallel=pmap", f"--workdir={work}", f"--data_dir={data}"],
      cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=TIMEOUT_S,
      check=False)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines == [lines[0]] and lines[0].startswith(
      "error: --batch_size=100 does not split over 8 devices"), proc.stderr
  assert "96 or 104" in lines[0]
  assert not work.exists() and not data.exists()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_args(prepared, workdir, *extra, report="--noreport"):
  """launch.py's command, without a report; report="--noanalyses": with the
  report, its analyses aside."""
  mnist_dir, data_dir = prepared
  return [sys.executable, "launch.py", "--model=mlp", "--preset=seed",
          "--mlp_hidden=32", "--dropout=0", "--epochs=2", "--batch_size=32",
          "--eval_batch_size=50", "--val_fraction=0.1", report,
          f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}", *extra]


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
                   "--num_processes=2", f"--process_id={i}",
                   report="--noanalyses"),  # Process 0 writes the report.
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
  for p, (_, err) in zip(procs, outputs):
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
    environment = json.load(f)["environment"]
  assert environment["process_count"] == 2
  assert environment["parallel"] == {"mode": mode, "devices": 4}
  assert (tmp_path / "process0" / "learning_curves.png").exists()
  assert (tmp_path / "process0" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_whose_peer_never_starts_ends_in_one_line(
    prepared, tmp_path, process_id):
  """Alone, process 0 (the coordinator) or 1 waits JOIN_TIMEOUT_S (5 s here),
  then says what to do, instead of jax's abort and C++ stack trace."""
  port = _free_port()
  args = _launch_args(prepared, tmp_path / "run",
                      f"--coordinator_address=127.0.0.1:{port}",
                      "--num_processes=2", f"--process_id={process_id}")
  code = ("import runpy, sys; from mnist_jax.rundir import process; "
          "process.JOIN_TIMEOUT_S = 5; sys.argv = sys.argv[1:]; "
          "runpy.run_path('launch.py', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code, *args[1:]], cwd=ROOT,
                        env=_env(1), capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip() == (
      "error: not all processes joined in 5 s: give every process the same "
      "--coordinator_address=HOST:PORT (process 0's, reachable from every "
      "process, on a free port) and --num_processes=N, and its own "
      "--process_id (0 to N-1)")
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_process_killed_mid_run_stops_the_others_in_one_line(prepared,
                                                               tmp_path):
  """Process 1 killed (SIGKILL) in epoch 3 or later: process 0 stops at its
  next collective with one line that says to start both again, not a
  traceback and jax's abort; both commands again then finish the run."""
  port = _free_port()
  args = [_launch_args(prepared, tmp_path / "run", "--epochs=40",
                       f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}")
          for i in range(2)]
  procs = [subprocess.Popen(a, cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for a in args]
  try:
    for line in procs[0].stdout:
      if "epoch 3/40" in line:
        break
    procs[1].kill()
    _, err = procs[0].communicate(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert procs[0].returncode == 1, err[-3000:]
  assert "Traceback" not in err and "Fatal" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: another process of this job stopped (it "
                         "crashed or was killed: "), last
  assert last.endswith("; start every process again with its same command "
                       "(they resume)"), last
  procs = [subprocess.Popen(a, cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for a in args]
  for p in procs:
    _, err = p.communicate(timeout=TIMEOUT_S)
    assert p.returncode == 0, err[-3000:]
  rows = _rows(tmp_path / "run")
  assert [r["epoch"] for r in rows[:-1]] == list(range(1, 41))
  assert rows[-1]["test_examples"] == 200


@pytest.mark.slow
@pytest.mark.floors
def test_a_run_stopped_mid_epoch_resumes_bit_identical_on_every_layout(
    tmp_path):
  """A preempted run (a checkpoint after the first chunk of epoch 2, the
  epoch's metric sums in it) resumes to the uninterrupted run's numbers,
  bit for bit, sharded, with members split over the devices, and under pmap."""
  runs = [f"{run}{resume}" for run in ("gru:sharded", "members:auto",
                                       "mlp:pmap") for resume in ("", ":resume")]
  out = worker(tmp_path / "resume.npz", 2, runs)
  for run in ("gru:sharded", "members:auto", "mlp:pmap"):
    whole, resumed = out[run], out[f"{run}:resume"]
    assert resumed["parallel"]["devices"] == 2, run
    np.testing.assert_array_equal(resumed["params"], whole["params"], run)
    np.testing.assert_array_equal(resumed["model_state"], whole["model_state"])
    assert resumed["step"] == whole["step"]
    assert ([without_times(r) for r in resumed["rows"]] ==
            [without_times(r) for r in whole["rows"][1:]]), run
    assert without_times(resumed["final"]) == without_times(whole["final"])
