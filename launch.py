"""Train, evaluate, report on or predict with an MNIST model: the one entry point.

  python launch.py --model=gru                    # train with the tuned preset
  python launch.py --model=cnn --preset=seed      # the seed notebook's setup
  python launch.py --model=cnn --preset=best --dry_run   # see what it would run
  python launch.py --model=mlp --mnist_dir=DIR    # offline: the four IDX files
  python launch.py --mode=report --workdir=RUN    # rewrite RUN's report.md + plots
  python launch.py --mode=predict --workdir=RUN --image=seven.png[,...] [--json]
  python launch.py --mode=serve --workdir=RUN[,RUN...]   # draw digits for runs
  python launch.py --model=mlp --sweep=learning_rate=3e-4,1e-3,3e-3 --num_seeds=2

Every Config field (mnist_jax/config.py) and every model's own setting
(mnist_jax/models/registry.py) is a flag; unset flags take the preset. The
same command again resumes its run (without --workdir, the newest of its kind).

Exit status: 0 done (or already finished), 1 bad input, 2 a flag that does not
parse, 3 diverged, 4 finished but did not learn, 5 out of memory or disk space,
130 or 143 stopped by Ctrl-C or SIGTERM, 141 the reader of its output stopped
(| head). --helpfull also lists the libraries' flags.
"""

import os
import signal

if __name__ == "__main__":  # Ctrl-C while the imports load: a quiet end.
  signal.signal(signal.SIGINT, signal.SIG_DFL)

# pylint: disable=g-import-not-at-top,wrong-import-position
import gc
import sys
import threading
import traceback

from absl import app
from absl import flags
import jax

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.results import run as results
from mnist_jax.rundir import cli
from mnist_jax.rundir import control
from mnist_jax.rundir import dry_run
from mnist_jax.rundir import lock
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resources
from mnist_jax import modes
from mnist_jax.training import members as members_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_RUN, _MODES = config_lib.RUN_FOLDER, config_lib.MODES
# Every Config field and model's setting is a flag: main() takes those given
# over the preset's values. Then launch.py's own.
cli.define_settings()
flags.DEFINE_bool(
    "overwrite", False, "Start --workdir over (deleting it) instead of "
    "resuming it; without --workdir, start a new run folder instead of "
    "resuming one", module_name=_RUN)
flags.DEFINE_enum(
    "mode", "train", ["train", "report", "predict", "serve"], "What to do: "
    "train, report (rewrite a run's report and plots), predict (the digits in "
    "--image files) or serve (a drawing page)", module_name=_MODES)
flags.DEFINE_bool(
    "dry_run", False, "Print the settings, validation split, model, devices "
    "and run folder this command would train with; train and write nothing",
    module_name=_MODES)
# Split by images.expand, not absl's list parser (which strips spaces).
flags.DEFINE_string(
    "image", None, "With --mode=predict: image files, folders of them or "
    "patterns (photos/*.jpg), comma-separated (PNG, JPEG, anything Pillow "
    "reads)", module_name=_MODES)
flags.DEFINE_bool("json", False, "With --mode=predict: print one JSON object "
                  "per image", module_name=_MODES)
flags.DEFINE_bool("plot", False, "With --mode=predict: also save "
                  "WORKDIR/predict/<name>.png", module_name=_MODES)
flags.DEFINE_bool(
    "ensemble", False, "With --mode=predict: average the probabilities of the "
    "seeds of the run's chosen grid point instead of its chosen member",
    module_name=_MODES)
flags.DEFINE_string("host", "127.0.0.1", "With --mode=serve: the address to "
                    "listen on", module_name=_MODES)
flags.DEFINE_integer("port", 0, "With --mode=serve: the port (0: a free one)",
                     lower_bound=0, upper_bound=65535, module_name=_MODES)
flags.DEFINE_bool("debug", False, "Show Python tracebacks instead of one-line "
                  "errors", module_name=_MODES)
