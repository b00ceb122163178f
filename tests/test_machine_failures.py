"""The machine fails, launch.py says so in one line: a full disk, a file size
limit, a read-only folder, too little memory, a signal while starting, and a
run that finishes without learning.

A full and a read-only file system are real: a small tmpfs, mounted where
this user may mount (root), else those tests skip and say why. The file size
limit (RLIMIT_FSIZE: EFBIG) and the memory limit (RLIMIT_AS: allocations
fail) need no privilege. Every child gets its own compilation cache, or none
under a file size limit (a truncated cache entry would outlive the test).
"""

import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time

from PIL import Image
import pytest

import launch_helpers as lh

pytestmark = pytest.mark.slow

RUN = ("--noanalyses", "--model=mlp", "--mlp_hidden=64", "--epochs=3", "--batch_size=32",
       "--chunk_steps=50")


def _one_line(err, prefix="error: "):
  """The single line on stderr, which starts with `prefix`, besides the
  warning that TensorBoard's events stopped (a full disk: training goes on)."""
  assert "Traceback" not in err, err
  lines = [l for l in err.splitlines() if l.strip() and
           not l.startswith("warning: TensorBoard events in ")]
  assert len(lines) == 1 and lines[0].startswith(prefix), err
  return lines[0]


# Sets the limits given as argv[1] ("KIND=BYTES,..."), then becomes launch.py
# (argv[2:]); in a fresh interpreter, since a preexec_fn forks the
# multithreaded test process (JAX warns of a deadlock).
_LIMITED = ("import os, resource, sys\n"
            "for item in filter(None, sys.argv[1].split(',')):\n"
            "  kind, value = item.split('=')\n"
            "  resource.setrlimit(int(kind), (int(value), int(value)))\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def _launch(args, timeout=180, limits=(), **env):
  """Runs launch.py with resource limits [(RLIMIT_X, bytes)]: (rc, out, err)."""
  spec = ",".join(f"{kind}={value}" for kind, value in limits)
  p = subprocess.run([sys.executable, "-c", _LIMITED, spec,
                      os.path.join(lh.ROOT, "launch.py"), *args], cwd=lh.ROOT,
                     capture_output=True, text=True, timeout=timeout,
                     env=lh.child_env(**env))
  return p.returncode, p.stdout, p.stderr


def _mount(path, options):
  """Mounts a tmpfs at `path`, or skips the test saying why it cannot."""
  if shutil.which("mount") is None or os.geteuid() != 0:
    pytest.skip("a full or read-only file system is made with a tmpfs mount, "
                "which needs root; not available here")
  path.mkdir(exist_ok=True)
  p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                      str(path)], capture_output=True, text=True, check=False)
  if p.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")


@pytest.fixture
def tmpfs(tmp_path):
  mount = tmp_path / "fs"
  _mount(mount, "size=4m")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def _leave_free(mount, free_bytes):
  """Fills the file system at `mount` until `free_bytes` (or less) are free."""
  filler = mount / "filler"
  if filler.exists():
    filler.unlink()
  st = os.statvfs(mount)
  size = max(st.f_bavail * st.f_frsize - free_bytes, 0)
  with open(filler, "wb") as f:
    f.write(b"\0" * size)
  return filler


