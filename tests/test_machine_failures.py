"""The machine fails: one line and the README's exit status (5 disk, file
size or memory; 1 read-only or a bug in a job; 4 not learned; 130/143 a
signal while starting; 141 a closed pipe); a run with no checkpoint goes."""

import errno
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.models import registry
from mnist_jax.rundir import cli
from mnist_jax.rundir import control
from mnist_jax.rundir import resources

AGAIN = ", then run the same command again"
FREE = "; free some space there" + AGAIN
LIMIT = " reached this process's file size limit (ulimit -f)" + FREE
MORE = "; close what else uses that memory, or run it on a machine with more"


@pytest.mark.parametrize("exc, code, text", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/config.json"), 5,
     "no space left on the disk of /r/config.json" + FREE),
    (OSError(errno.EFBIG, "File too large", "/r/m.jsonl"), 5,
     "/r/m.jsonl" + LIMIT),
    (OSError(errno.EROFS, "Read-only file system", "/r/report.md"), 1,
     "cannot write /r/report.md (Read-only file system); make it writable" +
     AGAIN),
    (OSError(errno.EACCES, "Permission denied", "/r/x"), 1,
     "cannot read or write /r/x (Permission denied); give this user access to "
     "it" + AGAIN),
    (OSError(errno.EIO, "Input/output error", "/r/x"), 1,
     "reading or writing /r/x failed (Input/output error); check that disk" +
     AGAIN),
    # How tensorstore reports a full disk inside orbax's save.
    (ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/r/c/x\": "
                "No space left on device [os_error_code='28']"), 5,
     "no space left on the disk of /run" + FREE),
    (ValueError("OUT_OF_RANGE: Failed to write 260161 bytes to file 16: File "
                "too large [os_error_code='27']"), 5, "/run" + LIMIT),
    (MemoryError("Unable to allocate 3 TiB"), 5,
     "out of host memory (Unable to allocate 3 TiB)" + MORE),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4 bytes."), 5,
     "out of memory on the CPU (Out of memory allocating 4 bytes.)" + MORE),
    # Where the allocation fails as a result is copied to the host (jax 0.12).
    (RuntimeError("INTERNAL: Error dispatching computation: Out of memory "
                  "allocating 8 bytes."), 5, "out of memory on the CPU (Error "
     "dispatching computation: Out of memory allocating 8 bytes.)" + MORE),
    # Bugs keep their traceback.
    (ValueError("bad"), None, None), (KeyError("x"), None, None),
    (FileNotFoundError(errno.ENOENT, "gone", "/x"), None, None),
])
def test_failures_of_the_machine_are_one_line(exc, code, text):
  wrapped = RuntimeError("while saving")
  wrapped.__cause__ = exc  # Found down the chain, as a library raises it.
  for raised in (exc, wrapped):
    error = resources.machine_error(raised, "/run")
    assert (error and (str(error), error.exit_code)) == (
        text and (text, code))


def test_a_bug_in_a_job_of_processes_exits_without_jax_shutdown():
  """Its traceback, one line, exit 1 at once (jax's shutdown would wait for a
  lost peer), what it printed still piped."""
  code = ("import jax, launch; launch._parse(['launch.py']); "
          "jax.distributed.is_initialized = lambda: True\n"
          "def main(argv): print('epoch 1 of 2'); raise RuntimeError('a bug')\n"
          "launch.main = main; launch._run(['launch.py'])")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=lh.ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr
  assert proc.stdout == "epoch 1 of 2\n"
  assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: this process stopped on the error above; mend its cause, then "
      "run every process's command again (they resume)")


def test_steps_past_int32_are_refused_before_training():
  config = models.get_config("mlp", "seed", epochs=config_lib.MAX_EPOCHS)
  resources.check_steps(config, 2000)
  with pytest.raises(UserError, match=r"^--epochs=1000000 of 60000 steps each "
                     r"is 60000000000 steps, past the 2\*\*31 - 1 a run can "
                     r"count; pass at most --epochs=35791 "):
    resources.check_steps(config, 60000)


MNIST_TEST = np.repeat(np.arange(10), [980, 1135, 1032, 1010, 982, 892, 958,
                                       1028, 974, 1009])
BALANCED_200 = np.repeat(np.arange(10), 20)  # The tiny runs' test set.


@pytest.mark.parametrize("accuracy, train_loss, labels, cause", [
    (0.0974, 1e15, MNIST_TEST, "loss"),  # Adam at --learning_rate=1e4.
    (0.9, 400.0, MNIST_TEST, "loss"),
    # Within two standard errors of always answering "1" (11.35%).
    (0.1197, 2.3, MNIST_TEST, "chance"),
    (0.1200, 2.3, MNIST_TEST, None),
    (0.99, None, MNIST_TEST, None),  # No epoch run here (resumed at the end).
    # Two standard errors over 10% of 200 images are 14.24%.
    (0.14, None, BALANCED_200, "chance"), (0.145, None, BALANCED_200, None),
])
def test_learning_verdict_by_the_test_sets_size(accuracy, train_loss, labels,
                                                cause):
  row = None if train_loss is None else {"train_loss": train_loss}
  verdict = control.learning_verdict({"test_accuracy": accuracy}, row, labels)
  assert verdict.get(control.NOT_LEARNED, {}).get("cause") == cause
  if cause:
    assert verdict[control.NOT_LEARNED]["message"].startswith(
        "the run did not learn: ")


LINEAR = registry.get_config("linear", epochs=4)


