"""Train, evaluate, report on or predict with an MNIST model: the one entry point.

  python launch.py --model=gru                    # train with the tuned preset
  python launch.py --model=cnn --preset=seed      # the seed notebook's setup
  python launch.py --model=cnn --preset=best --dry_run   # see what it would run
  python launch.py --model=mlp --mnist_dir=DIR    # offline: the four IDX files
  python launch.py --mode=report --workdir=RUN    # rewrite RUN's report.md + plots
  python launch.py --mode=predict --workdir=RUN --image=seven.png[,...] [--json]
  python launch.py --model=mlp --sweep=learning_rate=3e-4,1e-3,3e-3 --num_seeds=2

Every Config field (mnist_jax/config.py) and every model's own setting
(mnist_jax/models/registry.py) is a flag; unset flags take the preset. The
same command again resumes its run; without --workdir, that is the newest
unfinished run of the same settings under runs/.
"""

import os
import signal


def _stopped_while_loading(signum, frame):  # pylint: disable=unused-argument
  """Ctrl-C or SIGTERM while launch.py loads JAX, before `_run` takes over:
  nothing is written yet, so one line and the shell's status for the signal."""
  name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
  os.write(2, f"interrupted ({name}) while starting, before anything was "
           "written; run the same command again to start\n".encode())
  os._exit(128 + signum)  # pylint: disable=protected-access


if __name__ == "__main__":  # Before the imports below, which take seconds.
  for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _stopped_while_loading)

# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
import dataclasses
import logging
import shlex
import shutil
import sys
import textwrap
import threading
from typing import List, Optional, Sequence

from absl import app
from absl import flags

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.config import value_text
from mnist_jax.errors import Diverged, UserError
from mnist_jax.results import run as results
from mnist_jax.rundir import control
from mnist_jax.rundir import dry_run
from mnist_jax.rundir import folder as folder_lib
from mnist_jax.rundir import resources
from mnist_jax.rundir import run
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

# launch.py's own flags, which are not run settings: name -> its --help group.
# Each is defined below with its one-line help.
LAUNCH_GROUPS = {"overwrite": config_lib.RUN_FOLDER,
                 **{name: config_lib.MODES for name in (
                     "mode", "dry_run", "image", "json", "plot", "ensemble",
                     "debug")}}
_LAUNCH_HELP = {}  # Their help, without the default.
HELP_ARGS = ("-h", "-help", "--help", "-?", "--helpshort", "-helpshort",
             "--helpfull", "-helpfull", "--helpxml", "-helpxml")


def flag_help(name: str) -> str:
  """A flag's help, without its default.

  A Config field's is its metadata help, plus what the registry and optim.py
  know: the presets without validation data, the names --sweep takes. A
  model setting's is its declaration's, plus the models that have it.
  """
  if name in _LAUNCH_HELP:
    return _LAUNCH_HELP[name]
  if name not in config_lib.FIELDS:
    owners = "/".join(config_lib.models_with(name))
    return f"{config_lib.setting(name).help}; {owners} only"
  text = config_lib.FIELDS[name].metadata["help"]
  if name == "model":
    *names, last = models.MODELS
    text += f": {', '.join(names)} or {last}"
  elif name == "preset":
    text += (f": {models.registry.presets_text()}; holding out no validation "
             "data (so no validation curve, and --sweep refused): "
             f"{models.registry.without_validation()}")
  elif name == "sweep":
    text += f"; NAME: {', '.join(members_lib.SWEEPABLE)}"
  return text


def default_text(name: str) -> str:
  """A flag's default as --help and docs/flags.md state it."""
  if name in _LAUNCH_HELP:
    return value_text(FLAGS[name].default)
  if name in config_lib.FIELDS:
    preset = config_lib.FIELDS[name].metadata["preset"]
  else:  # A model setting: its models' defaults, and whether a preset sets it.
    preset = name in models.registry.set_by_presets()
  values = {value_text(config_lib.default(name, m))
            for m in config_lib.models_with(name)} or {
                value_text(config_lib.default(name))}
  value = values.pop() if len(values) == 1 else "the model's"
  return f"the preset's, else {value}" if preset else value