def _blocks(folder, block=4096):
  """Bytes the files under `folder` take on a file system of `block` pages."""
  return sum(-(-os.path.getsize(os.path.join(d, n)) // block) * block
             for d, _, names in os.walk(folder) for n in names)


def _has_checkpoint(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def test_full_disk_is_one_line_and_the_run_resumes_bit_identical(
    prepared, tmpfs, tmp_path):
  """Full at the first write, in a checkpoint save, in the report: one line,
  exit 5; after freeing space the printed command ends where an
  uninterrupted run ends, metric for metric."""
  mnist_dir, data_dir = prepared
  data = (f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          "--notensorboard")  # Its events stop with a warning of their own.
  reference = str(tmp_path / "reference")
  rc, _, err = _launch([*RUN, *data, f"--workdir={reference}"])
  assert rc == 0, err
  expected = lh.deterministic(lh.metrics(reference))
  need = _blocks(reference)
  where = set()
  # Measured: 0 fails the first write (config.json), 0.15 the first
  # checkpoint, 0.45 a later one (resumed from the one kept), 0.9 the report.
  for fraction in (0.0, 0.15, 0.45, 0.9):
    workdir = str(tmpfs / f"run{fraction}")
    filler = _leave_free(tmpfs, int(need * fraction))
    rc, _, err = _launch([*RUN, *data, f"--workdir={workdir}"])
    if rc == 0:  # It fit: without TensorBoard's last events, say.
      assert lh.deterministic(lh.metrics(workdir)) == expected, fraction
      shutil.rmtree(workdir)
      continue
    line = _one_line(err)
    assert rc == 5 and "no space left on the disk of " in line, (fraction, line)
    assert line.endswith("; free some space there, then run the same "
                         "command again"), line
    where.add(line.split(" of ", 1)[1].split(";")[0])
    if not _has_checkpoint(workdir):  # Failed before it: nothing left.
      assert not os.path.exists(workdir), os.listdir(workdir)
    filler.unlink()
    rc, out, err = lh.follow(shlex.join(["python", "launch.py", *RUN, *data,
                                         f"--workdir={workdir}"]))
    assert rc == 0, (fraction, out, err)
    assert lh.deterministic(lh.metrics(workdir)) == expected, fraction
    shutil.rmtree(workdir)
  # The first write, the report, and a checkpoint save (in orbax's threads,
  # whose text names no file: the run folder).
  for ending in ("config.json", ".png"):
    assert any(w.endswith(ending) for w in where), where
  assert any(os.path.basename(w).startswith("run") for w in where), where
  # --mode=report on a full disk: one line, no file half-written.
  workdir = str(tmpfs / "finished")
  shutil.copytree(reference, workdir)
  os.remove(os.path.join(workdir, "report.md"))
  _leave_free(tmpfs, 0)
  rc, _, err = _launch(["--mode=report", f"--workdir={workdir}",
                        f"--data_dir={data_dir}"])
  assert rc == 5 and "no space left on the disk of " in _one_line(err), err
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


def test_file_size_limit_is_one_line_and_leaves_no_folder(prepared, tmp_path):
  """RLIMIT_FSIZE makes the first checkpoint fail with EFBIG (inside orbax's
  threads); the run folder, without a checkpoint, is removed."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  args = [*RUN, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}"]
  rc, _, err = _launch(args, limits=[(resource.RLIMIT_FSIZE, 100_000)],
                       JAX_COMPILATION_CACHE_DIR="")
  line = _one_line(err)
  assert rc == 5, err
  assert line.startswith(f"error: {workdir} reached this "
                         "process's file size limit (ulimit -f)"), line
  assert not os.path.exists(workdir)
  rc, _, err = _launch(args)
  assert rc == 0, err


def test_read_only_run_folder_in_report_and_predict(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  mount = tmp_path / "ro"
  _mount(mount, "size=8m")
  try:
    workdir = str(mount / "run")
    rc, _, err = _launch([*RUN, "--epochs=1", f"--mnist_dir={mnist_dir}",
                          f"--data_dir={data_dir}", f"--workdir={workdir}"])
    assert rc == 0, err
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    before = lh.snapshot(workdir)
    rc, _, err = _launch(["--mode=report", f"--workdir={workdir}",
                          f"--data_dir={data_dir}"])
    line = _one_line(err)
    assert rc == 1 and line.startswith(f"error: cannot write {workdir}/"), line
    assert line.endswith("(Read-only file system); make it writable, then "
                         "run the same command again"), line
    stroke = Image.new("L", (28, 28), 0)
    stroke.paste(255, (12, 4, 16, 24))  # A "1".
    stroke.save(tmp_path / "stroke.png")
    rc, _, err = _launch(["--mode=predict", f"--workdir={workdir}",
                          f"--image={tmp_path / 'stroke.png'}", "--plot"])
    line = _one_line(err)
    assert rc == 1 and f"cannot write {workdir}/predict" in line, line
    rc, _, err = _launch([*RUN, "--epochs=2", f"--data_dir={data_dir}",
                          f"--workdir={workdir}"])
    assert rc == 1 and "is not writable" in _one_line(err)
    assert lh.snapshot(workdir) == before
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_out_of_memory_is_one_line_and_leaves_no_folder(prepared, tmp_path):
  """A 3 GB address space cannot hold a 784 x 1,000,000 kernel: XLA's
  RESOURCE_EXHAUSTED in one line, exit 5."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  rc, _, err = _launch(
      ["--model=mlp", "--mlp_hidden=1000000", "--epochs=1", "--batch_size=32",
       f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
       f"--workdir={workdir}"], limits=[(resource.RLIMIT_AS, 3 * 2**30)],
      JAX_COMPILATION_CACHE_DIR="")
  line = _one_line(err)
  assert rc == 5, err
  assert "out of memory on the CPU" in line, line
  assert "--mlp_hidden" in line and not os.path.exists(workdir)


def _loaded(pid, name):
  """Whether process `pid` has a file of `name` mapped (Linux /proc)."""
  with open(f"/proc/{pid}/maps") as f:
    return name in f.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                    reason="needs /proc to see when the imports are loading")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_starting_ends_quietly(signum, tmp_path):
  """Sent while Python imports JAX (numpy is loaded): the signal ends it
  (130 or 143 in a shell), or once launch.py handles it, one line; nothing
  is written."""
  workdir = tmp_path / "run"
  p = subprocess.Popen([sys.executable, os.path.join(lh.ROOT, "launch.py"),
                        "--model=mlp", f"--workdir={workdir}"], cwd=lh.ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=lh.child_env())
  deadline = time.monotonic() + 30
  while not _loaded(p.pid, "numpy"):
    assert p.poll() is None and time.monotonic() < deadline
    time.sleep(0.001)
  p.send_signal(signum)
  _, err = p.communicate(timeout=60)
  assert p.returncode in (-signum, 128 + signum), err
  assert err == "" or _one_line(err, "interrupted (")
  assert not workdir.exists()


