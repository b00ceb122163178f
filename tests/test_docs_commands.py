"""Every command of README.md's and docs/'s shell blocks, as written: training
with --dry_run (DIR: synthetic IDX files), --mode=report and predict on a
finished run (RUN), a script's --help naming each flag passed; SKIPPED says
why not (the Python blocks: test_api.py)."""

import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

import launch_helpers as lh

ROOT = lh.ROOT
# Commands whose first word is one of these are not ours to run here.
SKIPPED = {
    "pip": "installs packages (CI installs what the README says)",
    "tensorboard": "a server (test_tensorboard reads the same files)",
    "gcloud": "a TPU pod slice", "srun": "a SLURM cluster",
    "jupyter": "a notebook server (test_tour runs the notebook)",
}


def _commands():
  """(doc, command) for each command of each shell block (continuation lines
  joined, comments dropped, `&&` chains split); none found fails collection."""
  out = []
  for doc in lh.DOCS:
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
      blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", f.read(), re.S)
    for block in blocks:
      for line in block.replace("\\\n", " ").splitlines():
        if "$(" in line:  # A shell variable for the lines below: a revision.
          continue
        words = shlex.split(line.replace("$REV", "HEAD"), comments=True)
        words = words[1:] if words[:1] == ["time"] else words
        while words:
          cut = words.index("&&") if "&&" in words else len(words)
          if words[:cut] not in [w for _, w in out]:  # Once, where first.
            out.append((doc, words[:cut]))
          words = words[cut + 1:]
  assert any(w[:2] == ["python", "launch.py"] for _, w in out), "none found"
  return out


def _split_env(words):
  env = {}
  while words and re.match(r"^[A-Z_]+=", words[0]):
    name, value = words.pop(0).split("=", 1)
    env[name] = value
  return env, words


COMMANDS = _commands()


def _ours(words):
  return words[:1] == ["python"] and (
      words[1:2] == ["launch.py"] or words[1].startswith("experiments/"))


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("docs") / "run")
  shutil.copytree(tiny_run, workdir)
  return workdir


@functools.lru_cache(maxsize=None)
def _help(script):
  """(exit status, stdout and stderr) of `python SCRIPT --help`, once a script
  (the docs name some scripts many times)."""
  out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env=lh.child_env())
  return out.returncode, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("doc,words", COMMANDS,
                         ids=[f"{d}:{' '.join(w)[:60]}" for d, w in COMMANDS])
def test_each_command_runs_as_written(doc, words, prepared, finished_run,
                                      tmp_path):
  env, words = _split_env(list(words))
  if not _ours(words):
    assert words[0] in SKIPPED or words[:3] == ["python", "-m", "pytest"], (
        f"{doc}: a command no test runs: {' '.join(words)}")
    return
  mnist_dir, data_dir = prepared
  fill = {"DIR": mnist_dir, "RUN": finished_run, "RUN=": finished_run}
  args = [re.sub(r"\b(DIR|RUN)\b", lambda m: fill[m[1]], w) for w in words[2:]]
  env.pop("CUDA_VISIBLE_DEVICES", None)  # A CPU here: the flags still parse.
  if words[1] != "launch.py":  # An experiments script: its flags exist.
    rc, text = _help(words[1])
    assert rc == 0, text[-2000:]
    own = args[:args.index("--")] if "--" in args else args  # Then launch.py's.
    for flag in {a.split("=")[0] for a in own if a.startswith("--")}:
      assert flag.lstrip("-") in text, (doc, flag)
    return
  if any(a.startswith("--coordinator_address") for a in args):
    args = [a for a in args if not a.startswith(("--coordinator_address",
                                                 "--num_processes",
                                                 "--process_id"))]
  if not any(a.startswith("--mode=") for a in args):
    args += ["--dry_run", f"--data_dir={data_dir}",
             f"--workdir={tmp_path / 'run'}"]
  if "--mode=serve" in args:  # It serves until Ctrl-C: started, stopped.
    p = subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=lh.child_env(**env))
    line = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert "serving" in line and p.returncode == 130, f"{doc}: {line}{err}"
    return
  rc, out, err = lh.run(args, timeout=600, cwd=ROOT, **env)
  assert rc == 0, f"{doc}: {' '.join(words)}\n{err[-2000:]}"
  assert "Traceback" not in err