def config_flag_help(name: str) -> str:
  """A flag's --help line: its help, then its default."""
  return f"{flag_help(name)} (default: {default_text(name)})"


def group_of(name: str) -> str:
  """The --help group (config_lib.GROUPS) a flag is listed in."""
  if name in LAUNCH_GROUPS:
    return LAUNCH_GROUPS[name]
  return config_lib.group(name)


def flags_in_order() -> List[str]:
  """Every flag as --help lists it: by group, each group's Config fields in
  their declaration order, then the models' settings, then launch.py's own."""
  names = [*config_lib.flag_names(), *LAUNCH_GROUPS]
  return sorted(names, key=lambda n: config_lib.GROUPS.index(group_of(n)))


def _define(define, name: str, default, help_text: str, **kwargs) -> None:
  """Defines one of launch.py's own flags."""
  _LAUNCH_HELP[name] = help_text
  define(name, default, help=f"{help_text} (default: {value_text(default)})",
         **kwargs)


# Every Config field and model setting is a flag. Its absl default is None,
# meaning "not given": main() then takes the preset's value, else the default.
for _name in config_lib.flag_names():
  _kind = config_lib.field_type(_name)
  _help = config_flag_help(_name)
  if _name == "sweep":  # Repeatable: one NAME=V1,V2,... each.
    flags.DEFINE_multi_string(_name, None, _help)
  elif _kind is bool:
    flags.DEFINE_bool(_name, None, _help)
  elif _kind is int:
    flags.DEFINE_integer(_name, None, _help)
  elif _kind is float:
    flags.DEFINE_float(_name, None, _help)
  elif _kind is tuple:
    flags.DEFINE_list(_name, None, _help)
  else:
    flags.DEFINE_string(_name, None, _help)
_define(flags.DEFINE_bool, "overwrite", False,
        "Start --workdir over (deleting it) instead of resuming it; without "
        "--workdir, start a new run folder instead of resuming one")
_define(flags.DEFINE_enum, "mode", "train",
        "What to do: train, report (rewrite a finished run's report and "
        "plots) or predict (the digits in --image files)",
        enum_values=["train", "report", "predict"])
_define(flags.DEFINE_bool, "dry_run", False,
        "Print the settings, validation split, model, devices and run folder "
        "this command would train with; train and write nothing")
_define(flags.DEFINE_list, "image", [],
        "With --mode=predict: image files, comma-separated (PNG, JPEG, "
        "anything Pillow reads)")
_define(flags.DEFINE_bool, "json", False,
        "With --mode=predict: print one JSON object per image")
_define(flags.DEFINE_bool, "plot", False,
        "With --mode=predict: also save WORKDIR/predict/<name>.png")
_define(flags.DEFINE_bool, "ensemble", False,
        "With --mode=predict: average the probabilities of the seeds of the "
        "run's chosen grid point instead of its chosen member")
_define(flags.DEFINE_bool, "debug", False,
        "Show Python tracebacks instead of one-line errors")
FLAGS = flags.FLAGS


def help_text(full: bool = False) -> str:
  """What --help prints: the usage above, then every flag by group.

  full (--helpfull): also the flags of the libraries (absl's logging flags).
  """
  lines = [__doc__.strip(), ""]
  for group in config_lib.GROUPS:
    lines.append(f"{group}:")
    for name in (n for n in flags_in_order() if group_of(n) == group):
      spelled = f"--[no]{name}" if FLAGS[name].boolean else f"--{name}"
      lines.append(textwrap.fill(f"{spelled}: {config_flag_help(name)}",
                                 width=80, initial_indent="  ",
                                 subsequent_indent="      "))
    lines.append("")
  lines.append(textwrap.fill(
      "Exit status: 0 done (or already finished), 1 bad input, 2 a flag that "
      "does not parse, 3 diverged, 4 finished but did not learn, 5 out of "
      "memory or disk space, 130 or 143 stopped by Ctrl-C or SIGTERM. "
      "--helpfull also lists the libraries' flags.", width=80))
  if full:
    ours = FLAGS.find_module_defining_flag("model")
    lines += ["", *(FLAGS.module_help(m) for m in FLAGS.flags_by_module_dict()
                    if m != ours)]
  return "\n".join(lines)


