"""Every script in experiments/ answers --help and -h: usage, exit 0, no traceback.

One child process runs every script as `__main__` in turn (the imports they
share load once), so the check stays cheap as scripts are added.
"""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))

# Runs each (script, argv) as `python script argv...` would, in this process:
# prints one JSON line per run with its exit status, output and any traceback.
_DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
for script, args in json.loads(sys.argv[1]):
  out, err, status = io.StringIO(), io.StringIO(), 0
  sys.argv = [script, *args]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # pylint: disable=broad-except
      status, err = "traceback", io.StringIO(traceback.format_exc())
  print(json.dumps({"script": script, "args": args, "status": status,
                    "out": out.getvalue(), "err": err.getvalue()}))
"""


def _run(calls):
  result = subprocess.run(
      [sys.executable, "-c", _DRIVER, json.dumps(calls)], cwd=ROOT,
      capture_output=True, text=True, check=False, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_script_answers_help(tmp_path):
  assert len(SCRIPTS) >= 10
  calls = [[s, [flag]] for s in SCRIPTS for flag in ("--help", "-h")]
  # And a refused results.py run: one error line, exit 1.
  calls.append([os.path.join(ROOT, "experiments", "results.py"),
                [f"--runs={tmp_path}", f"--root={tmp_path}"]])
  runs = _run(calls)
  assert len(runs) == len(calls)
  for run in runs[:-1]:
    name = f"{os.path.basename(run['script'])} {run['args'][0]}"
    assert run["status"] == 0, (name, run["err"])
    assert run["out"].startswith("usage: "), name
    assert "Traceback" not in run["err"], name
  refused = runs[-1]
  assert refused["status"] == 1
  assert refused["err"].startswith("error: 15 of 15 commands have no finished")
  assert refused["err"].count("\n") == 1 and "Traceback" not in refused["err"]


def test_tensorboard_cost_replays_a_finished_run(tiny_run):
  """tensorboard_cost.py drives the run's own TensorBoard writer, so an
  interface change of the writer fails here rather than in a user's hands."""
  script = os.path.join(ROOT, "experiments", "tensorboard_cost.py")
  for members in ("1", "3"):
    [run] = _run([[script, [f"--run={tiny_run}", f"--members={members}",
                            "--repeats=3"]]])
    assert run["status"] == 0, run["err"]
    result = json.loads(run["out"])
    assert result["members"] == int(members) and result["event_bytes"] > 0


def test_pixel_rnn_times_a_step_with_and_without_remat():
  """pixel_rnn.py compiles the run's own train chunk on 784-step sequences."""
  script = os.path.join(ROOT, "experiments", "pixel_rnn.py")
  [run] = _run([[script, ["--model=gru", "--steps=1", "--repeats=1",
                          "--batch_size=4"]]])
  assert run["status"] == 0, run["err"]
  lines = run["out"].splitlines()
  assert len(lines) == 2 and "'remat': True" in lines[1], run["out"]
  assert all("ms/step" in line and "temp memory" in line for line in lines)
