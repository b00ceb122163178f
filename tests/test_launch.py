"""The command line: flags from the settings' declarations (--help, the table
in docs/flags.md; refusals: test_refusals.py), --dry_run, training end to
end, and every command of the docs' shell blocks (Python blocks: test_api)."""

import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

import launch
import launch_helpers as lh
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.models import registry
from mnist_jax.rundir import dry_run

FLAGS = launch.FLAGS
# A flag-table row: | `--name` | default | what it does |
ROW = re.compile(r"^\| `--(\w+)` \| (.*?) \| (.*) \|$")
GROUP_ROW = re.compile(r"^\| \*\*(.+)\*\* \| \| \|$")


@pytest.mark.parametrize("name", sorted(config_lib.SETTINGS))
def test_every_setting_is_a_flag_with_its_declared_help_and_default(name):
  """One line in a group; a model's own setting says which models have it
  and defaults to its module attribute's default (where they agree)."""
  declared = config_lib.SETTINGS[name]
  assert declared.help and "\n" not in declared.help and len(
      declared.help) < 160, name
  assert "`" not in declared.help and "|" not in declared.help, name
  assert FLAGS.find_module_defining_flag(name) == declared.group
  assert declared.group in config_lib.GROUPS
  assert "(default: " not in FLAGS[name].help
  if name in config_lib.FIELDS:
    assert FLAGS[name].help.startswith(declared.help)
    if name != "sweep":  # Repeated: a list, empty unless given.
      assert FLAGS[name].default == declared.default, name
    return
  owners = models.models_with(name)
  assert FLAGS[name].help == f"{declared.help}; {'/'.join(owners)} only"
  defaults = set()
  for model in owners:
    own = registry.get(model).settings[name]
    assert own.default == {f.name: f.default for f in dataclasses.fields(
        registry.get(model).module)}[own.attribute]
    defaults.add(repr(own.default))
  assert FLAGS[name].default == (declared.default if len(defaults) == 1
                                 else None)


def _printed_help(capsys, arg="--help"):
  with pytest.raises(SystemExit) as e:
    launch._parse(["launch.py", arg])  # pylint: disable=protected-access
  assert e.value.code == 0, arg
  return capsys.readouterr().out


@pytest.mark.parametrize("arg", ["--help", "-h", "-?", "--helpshort",
                                 "--helpfull", "--helpxml"])
def test_help_prints_every_flag_by_group_with_its_default_and_bounds(capsys,
                                                                     arg):
  """Every help flag exits 0. --help: the groups in config.GROUPS' order, each
  group's flags by name, with its help, absl's default and its bounds."""
  printed = _printed_help(capsys, arg)
  assert "--model" in printed
  if arg == "--helpfull":  # And the libraries' flags.
    assert "--verbosity" in printed and printed.startswith(
        _printed_help(capsys).rstrip())
  if arg != "--help":
    return
  headings = [line[:-1] for line in printed.splitlines()
              if line.endswith(":") and not line.startswith(" ")]
  assert headings == list(config_lib.GROUPS)
  flag_lines = [line.split(":")[0].strip() for line in printed.splitlines()
                if line.startswith("  --")]
  names = [f.name for group in config_lib.GROUPS for f in sorted(
      FLAGS.get_flags_for_module(group), key=lambda f: f.name)]
  assert [f.replace("[no]", "")[2:] for f in flag_lines] == names
  printed = " ".join(printed.split())
  for name in names:
    spelled = f"--[no]{name}:" if FLAGS[name].boolean else f"--{name}:"
    line = f" {spelled} {' '.join(FLAGS[name].help.split())}"
    if FLAGS[name].default_as_str:  # absl's default.
      line += f" (default: {FLAGS[name].default_as_str})"
    if FLAGS[name].parser.syntactic_help:
      line += f" ({FLAGS[name].parser.syntactic_help})"
    assert line in printed, name