def _overrides() -> dict:
  """The settings given on the command line, parsed; --sweep canonical.

  Raises:
    UserError: a bad --sweep, or a flag given beside a sweep of the same name.
  """
  values = {}
  for name in config_lib.flag_names():
    value = FLAGS[name].value
    if value is None or name in ("model", "preset"):
      continue
    if name == "sweep":
      value = members_lib.canonical(value,
                                    FLAGS.model or config_lib.Config.model)
    elif config_lib.field_type(name) is tuple:
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise UserError(f"--{name} takes comma-separated integers, got "
                        f"{','.join(value)}") from None
    values[name] = value
  for name in members_lib.parse(values.get("sweep", "")):
    if name in values:
      raise UserError(f"--{name} and --sweep={name}=... both set {name}; pass "
                      "its values in --sweep only")
  return values


@dataclasses.dataclass
class _Run:
  """This command's training run, for the messages that say how to resume."""
  config: Optional[config_lib.Config] = None  # Its workdir as typed.
  work: Optional[str] = None  # The run folder it trains in.
  held: Optional[dict] = None  # folder.locking()'s: the folders it holds.
  claimed: bool = False  # This process holds `work` (process 0 does).
  fresh: bool = False  # The run in `work` starts with this command.
  existed: bool = False  # `work` existed before (an empty folder, say).
  signum: int = signal.SIGINT  # The signal that interrupted it.


_RUN = _Run()


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags take the form "
                    "--name=value (see --help)")
  if FLAGS.mode != "train":
    if FLAGS.dry_run:
      raise UserError(f"--dry_run shows what training would do; leave it out "
                      f"with --mode={FLAGS.mode}")
    return _use_run()
  model = FLAGS.model or config_lib.Config.model
  overrides = _overrides()
  config = models.get_config(model, FLAGS.preset or "tuned", **overrides)
  _RUN.config = config
  devices.split_host(config.parallel, multi_process=bool(
      config.coordinator_address or config.num_processes > 1))
  devices.setup_process()
  if FLAGS.dry_run:
    return _dry_run(config, overrides)
  # A bad --sweep says so before which folder is used.
  members_lib.from_config(config)
  control.set_resume_command(resume_command)
  existed = bool(config.workdir) and os.path.exists(config.workdir)
  with folder_lib.locking() as _RUN.held:
    work, note = _run_folder(config)
    _RUN.work, _RUN.existed = work, existed
    _RUN.claimed = os.path.realpath(work) in _RUN.held
    _RUN.fresh = FLAGS.overwrite or not os.path.exists(
        os.path.join(work, folder_lib.CONFIG_FILE))
    if note:
      print(note, flush=True)
    final = run.train_and_evaluate(
        config.replace(workdir=work), work,
        overwrite=FLAGS.overwrite and bool(config.workdir))
  _warn_if_not_learned(final)


def _warn_if_not_learned(final: dict) -> None:
  """A finished run that did not learn (control.learning_verdict) ends
  with a warning line and its own exit status; its folder is complete."""
  verdict = (final or {}).get(control.NOT_LEARNED)
  if verdict:
    advice = _retry_advice() if verdict["cause"] == "loss" else ""
    print(f"warning: {verdict['message']}{advice}", file=sys.stderr)
    sys.exit(control.NOT_LEARNED_EXIT_CODE)


