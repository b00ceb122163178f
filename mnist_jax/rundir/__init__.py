"""The run folder: what a run writes, and reads back when it resumes.

  record.py        config.json: settings, environment, resumptions, finished
  metrics_log.py   metrics.jsonl: a row per epoch, then the final one
  lock.py          one writer per run folder (an flock; .lock names it)
  resume.py        whether and where a run folder resumes; its commands
  choose.py        which folder a command without --workdir trains in
  files.py         writing a file whole or not at all
  checkpoints.py   orbax checkpoints, and the one restore of a run folder
  log.py           where a run's rows go: console, metrics.jsonl, TensorBoard
  tensorboard.py   TensorBoard event files (tensorboardX, no TensorFlow)

Import the modules themselves (`from mnist_jax.rundir import record`); this
package imports none of them, so orbax loads only when a checkpoint is read
or written.
"""
