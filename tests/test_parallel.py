"""A member computes its single run's numbers and a layout its one device's:
bit for bit where both run one device's program on no more devices than cores,
else to float rounding. Then how a job's processes join and fail, in a line."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import launch_helpers as lh
import parallel_worker as pw
from parallel_worker import tiny
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.errors import UserError
from mnist_jax.models import registry
from mnist_jax.rundir import process
from mnist_jax.rundir.record import read_record
from mnist_jax.training import members as members_lib

TIMEOUT_S = 600
TOLERANCE = 2e-5  # Losses (relative) and parameters after 8 to 16 steps.


def assert_same(a, b, exact):
  """Nested metrics rows equal: bit for bit, or floats to TOLERANCE."""
  if exact:
    assert a == b
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x == (pytest.approx(y, rel=TOLERANCE, abs=1e-6)
                 if isinstance(x, float) else y)


SWEEP = dict(num_seeds=2, sweep="learning_rate=1e-3,3e-3")  # 4 members.
MEMBERS = {"mode": "none", "devices": 1, "members": "in turn"}
SLOW, FLOORS = pytest.mark.slow, pytest.mark.floors


def case(name, model, settings, parallel="none", devices=1, vmap=False,
         exact=True, layout=None, says=None, marks=(SLOW,)):
  return pytest.param(dict(model=model, settings=settings, parallel=parallel,
                           devices=devices, vmap=vmap, exact=exact,
                           layout=layout or MEMBERS, says=says),
                      id=name, marks=list(marks))


CASES = [
    case("mlp_sweep_in_turn", "mlp", tiny("mlp", **SWEEP), marks=()),
    # A swept loss number is the members' argument, the single run's constant.
    case("mlp_loss_sweep_in_turn", "mlp", tiny("mlp", num_seeds=2, sweep=(
        "label_smoothing=0,0.1")), exact=False),
    # Vmapped members of one optimizer state structure, each its own numbers.
    case("mlp_sweep_vmapped", "mlp", tiny(
        "mlp", num_seeds=2, optimizer="sgd", learning_rate=3e-2, sweep=(
            "momentum=0,0.9;weight_decay=0,1e-2;label_smoothing=0,0.1")),
         vmap=True, exact=False, layout={**MEMBERS, "members": "vmapped"},
         marks=()),
    *[case(f"{m}_in_turn", m, tiny(m, num_seeds=2))
      for m in registry.MODELS if m != "mlp"],
    case("cnn_bn_in_turn", "cnn", tiny("cnn", num_seeds=2, cnn_batch_norm=True)),
    # The accelerator's choice in the fast suite: vmapped members over 2
    # devices (launch.py on a GPU backend: the next test).
    case("gru_vmapped_2_devices", "gru", tiny("gru", num_seeds=2), "auto", 2,
         vmap=True, exact=False, layout={"mode": "members", "devices": 2,
                                         "members": "vmapped"}, marks=()),
    case("mlp_sweep_split_over_2_devices", "mlp", tiny("mlp", **SWEEP), "auto",
         2, exact=process.cores() >= 2, layout={
             "mode": "members", "devices": 2, "members": "in turn"},
         says="4 members split over 2 CPU devices", marks=(SLOW, FLOORS)),
    # auto shards a recurrent model over a CPU's devices (its rule), and
    # each of members that do not split over them, in turn.
    case("gru_3_members_in_turn_sharded_over_2_devices", "gru",
         tiny("gru", num_seeds=3), "auto", 2, exact=False,
         layout={"mode": "sharded", "devices": 2, "members": "in turn"},
         says="3 members in turn, each data parallel over 2 CPU devices"),
    *[case(f"{name}_sharded_over_2_devices", model, settings, parallel, 2,
           exact=False, layout={"mode": "sharded", "devices": 2},
           says="data parallel over 2 CPU devices (one jit over a mesh)",
           marks=(SLOW, FLOORS))
      for name, model, settings, parallel in (
          ("gru", "gru", tiny("gru"), "auto"),
          ("cnn_bn", "cnn", tiny("cnn", cnn_batch_norm=True), "sharded"))],
    case("mlp_pmap_over_2_devices", "mlp", dict(mlp_hidden=(16,), dropout=0.0),
         "pmap", 2, exact=False, layout={"mode": "pmap", "devices": 2},
         says="(pmap: each device draws its own dropout masks and "
         "augmentation)", marks=(SLOW, FLOORS)),
]


@pytest.mark.parametrize("case", CASES)
def test_a_member_computes_its_single_runs_numbers(tmp_path, case):
  """The last member (its seed and swept values) under each layout against
  its single run with --parallel=none: rows, final row, parameters, model
  state, test logits; one member, data-parallel, against one device."""
  config = pw.config(case["model"], case["settings"], case["parallel"])
  member = members_lib.from_config(config)[-1]
  i, run = member.index, {k: case[k] for k in ("model", "settings",
                                               "parallel", "vmap")}
  out = pw.runs(tmp_path, {"run": run, "single": dict(
      model=case["model"], settings={
          **case["settings"], "seed": member.seed, "num_seeds": 1,
          "sweep": "", **member.values})}, case["devices"])
  (got, single), exact = (out["run"], out["single"]), case["exact"]
  assert single["record"]["parallel"] == {"mode": "none", "devices": 1}
  assert got["record"]["parallel"] == case["layout"]
  if case["says"]:
    assert any(case["says"] in m for m in got["record"]["messages"])
  rows = got["record"]["rows"] + [got["record"]["final"]]
  assert_same(lh.deterministic(members_lib.member_rows(rows, i)),
              lh.deterministic(single["record"]["rows"] +
                               [single["record"]["final"]]), exact)
  for part in ("params", "model_state"):
    np.testing.assert_allclose(got["state"][part][i], single["state"][part][0],
                               rtol=0, atol=0 if exact else TOLERANCE)
  # Each member's own test logits, every example once.
  assert got["logits"].shape == (len(got["state"]["params"]), 203, 10)
  np.testing.assert_allclose(got["logits"][i], single["logits"][0], rtol=0,
                             atol=0 if exact else 1e-3)
  if len(rows[-1].get("members", ())) > 1:  # Their values and seeds are used.
    losses = {m["test_loss"] for m in rows[-1]["members"]}
    assert len(losses) == len(rows[-1]["members"])


def test_launch_on_a_gpu_backend_takes_the_accelerators_choices(prepared,
                                                               tmp_path):
  """launch.py on 2 CPU devices reported as a GPU (accelerator_launch.py): the
  stock layers, 2 members vmapped over the devices (--parallel=auto), its
  report (vmapped members' numbers: the *_vmapped cases above)."""
  workdir = tmp_path / "run"
  p = subprocess.run(
      [sys.executable, "tests/accelerator_launch.py", "--model=cnn",
       "--preset=seed", "--cnn_features=4,8", "--cnn_dense=16", "--epochs=1",
       "--batch_size=32", "--val_fraction=0.1", "--noanalyses",
       "--num_seeds=2", *prepared.flags, f"--workdir={workdir}"], cwd=lh.ROOT,
      env=pw.child_env(2), capture_output=True, text=True, timeout=TIMEOUT_S,
      check=False)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "2 members split over 2 GPU devices" in p.stdout
  record = read_record(workdir)
  env = record["environment"]
  assert env["backend"] == "gpu" and record["finished"]
  assert env["implementation"] == {
      "impl": "auto", "module": "mnist_jax/models/cnn.py's CNN"}
  assert env["parallel"] == {"mode": "members", "devices": 2,
                             "members": "vmapped"}
  assert (workdir / "report.md").exists()
  members = lh.metrics(workdir)[-1]["members"]  # Each its own seed.
  assert len({m["test_loss"] for m in members}) == 2


def test_no_cluster_is_one_process_but_named_processes_must_join(monkeypatch):
  """Unless the flags name processes, one process; jax's errors in one line,
  and process 0 on a port in use refused before jax's coordinator crashes."""
  calls, raises = [], [ValueError("coordinator_address should be defined.")]

  def initialize(*args, **kwargs):  # jax.distributed's: what `raises` holds.
    calls.append(args)
    if raises:
      raise raises[0]

  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  config = models.get_config("mlp")
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
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    job = config.replace(coordinator_address=f"localhost:{port}",
                         num_processes=2, process_id=0)
    with pytest.raises(UserError, match=(
        f"^process 0 cannot listen on port {port} of this host \\(Address "
        "already in use; another job\\?\\): give every process the same "
        "--coordinator_address")):
      process.initialize(job)
    process.initialize(job.replace(process_id=1))  # Process 1 joins.
  process.initialize(job)  # Free again.
  assert calls[-2:] == [(f"localhost:{port}", 2, 1),
                        (f"localhost:{port}", 2, 0)]


def _job(prepared, workdir, *extra, ids=(0, 1), devices=1, code=None):
  """Processes `ids` of a 2-process MLP job (ids=(): one process alone), run
  by `code` if given."""
  with socket.socket() as s:  # A free port.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  args = ["--model=mlp", "--preset=seed", "--mlp_hidden=32", "--dropout=0",
          "--epochs=2", "--batch_size=32", "--eval_batch_size=50",
          "--val_fraction=0.1", "--noreport", *prepared.flags, *extra]
  # Process 1 has a folder of its own, which it must leave unwritten.
  job = [[f"--workdir={workdir}{'-process1' * i}",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}"] for i in ids] or [[f"--workdir={workdir}"]]
  return [subprocess.Popen(
      [sys.executable, *(["-c", code] if code else []), "launch.py", *args,
       *own], cwd=lh.ROOT, env=pw.child_env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for own in job]


def _ends(procs):  # (stdout, stderr) of each, none left running.
  try:
    return [p.communicate(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "sharded"])
def test_two_processes_match_one(prepared, tmp_path, mode):
  """2 processes x 2 CPU devices on loopback against one process on one
  device; process 1 writes nothing; the report (here) gives its metrics."""
  [one] = _job(prepared, tmp_path / "one", "--parallel=none", ids=())
  procs = _job(prepared, tmp_path / "run", f"--parallel={mode}", devices=2)
  outputs = _ends([one, *procs])
  for p, (_, err) in zip([one, *procs], outputs):
    assert p.returncode == 0, err[-3000:]
  assert "[process 1/2] epoch 2/2" in outputs[2][0]
  assert not (tmp_path / "run-process1").exists()
  got, ref = lh.metrics(tmp_path / "run"), lh.metrics(tmp_path / "one")
  assert_same(lh.deterministic(got), lh.deterministic(ref), exact=False)
  environment = read_record(tmp_path / "run")["environment"]
  assert environment["process_count"] == 2
  assert environment["parallel"] == {"mode": mode, "devices": 4}
  report = modes.rewrite_report(str(tmp_path / "run"))
  assert report["accuracy"] == pytest.approx(got[-1]["test_accuracy"],
                                             abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_whose_peer_never_starts_ends_in_one_line(
    prepared, tmp_path, process_id):
  """Alone, either waits JOIN_TIMEOUT_S (5 s here), then says what to do."""
  code = ("import runpy, sys; from mnist_jax.rundir import process; "
          "process.JOIN_TIMEOUT_S = 5; sys.argv = sys.argv[1:]; "
          "runpy.run_path('launch.py', run_name='__main__')")
  [proc] = _job(prepared, tmp_path / "run", ids=(process_id,), code=code)
  [(_, err)] = _ends([proc])
  assert proc.returncode == 1
  assert err.strip() == (
      "error: not all processes joined in 5 s: give every process the same "
      "--coordinator_address=HOST:PORT (process 0's, reachable from every "
      "process, on a free port) and --num_processes=N, and its own "
      "--process_id (0 to N-1)")
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_process_killed_mid_run_stops_the_others_in_one_line(prepared,
                                                               tmp_path):
  """Process 1 killed in epoch 3: process 0 stops with one line saying to
  start both again (no traceback), which then finishes the run."""
  procs = _job(prepared, tmp_path / "run", "--epochs=40")
  try:
    next((l for l in procs[0].stdout if "epoch 3/40" in l), None)
    procs[1].kill()
  finally:
    [(_, err), _] = _ends(procs)
  assert procs[0].returncode == 1, err[-3000:]
  assert "Traceback" not in err and "Fatal" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: another process of this job stopped (it "
                         "crashed or was killed: "), last
  assert last.endswith("; start every process again with its same command "
                       "(they resume)"), last
  procs = _job(prepared, tmp_path / "run", "--epochs=40")
  for p, (_, err) in zip(procs, _ends(procs)):
    assert p.returncode == 0, err[-3000:]
  rows = lh.metrics(tmp_path / "run")
  assert [r["epoch"] for r in rows[:-1]] == list(range(1, 41))
  assert rows[-1]["test_examples"] == 200