def test_a_run_that_does_not_learn_warns_exits_4_and_says_so_in_its_report(
    prepared, tmp_path):
  """Adam at --learning_rate=1e4: a finite loss of 1e3 and more, chance
  accuracy. The run is complete; the exit status and report tell."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  args = ["--model=mlp", "--mlp_hidden=8", "--epochs=2", "--batch_size=32",
          "--learning_rate=1e4", f"--mnist_dir={mnist_dir}",
          f"--data_dir={data_dir}", f"--workdir={workdir}"]
  rc, out, err = _launch(args)
  line = _one_line(err, "warning: the run did not learn: its training loss "
                   "ended at ")
  assert rc == 4, (out, err)
  assert line.endswith("; lower --learning_rate or set --grad_clip"), line
  final = lh.metrics(workdir)[-1]
  assert final["did_not_learn"]["cause"] == "loss"
  report = open(os.path.join(workdir, "report.md")).read().splitlines()
  assert report[2].startswith("> **Warning:** The run did not learn: ")
  before = lh.snapshot(workdir)
  rc, out, err = _launch(args)  # Finished: says so again, trains nothing.
  assert rc == 4 and "already finished" in out
  _one_line(err, "warning: the run did not learn")
  assert lh.snapshot(workdir) == before


def test_huge_epochs_refused_before_anything_is_written(prepared, tmp_path):
  """The issue's --epochs=99999999999 and 1e30 created a run folder first."""
  mnist_dir, data_dir = prepared
  for value, status in (("99999999999", 2), ("1e30", 2)):
    workdir = tmp_path / f"run{value}"
    rc, _, err = _launch(["--model=mlp", f"--epochs={value}",
                          f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
                          f"--workdir={workdir}"])
    line = _one_line(err)
    assert rc == status and not workdir.exists(), line
    assert f"--epochs={value}" in line