FLAGS = flags.FLAGS
COMMAND = cli.Command()


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags take the form "
                    "--name=value (see --help)")
  if FLAGS.mode != "train":
    if FLAGS.dry_run:
      raise UserError(f"--dry_run shows what training would do; leave it out "
                      f"with --mode={FLAGS.mode}")
    return _use_run()
  given = cli.overrides(FLAGS)
  config = models.get_config(FLAGS.model, FLAGS.preset, **given)
  COMMAND.config = config
  process.split_host(config.parallel, multi_process=bool(
      config.coordinator_address or config.num_processes > 1))
  process.setup_process()
  members = members_lib.from_config(config)
  if FLAGS.dry_run:
    return dry_run.show(config, [n for n in config_lib.SETTINGS
                                 if FLAGS[n].present], FLAGS.overwrite, members)
  COMMAND.existed = bool(config.workdir) and os.path.exists(config.workdir)
  with lock.locking() as held:
    work, note = cli.run_folder(config, FLAGS.overwrite)
    COMMAND.work, COMMAND.fresh = work, os.path.realpath(work) in held and (
        FLAGS.overwrite or not os.path.exists(
            os.path.join(work, record.CONFIG_FILE)))
    if note:
      print(note, flush=True)
    final = modes.train_and_evaluate(
        config.replace(workdir=work), work,
        overwrite=FLAGS.overwrite and bool(config.workdir))
  verdict = (final or {}).get(control.NOT_LEARNED)
  if verdict:  # The run finished, but did not learn.
    print(f"warning: {verdict['message']}", file=sys.stderr)
    sys.exit(control.NOT_LEARNED_EXIT_CODE)


def _use_run():
  """--mode=report, predict or serve, on the run(s) in --workdir."""
  if not FLAGS.workdir:
    raise UserError(f"--mode={FLAGS.mode} needs --workdir=DIR, a run folder")
  process.setup_process()
  # The data may have moved; other layers; --mode=report --noanalyses.
  overrides = {k: FLAGS[k].value for k in ("data_dir", "mnist_dir", "impl",
                                           "analyses") if FLAGS[k].present}
  if FLAGS.mode == "serve":  # Reads only, as predict.
    from mnist_jax.results import serve  # pylint: disable=g-import-not-at-top
    serve.main(FLAGS.workdir.split(","), FLAGS.host, FLAGS.port, **overrides)
    # Stopped by Ctrl-C or SIGTERM (130, 143); read-only, so it ends at once:
    sys.stdout.flush()  # teardown beside the libraries' C++ threads once
    os._exit(128 + COMMAND.signum)  # aborted.
  if FLAGS.mode == "predict":  # Reads only: also a run being trained.
    images = FLAGS.image.split(",") if FLAGS.image else []
    if results.print_predictions(FLAGS.workdir, images, FLAGS.json,
                                 FLAGS.plot, ensemble=FLAGS.ensemble,
                                 **overrides):
      sys.exit(1)
    return
  with lock.locking():  # One process at a time writes the report.
    lock.claim(FLAGS.workdir, mode="report", create=False)
    modes.rewrite_report(FLAGS.workdir, **overrides)


def _parse(argv):
  """Parses the flags. Asked for help, prints this module's doc, then each
  --help group's flags as absl renders them (--helpfull: and the libraries';
  --helpxml: absl's XML), and exits 0."""
  for arg in argv[1:argv.index("--") if "--" in argv else None]:
    asked = arg.lstrip("-") if arg.startswith("-") else None
    if asked in ("h", "?", "help", "helpshort", "helpfull", "helpxml"):
      try:
        _print_help(asked)
      except BrokenPipeError:
        _reader_gone()
      sys.exit(0)
  try:
    argv = FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}; see python launch.py --help", file=sys.stderr)
    sys.exit(2)
  except UnicodeDecodeError:  # absl reads a --flagfile as UTF-8 text.
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--flagfile=")]
    print(f"error: --flagfile={', '.join(files) or '?'} is not a text file of "
          "flags (it holds bytes that are not UTF-8 text); pass a file of "
          "lines like --model=gru", file=sys.stderr)
    sys.exit(2)
  for name in ("workdir", "data_dir", "mnist_dir"):  # No shell expands them.
    if FLAGS[name].value:
      FLAGS[name].value = os.path.expanduser(FLAGS[name].value)
  return argv


