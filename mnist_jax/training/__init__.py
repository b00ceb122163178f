"""Training: the state, the steps, the loop, and who trains on which devices.

  train.py     the train state, train and eval steps, scanned chunks of
               steps, and `train_and_evaluate`, the run loop in named phases
  optim.py     optax optimizers and learning-rate schedules
  members.py   the models one run trains together (--num_seeds, --sweep),
               how their axis runs on devices, and which one is chosen
  devices.py   the process's JAX settings, --parallel, and `Engine`: one
               run's devices and compiled programs
  control.py   when the loop stops: --target_accuracy, divergence, SIGTERM
  dry_run.py   --dry_run: what a training command would run

Import the modules themselves (`from mnist_jax.training import train`); this
package imports none of them.
"""
