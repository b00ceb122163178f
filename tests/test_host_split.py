"""--parallel=auto on a CPU-only host: one XLA device per core, same training.

devices.split_host must act before JAX starts its backends, so the runs that
use it are launch.py subprocesses (JAX_PLATFORMS=cpu, no XLA_FLAGS).
"""

import json
import os
import subprocess
import sys

import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.rundir import folder as folder_lib
from mnist_jax.training import devices as devices_lib
from mnist_jax.training import dry_run
from mnist_jax.training import members as members_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


@pytest.mark.parametrize("batch,devices,expected", [
    (128, 2, [("none", 1), ("sharded", 2), ("pmap", 2)]),
    (128, 8, [("none", 1), ("sharded", 4), ("pmap", 4)]),  # 128 / 32 = 4 x 32.
    (100, 8, [("none", 1), ("sharded", 2), ("pmap", 2)]),  # 2 x 50, not 4 x 25.
    (63, 2, [("none", 1)]),  # Odd: no even split.
    (62, 2, [("none", 1)]),  # 2 x 31 is below MIN_DEVICE_BATCH.
    (128, 1, [("none", 1)]),
])
def test_split_host_layouts(batch, devices, expected):
  assert devices_lib.split_host_layouts(batch, devices) == expected


LAYOUTS = [("none", 1), ("pmap", 2), ("sharded", 2)]


@pytest.fixture(autouse=True)
def idle_host(monkeypatch):
  """A host with nothing else running (other tests load this one)."""
  monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def _timer(ms):
  """A stand-in for Engine._timed_run: runs that take ms[mode] / 1000 s per
  step; the layouts prepared, in order."""
  calls = []

  def prepare(mode, count):
    calls.append((mode, count))
    return lambda: ms[mode] / 1e3
  return prepare, calls


