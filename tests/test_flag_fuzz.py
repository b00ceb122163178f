"""Every numeric flag of launch.py, fuzzed: nan, inf, -inf, negative, zero and
huge values each give exactly one `error:` line with exit status 2 (absl's
parser, with the bounds declared with the setting, refuses it), no traceback
and no run folder, or, inside the bounds, a clean run. The flags are Config's
numeric fields and the models' own numeric settings, so a new one is fuzzed
too.

One child process imports launch.py and runs its command path with --dry_run
(every check a run makes before writing, nothing written) for every value; a
handful of real launch.py processes, the issue's cases among them, prove the
same of the training path.
"""

import json
import os
import subprocess
import sys

import pytest

import launch_helpers as lh
from mnist_jax import config as config_lib
from mnist_jax import models

pytestmark = pytest.mark.slow

VALUES = ("nan", "inf", "-inf", "-1", "0", "1e30", str(2**63))
# Every numeric setting: Config's fields and the models' own (given with
# --model of the first model that declares it).
NUMERIC = [n for n, declared in config_lib.SETTINGS.items()
           if type(declared.default) in (int, float, tuple)]


def _model_flag(name):
  """[] for a Config field; ["--model=M"] for model M's own setting."""
  return ([] if name in config_lib.FIELDS
          else [f"--model={models.models_with(name)[0]}"])

# Runs launch.py's parse and _run on each argv of argv[1] (a JSON list), with
# --dry_run and a --workdir of its own under argv[2]; prints one JSON line of
# {"code", "err", "crash"} per case after the marker.
_CHILD = r"""
import contextlib, io, json, os, sys, traceback
sys.path.insert(0, os.getcwd())
import launch
cases, folder = json.loads(sys.argv[1]), sys.argv[2]
results = []
for i, args in enumerate(cases):
  launch.FLAGS.unparse_flags()
  argv = ["launch.py", *args, "--dry_run", f"--workdir={folder}/{i}"]
  launch.COMMAND = launch.cli.Command()
  err, code, crash = io.StringIO(), 0, None
  try:
    with contextlib.redirect_stdout(io.StringIO()), \
         contextlib.redirect_stderr(err):
      launch._run(launch._parse(argv))
  except SystemExit as e:
    code = e.code
  except BaseException:
    crash = traceback.format_exc()
  results.append({"code": code, "err": err.getvalue(), "crash": crash})
print("@results " + json.dumps(results))
"""


def _expected_status(name, text):
  """0 where the setting's declared parser takes the text, else 2."""
  try:
    config_lib.SETTINGS[name].reader().parse(text)
  except ValueError:
    return 2
  return 0


def test_every_numeric_flag_fuzzed_in_one_child(tmp_path):
  cases = [(name, value) for name in NUMERIC for value in VALUES]
  folder = tmp_path / "runs"
  folder.mkdir()
  p = subprocess.run(
      [sys.executable, "-c", _CHILD,
       json.dumps([[*_model_flag(n), f"--{n}={v}"] for n, v in cases]),
       str(folder)],
      cwd=lh.ROOT, capture_output=True, text=True, timeout=300,
      env=lh.child_env())
  assert p.returncode == 0, p.stderr[-3000:]
  line = next(l for l in p.stdout.splitlines() if l.startswith("@results "))
  results = json.loads(line[len("@results "):])
  one_line = tracebacks = 0
  for (name, value), result in zip(cases, results):
    err, case = result["err"], f"--{name}={value}"
    tracebacks += bool(result["crash"]) or "Traceback" in err
    assert not result["crash"] and "Traceback" not in err, (case, result)
    status = _expected_status(name, value)
    lines = [l for l in err.splitlines() if l.strip()]
    if status == 0:
      assert result["code"] == 0 and not lines, (case, result)
      continue
    assert result["code"] == status, (case, result)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert f"--{name}" in lines[0], (case, lines[0])
    one_line += 1
  assert os.listdir(folder) == []  # Not one run folder, not one file.
  accepted = len(cases) - one_line
  print(f"flag fuzz: {len(cases)} tried ({len(NUMERIC)} flags x "
        f"{len(VALUES)} values), {one_line} one-line errors, {accepted} "
        f"accepted as valid, {tracebacks} tracebacks")
  assert tracebacks == 0 and one_line > accepted


# The issue's cases, through launch.py's training path: (flags, status).
END_TO_END = [
    (["--epochs=1e30"], 2),
    (["--epochs=99999999999"], 2),
    (["--warmup_epochs=inf", "--schedule=warmup_cosine"], 2),
    (["--num_seeds=1000000000"], 2),
    (["--augment", "--augment_rotate=inf"], 2),
    (["--augment", "--augment_elastic=nan"], 2),
    (["--weight_decay=inf"], 2),
    (["--mlp_hidden=99999999999"], 2),
    (["--sweep=learning_rate=1e-3,nan"], 2),
    (["--target_accuracy=0.9", "--val_fraction=0"], 1),
]


def test_the_issue_values_through_launch(prepared, tmp_path):
  """Real processes, started together; a valid edge value trains cleanly."""
  mnist_dir, data_dir = prepared
  base = ["--model=mlp", "--mlp_hidden=8", "--epochs=1", "--batch_size=32",
          f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}"]
  runs = []
  for i, (flags, status) in enumerate(END_TO_END):
    workdir = tmp_path / f"run{i}"
    runs.append((flags, status, workdir, subprocess.Popen(
        [sys.executable, os.path.join(lh.ROOT, "launch.py"), *base, *flags,
         f"--workdir={workdir}"], cwd=lh.ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=lh.child_env())))
  for flags, status, workdir, p in runs:
    _, err = p.communicate(timeout=120)
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == status, (flags, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (flags, err)
    assert not workdir.exists(), flags
  workdir = tmp_path / "valid"
  rc, _, err = lh.run([*base, "--weight_decay=0", "--grad_clip=1e30",
                       f"--workdir={workdir}"])
  assert rc == 0 and not err.strip(), err
  assert "did_not_learn" not in lh.metrics(str(workdir))[-1]