def _run_folder(config: config_lib.Config):
  """(the folder to train in, a line saying which and why, or None for a
  --workdir given or a first run), held by this process from here on (its
  process 0, with several): no other command writes it meanwhile.

  Raises:
    UserError: --workdir is in use by another process.
    Diverged: the run to resume diverged with these settings (it would again).
  """
  devices.initialize(config)  # Which process is process 0.
  main_process = devices.is_main()
  if not config.workdir:
    for attempt in range(3):
      choice = folder_lib.choose(config, overwrite=FLAGS.overwrite)
      try:
        if main_process:
          folder_lib.claim(choice.path)
        return choice.path, choice.reason if choice.news else None
      except folder_lib.InUse:  # Another command took it a moment ago.
        if attempt == 2:
          raise
  if main_process:
    folder_lib.claim(config.workdir)
  if not FLAGS.overwrite:
    folder_lib.check_not_diverged(config.workdir, config)
  return config.workdir, None


def _dry_run(config: config_lib.Config, overrides: dict) -> None:
  """--dry_run: the checks a run makes before writing, then what it would do."""
  members = tuple(members_lib.from_config(config))
  resources.check_memory(config, len(members))
  given = {**overrides, **{n: FLAGS[n].value for n in ("model", "preset")
                           if FLAGS[n].value is not None}}
  if config.workdir:
    work = config.workdir
    folder_lib.check_not_in_use(work)
    folder_lib.check_writable(work)
    existing = folder_lib.check_run_folder(work, config, FLAGS.overwrite)
    folder = _explicit_folder_line(work, config, existing)
  else:
    try:
      choice = folder_lib.choose(config, overwrite=FLAGS.overwrite)
      work, folder = choice.path, choice.reason
    except Diverged as e:
      work, folder = None, f"none: the run would stop at once: {e}"
  source = "flag" if config.workdir else "chosen (see run folder)"
  print(dry_run.text(config.replace(workdir=work), given, folder, source,
                     members))


def _explicit_folder_line(work: str, config, existing: bool) -> str:
  """What a run would do with the --workdir given."""
  if not existing:
    return f"{work}, a new run folder"
  if FLAGS.overwrite:
    return f"{work}, deleted and started over (--overwrite)"
  try:
    folder_lib.check_not_diverged(work, config)
  except Diverged as e:
    return f"none: the run would stop at once: {e}"
  state, last = folder_lib.status(work)
  if state == "finished":
    return (f"{work} already finished: the run would print its result and "
            "stop (--overwrite trains it again)")
  if "test_accuracy" in (last or {}):
    return (f"completing {work}: it trained to the end, but its report is not "
            "complete (the run would write it, training nothing)")
  logged = (last or {}).get("epoch", 0)
  return f"resuming {work} ({logged} of {config.epochs} epochs logged)"


def _use_run():
  """--mode=report or predict: works on the finished run in --workdir."""
  if not FLAGS.workdir:
    raise UserError(f"--mode={FLAGS.mode} needs --workdir=DIR, a run folder")
  devices.setup_process()
  # Where the data moved to, and the layers to evaluate with, may differ from
  # the run's own.
  overrides = {k: FLAGS[k].value for k in ("data_dir", "mnist_dir", "impl")
               if FLAGS[k].value}
  if FLAGS.mode == "predict":  # Reads only: also a run being trained.
    if results.print_predictions(FLAGS.workdir, FLAGS.image, FLAGS.json,
                             FLAGS.plot, ensemble=FLAGS.ensemble, **overrides):
      sys.exit(1)
    return
  with folder_lib.locking():  # One process at a time writes the report.
    folder_lib.claim(FLAGS.workdir, mode="report", create=False)
    run.rewrite_report(FLAGS.workdir, **overrides)


# The commands the messages print: the command line as typed, edited.


