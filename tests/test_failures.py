"""Every failure is one line: ranges declared with the fields, what the machine
can hold, failures of the machine named, and a run that did not learn.

The end-to-end versions (a full tmpfs, a read-only mount, signals while
starting, the flag fuzz) are slow: tests/test_machine_failures.py.
"""

import errno
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import launch
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import BadFlag, UserError
from mnist_jax import files
from mnist_jax.rundir import control
from mnist_jax.rundir import resources
from launch_helpers import ROOT

NUMERIC = [n for n, declared in config_lib.FIELDS.items()
           if type(declared.default) in (int, float)]


def test_every_numeric_setting_declares_its_bounds():
  """A numeric field added without a bounded parser fails here, not in a
  user's run; every default is inside its bounds."""
  assert NUMERIC
  for name in NUMERIC:
    parser = config_lib.FIELDS[name].parser
    assert parser is not None and parser.upper_bound is not None, name
    assert config_lib.parse(name, config_lib.FIELDS[name].default) == (
        config_lib.FIELDS[name].default)
  config_lib.validate(config_lib.Config())


def _absurd(name):
  """Values of a setting's type far outside any range: floats for a float
  (an int flag refuses them as it parses), huge ints for all."""
  ints = [2**63, -(2**63), -1, 0]
  if type(config_lib.FIELDS[name].default) is float:
    return [math.nan, math.inf, -math.inf, -1e30, 1e30, *ints]
  return ints


def test_validate_refuses_what_the_parser_refuses_in_one_line():
  """Config.replace and validate refuse a value with its flag's line."""
  for name in NUMERIC:
    parser = config_lib.FIELDS[name].parser
    for value in _absurd(name):
      try:
        parsed = parser.parse(str(value))
      except ValueError as e:
        message = f"flag --{name}={value}: {e}"
      else:
        config_lib.validate(config_lib.Config().replace(**{name: value}))
        assert parsed == value
        continue
      with pytest.raises(BadFlag) as caught:
        config_lib.Config().replace(**{name: value})
      assert str(caught.value) == message and "\n" not in message
      with pytest.raises(BadFlag) as caught:
        config_lib.validate(config_lib.Config(**{name: value}))
      assert str(caught.value) == message


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "flag --epochs=0: 0 is not an integer in the range "
     "[1, 1000000]"),
    ({"epochs": 99999999999}, "flag --epochs=99999999999: 99999999999 is not "
     "an integer in the range [1, 1000000]"),
    ({"warmup_epochs": math.inf}, "flag --warmup_epochs=inf: inf is not a "
     "finite number in [0, 1000000]"),
    ({"weight_decay": math.inf}, "flag --weight_decay=inf: inf is not a "
     "finite number in [0, inf)"),
    ({"learning_rate": 0}, "flag --learning_rate=0: 0.0 is not a finite "
     "number in (0, inf)"),
    ({"augment_rotate": math.inf}, "flag --augment_rotate=inf: inf is not a "
     "finite number in [0, 180]"),
    ({"augment_elastic": math.nan}, "flag --augment_elastic=nan: nan is not a "
     "finite number in [0, 28]"),
    ({"augment_rotate": 181.0}, "flag --augment_rotate=181.0: 181.0 is not a "
     "finite number in [0, 180]"),
    ({"num_seeds": 10**9}, "flag --num_seeds=1000000000: 1000000000 is not "
     "an integer in the range [1, 10000]"),
    ({"mlp_hidden": (99999999999,)}, "flag --mlp_hidden=99999999999: it takes "
     "comma-separated integers in the range [1, 16777216], e.g. 512,256"),
    ({"seed": 2**32}, "flag --seed=4294967296: 4294967296 is not an integer "
     "in the range [0, 4294967295]"),
    ({"batch_size": 2**31}, "flag --batch_size=2147483648: 2147483648 is not "
     "an integer in the range [1, 2147483647]"),
    ({"process_id": -2}, "flag --process_id=-2: -2 is not an integer in the "
     "range [-1, 65535]"),
    ({"val_fraction": 1.0}, "flag --val_fraction=1.0: 1.0 is not a finite "
     "number in [0, 1)"),
    ({"seed": 2**32 - 1, "num_seeds": 2},
     "--seed=4294967295 --num_seeds=2 would use seeds up to 4294967296"),
])
def test_the_issue_values_are_refused_in_one_line(change, message):
  with pytest.raises(UserError) as caught:
    models.validate(models.get_config("mlp", None).replace(**change))
  assert str(caught.value).startswith(message), str(caught.value)


