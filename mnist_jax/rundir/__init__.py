"""The run folder: what a run writes, and reads back when it resumes.

  record.py, metrics_log.py  config.json; metrics.jsonl (the rows' writer)
  checkpoints.py, resume.py  orbax checkpoints; whether and where to resume
  lock.py, choose.py         one writer per folder; the folder without --workdir
  tensorboard.py             the rows as TensorBoard events
  control.py, resources.py   stops (signals, no learning); machine failures
  cli.py, dry_run.py         launch.py's help, messages and --dry_run
  process.py                 the process's devices and jax.distributed

Import the modules themselves; this package imports none of them, so orbax
loads only when a checkpoint is read or written.
"""
