"""Running launch.py in a child process, with a hook to stop it mid-epoch."""

import glob
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

import jax

from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The user's documents: README.md and docs/*.md, relative to ROOT.
DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, "docs", "*.md")))]

# launch.py printing a marker where a test may stop it: before a chunk of an
# epoch but its first (@chunk), before an epoch's checkpoint (@epoch_end), as
# orbax writes a save (@save step=S), after the final evaluation (@final_row),
# once the final row is logged (@final), as the report begins (@write), while
# a file's temporary is open (@file NAME). It sleeps PAUSE_S at the
# PAUSE_NTH-th marker PAUSE_AT alone (a signal's handler runs meanwhile).
_CHILD = r"""
import contextlib, os, runpy, sys, time
script = sys.argv[1]  # launch.py as the user typed it.
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
_at, _nth, _count = os.environ["PAUSE_AT"], int(os.environ["PAUSE_NTH"]), [0]
def mark(line):
  print(line, flush=True)
  if (line + " ").startswith(_at + " "):
    _count[0] += 1
    if _count[0] == _nth:
      time.sleep(float(os.environ["PAUSE_S"]))
from mnist_jax import files, modes
from mnist_jax.results import report
from mnist_jax.rundir import checkpoints, metrics_log
from mnist_jax.training import members
def marked(owner, name, marker, after=False):
  original = getattr(owner, name)
  def wrapper(*args, **kwargs):
    line = marker(*args, **kwargs)
    if line and not after:
      mark(line)
    result = original(*args, **kwargs)
    if line and after:
      mark(line)
    return result
  setattr(owner, name, wrapper)
marked(modes.RunFolder, "chunk", lambda self, state, epoch, done, sums: done
       and f"@chunk epoch={epoch} done={done}")
marked(modes.RunFolder, "epoch", lambda self, state, row, last: (
    f"@epoch_end epoch={row['epoch']}"))
marked(checkpoints, "save", lambda manager, step, *_: f"@save step={step}",
       after=True)
marked(members, "final_row", lambda *_, **__: "@final_row")
marked(metrics_log.MetricsLog, "write", lambda self, row: (
    "test_accuracy" in row and "@final"), after=True)
marked(report, "write", lambda *_, **__: "@write")
_atomic = files.atomic
@contextlib.contextmanager
def atomic(path, mode="w"):
  with _atomic(path, mode) as f:
    mark(f"@file {os.path.basename(path)}")
    yield f
files.atomic = atomic
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def launch_path(cwd):
  """launch.py as typed from `cwd`: relative in the repository, else absolute."""
  return "launch.py" if cwd == ROOT else os.path.join(ROOT, "launch.py")


def child_env(devices: int = 0, **extra):
  """A child's environment: the CPU, this checkout, the tests' XLA flags (and
  `devices` simulated CPU devices, if given)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **extra)
  if devices:
    env.pop("JAX_NUM_CPU_DEVICES", None)
  return {**env, "XLA_FLAGS": xla_flags(devices)}


def run(args, timeout=120, cwd=ROOT, **env):
  """Runs launch.py to the end: (exit status, stdout, stderr)."""
  return follow(shlex.join(["python", launch_path(cwd), *args]), cwd, timeout,
                **env)


def start(args, cwd=ROOT, pause_s=0.0, at="", nth=1):
  """launch.py in a child process printing _CHILD's markers, which pauses
  `pause_s` at the `nth` marker `at`."""
  return subprocess.Popen(
      [sys.executable, "-c", _CHILD, launch_path(cwd), *args], cwd=cwd,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=child_env(PAUSE_S=str(pause_s), PAUSE_AT=at, PAUSE_NTH=str(nth)))


def run_and_signal(args, signum, at, nth=1, pause_s=0.2, timeout=120,
                   cwd=ROOT, repeat=1, on_marker=None):
  """(exit status, stdout, stderr, marker line) of a run sent `signum`
  `repeat` times, 0.3 s apart, at its `nth` marker `at` (see _CHILD), where it
  pauses `pause_s`; on_marker() first."""
  p = start(args, cwd, pause_s, at, nth)
  deadline = time.monotonic() + timeout
  lines, marker, seen, out, err = [], None, 0, "", ""
  try:
    for line in p.stdout:
      lines.append(line)
      seen += (line.strip() + " ").startswith(at + " ")  # As the child.
      if seen == nth:
        marker = line.strip()
        if on_marker is not None:
          on_marker()
        for i in range(repeat):
          time.sleep(0.3 * bool(i))  # Pending signals of one kind merge.
          p.send_signal(signum)
        break
      if time.monotonic() > deadline:
        break
    out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  assert marker is not None, "".join(lines) + out + err
  return p.returncode, "".join(lines) + out, err, marker