def test_an_empty_size_list_is_refused_in_one_line():
  """--mlp_hidden= (absl's empty list) names the flag and a value to pass."""
  with pytest.raises(BadFlag) as caught:
    models.get_config("mlp", mlp_hidden=())
  message = str(caught.value)
  assert message.startswith("flag --mlp_hidden=: ") and "\n" not in message
  assert "e.g. 512,256" in message


def test_values_the_meaning_allows_are_accepted():
  config_lib.validate(config_lib.Config().replace(
      weight_decay=0.0, learning_rate=1e30, grad_clip=1e30, process_id=-1,
      augment_rotate=180.0, epochs=config_lib.MAX_EPOCHS))


def test_sweep_values_take_the_same_ranges_and_a_bounded_grid():
  with pytest.raises(BadFlag, match=r"^--sweep: flag --weight_decay=inf: inf "
                     r"is not a finite number in \[0, inf\)$"):
    config_lib.sweep_grid("weight_decay=0,inf")
  with pytest.raises(UserError, match="make 10005 members; one program trains "
                     "at most 10000"):
    models.get_config("mlp", "tuned", num_seeds=2001,
                      sweep="learning_rate=1e-3,2e-3,3e-3,4e-3,5e-3")


def test_out_of_memory_advice_names_the_model_size_flags():
  assert resources.lower_advice(models.get_config("mlp", "seed")) == (
      "lower --batch_size, --eval_batch_size, --mlp_hidden")
  assert resources.size_flags(models.get_config("cnn", "seed")) == [
      "--cnn_features", "--cnn_kernel", "--cnn_dense"]
  assert resources.size_flags(models.get_config("lstm", "seed")) == [
      "--hidden", "--num_layers"]


def test_steps_past_int32_are_refused_before_training():
  config = models.get_config("mlp", "seed", epochs=config_lib.MAX_EPOCHS)
  resources.check_steps(config, 2000)
  with pytest.raises(UserError, match=r"--epochs=1000000 of 60000 steps each "
                     r"is 60000000000 steps.*pass at most --epochs=35791 "):
    resources.check_steps(config, 60000)


AGAIN = ", then run the same command again"


@pytest.mark.parametrize("exc, code, text", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/config.json"), 5,
     "no space left on the disk of /r/config.json; free some space there" +
     AGAIN),
    (OSError(errno.ENOSPC, "No space left on device"), 5,
     "no space left on the disk of /run; free some space there" + AGAIN),
    (OSError(errno.EFBIG, "File too large", "/r/m.jsonl"), 5,
     "/r/m.jsonl reached this process's file size limit (ulimit -f); free "
     "some space there" + AGAIN),
    (OSError(errno.EROFS, "Read-only file system", "/r/report.md"), 1,
     "cannot write /r/report.md (Read-only file system); make it writable" +
     AGAIN),
    (OSError(errno.EIO, "Input/output error", "/r/x"), 1,
     "reading or writing /r/x failed (Input/output error); check that disk" +
     AGAIN),
    # How tensorstore reports a full disk inside orbax's save.
    (ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/r/c/x\": "
                "No space left on device [os_error_code='28']"), 5,
     "no space left on the disk of /run; free some space there" + AGAIN),
    (ValueError("OUT_OF_RANGE: Failed to write 260161 bytes to file 16: File "
                "too large [os_error_code='27']"), 5,
     "/run reached this process's file size limit (ulimit -f); free some "
     "space there" + AGAIN),
    (MemoryError("Unable to allocate 3 TiB"), 5,
     "out of host memory (Unable to allocate 3 TiB); close what else uses "
     "that memory, or run it on a machine with more"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4 bytes."), 5,
     "out of memory on the CPU (Out of memory allocating 4 bytes.); close "
     "what else uses that memory, or run it on a machine with more"),
    # Where the allocation fails as a result is copied to the host (jax 0.12).
    (RuntimeError("INTERNAL: Error dispatching computation: Out of memory "
                  "allocating 8 bytes."), 5, "out of memory on the CPU "
     "(Error dispatching computation: Out of memory allocating 8 bytes.); "
     "close what else uses that memory, or run it on a machine with more"),
])
def test_failures_of_the_machine_are_one_line(exc, code, text):
  wrapped = RuntimeError("while saving")
  wrapped.__cause__ = exc  # Found down the chain, as a library raises it.
  for raised in (exc, wrapped):
    error = resources.machine_error(raised, "/run")
    assert str(error) == text and error.exit_code == code