def test_ctrl_c_outside_the_loop_says_to_run_the_same_command(tmp_path):
  again = "run the same command again"
  assert cli.Command().interrupted(again) == (
      "interrupted (Ctrl-C); run the same command again to start")
  work = str(tmp_path / "linear-a")
  command = cli.Command(LINEAR, work)
  assert command.interrupted(again).endswith(" to start")
  lh.run_folder(work)
  assert command.interrupted(again).endswith(" to resume")
  command.signum = signal.SIGTERM
  assert command.interrupted(again).startswith("interrupted (SIGTERM); ")


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_the_machine_stopped_before_its_first_checkpoint_is_removed(
    tmp_path, existed):
  """A folder that was there before stays (empty); a run this command did
  not begin is kept."""
  work = str(tmp_path / "run")
  lh.run_folder(work)
  cli.Command(LINEAR, work, fresh=False).discard_unstarted()
  assert os.listdir(work)
  cli.Command(LINEAR, work, fresh=True, existed=existed).discard_unstarted()
  assert (os.listdir(work) == [] if existed else not os.path.exists(work))


@pytest.mark.parametrize("asked", ["--dry_run", "--help"])
def test_output_into_a_closed_pipe_stops_without_a_traceback(tmp_path, asked):
  """`python launch.py ... | head -1`: exit 141, nothing on stderr."""
  read, write = os.pipe()
  os.close(read)  # As head, having read its line.
  proc = subprocess.run(
      [sys.executable, os.path.join(lh.ROOT, "launch.py"), asked,
       f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, stdout=write,
      stderr=subprocess.PIPE, text=True, timeout=300)
  os.close(write)
  assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
  assert proc.stderr == ""


def _one_line(err, prefix="error: "):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(prefix), err
  return lines[0]


# Sets the resource limit argv[1] to argv[2], then execs argv[3:] (a
# preexec_fn would fork the multithreaded test process).
_LIMITED = ("import os, resource, sys\n"
            "limit = int(sys.argv[2])\n"
            "resource.setrlimit(int(sys.argv[1]), (limit, limit))\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])")


@pytest.mark.slow
@pytest.mark.parametrize("limit, flags, said", [
    # A file over 100 kB (no compilation cache, which it would truncate).
    ((resource.RLIMIT_FSIZE, 100_000), (
        "--noanalyses", "--model=mlp", "--mlp_hidden=64", "--epochs=3",
        "--batch_size=32", "--chunk_steps=50"), "error: {workdir}"),
    # 3 GB of address space cannot hold a 784 x 1,000,000 kernel.
    ((resource.RLIMIT_AS, 3 * 2**30), ("--model=mlp", "--mlp_hidden=1000000",
                                       "--epochs=1"),
     "error: out of memory on the CPU ("),
])
def test_a_resource_limit_is_one_line_exit_5_and_leaves_no_folder(
    prepared, tmp_path, limit, flags, said):
  workdir = str(tmp_path / "run")
  args = [*flags, *prepared.flags, f"--workdir={workdir}"]
  p = subprocess.run([sys.executable, "-c", _LIMITED, *map(str, limit),
                      "launch.py", *args], cwd=lh.ROOT, capture_output=True,
                     text=True, timeout=180,
                     env=lh.child_env(JAX_COMPILATION_CACHE_DIR=""))
  line = _one_line(p.stderr)
  assert p.returncode == 5 and line.startswith(said.format(workdir=workdir))
  assert not os.path.exists(workdir)
  if limit[0] == resource.RLIMIT_AS:
    assert "--mlp_hidden (a new run)" in line
  else:  # It names that file; without the limit, the same command trains.
    assert " reached this process's file size limit (ulimit -f)" in line
    assert lh.run(args, timeout=180)[0] == 0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                    reason="needs /proc to see when the imports are loading")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_starting_ends_quietly(signum, tmp_path):
  """Sent while JAX imports: the signal ends it (130 or 143 in a shell), or
  once launch.py handles it, one line; nothing is written."""
  workdir = tmp_path / "run"
  p = subprocess.Popen([sys.executable, os.path.join(lh.ROOT, "launch.py"),
                        "--model=mlp", f"--workdir={workdir}"], cwd=lh.ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=lh.child_env())
  deadline = time.monotonic() + 30
  while "numpy" not in pathlib.Path(f"/proc/{p.pid}/maps").read_text():
    assert p.poll() is None and time.monotonic() < deadline
    time.sleep(0.001)
  p.send_signal(signum)
  _, err = p.communicate(timeout=60)
  assert p.returncode in (-signum, 128 + signum), err
  assert err == "" or _one_line(err, "interrupted (")
  assert not workdir.exists()


@pytest.mark.slow
def test_a_run_that_does_not_learn_warns_exits_4_and_says_so_in_its_report(
    prepared, tmp_path):
  """Adam at --learning_rate=1e4: the run completes, exit 4 (the report
  says so: test_report.py), and so does the same command again."""
  workdir = str(tmp_path / "run")
  args = ["--model=mlp", "--mlp_hidden=8", "--epochs=2", "--batch_size=32",
          "--learning_rate=1e4", *prepared.flags, f"--workdir={workdir}"]
  rc, out, err = lh.run(args, timeout=180)
  line = _one_line(err, "warning: the run did not learn: its training loss "
                   "ended at ")
  assert rc == 4 and line.endswith("; lower --learning_rate or set "
                                   "--grad_clip"), (out, err)
  assert lh.metrics(workdir)[-1]["did_not_learn"]["cause"] == "loss"
  before = lh.snapshot(workdir)
  rc, out, err = lh.run(args, timeout=180)
  assert rc == 4 and "already finished" in out
  _one_line(err, "warning: the run did not learn")
  assert lh.snapshot(workdir) == before