def _flag_name(arg: str) -> Optional[str]:
  """The flag an argument sets (`--name=v`, `-name`, `--noname`), else None."""
  if not arg.startswith("-") or arg == "--":
    return None
  name = arg.lstrip("-").split("=", 1)[0]
  if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS:
    return name[2:]
  return name


def without(args: Sequence[str], names: Sequence[str]) -> List[str]:
  """`args` without those setting a flag in `names`, in any spelling
  (`--name=v`, `--name v`, `--name`, `--noname`)."""
  out, skip_value = [], False
  for i, arg in enumerate(args):
    if skip_value:
      skip_value = False
      continue
    if arg == "--":  # What follows is no flag.
      return out + list(args[i:])
    name = _flag_name(arg)
    if name in names:
      skip_value = "=" not in arg and name in FLAGS and not FLAGS[name].boolean
      continue
    out.append(arg)
  return out


def _typed(name: str) -> bool:
  """Whether the command line as typed sets flag `name`."""
  args = sys.argv[1:]
  args = args[:args.index("--")] if "--" in args else args
  return any(_flag_name(a) == name for a in args)


def _command(args: Sequence[str]) -> str:
  return shlex.join(["python", sys.argv[0], *args])


def _same_command_resumes(work: str) -> bool:
  """Whether this command, given no --workdir, would pick `work` to resume."""
  try:
    choice = folder_lib.choose(_RUN.config, overwrite=False)
  except UserError:  # Diverged: it would refuse.
    return False
  return choice.resume and os.path.abspath(choice.path) == os.path.abspath(work)


def resume_command(work: Optional[str] = None) -> str:
  """This command line as typed, without --overwrite, that resumes `work`
  (this run's folder by default): --workdir is added only where the same
  command without it would pick another folder."""
  work = work or _RUN.work
  args = without(sys.argv[1:], ("overwrite", "dry_run"))
  if not _typed("workdir") and not _same_command_resumes(work):
    args.append(f"--workdir={work}")
  return _command(args)


def _retry_advice() -> str:
  """After a divergence: a command with a lower learning rate (or clipping)
  that trains these settings again, and what it does with the run folder."""
  config = _RUN.config
  swept = members_lib.parse(config.sweep) if config else {}
  if config is None or ("learning_rate" in swept and "grad_clip" in swept):
    return ""
  if "learning_rate" not in swept:
    name, value = "learning_rate", f"{config.learning_rate / 10:g}"
  else:
    name, value = "grad_clip", "1"
  args = [*without(sys.argv[1:], ("overwrite", "dry_run", name)),
          f"--{name}={value}"]
  if _typed("workdir"):
    args.append("--overwrite")
    where = f"--overwrite starts {config.workdir} over"
  else:
    where = "a new run folder"
  return f"; for example ({where}): {_command(args)}"


def _interrupted() -> str:
  """What a Ctrl-C outside the training loop says (the loop's says more)."""
  work = _RUN.work
  name = ("Ctrl-C" if _RUN.signum == signal.SIGINT else
          control.signal_name(_RUN.signum))
  if work and os.path.exists(os.path.join(work, folder_lib.CONFIG_FILE)):
    return (f"interrupted ({name}); {work} keeps its last complete checkpoint, "
            f"if any. To resume, run: {resume_command(work)}")
  where = f"before {work} was written" if work else "before training started"
  return (f"interrupted ({name}) {where}; to start again, run: "
          f"{_command(sys.argv[1:])}")


def _parse(argv):
  """Parses the flags; --help (-h, --helpshort, --helpfull) prints the flags
  by group and exits 0, as asking for help is no error."""
  for arg in argv[1:]:
    if arg == "--":
      break
    if arg in HELP_ARGS:
      if arg.endswith("helpxml"):
        FLAGS.write_help_in_xml_format(sys.stdout)
      else:
        print(help_text(full=arg.endswith("helpfull")))
      sys.exit(0)
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