def test_choose_layout_measures_once_per_setting(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  setting = {"model": "Newnet(hidden = 16)", "batch_size": 128}
  seconds, calls = _timer({"none": 3.0, "pmap": 2.0, "sharded": 1.0})
  chosen, how = devices_lib.choose_layout(LAYOUTS, seconds, setting)
  assert chosen == ("sharded", 2) and calls == LAYOUTS
  assert how["how"] == "measured" and how["seconds"] >= 0
  assert how["ms_per_step"] == {"none": 3.0, "pmap": 2.0, "sharded": 1.0}
  assert os.path.exists(tmp_path / "mnist_jax" / devices_lib.LAYOUT_CACHE)

  seconds, calls = _timer({"none": 1.0, "pmap": 2.0, "sharded": 3.0})
  assert devices_lib.choose_layout(LAYOUTS, seconds, setting) == (
      ("sharded", 2), {"how": "cached"})
  assert not calls
  other = dict(setting, batch_size=256)  # Another setting measures again.
  assert devices_lib.choose_layout(LAYOUTS, seconds, other)[0] == ("none", 1)
  assert calls == LAYOUTS


@pytest.mark.parametrize("ms,expected", [
    ({"none": 10.0, "pmap": 9.8, "sharded": 9.9}, ("none", 1)),  # Noise.
    ({"none": 10.0, "pmap": 8.0, "sharded": 7.9}, ("pmap", 2)),
    ({"none": 10.0, "pmap": 8.0, "sharded": 7.0}, ("sharded", 2)),
])
def test_choose_layout_wants_a_margin_over_a_simpler_layout(tmp_path,
                                                            monkeypatch, ms,
                                                            expected):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert devices_lib.choose_layout(LAYOUTS, _timer(ms)[0], {})[0] == expected


def test_choose_layout_survives_a_damaged_or_unwritable_cache(tmp_path,
                                                              monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  path = tmp_path / "mnist_jax" / devices_lib.LAYOUT_CACHE
  path.parent.mkdir()
  path.write_text("{not json")
  seconds, _ = _timer({"none": 3.0, "pmap": 1.0, "sharded": 2.0})
  assert devices_lib.choose_layout(LAYOUTS, seconds, {})[0] == ("pmap", 2)
  assert devices_lib.choose_layout(LAYOUTS, seconds, {})[1] == {"how": "cached"}
  monkeypatch.setenv("XDG_CACHE_HOME", str(path))  # A file: no folder there.
  assert devices_lib.choose_layout(LAYOUTS, seconds, {})[0] == ("pmap", 2)


def test_a_cached_layout_this_host_cannot_run_is_measured_again(tmp_path,
                                                                monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  fast_pmap, _ = _timer({"none": 3.0, "pmap": 1.0, "sharded": 2.0})
  devices_lib.choose_layout(LAYOUTS, fast_pmap, {})
  seconds, calls = _timer({"none": 1.0, "sharded": 2.0})
  layouts = [("none", 1), ("sharded", 2)]
  assert devices_lib.choose_layout(layouts, seconds, {}) [0] == ("none", 1)
  assert calls == layouts


def test_recorded_parallel_is_the_layout_last_trained_with(tmp_path):
  assert folder_lib.recorded_parallel(str(tmp_path)) is None
  record = {"environment": {"parallel": {"mode": "sharded", "devices": 2}}}
  (tmp_path / "config.json").write_text(json.dumps(record))
  assert folder_lib.recorded_parallel(str(tmp_path)) == {"mode": "sharded",
                                                         "devices": 2}
  record["resumes"] = [{"environment": {"parallel": {"mode": "pmap",
                                                     "devices": 2}}}]
  (tmp_path / "config.json").write_text(json.dumps(record))
  assert folder_lib.recorded_parallel(str(tmp_path))["mode"] == "pmap"


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


NEW_MODEL = os.path.join(ROOT, "tests", "new_model_launch.py")


def _env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT, **extra)
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _launch(prepared, workdir, model, *extra, fake_ms=None):
  """Trains `model` 2 epochs; fake_ms: --parallel=auto's step times (ms) of
  each layout, through new_model_launch.py."""
  mnist_dir, data_dir = prepared
  shapes = {"gru": ["--hidden=16"],
            "cnn": ["--cnn_features=4,8", "--cnn_dense=16"]}[model]
  # A cache of this test's own: another test of the same worker may have
  # cached a layout for the same setting (test_topology trains this CNN).
  env = (_env(FAKE_MS_PER_STEP=fake_ms, XDG_CACHE_HOME=str(workdir) + "-cache")
         if fake_ms else _env())
  proc = subprocess.run(
      [sys.executable, NEW_MODEL if fake_ms else "launch.py",
       f"--model={model}", "--preset=seed",
       "--epochs=2", "--batch_size=64", "--eval_batch_size=100",
       "--val_fraction=0.1", "--dropout=0", f"--mnist_dir={mnist_dir}",
       f"--data_dir={data_dir}", f"--workdir={workdir}", *shapes, *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
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
  """The default run uses every core as a device, in the layout measured
  fastest (here made `mode`), and matches one device."""
  fake_ms = f"none=3,pmap={1 if mode == 'pmap' else 2},sharded=1.5"
  out, rows, env = _launch(prepared, tmp_path / "auto", model, fake_ms=fake_ms)
  devices = min(CORES, devices_lib.MAX_HOST_DEVICES, 2)  # Batch 64: 2 x 32.
  assert (f"data parallel ({mode}) over {devices} CPU devices (--parallel=auto:"
          " measured fastest in") in out
  assert env["parallel"] == {"mode": mode, "devices": devices}
  assert env["parallel_choice"]["how"] == "measured"
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


def _new_model(prepared, workdir, fake_ms, cache, *extra):
  mnist_dir, data_dir = prepared
  return [f"--model=newnet", "--preset=seed", "--chunk_steps=4", "--seed=5",
          f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}", *extra], dict(FAKE_MS_PER_STEP=fake_ms,
                                               XDG_CACHE_HOME=str(cache))


def _environment(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  return [record["environment"]] + [r["environment"]
                                    for r in record.get("resumes", [])]


@pytest.mark.slow
@pytest.mark.skipif(CORES < 2, reason="needs at least 2 CPU cores")
def test_a_new_model_gets_a_measured_layout_cached_and_kept_on_resume(
    prepared, tmp_path):
  """A model registered outside the package (new_model_launch.py), with
  devices.py untouched: --parallel=auto measures its layouts, the next run of
  the same setting reads the choice from the cache, and a resumed run keeps
  the layout it began with, whatever a new measurement would say."""
  sharded, pmap = "none=3,pmap=2,sharded=1", "none=3,pmap=1,sharded=2"
  line = "data parallel (sharded) over 2 CPU devices (--parallel=auto: "
  first = tmp_path / "first"
  args, env = _new_model(prepared, first, sharded, tmp_path / "cache")
  rc, out, err = lh.run(args, script=NEW_MODEL, **env)
  assert rc == 0, err
  assert line + "measured fastest in" in out
  assert "ms/step none 3, sharded 1, pmap 2" in out
  assert _environment(first)[0]["parallel"] == {"mode": "sharded", "devices": 2}
  assert _environment(first)[0]["parallel_choice"]["how"] == "measured"

  args, env = _new_model(prepared, tmp_path / "again", pmap, tmp_path / "cache")
  rc, out, err = lh.run(args, script=NEW_MODEL, **env)
  assert rc == 0, err
  assert line + "measured fastest before, cached)" in out
  assert lh.deterministic(lh.metrics(tmp_path / "again")) == lh.deterministic(
      lh.metrics(first))

  resumed = tmp_path / "resumed"
  args, env = _new_model(prepared, resumed, sharded, tmp_path / "cache")
  rc, out, err, _ = lh.run_and_signal(args, lh.SIGKILL, epoch=2, chunk=1,
                                      script=NEW_MODEL, env=env)
  assert rc == -9 and line + "measured fastest before, cached)" in out
  args, env = _new_model(prepared, resumed, pmap, tmp_path / "fresh_cache")
  rc, out, err = lh.run(args, script=NEW_MODEL, **env)
  assert rc == 0, err
  assert line + "as this run has trained so far)" in out
  assert _environment(resumed)[-1]["parallel"] == {"mode": "sharded",
                                                   "devices": 2}
  assert lh.deterministic(lh.metrics(resumed)) == lh.deterministic(
      lh.metrics(first))


def test_a_busy_host_gets_the_simplest_layout_unmeasured(tmp_path,
                                                        monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1},
                      raising=False)
  monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 2.0, 1.0))
  prepare, calls = _timer({"none": 3.0, "pmap": 1.0, "sharded": 2.0})
  assert devices_lib.choose_layout(LAYOUTS, prepare, {}) == (
      ("none", 1), {"how": "busy", "load": 3.5, "cores": 2})
  assert not calls
  monkeypatch.setattr(os, "getloadavg", lambda: (2.5, 2.0, 1.0))
  assert devices_lib.choose_layout(LAYOUTS, prepare, {})[0] == ("pmap", 2)
  monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 2.0, 1.0))
  assert devices_lib.choose_layout(LAYOUTS, prepare, {}) == (
      ("pmap", 2), {"how": "cached"})  # Measured while the host was idle.


def test_dry_run_says_auto_measures_as_the_run_starts(monkeypatch):
  monkeypatch.setattr(devices_lib, "auto_layouts", lambda *_: LAYOUTS)
  config = models.get_config("gru", "seed")
  line = dry_run.devices_line(config, members_lib.from_config(config))
  assert line.startswith("one CPU device, or data parallel (pmap or sharded) "
                         "over 2: --parallel=auto times")