def follow(command, cwd=ROOT, timeout=120, **env):
  """Runs a command a message printed, as a user would type it: `python` is
  this interpreter. Returns (exit status, stdout, stderr)."""
  argv = shlex.split(command)
  assert argv[0] == "python", command
  p = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, capture_output=True,
                     text=True, timeout=timeout, env=child_env(**env))
  return p.returncode, p.stdout, p.stderr


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def deterministic(rows):
  """Metrics rows without the wall-clock fields (and the mark of an epoch
  resumed mid-way, which an uninterrupted run lacks)."""
  timing = ("epoch_time_s", "examples_per_s", "elapsed_s", "compile_time_s",
            "data_ready_s", "wall_time_s", "time_to_target_s", "partial_steps")
  return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def restore_latest(workdir):
  """(state, meta) of a run folder's latest checkpoint, restored as report and
  predict restore it (its checkpointed parts host arrays)."""
  # pylint: disable=g-import-not-at-top
  from mnist_jax import models
  from mnist_jax.rundir import checkpoints
  from mnist_jax.rundir import record
  from mnist_jax.training import population
  # pylint: enable=g-import-not-at-top
  config = record.read_config(workdir)
  model, _ = models.build(config, say=lambda _: None)
  return checkpoints.restore(workdir, jax.eval_shape(
      lambda: population.initial_state(config, model, 1, (28, 28, 1))),
                             config.model)


def snapshot(*folders):
  """{path: (size, mtime_ns, bytes hash)} of every file under the folders
  ("dir" of a folder, its target of a link)."""
  state = {}
  for folder in folders:
    for dirpath, dirnames, filenames in os.walk(folder):
      for d in dirnames:
        state[os.path.join(dirpath, d)] = "dir"
      for name in filenames:
        path = os.path.join(dirpath, name)
        if os.path.islink(path):
          state[path] = os.readlink(path)
          continue
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
        st = os.stat(path)
        state[path] = (st.st_size, st.st_mtime_ns, digest)
  return state


def run_folder(path, config=None, started="2026-01-01T10:00:00+0000",
               rows=({"epoch": 1},), finished=None, **record):
  """`path` (returned as a str) as launch.py writes a run folder of `config`
  (a 4-epoch linear's) with `rows` logged and no checkpoint: by default, as a
  run killed in its second epoch leaves it. finished: None, if a final row;
  `record`: config.json's other keys (its environment, say)."""
  # pylint: disable=g-import-not-at-top
  from mnist_jax import files
  from mnist_jax.models import registry
  from mnist_jax.rundir import metrics_log
  # pylint: enable=g-import-not-at-top
  config = config or registry.get_config("linear", epochs=4)
  if finished is None:
    finished = any("test_accuracy" in r for r in rows)
  os.makedirs(path)
  files.write_json(os.path.join(path, "config.json"), {
      "config": config.to_dict(), "started": started, "finished": finished,
      **record})
  log = metrics_log.MetricsLog(str(path))
  for row in rows:
    log.write(row)
  return str(path)


# Runs launch.py's _parse and _run on each (id, argv) of the JSON list in
# argv[1], one after another; prints "@results " and {id: {code, out, err,
# crash}}. jax.distributed finds no cluster; the network is unreachable.
_IN_ONE = r"""
import contextlib, io, json, os, sys, traceback
sys.path.insert(0, os.getcwd())
import jax, launch
from mnist_jax.data import pipeline
def no_cluster(*args, **kwargs):
  raise ValueError("no cluster detected")
jax.distributed.initialize = no_cluster
pipeline._network_reachable = lambda *args, **kwargs: False
results = {}
for name, args in json.loads(sys.argv[1]):
  launch.FLAGS.unparse_flags()
  launch.COMMAND = launch.cli.Command()
  out, err, code, crash = io.StringIO(), io.StringIO(), 0, None
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      launch._run(launch._parse(["launch.py", *args]))
  except SystemExit as e:
    code = e.code
  except BaseException:
    crash = traceback.format_exc()
  results[name] = {"code": code, "out": out.getvalue(),
                   "err": err.getvalue(), "crash": crash}
print("@results " + json.dumps(results))
"""


def in_one_process(argvs, timeout=600):
  """{id: {code, out, err, crash}} of launch.py's command path on each argv
  of {id: argv}, in one child process (see _IN_ONE)."""
  p = subprocess.run([sys.executable, "-c", _IN_ONE, json.dumps(list(
      argvs.items()))], cwd=ROOT, capture_output=True, text=True,
                     timeout=timeout, env=child_env())
  assert p.returncode == 0, p.stderr[-3000:]
  line = next(l for l in p.stdout.splitlines() if l.startswith("@results "))
  return json.loads(line[len("@results "):])
