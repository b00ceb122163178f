"""A run folder works on any devices that can hold it (slow, child processes).

Trained on one device, with pmap over two host devices, sharded over a split
CPU host (process.split_host, where --parallel=auto's rule shards the
recurrent models), with its members split over that host's devices (the
rule for several members), or sharded over two processes (jax.distributed
on localhost), a run reports and resumes on one device; the one-device run
resumes on two devices, and the members' run predicts (their ensemble) on
one. Report and predict give the training run's own test metrics
(metrics.jsonl's final row) to 1e-5; report and predict restore a run
through the same function (checkpoints.restore), so predict runs once.

A resumed run is the trained run with its last checkpoint removed (as if it
had been killed after epoch 1), continued on the other devices; it must end
where an uninterrupted run on those devices ends: bit for bit when the device
count is the same, to float tolerance (1e-5) across device counts, where the
gradient and metric reductions add in another order.

Every run is tiny (the synthetic data, 2 epochs), and each is trained once per
module and shared; the children share the session's compilation cache.
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import xla_flags
import launch_helpers as lh
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import process

pytestmark = pytest.mark.slow

PROBE = os.path.join(lh.ROOT, "tests", "topology_probe.py")
TIMEOUT_S = 300
TOLERANCE = 1e-5

# The model settings of each kind of run; every run adds COMMON.
FAMILIES = {
    "linear": ("--model=linear", "--learning_rate=3e-4"),
    "cnn": ("--model=cnn", "--cnn_features=4,8", "--cnn_dense=16",
            "--batch_size=64", "--learning_rate=3e-4", "--dropout=0"),
    "rnn": ("--model=rnn", "--hidden=8", "--batch_size=64",
            "--learning_rate=3e-3", "--dropout=0"),
    "members": ("--model=linear", "--learning_rate=3e-4", "--num_seeds=2",
                "--val_fraction=0.1"),
}
COMMON = ("--preset=seed", "--epochs=2", "--seed=1", "--notensorboard",
          "--noreport")  # --mode=report writes it: test_report_on_one_device.


@dataclasses.dataclass(frozen=True)
class Topology:
  """How a child process runs: its flags and host devices, what it must use."""
  flags: Tuple[str, ...]
  host_devices: Optional[int] = None  # XLA's forced CPU device count.
  split: bool = False  # Relies on process.split_host (two or more cores).
  devices: int = 1  # Devices the run must use (config.json records them).


ONE = Topology(("--parallel=none",))
SPLIT = Topology(("--parallel=auto",), split=True, devices=2)
FORCED_PMAP = Topology(("--parallel=pmap",), host_devices=2, devices=2)
PROCESSES = Topology(("--parallel=sharded",), devices=2)  # 2 processes x 1.
TOPOLOGIES = {"one": ONE, "split": SPLIT, "forced_pmap": FORCED_PMAP,
              "two_processes": PROCESSES}

# Trained on: (family, topology). --parallel=auto's rule (devices.Layout) on
# the split host shards the RNN and splits the members over its devices.
TRAINED = {
    "one_device": ("linear", "one"),
    "pmap": ("cnn", "forced_pmap"),
    "split_sharded": ("rnn", "split"),
    "members_split": ("members", "split"),
    "two_processes": ("linear", "two_processes"),
}
# Where each family runs on two devices in one process.
TWO_DEVICES = {"linear": "forced_pmap", "cnn": "forced_pmap", "rnn": "split",
               "members": "split"}
# What config.json records of each trained topology's layout.
EXPECTED = {"one_device": ("none", 1), "pmap": ("pmap", 2),
            "split_sharded": ("sharded", 2), "members_split": ("members", 2),
            "two_processes": ("sharded", 2)}


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _env(topology: Topology) -> dict:
  env = lh.child_env()
  env["XLA_FLAGS"] = xla_flags(topology.host_devices)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _devices_used(environment: dict) -> int:
  """The devices a run trained on, from config.json's environment."""
  return environment["parallel"]["devices"]


