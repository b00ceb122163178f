"""Train, evaluate, report on or predict with an MNIST model: the one entry point.

  python launch.py --model=gru                    # train with the tuned preset
  python launch.py --model=cnn --preset=seed      # the seed notebook's setup
  python launch.py --model=mlp --mnist_dir=DIR    # offline: the four IDX files
  python launch.py --mode=report --workdir=RUN    # rewrite RUN's report.md + plots
  python launch.py --mode=predict --workdir=RUN --image=seven.png[,...] [--json]

Every Config field (mnist_jax/config.py) is a flag; unset flags take the preset.
"""

import logging
import os
import shlex
import sys

from absl import app
from absl import flags

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import predict
from mnist_jax import preemption
from mnist_jax import runtime
from mnist_jax import train
from mnist_jax import trained
from mnist_jax import workdir
from mnist_jax.errors import UserError

for _name, _field in config_lib.FIELDS.items():
  _kind = config_lib.field_type(_name)
  _help = f"Config.{_name} (default: from the preset, else {_field.default!r})"
  if _kind is bool:
    flags.DEFINE_bool(_name, None, _help)
  elif _kind is int:
    flags.DEFINE_integer(_name, None, _help)
  elif _kind is float:
    flags.DEFINE_float(_name, None, _help)
  elif _kind is tuple:
    flags.DEFINE_list(_name, None, _help + "; comma-separated integers")
  else:
    flags.DEFINE_string(_name, None, _help)
flags.DEFINE_enum("mode", "train", ["train", "report", "predict"],
                  "train; report (rewrite a run folder's evaluation files); "
                  "predict (the digit in --image files, with --workdir's model).")
flags.DEFINE_list("image", [], "--mode=predict: image files (PNG, JPEG, ...).")
flags.DEFINE_bool("json", False, "--mode=predict: one JSON object per line.")
flags.DEFINE_bool("plot", False, "--mode=predict: save WORKDIR/predict/<name>.png.")
flags.DEFINE_bool("overwrite", False, "Start over in an existing --workdir.")
flags.DEFINE_bool("debug", False, "Show Python tracebacks instead of one line.")
FLAGS = flags.FLAGS


def _overrides() -> dict:
  values = {}
  for name in config_lib.FIELDS:
    value = FLAGS[name].value
    if value is None or name in ("model", "preset"):
      continue
    if config_lib.field_type(name) is tuple:
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise UserError(f"--{name} takes comma-separated integers, got "
                        f"{','.join(value)}") from None
    values[name] = value
  return values


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags take the form "
                    "--name=value (see --help)")
  if FLAGS.mode != "train":
    return _use_run()
  model = FLAGS.model or config_lib.Config.model
  config = models.get_config(model, FLAGS.preset or "tuned", **_overrides())
  work = config.workdir or workdir.default_workdir(model)
  config = config.replace(workdir=work)
  runtime.split_host(config.parallel, multi_process=bool(
      config.coordinator_address or config.num_processes > 1))
  runtime.setup()
  train.train_and_evaluate(config, work, overwrite=FLAGS.overwrite)


def _resume_command(work: str) -> str:
  """This command line without --overwrite and with the --workdir it used."""
  args = [a for a in sys.argv[1:]
          if a.split("=")[0] not in ("--overwrite", "-overwrite")]
  if not any(a.split("=")[0] in ("--workdir", "-workdir") for a in args):
    args.append(f"--workdir={work}")
  return shlex.join(["python", os.path.basename(sys.argv[0]), *args])


def _use_run():
  """--mode=report or predict: works on the finished run in --workdir."""
  if not FLAGS.workdir:
    raise UserError(f"--mode={FLAGS.mode} needs --workdir=DIR, a run folder")
  runtime.setup()
  if FLAGS.mode == "predict":
    if predict.main(FLAGS.workdir, FLAGS.image, FLAGS.json, FLAGS.plot):
      sys.exit(1)
    return
  moved = {k: FLAGS[k].value for k in ("data_dir", "mnist_dir") if FLAGS[k].value}
  trained.rewrite_report(FLAGS.workdir, **moved)


def _parse(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}; see python launch.py --help", file=sys.stderr)
    sys.exit(2)


def _quiet_teardown():
  """After the one-line error, nothing else reaches the terminal.

  Library threads still winding down (orbax's reads of a damaged checkpoint)
  can print tracebacks while the interpreter exits; they would bury the line.
  """
  sys.stderr.flush()
  logging.disable(logging.CRITICAL)
  sys.stderr = open(os.devnull, "w")  # pylint: disable=consider-using-with
  sys.unraisablehook = lambda unraisable: None


def _run(argv):
  """Runs main; exit status 1 bad input, 2 bad flag, 3 diverged, 128+N signal N."""
  try:
    main(argv)
  except UserError as e:
    if FLAGS.debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    _quiet_teardown()
    sys.exit(e.exit_code)
  except preemption.Preempted as e:
    print(f"{e}. To resume, run: {_resume_command(e.workdir)}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    if FLAGS.debug:
      raise
    print("interrupted (Ctrl-C); running the same command again resumes from "
          "the last complete checkpoint, if any", file=sys.stderr)
    sys.exit(preemption.FORCED_EXIT_CODE)


if __name__ == "__main__":
  app.run(_run, flags_parser=_parse)