def test_out_of_memory_in_training_says_what_to_lower():
  error = resources.machine_error(MemoryError("Unable to allocate 3 TiB"),
                                  "/run", models.get_config("mlp", "seed"))
  assert str(error) == (
      "out of host memory (Unable to allocate 3 TiB); lower --batch_size, "
      "--eval_batch_size, --mlp_hidden (a new run), or run it on a machine "
      "with more memory")


@pytest.mark.parametrize("text", [
    "UNKNOWN: Gloo AllGather failed: [gloo/transport/tcp/pair.cc:547] Read "
    "error [127.0.0.1]:4000: Connection reset by peer",
    "UNKNOWN: Gloo AllReduce failed: [gloo/transport/tcp/pair.cc:598] "
    "Connection refused",
    "UNAVAILABLE: Task 1 heartbeat timeout. This indicates that the remote "
    "task has failed"])
def test_a_lost_peer_is_named_only_in_a_job_of_processes(monkeypatch, text):
  """In one process the same text is a bug's, with its traceback."""
  assert resources.machine_error(RuntimeError(text), "/run") is None
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  error = resources.machine_error(RuntimeError(text), "/run")
  assert error.exit_code == 1 and str(error).startswith(
      "another process of this job stopped")
  assert str(error).endswith("; start every process again with its same "
                             "command (they resume)")


def test_a_bug_in_a_job_of_processes_exits_without_jax_shutdown():
  """Its traceback, then one line and exit 1 at once: jax's shutdown at exit
  would wait for a lost peer's heartbeat timeout, then abort in C++. What
  it printed before, still in a pipe's buffer, reaches the pipe."""
  code = ("import jax, launch; launch._parse(['launch.py']); "
          "jax.distributed.is_initialized = lambda: True\n"
          "def main(argv): print('epoch 1 of 2'); raise RuntimeError('a bug')\n"
          "launch.main = main; launch._run(['launch.py'])")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 1, proc.stderr
  assert proc.stdout == "epoch 1 of 2\n"
  assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: this process stopped on the error above; mend its cause, then "
      "run every process's command again (they resume)")


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyError("x"),
                                 FileNotFoundError(errno.ENOENT, "gone", "/x")])
def test_bugs_keep_their_traceback(exc):
  assert resources.machine_error(exc, "/run") is None


def test_atomic_write_failure_names_the_file_and_leaves_nothing(tmp_path,
                                                                 monkeypatch):
  target = tmp_path / "report.md"

  class Full:
    def __init__(self, path, *args, **kwargs):
      with open(path, "w"):  # The temporary file, left to remove.
        pass

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(files, "open", Full, raising=False)
  with pytest.raises(OSError) as caught:
    files.write_text(str(target), "x")
  assert caught.value.filename == str(target)
  assert os.listdir(tmp_path) == []
  assert str(resources.machine_error(caught.value, "/run")) == (
      f"no space left on the disk of {target}; free some space there" + AGAIN)


def _labels(counts):
  return np.repeat(np.arange(len(counts)), counts)


MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("accuracy, train_loss, cause", [
    (0.0974, 1e15, "loss"),  # Adam at --learning_rate=1e4, as the issue saw it.
    (0.9, 400.0, "loss"),
    (0.0974, 2.3, "chance"),
    (0.1135, 2.3, "chance"),  # Always answering "1".
    (0.1197, 2.3, "chance"),
    (0.1200, 2.3, None),
    (0.9265, 0.27, None),
    (0.99, None, None),  # No epoch run here (resumed at the end).
])
def test_learning_verdict_on_mnist_sized_test_sets(accuracy, train_loss, cause):
  final = {"test_accuracy": accuracy}
  row = None if train_loss is None else {"train_loss": train_loss}
  verdict = control.learning_verdict(final, row,
                                        _labels(MNIST_TEST_COUNTS))
  if cause is None:
    assert verdict == {}
  else:
    assert verdict[control.NOT_LEARNED]["cause"] == cause
    assert verdict[control.NOT_LEARNED]["message"].startswith(
        "the run did not learn: ")


def test_the_tiny_test_runs_are_judged_by_their_own_test_set_size():
  """200 balanced test images: two standard errors over 10% are 14.24%."""
  labels = _labels([20] * 10)
  assert control.learning_verdict({"test_accuracy": 0.14}, None, labels)
  assert not control.learning_verdict({"test_accuracy": 0.145}, None, labels)


def test_help_documents_the_new_exit_codes():
  text = launch.__doc__  # What --help prints first.
  assert "4 finished but did not learn" in text.replace("\n", " ")
  assert "5 out of memory or disk space" in text.replace("\n", " ")
  assert "141 the reader of its output stopped" in text.replace("\n", " ")