def _interrupt(signum, frame):  # pylint: disable=unused-argument
  """Ctrl-C or SIGTERM outside the training loop (whose StopRequest saves a
  checkpoint first): stops main where it is, as Ctrl-C does, and `_run` says
  how to go on. Files being written are removed (files.atomic)."""
  _RUN.signum = signum
  raise KeyboardInterrupt


def _unraisable(unraisable) -> None:
  """sys.unraisablehook: a signal's KeyboardInterrupt that landed in a
  garbage-collector callback (JAX has one), where Python only prints it, is
  delivered again a moment later instead."""
  if issubclass(unraisable.exc_type, KeyboardInterrupt):
    threading.Timer(0.01, os.kill, (os.getpid(), _RUN.signum)).start()
  else:
    sys.__unraisablehook__(unraisable)


def _has_checkpoint(work: str) -> bool:
  folder = os.path.join(work, folder_lib.CHECKPOINT_DIR)
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def _discard_unstarted() -> bool:
  """Removes the run folder this command began, when it failed before its
  first checkpoint: nothing half-written is left for a later command to take
  for a run. Whether it did."""
  work = _RUN.work
  if not (work and _RUN.fresh and _RUN.claimed and os.path.isdir(work)):
    return False
  if _has_checkpoint(work):
    return False
  shutil.rmtree(work, ignore_errors=True)
  if _RUN.existed:
    os.makedirs(work, exist_ok=True)
  return True


def _failure_message(found: resources.Failure, kept: bool) -> str:
  """A failure of the machine's in one line, with what to do in this mode.

  kept: whether the run folder stays, to be resumed.
  """
  again = (f"then resume with: {resume_command()}" if kept else
           "then run the same command again")
  if found.kind == "memory":
    if FLAGS.mode != "train":
      return (f"{found.text}; close what else uses that memory, or run it on "
              "a machine with more")
    return (f"{found.text}; {resources.lower_advice(_RUN.config)} (a new "
            "run), or run it on a machine with more memory")
  if found.kind == "disk":
    return f"{found.text}; free some space there, {again}"
  if found.kind == "io":
    return f"{found.text}; check that disk, {again}"
  if FLAGS.mode == "report":
    return (f"{found.text}; --mode=report writes report.md and its figures "
            "into the run folder: make it writable, or copy the folder and "
            "pass the copy as --workdir")
  if FLAGS.mode == "predict":
    return (f"{found.text}; leave out --plot, or make "
            f"{os.path.join(FLAGS.workdir, 'predict')} writable")
  return f"{found.text}; make it writable, {again}"


def _run(argv):
  """Runs main; exit status 1 bad input, 2 bad flag, 3 diverged, 4 did not
  learn, 5 out of memory or disk space, 128+N signal N."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _interrupt)
  sys.unraisablehook = _unraisable
  try:
    main(argv)
  except UserError as e:
    if FLAGS.debug:
      raise
    advice = _retry_advice() if isinstance(e, Diverged) else ""
    print(f"error: {e}{advice}", file=sys.stderr)
    _quiet_teardown()
    sys.exit(e.exit_code)
  except control.Preempted as e:
    print(f"{e}. To resume, run: {resume_command(e.workdir)}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    if FLAGS.debug:
      raise
    print(_interrupted(), file=sys.stderr)
    _quiet_teardown()
    sys.exit(128 + _RUN.signum)
  except Exception as e:  # pylint: disable=broad-except
    found = resources.failure(e, _RUN.work or FLAGS.workdir)
    if found is None or FLAGS.debug:
      raise
    kept = bool(FLAGS.mode == "train" and _RUN.work and
                os.path.isdir(_RUN.work) and not _discard_unstarted())
    print(f"error: {_failure_message(found, kept)}", file=sys.stderr)
    _quiet_teardown()
    sys.exit(found.exit_code)


if __name__ == "__main__":
  app.run(_run, flags_parser=_parse)