def _print_help(asked: str) -> None:
  if asked == "helpxml":
    FLAGS.write_help_in_xml_format(sys.stdout)
  else:
    groups = [*config_lib.GROUPS, *(
        m for m in FLAGS.flags_by_module_dict()
        if asked == "helpfull" and m not in config_lib.GROUPS)]
    print(__doc__.strip(), *map(FLAGS.module_help, groups), sep="\n")
  sys.stdout.flush()


def _reader_gone() -> None:
  """Output's reader stopped reading (`| head`): so does this, as a pipe's
  writer does (exit 141), with nothing left to flush at exit."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  sys.exit(128 + signal.SIGPIPE)


def _interrupt(signum, frame):  # pylint: disable=unused-argument
  """Ctrl-C or SIGTERM outside the training loop (which saves first)."""
  COMMAND.signum = signum
  raise KeyboardInterrupt


def _unraisable(unraisable) -> None:
  """A signal's KeyboardInterrupt that landed in a garbage-collector
  callback (where Python only prints it) is delivered again instead."""
  if issubclass(unraisable.exc_type, KeyboardInterrupt):
    threading.Timer(0.01, os.kill, (os.getpid(), COMMAND.signum)).start()
  else:
    sys.__unraisablehook__(unraisable)


def _again() -> str:
  """How the line a run ends with says to go on."""
  return "run the same command again" + (" without --overwrite" if
                                         FLAGS.overwrite else "")


def _exit(text: str, code: int) -> None:
  """Exits with `text` as the last line; in a job of processes at once:
  jax.distributed's shutdown at exit waits for every process, and where one
  is gone, aborts in C++."""
  print(text, file=sys.stderr, flush=True)
  if jax.distributed.is_initialized():
    sys.stdout.flush()  # os._exit drops what a pipe's buffer holds.
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _run(argv):
  """Runs main; ends in one line and the exit status the module doc lists
  (--debug: a traceback)."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _interrupt)
  sys.unraisablehook = _unraisable
  try:
    main(argv)
    sys.stdout.flush()  # A closed pipe (| head) says so here, not at exit.
  except BrokenPipeError:
    _reader_gone()
  except control.Preempted as e:
    _exit(f"{e}; {_again()} to resume", e.exit_code)
  except KeyboardInterrupt:
    if FLAGS.debug:
      raise
    _exit(COMMAND.interrupted(_again()), 128 + COMMAND.signum)
  except Exception as e:  # pylint: disable=broad-except
    error = e if isinstance(e, UserError) else resources.machine_error(
        e, COMMAND.work or FLAGS.workdir, COMMAND.config)
    if (error is None or FLAGS.debug) and jax.distributed.is_initialized():
      traceback.print_exception(e)
      _exit("error: this process stopped on the error above; mend its cause, "
            "then run every process's command again (they resume)", 1)
    if error is None or FLAGS.debug:
      raise
    if error is not e:  # The machine's: a run it began is not one.
      COMMAND.discard_unstarted()
    _exit(f"error: {error}", error.exit_code)


if __name__ == "__main__":
  try:
    app.run(_run, flags_parser=_parse)
  finally:
    # Everything is written and closed by now. Frozen, the 200,000 or so
    # objects JAX, flax, orbax and matplotlib made are freed at exit without
    # the garbage collector's passes over them: about half a second sooner.
    gc.freeze()