class Lab:
  """Trains each (family, topology) run once, on first use."""

  def __init__(self, prepared, root):
    mnist_dir, data_dir = prepared
    self._data = (f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}")
    self._root = root
    self._runs: Dict[Tuple[str, str], str] = {}

  def args(self, family: str, topology: Topology, workdir: str):
    return [*FAMILIES[family], *COMMON, *self._data, *topology.flags,
            f"--workdir={workdir}"]

  def launch(self, args, topology: Topology, script: str = "launch.py"):
    """Runs launch.py (or the probe) to the end: (status, stdout, stderr)."""
    if topology.split and _cores() < 2:
      pytest.skip("a split host needs two cores")
    env = _env(topology)
    p = subprocess.run([sys.executable, script, *args], cwd=lh.ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S,
                       env=env, check=False)
    return p.returncode, p.stdout, p.stderr

  def run(self, family: str, where: str) -> str:
    """The finished run folder of `family` trained on topology `where`."""
    key = (family, where)
    if key not in self._runs:
      workdir = str(self._root / f"{family}-{where}")
      topology = TOPOLOGIES[where]
      if topology is PROCESSES:
        self._two_processes(self.args(family, topology, workdir))
      else:
        rc, _, err = self.launch(self.args(family, topology, workdir),
                                 topology)
        assert rc == 0, err[-3000:]
      with open(os.path.join(workdir, "config.json")) as f:
        assert _devices_used(json.load(f)["environment"]) == topology.devices
      self._runs[key] = workdir
    return self._runs[key]

  def _two_processes(self, args):
    """Runs `args` as processes 0 and 1 of a jax.distributed job on loopback;
    process 1 gets a workdir of its own, which it must leave unwritten."""
    port = _free_port()
    procs = []
    for i in range(2):
      own = args if i == 0 else [
          a + "-process1" if a.startswith("--workdir=") else a for a in args]
      procs.append(subprocess.Popen(
          [sys.executable, "launch.py", *own,
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"], cwd=lh.ROOT, env=_env(PROCESSES),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
      outputs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    for p, (_, err) in zip(procs, outputs):
      assert p.returncode == 0, err[-3000:]
    workdir = next(a for a in args if a.startswith("--workdir="))
    assert not os.path.exists(workdir[len("--workdir="):] + "-process1")


@pytest.fixture(scope="module")
def lab(prepared, tmp_path_factory):
  return Lab(prepared, tmp_path_factory.mktemp("topology"))


def _final(workdir: str) -> dict:
  return lh.metrics(workdir)[-1]


def _probe(lab, workdir, *args):
  """Report or predict on one device (a plain process): its @metrics record."""
  rc, out, err = lab.launch([*args, f"--workdir={workdir}"], ONE, PROBE)
  assert rc == 0 and not err.strip().startswith("error"), err[-3000:]
  [line] = [l for l in out.splitlines() if l.startswith("@metrics ")]
  return json.loads(line[len("@metrics "):]), out


def _assert_test_metrics(metrics: dict, final: dict):
  """Test accuracy and loss (and the ensemble's) equal the run's own."""
  assert metrics["accuracy"] == pytest.approx(final["test_accuracy"],
                                              abs=TOLERANCE)
  assert metrics["loss"] == pytest.approx(final["test_loss"], abs=TOLERANCE)
  if "ensemble_test_accuracy" in final:
    assert metrics["ensemble_accuracy"] == pytest.approx(
        final["ensemble_test_accuracy"], abs=TOLERANCE)
    assert metrics["ensemble_loss"] == pytest.approx(
        final["ensemble_test_loss"], abs=TOLERANCE)
  else:
    assert metrics["ensemble_accuracy"] is None


def _trained(lab, name):
  family, where = TRAINED[name]
  workdir = lab.run(family, where)
  with open(os.path.join(workdir, "config.json")) as f:
    env = json.load(f)["environment"]
  mode, devices = EXPECTED[name]
  assert (env["parallel"]["mode"], env["parallel"]["devices"]) == (
      mode, devices), env["parallel"]
  if name == "two_processes":
    assert env["process_count"] == 2
  if TOPOLOGIES[TRAINED[name][1]].split:  # A device per core, up to the cap.
    assert len(env["devices"]) == min(_cores(), process.MAX_HOST_DEVICES)
  return family, workdir


# Where the run was trained on more than one device (a one-device run's
# report: everywhere else; a sharded run's restore: its resume below).
@pytest.mark.parametrize("name", ["pmap", "members_split", "two_processes"])
def test_report_on_one_device(lab, name):
  _, workdir = _trained(lab, name)
  metrics, out = _probe(lab, workdir, "--mode=report")
  _assert_test_metrics(metrics, _final(workdir))
  assert "test accuracy" in out


@pytest.mark.parametrize("name", ["members_split"])
def test_predict_on_one_device(lab, name, tmp_path):
  family, workdir = _trained(lab, name)
  images = []
  for i, shade in enumerate((230, 180)):  # Two block "digits" of the data.
    picture = np.zeros((28, 28), np.uint8)
    picture[2 + 6 * i:7 + 6 * i, 2:7] = shade
    images.append(str(tmp_path / f"digit{i}.png"))
    Image.fromarray(picture).save(images[-1])
  ensemble = ["--ensemble"] if family == "members" else []
  metrics, out = _probe(lab, workdir, "--mode=predict", "--json",
                        f"--image={','.join(images)}", *ensemble)
  _assert_test_metrics(metrics, _final(workdir))
  records = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [r["file"] for r in records] == images
  assert all(0 <= r["digit"] <= 9 and "error" not in r for r in records)


def _close(a, b, path="row"):
  """Nested metrics rows equal, floats to TOLERANCE."""
  if isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for k in a:
      _close(a[k], b[k], f"{path}.{k}")
  elif isinstance(a, list):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _close(x, y, f"{path}[{i}]")
  elif isinstance(a, float) and isinstance(b, float):
    assert a == pytest.approx(b, abs=TOLERANCE, rel=TOLERANCE), path
  else:
    assert a == b, path


# One device onto two, and two onto one from the layouts whose checkpoints
# differ most (sharded arrays; a members axis). pmap's and two processes'
# folders restore through the same function in test_report_on_one_device,
# and test_parallel.py resumes two processes and every layout mid-epoch.
@pytest.mark.parametrize("name,on", [
    ("one_device", "two_devices"), ("split_sharded", "one_device"),
    ("members_split", "one_device")])
def test_resume_on_other_devices(lab, name, on, tmp_path):
  family, source = _trained(lab, name)
  where = "one" if on == "one_device" else TWO_DEVICES[family]
  topology = TOPOLOGIES[where]
  reference = lab.run(family, where)  # Uninterrupted, on those devices.

  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  folders = os.path.join(workdir, "checkpoints")
  last = max(os.listdir(folders), key=int)
  shutil.rmtree(os.path.join(folders, last))  # Killed after epoch 1:
  config_path = os.path.join(workdir, "config.json")
  with open(config_path) as f:
    record = json.load(f)
  record["finished"] = False  # so not yet recorded complete.
  with open(config_path, "w") as f:
    json.dump(record, f)
  rc, out, err = lab.launch(lab.args(family, topology, workdir), topology)
  assert rc == 0, err[-3000:]
  assert "resuming" in out
  with open(os.path.join(workdir, "config.json")) as f:
    resumed_env = json.load(f)["resumes"][-1]["environment"]
  assert _devices_used(resumed_env) == topology.devices

  with open(os.path.join(source, "config.json")) as f:
    trained_devices = _devices_used(json.load(f)["environment"])
  rows = lh.deterministic(lh.metrics(workdir))
  ref_rows = lh.deterministic(lh.metrics(reference))
  params = run_lib.load_run(workdir).seed_variables
  ref_params = run_lib.load_run(reference).seed_variables
  # Bit for bit on the same devices of one process; the all-reduces between
  # processes (gloo on a CPU) may sum in another order.
  if trained_devices == topology.devices and PROCESSES not in (
      topology, TOPOLOGIES[TRAINED[name][1]]):
    assert rows == ref_rows
    lh.assert_trees_equal(params, ref_params)
  else:  # Reductions over other device counts: float tolerance.
    _close(rows, ref_rows)
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(p, q, rtol=TOLERANCE, atol=TOLERANCE)