def test_docs_flag_table_is_the_help():
  """docs/flags.md's table: the flags, groups, order and help, and as default
  the flag's ("the preset's, else X"; "the model's" where models differ)."""
  with open(os.path.join(lh.ROOT, "docs", "flags.md"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  rows, group = [], None
  for line in lines:
    group = (GROUP_ROW.match(line) or [None, group])[1]
    if ROW.match(line):
      name, default, text = ROW.match(line).groups()
      rows.append((name, group, *(c.replace("`", "").replace("\\|", "|")
                                  .strip() for c in (default, text))))
  preset_set = {name for model, spec in registry.MODELS.items()
                for preset in spec.presets
                for name in registry.preset_overrides(model, preset)}
  expected = []
  for group in config_lib.GROUPS:
    for flag in FLAGS.get_flags_for_module(group):
      default = ("the model's" if flag.default is None and
                 models.models_with(flag.name) else
                 config_lib.value_text(flag.default))
      if flag.name in preset_set:
        default = f"the preset's, else {default}"
      expected.append((flag.name, group, default, flag.help))
  assert rows == expected


def test_dry_run_marks_where_each_setting_comes_from_and_the_split():
  config = registry.get_config("cnn", "best", epochs=3, learning_rate=3e-3)
  given = {"model", "preset", "epochs", "learning_rate"}

  def origin(name, config=config, given=given):
    lines = "\n".join(dry_run.settings_lines(config, given))
    return re.search(rf"^    --{name}=\S* +(.*)$", lines, re.M)[1]

  preset = registry.get_config("cnn", "best").epochs
  assert origin("epochs") == f"flag; preset: {preset}"
  assert origin("model") == origin("preset") == "flag"
  assert origin("learning_rate") == "flag"  # The preset's value, given again.
  assert origin("cnn_dense") == "preset"
  assert origin("momentum") == "default"
  assert origin("workdir") == "chosen (see run folder)"
  assert origin("momentum", config.replace(momentum=0.5),
                {"momentum"}) == "flag; default: 0.9"
  text = dry_run.text(config.replace(workdir="W"), {*given, "workdir"},
                      "W, a new run folder", (None,))
  assert "validation: none: it trains on all 60,000 training images" in text
  assert "--sweep is refused" in text
  assert ("model:      cnn (best preset): Conv32 3x3 SAME, max-pool, Conv64 "
          "3x3 SAME, max-pool, Conv128 3x3 SAME, max-pool, Dense256, Dense10, "
          "dropout 0.25; 390,410 parameters") in text
  assert re.search(rf"    --epochs=3 +flag; preset: {preset}\n", text)
  config = registry.get_config("mlp")  # The last 10% held out.
  assert dry_run.validation_line(config, 2) == (
      "the last 10% of the training split (6,000 of its 60,000 images; it "
      "trains on the other 54,000), for the validation curve and the member "
      "choice")


def test_dry_run_writes_nothing_and_names_the_run_it_would_resume(tmp_path):
  """And a `~` a shell leaves alone after `--data_dir=` (or --workdir,
  --mnist_dir) is the home folder, not a folder `~`."""
  work, home = tmp_path / "runs" / "mlp-a", tmp_path / "home"
  lh.run_folder(work, registry.get_config("mlp", epochs=3))
  before = lh.snapshot(tmp_path)
  rc, out, err = lh.run(["--epochs=3", "--dry_run", "--data_dir=~/tfds"],
                        timeout=300, cwd=str(tmp_path), HOME=str(home))
  assert rc == 0 and out.startswith("dry run: nothing is trained"), err
  assert (f"run folder: resuming {os.path.join('runs', 'mlp-a')}, the newest "
          "unfinished run of these settings under runs/ (1 of 3 epochs "
          "logged)") in out
  assert f"--data_dir={home / 'tfds'}" in out
  assert lh.snapshot(tmp_path) == before


@pytest.mark.slow
def test_launch_trains_and_writes_the_run_folder(prepared, tmp_path):
  work = tmp_path / "run"
  # At the tuned 2e-3 so small a GRU learns next to nothing in two epochs.
  rc, out, err = lh.run([
      "--noanalyses", "--model=gru", "--hidden=16", "--epochs=2",
      "--batch_size=32", "--learning_rate=1e-2", *prepared.flags,
      f"--workdir={work}"], timeout=300)
  assert rc == 0 and "test accuracy" in out, err  # Its files: test_report.py.
  record = json.loads((work / "config.json").read_text())
  assert record["config"]["model"] == "gru" and record["config"]["hidden"] == 16
  environment = record["environment"]
  assert environment["packages"]["jax"] and environment["devices"]
  # The results table names the cores.
  assert environment["cpu"].endswith(f", {len(os.sched_getaffinity(0))} cores")
  # Asked of XLA for GPUs (a CPU ignores it), and recorded.
  assert "--xla_gpu_deterministic_ops=true" in environment["env"][
      "XLA_FLAGS"].split()
  # --impl=auto on a CPU: the GRU's nn.RNN by the fused recurrence, checked.
  implementation = environment["implementation"]
  assert implementation["impl"] == "auto"
  assert implementation["module"] == "mnist_jax/models/recurrent.py's Recurrent"
  assert implementation["layers"]["passed"]
  assert implementation["layers"]["lowered"] == {
      "gru_0": "mnist_jax/models/kernels/fused_rnn.py"}
  # A row's keys: test_metrics.py (the metrics), test_experiments.py (times).
  *epochs, final = lh.metrics(work)
  assert [r["epoch"] for r in epochs] == [1, 2]
  assert 0.0 <= final["test_accuracy"] <= 1.0


# Every command of the docs' shell blocks, as written: training with --dry_run
# (DIR: synthetic IDX files), other modes on a finished run (RUN), a script's
# --help naming each flag passed; not those SKIPPED names.
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
    with open(os.path.join(lh.ROOT, doc), encoding="utf-8") as f:
      blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", f.read(), re.S)
    for block in blocks:
      for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        words = words[1:] if words[:1] == ["time"] else words
        while words:
          cut = words.index("&&") if "&&" in words else len(words)
          if words[:cut] not in [w for _, w in out]:  # Once, where first.
            out.append((doc, words[:cut]))
          words = words[cut + 1:]
  assert any(w[:2] == ["python", "launch.py"] for _, w in out), "none found"
  return out


COMMANDS = _commands()


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
  return shutil.copytree(tiny_run, str(tmp_path_factory.mktemp("docs") / "run"))


# (exit status, stdout, stderr) of `python SCRIPT --help`, once a script.
_help = functools.lru_cache(maxsize=None)(
    lambda script: lh.follow(f"python {script} --help"))


@pytest.mark.slow
@pytest.mark.parametrize("doc,words", COMMANDS,
                         ids=[f"{d}:{' '.join(w)[:60]}" for d, w in COMMANDS])
def test_each_command_runs_as_written(doc, words, prepared, finished_run,
                                      tmp_path):
  env, words = {}, list(words)
  while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value python ...
    name, value = words.pop(0).split("=", 1)
    env[name] = value
  if not (words[:1] == ["python"] and (words[1:2] == ["launch.py"] or
                                       words[1].startswith("experiments/"))):
    assert words[0] in SKIPPED or words[:3] == ["python", "-m", "pytest"], (
        f"{doc}: a command no test runs: {' '.join(words)}")
    return
  mnist_dir, data_dir = prepared
  fill = {"DIR": mnist_dir, "RUN": finished_run}
  args = [re.sub(r"\b(DIR|RUN)\b", lambda m: fill[m[1]], w) for w in words[2:]]
  if words[1] != "launch.py":  # An experiments script: its flags exist.
    rc, out, err = _help(words[1])
    text = out + err
    assert rc == 0, text[-2000:]
    own = args[:args.index("--")] if "--" in args else args  # Then launch.py's.
    for flag in {a.split("=")[0] for a in own if a.startswith("--")}:
      assert flag.lstrip("-") in text, (doc, flag)
    return
  args = [a for a in args if not a.startswith((  # One process here.
      "--coordinator_address", "--num_processes", "--process_id"))]
  if not any(a.startswith("--mode=") for a in args):
    args += ["--dry_run", f"--data_dir={data_dir}",
             f"--workdir={tmp_path / 'run'}"]
  if "--mode=serve" in args:  # It serves until Ctrl-C: started, stopped.
    p = subprocess.Popen([sys.executable, "launch.py", *args], cwd=lh.ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=lh.child_env(**env))
    line = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert "serving" in line and p.returncode == 130, f"{doc}: {line}{err}"
    return
  rc, out, err = lh.run(args, timeout=600, **env)
  assert rc == 0, f"{doc}: {' '.join(words)}\n{err[-2000:]}"
  assert "Traceback" not in err
