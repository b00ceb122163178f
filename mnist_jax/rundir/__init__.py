"""The run folder: what a run writes, and reads back when it resumes.

  folder.py        config.json, metrics.jsonl, the environment record; which
                   folder a command resumes, and the lock of one in use
  files.py         writing a file whole or not at all
  checkpoints.py   orbax checkpoints, checked on restore, and resuming
  log.py           where a run's rows go: console, metrics.jsonl, TensorBoard
  tensorboard.py   TensorBoard event files (tensorboardX, no TensorFlow)

Import the modules themselves (`from mnist_jax.rundir import folder`); this
package imports none of them, so orbax loads only when a checkpoint is read
or written.
"""
